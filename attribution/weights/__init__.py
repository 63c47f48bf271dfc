"""From example scores to contributor royalty weights in basis points.

The pool splits into a provider share and a labeler share; each contributor's part of its role's
share follows what its data or labels did for the model, and the split is exact integer basis
points that any auditor recomputes bit for bit.

- ``policy``: ``WeightPolicy``, how scores become weights (net or clip, left-out values, copies);
- ``labelers``: a labeler's credit per example (agreement, or how far each answer moved consensus);
- ``split``: ``ContributorSplit``, who shares each example's credit, applied to a run's scores or to
  one prediction's; ``contributor_weights`` is a run's table in one call;
- ``basis_points``: the score grid and the largest remainder, per query and for a batch at once.
"""

from .basis_points import QuerySplits, largest_remainder, quantize, quantize_columns
from .policy import COPIES_POLICIES, LABELER_POLICIES, PROVIDER_POLICIES, WeightPolicy
from .split import ContributorSplit, contributor_weights

__all__ = [
    "COPIES_POLICIES",
    "LABELER_POLICIES",
    "PROVIDER_POLICIES",
    "ContributorSplit",
    "QuerySplits",
    "WeightPolicy",
    "contributor_weights",
    "largest_remainder",
    "quantize",
    "quantize_columns",
]
