"""How a run's scores become royalty weights: ``WeightPolicy``.

Policy (``WeightPolicy``, defaults in brackets): the pool splits into a provider share [70 %] and a
labeler share [30 %]. An example's credit goes to its provider, its labeler credit to its annotators
by what their answers did [``labelers='valued'``] or by agreement
(``attribution.weights.labelers``). With ``net`` [the default], negative-influence examples offset
the same contributor's positive credit, and a contributor whose sum is not positive (its data or
labels hurt the model) earns nothing; the table's ``score`` is that signed sum, so a report can say
who hurt. With ``clip`` negative-influence examples earn nothing and offset nothing. ``clip`` pays
for spread, not only help: a contributor whose examples pull both ways (large gradients, e.g. noisy
inputs) keeps its positive half however much the negative half cancels it, and splitting one
example's score into parts of opposite sign changes its pay. ``net`` keeps the scores' additivity
(on the demo's digits, the provider with 60 % noisy pixels, whose removal lowers the held-out loss,
gets the top share under ``clip`` and the lowest provider share under ``net``). Each role's share is
split in proportion to the contributors' scores; a role with no positive score passes its share to
the other.

Duplicates (``credit``, the ``example_credit`` contract in ``schemas``, made at ingest): an
example's provider credit goes to the providers the credit table names, with its shares; a
duplicate group's members each weigh ``1/m``, so the group earns the mean of its members'
scores once (copies add nothing and dilute nobody), paid to the provider(s) who registered the
group first (equal shares for sources registered at the same time); its labelers' credit is
scaled by the same weight. Without ``credit`` each example pays its ``provider`` column. Paid by
left-out values, a provider's copies beyond one per group count only where they hurt (``copies='once'``,
the default: flooding gains nothing); ``copies='group'`` pays the group's whole left-out effect, copies
that help included, as ``bench/contributor_value.py``'s truth counts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from schemas import TOTAL_BPS

LABELER_POLICIES = ("agree", "pivotal", "valued", "left_out")
PROVIDER_POLICIES = ("left_out", "scores")
COPIES_POLICIES = ("once", "group")
MOVES = ("pivotal", "valued", "left_out")  # labeler policies that read each answer's move of its consensus
VALUED = ("valued", "left_out")  # ... valued by what the displaced label was worth ('left_out': its prior)


@dataclass(frozen=True)
class WeightPolicy:
    """How scores become royalty weights (this module's docstring): the provider share, the sign
    rule, the score grid and how labelers and providers are valued. A weighting record's ``policy``
    parameter holds its fields, which ``from_params`` reads back."""

    provider_share_bps: int = 7000
    negative: Literal["clip", "net"] = "net"
    score_digits: int = 8
    # a run's labelers: by the value of the consensus their answers moved ('valued'), by their left-out
    # retraining value ('left_out', given a `left_out` table with labeler rows, shrunk toward what 'valued'
    # pays; without one, as 'valued'), by those moves at one unit each ('pivotal') or by agreement ('agree')
    labelers: Literal["agree", "pivotal", "valued", "left_out"] = "valued"
    label_smoothing: float = 1.0  # 'pivotal', 'valued', 'left_out': each confusion cell's pseudo-count
    # a run's providers: by their left-out retraining value ('left_out', given a `left_out` table), or
    # by their examples' summed scores ('scores'; a prediction's fee is always split by its scores)
    providers: Literal["left_out", "scores"] = "left_out"
    # 'left_out' providers' duplicate groups: their copies beyond one per group count only where they hurt
    # ('once': flooding gains nothing), or a group's whole left-out effect goes to its first registrant
    # ('group': the royalty issue's ground truth, where copies that help raise the original's value)
    copies: Literal["once", "group"] = "once"

    def __post_init__(self) -> None:
        if not 0 <= self.provider_share_bps <= TOTAL_BPS:
            raise ValueError(f"provider_share_bps must be in 0..{TOTAL_BPS}, got {self.provider_share_bps}")
        if self.negative not in ("clip", "net"):
            raise ValueError(f"negative must be 'clip' or 'net', got {self.negative!r}")
        if not 1 <= self.score_digits <= 15:
            raise ValueError("score_digits must be in 1..15 (float64 holds 15 exact digits)")
        if self.labelers not in LABELER_POLICIES:
            raise ValueError(f"labelers must be one of {LABELER_POLICIES}, got {self.labelers!r}")
        if not (isinstance(self.label_smoothing, int | float) and 0 < self.label_smoothing < math.inf):
            raise ValueError(f"label_smoothing must be a positive number, got {self.label_smoothing!r}")
        if self.providers not in PROVIDER_POLICIES:
            raise ValueError(f"providers must be one of {PROVIDER_POLICIES}, got {self.providers!r}")
        if self.copies not in COPIES_POLICIES:
            raise ValueError(f"copies must be one of {COPIES_POLICIES}, got {self.copies!r}")

    def share(self, role: str) -> int:
        """``role``'s basis points of ``TOTAL_BPS``: ``provider_share_bps``, or the rest for labelers."""
        return self.provider_share_bps if role == "provider" else TOTAL_BPS - self.provider_share_bps

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> WeightPolicy:
        """The policy a weighting record's `policy` parameter names (unknown keys are other settings).

        A record without ``labelers`` predates the field: its labelers were paid by agreement; one
        without ``providers`` paid its providers by their summed scores."""
        params = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        params.setdefault("labelers", "agree")
        params.setdefault("providers", "scores")
        return cls(**params)
