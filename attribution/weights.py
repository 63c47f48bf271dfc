"""From example scores to contributor royalty weights in basis points.

Policy (``WeightPolicy``, defaults in brackets): the pool splits into a provider share [70 %] and a
labeler share [30 %]. An example's credit goes to its provider; its labeler credit goes to its
annotators by what their answers did [``labelers='valued'``, below], or, with ``labelers='agree'``,
to the annotators whose label agreed with consensus, ``confidence / n_agreeing`` each (the
Dawid–Skene posterior of the consensus label, shared equally). With ``net`` [the default],
negative-influence examples offset the same contributor's positive credit, and a contributor whose
sum is not positive (its data or labels hurt the model) earns nothing; the table's ``score`` is that
signed sum, so a report can say who hurt. With ``clip`` negative-influence examples earn nothing and
offset nothing. ``clip`` pays for spread, not only help: a contributor whose examples pull both ways
(large gradients, e.g. noisy inputs) keeps its positive half however much the negative half cancels
it, and splitting one example's score into parts of opposite sign changes its pay. ``net`` keeps the
scores' additivity (on the demo's digits, the provider with 60 % noisy pixels, whose removal lowers
the held-out loss, gets the top share under ``clip`` and the lowest provider share under ``net``).
Each role's share is split in proportion to the contributors' scores; a role with no positive score
passes its share to the other.

Labelers by pivotal answers (``labelers='pivotal'``; ``'agree'`` is the rule above): each
answer's share of its example is how much it moved the consensus, the posterior of the consensus
label with every answer minus that without this answer, under confusion matrices and a class
prior estimated in one Dawid-Skene M-step from the stored consensus labels (``label_smoothing``
pseudo-counts, as the consensus's own Dawid-Skene smooths its cells: the pipeline reads them from
the consensus record, ``labeling.auto_smoothing`` unless set) and
held fixed, each answer read under its labeler's other answers (its own left out of the count, so
an answer that agrees with the consensus cannot vouch for itself: counted in, a random labeler's
few lucky agreements per class were paid like an informative labeler's, 143 of the labelers' 3,000
bps in a 30-class test). Leaving a labeler out removes one answer per example, so this is the
leave-that-labeler-out consensus, computed from the run's tables. Against the royalty bench's
leave-that-labeler-out truth (first pay run / mean of four), counted in -> left out: digits 0.986 /
0.989 -> 0.941 / 0.952, 12 classes 0.771 / 0.743 -> 0.941 / 0.909, 20 classes 0.943 / 0.971 -> 0.880
/ 0.926, 40 classes 0.771 / 0.810 -> 0.941 / 0.941, wine 1.000 / 0.968 -> 0.986 / 0.945, two tables of
2 classes unchanged. The moves are in the faulty labelers' pay: the random labeler's is now 0 in
every world and the constant one's at most 5 bps, the adversarial one's 0 but on wine and the 2-class
tables, where its answers say much (the other label) and the truth agrees; where 3 to 40 classes leave
them near zero, the truth puts them on either side of it. A pivotal answer takes a
large share, a redundant one a small one, an answer against the consensus a negative one, an
uninformative one (a constant labeler's; a random one's on average) about none. The share is
applied to the sign of the example's credit times the largest |credit|: one unit per flip, plus
when the consensus label helped, minus when it hurt (a flip's value is the score under the label
minus the score under the label it replaced, which the run does not store; for a right label the
replaced one's harm dominates). An answer that pushed the consensus wrong thus earns a negative
credit, which ``net`` offsets. Records without ``labelers`` read back as ``'agree'``.

Labelers by their left-out value (``labelers='left_out'``, with a ``left_out`` table that has labeler
rows, ``attribution.left_out``): each labeler's target-loss rise when the run retrains on the
consensus refitted without its answers, shrunk toward what ``'valued'`` pays by its seeds' noise as
the providers' values are (``shrunk_values``); a labeler whose absence hurt nothing earns nothing.
Without labeler rows it pays as ``'valued'``.

Labelers by the value of what their answers changed (``labelers='valued'``, the default: in the
benchmark's five worlds it tracks leave-that-labeler-out retraining best): the same moves, valued
by what the label an answer displaced was probably worth. Where the consensus label helped (its
example's credit > 0) it is probably right and the label without the answer probably wrong: one
unit per posterior moved, as ``'pivotal'``. Where it hurt (credit < 0) it is probably wrong, and so
is the label it displaced unless that one is the truth: an answer that pushed the wrong label loses
only the chance ``pi`` that, without it, the consensus would have been right (``pi``: the
leave-that-answer-out posterior over the other labels, squared and summed, from ``1/(K-1)`` when it
is flat to 1 when it is sure), and an answer that pulled away from the wrong label earns nothing
(which way it pulled is unknown). ``'pivotal'`` charged such an answer a whole unit, as if the
label it displaced were right, and so underpaid the less accurate honest labelers.

Duplicates (``credit``, the ``example_credit`` contract in ``schemas``, made at ingest): an
example's provider credit goes to the providers the credit table names, with its shares; a
duplicate group's members each weigh ``1/m``, so the group earns the mean of its members'
scores once (copies add nothing and dilute nobody), paid to the provider(s) who registered the
group first (equal shares for sources registered at the same time); its labelers' credit is
scaled by the same weight. Without ``credit`` each example pays its ``provider`` column. Paid by
left-out values, a provider's copies beyond one per group count only where they hurt (``copies='once'``,
the default: flooding gains nothing); ``copies='group'`` pays the group's whole left-out effect, copies
that help included, as ``bench/contributor_value.py``'s truth counts it.

Determinism for auditors: example scores are rounded to ``score_digits`` significant digits
(relative to the largest) before anything else, so tiny float differences (1 vs 2 torch
threads) vanish; contributions are summed in ``example_id`` order; the final split is exact
rational arithmetic with the largest-remainder method, ties broken by address (lowest first,
compared as numbers, i.e. lowercase hex).

Serving splits every prediction's fee: ``split_queries`` gives the same basis points as
``split_query`` for a whole batch at once (one sparse product, integer largest remainder per
query), ``split_one`` for one prediction without the batch's machinery (its request path);
``split_query`` stays the per-row reference both are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from eth_utils import is_address, to_checksum_address
from scipy import sparse

from schemas import ROLES, TOTAL_BPS, WEIGHTS_SCHEMA

from .errors import ContributorError

LABELER_POLICIES = ("agree", "pivotal", "valued", "left_out")
PROVIDER_POLICIES = ("left_out", "scores")
COPIES_POLICIES = ("once", "group")
MOVES = ("pivotal", "valued", "left_out")  # labeler policies that read each answer's move of its consensus
VALUED = ("valued", "left_out")  # ... valued by what the displaced label was worth ('left_out': its prior)


@dataclass(frozen=True)
class WeightPolicy:
    """How scores become royalty weights (the module docstring's policy): the provider share, the sign
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


def quantize(scores: np.ndarray, digits: int) -> np.ndarray:
    """Integers (as float64) on a grid of ``digits`` significant digits of the largest |score|."""
    scores = np.asarray(scores, dtype=np.float64)
    top = float(np.max(np.abs(scores))) if scores.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return np.zeros_like(scores)
    return np.round(scores / grid_unit(top, digits))


def grid_unit(top: float, digits: int) -> float:
    """The grid step for ``digits`` significant digits of ``top`` (> 0, finite), from the decimal
    exponent of ``top`` as written (its shortest repr, so the float ``1e-07``, just below 10**-7 in
    binary, counts as 10**-7). Float ``log10`` rounds 999.99…9 up to 3.0 (a grid ten times coarser)
    and may differ between C libraries; Python's repr is exact and the same on every platform."""
    exponent = Decimal(repr(top)).adjusted() - digits + 1
    return float(Decimal(10) ** exponent)


def quantize_columns(scores: np.ndarray, digits: int) -> np.ndarray:
    """``quantize`` applied to each column of a 2-D array on its own (bit for bit the same)."""
    scores = np.asarray(scores, dtype=np.float64)
    units = np.ones(scores.shape[1])
    dead = np.ones(scores.shape[1], dtype=bool)
    if scores.shape[0]:
        for q, top in enumerate(np.max(np.abs(scores), axis=0).tolist()):
            if top != 0.0 and math.isfinite(top):
                units[q], dead[q] = grid_unit(top, digits), False
    out = np.round(scores / units)
    out[:, dead] = 0.0
    return out


def largest_remainder(quotas: list[Fraction], tiebreak: list[tuple], total: int = TOTAL_BPS) -> list[int]:
    """Integers summing to ``total``: floors, then +1 by largest remainder, ties by ``tiebreak``."""
    floors = [q.numerator // q.denominator for q in quotas]
    left = total - sum(floors)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - floors[i]), tiebreak[i]))
    for i in order[:left]:
        floors[i] += 1
    return floors


# ---------------------------------------------------------------- the credit map


def _strings(table: pa.Table, name: str, col: str) -> list[str | None]:
    if col not in table.column_names:
        raise ContributorError(f"{name} table has no {col!r} column (columns: {table.column_names})")
    return pc.cast(table[col], pa.string()).to_pylist()


@dataclass
class ContributorSplit:
    """Which contributors share each example's credit; built once, applied to any score vector.

    The pipeline applies it to a run's ``example_attribution``; serving applies it to the
    scores ``attribute_query`` gives one prediction, to split that prediction's fee.
    """

    example_ids: list[str]  # sorted
    contributors: dict[str, list[str]]  # role -> sorted contributor ids
    addresses: dict[str, str]  # contributor -> checksummed address
    matrices: dict[str, sparse.csr_matrix]  # role -> [contributors x examples] credit shares
    policy: WeightPolicy
    # labelers='valued': [labelers x examples] what each labeler's answers lose where the label hurt
    wrong: sparse.csr_matrix | None = None
    _batch: _BatchPlan = field(init=False, repr=False, compare=False)
    _stacked: sparse.csr_matrix = field(init=False, repr=False, compare=False)  # both roles' rows
    _aligned: tuple[tuple[str, ...], np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._batch = _BatchPlan.of(self)
        self._stacked = _stack_rows([self.matrices[r] for r in ROLES], len(self.example_ids))

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        """(contributor, address, role) of each split's rows: the order of ``split_queries`` output."""
        return self._batch.rows

    @classmethod
    def build(
        cls,
        examples: pa.Table,
        annotations: pa.Table | None,
        consensus: pa.Table | None,
        addresses: dict[str, str],
        policy: WeightPolicy | None = None,
        credit: pa.Table | None = None,
    ) -> ContributorSplit:
        """``credit`` (the ``example_credit`` contract, ``schemas.CREDIT_SCHEMA``), when given, says
        who is paid for each example instead of its ``provider`` column: duplicates paid once, to
        the first-registered provider(s). Without it each example pays its own provider."""
        policy = policy or WeightPolicy()
        ids = _strings(examples, "examples", "example_id")
        providers = _strings(examples, "examples", "provider")
        orphans = [e for e, p in zip(ids, providers, strict=True) if not p]
        if orphans:
            raise ContributorError(f"{len(orphans)} examples have no provider: {orphans[:10]}")
        order = sorted(range(len(ids)), key=ids.__getitem__)
        example_ids = [ids[i] for i in order]
        if len(set(example_ids)) != len(example_ids):
            raise ContributorError("examples table lists an example_id twice")
        index = {e: i for i, e in enumerate(example_ids)}
        if credit is None:
            entries = {"provider": [(providers[i], index[ids[i]], 1.0) for i in order]}
            weight = None
        else:
            provider_entries, weight = _credit_entries(credit, index, [providers[i] for i in order])
            entries = {"provider": provider_entries}
        wrong_entries: list[tuple[str, int, float]] = []
        if policy.labelers in MOVES:
            entries["labeler"], wrong_entries = _pivotal_entries(
                annotations, consensus, index, weight, policy.label_smoothing
            )
        else:
            entries["labeler"] = _labeler_entries(annotations, consensus, index, weight)
        contributors = {r: sorted({c for c, _, _ in entries[r]}) for r in ROLES}
        everyone = sorted(set(contributors["provider"]) | set(contributors["labeler"]))
        checked = _checked_addresses(everyone, addresses)
        matrices = {}
        for role in ROLES:
            col = {c: j for j, c in enumerate(contributors[role])}
            rows = [col[c] for c, _, _ in entries[role]]
            cols = [e for _, e, _ in entries[role]]
            vals = [v for _, _, v in entries[role]]
            m = sparse.coo_matrix((vals, (rows, cols)), shape=(len(col), len(example_ids)))
            matrices[role] = m.tocsr()
        wrong = None
        if policy.labelers in VALUED:
            col = {c: j for j, c in enumerate(contributors["labeler"])}
            m = sparse.coo_matrix(
                ([v for _, _, v in wrong_entries], ([col[c] for c, _, _ in wrong_entries],
                                                    [e for _, e, _ in wrong_entries])),
                shape=(len(col), len(example_ids)),
            )
            wrong = m.tocsr()
        return cls(example_ids, contributors, checked, matrices, policy, wrong)

    def scores_vector(self, example_attribution: pa.Table) -> np.ndarray:
        """Scores aligned to ``example_ids`` (examples absent from the table score 0)."""
        ids = _strings(example_attribution, "example_attribution", "example_id")
        values = example_attribution["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(values).all():
            raise ContributorError("example_attribution holds NaN or inf scores")
        index = {e: i for i, e in enumerate(self.example_ids)}
        unknown = [e for e in ids if e not in index]
        if unknown:
            raise ContributorError(
                f"{len(unknown)} attributed examples are not in the examples table: {unknown[:10]}"
            )
        out = np.zeros(len(self.example_ids))
        out[[index[e] for e in ids]] = values
        return out

    def weights(self, example_attribution: pa.Table, left_out: pa.Table | None = None) -> pa.Table:
        """The ``contributor_weights`` table for one run's (or one prediction's) scores; with
        ``left_out`` (``attribution.LEFT_OUT_SCHEMA``) and ``providers='left_out'`` the providers'
        share goes by their left-out values instead of their examples' scores, and with
        ``labelers='left_out'`` the labelers' by theirs (where the table has labeler rows)."""
        values = labelers = None
        if left_out is not None and self.policy.providers == "left_out":
            from .left_out import provider_values

            values = provider_values(left_out, copies=self.policy.copies)
        if left_out is not None and self.policy.labelers == "left_out":
            from .left_out import labeler_values

            labelers = labeler_values(left_out) or None  # none retrained: as 'valued'
        return self.weights_from_scores(self.scores_vector(example_attribution), values, labelers)

    def split_query(self, example_ids: list[str], contributions: np.ndarray) -> pa.Table:
        """Basis points of one prediction's fee, from ``attribute_query``'s per-example output."""
        table = pa.table({"example_id": pa.array(example_ids, pa.string()), "score": contributions})
        return self.weights(table)

    def split_queries(self, example_ids: list[str], contributions: np.ndarray) -> QuerySplits:
        """Basis points of many predictions' fees at once, exactly as ``split_query`` per column.

        ``contributions`` is [len(example_ids), n_queries] (``TrakFeatures.scores``). Item q of
        the result is an int64 array of ``weight_bps`` aligned to ``rows`` (``split_query``'s
        table order), or None where ``split_query`` finds no positive score. The credit products
        run as one sparse product over all queries (the same CSR kernel and summation order as
        one query's), the largest remainder in integers for all queries at once.
        """
        c = np.asarray(contributions, dtype=np.float64)
        if c.ndim == 1:
            c = c[:, None]
        if c.ndim != 2 or c.shape[0] != len(example_ids):
            raise ContributorError(
                f"contributions must be [{len(example_ids)} examples, queries], got shape {c.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(c).all(axis=0))
        if bad.size:
            raise ContributorError(f"contributions of queries {bad[:10].tolist()} hold NaN or inf scores")
        scores = np.zeros((len(self.example_ids), c.shape[1]))
        scores[self.positions(example_ids)] = c
        credit = quantize_columns(scores, self.policy.score_digits)
        if self.policy.negative == "clip":
            credit = np.maximum(credit, 0.0)
        per_role = [np.maximum(self._role_scores(r, credit), 0.0) for r in ROLES]
        grid = np.ascontiguousarray(quantize_columns(np.concatenate(per_role), self.policy.score_digits).T)
        return QuerySplits(*self._batch.split_all(grid))

    def split_one(self, positions: np.ndarray, contributions: np.ndarray) -> np.ndarray | None:
        """One prediction's ``weight_bps`` by ``rows`` (None: no positive score), as ``split_queries``.

        Serving's per-request path: ``positions`` (``positions(example_ids)``) is worked out once
        per run, and one query needs no batch machinery: the 1-D quantization (``quantize`` is
        ``quantize_columns`` per column), one sparse product over both roles' rows (each row's
        sum in the same order), the 1-D largest remainder. The same integers, bit for bit.
        """
        c = np.asarray(contributions, dtype=np.float64)
        if c.shape != positions.shape:
            raise ContributorError(
                f"contributions must be one score per example ({positions.shape[0]}), got shape {c.shape}"
            )
        if not np.isfinite(c).all():
            raise ContributorError("contributions hold NaN or inf scores")
        scores = np.zeros(len(self.example_ids))
        scores[positions] = c
        credit = quantize(scores, self.policy.score_digits)
        if self.policy.negative == "clip":
            credit = np.maximum(credit, 0.0)
        if self.policy.labelers != "agree":  # the same products, row by row, as the per-role ones
            both = np.concatenate([self._role_scores(r, credit) for r in ROLES])
        else:
            both = self._stacked @ credit
        grid = quantize(np.maximum(both, 0.0), self.policy.score_digits)
        return self._batch.split_one(grid)

    def _role_scores(self, role: str, credit: np.ndarray) -> np.ndarray:
        """A role's signed scores (rows; per column: each query's) from the examples' quantized credit.

        Providers and ``labelers='agree'`` take their shares of the credit itself. A label flip's
        value is the score under the consensus label minus the score under the label the example
        would have had; the second is not in a run's tables, and for a right label it is a wrong
        label's harm, which outweighs the right label's own score. So ``'pivotal'`` counts each flip
        as one unit (the largest |credit|, exact in any summation order), signed by whether the
        consensus label helped; ``'valued'`` counts a unit where it helped, minus its ``wrong``
        entries' units where it hurt (the module docstring says why)."""
        if role == "provider" or self.policy.labelers == "agree":
            return self.matrices[role] @ credit
        top = np.max(np.abs(credit), axis=0) if credit.shape[0] else np.zeros(credit.shape[1:])
        if self.policy.labelers == "pivotal":
            return self.matrices[role] @ (np.sign(credit) * top)
        # VALUED: 'valued', and the prior that 'left_out' shrinks its labelers' retrained values toward
        return self.matrices[role] @ ((credit > 0) * top) - self.wrong @ ((credit < 0) * top)

    def positions(self, example_ids: list[str]) -> np.ndarray:
        """Where each of ``example_ids`` (scores' order) sits in the split's sorted ``example_ids``
        (cached for the last list)."""
        key = tuple(example_ids)
        cached = self._aligned
        if cached is not None and cached[0] == key:
            return cached[1]
        index = {e: i for i, e in enumerate(self.example_ids)}
        unknown = [e for e in key if e not in index]
        if unknown:
            raise ContributorError(
                f"{len(unknown)} attributed examples are not in the examples table: {unknown[:10]}"
            )
        positions = np.fromiter((index[e] for e in key), dtype=np.intp, count=len(key))
        positions.flags.writeable = False
        self._aligned = (key, positions)
        return positions

    def weights_from_scores(
        self, scores: np.ndarray, provider_values: Mapping[str, tuple[float, float, int]] | None = None,
        labeler_values: Mapping[str, tuple[float, float, int]] | None = None,
    ) -> pa.Table:
        """``provider_values`` (provider -> left-out value, its standard error, examples left out; absent:
        0) replace the providers' summed scores, shrunk toward what those scores predict by the
        retrains' noise (``left_out.shrunk_values``); ``labeler_values`` the labelers' scores alike, shrunk
        toward what their moves predict. A role paid by left-out values is quantized on its own, the
        values and the scores being in different units."""
        digits = self.policy.score_digits
        credit = quantize(scores, digits)
        if self.policy.negative == "clip":
            credit = np.maximum(credit, 0.0)
        signed = {r: self._role_scores(r, credit) for r in ROLES}  # < 0: it hurt
        from .left_out import shrunk_values

        retrained = {"provider": provider_values, "labeler": labeler_values}
        for role, values in retrained.items():
            if values is not None:
                rows = [values.get(c, (0.0, 0.0, 0)) for c in self.contributors[role]]
                v, se, n = (np.array([r[k] for r in rows]) for k in range(3))
                signed[role] = quantize(shrunk_values(v, se, signed[role], n > 0), digits)
        per_role = {r: np.maximum(signed[r], 0.0) for r in ROLES}
        if provider_values is None and labeler_values is None:
            grid = quantize(np.concatenate([per_role[r] for r in ROLES]), digits)
        else:
            grid = np.concatenate([quantize(per_role[r], digits) for r in ROLES])
        ints = dict(zip(ROLES, np.split(grid, [len(per_role["provider"])]), strict=True))
        totals = {r: int(ints[r].sum()) for r in ROLES}
        if not any(totals.values()):
            raise ContributorError(
                "no contributor has a positive attribution score; nothing to split: every contributor's data "
                "and labels made the model worse on its targets, as they do where the model overfit (its "
                "training record's target_loss above prior_loss); retrain stopping early (patience) or for "
                "fewer epochs")
        shares = {r: self.policy.share(r) for r in ROLES}
        for r, other in (ROLES, ROLES[::-1]):
            if totals[r] == 0:
                shares[other], shares[r] = TOTAL_BPS, 0
        rows, quotas = [], []
        for role in ROLES:
            for c, v, q in zip(self.contributors[role], signed[role], ints[role], strict=True):
                rows.append((c, self.addresses[c], role, float(v)))
                quotas.append(Fraction(shares[role] * int(q), totals[role]) if totals[role] else Fraction(0))
        # ties by the address as a number (lowercase hex), not by its mixed-case checksum spelling
        bps = largest_remainder(quotas, [(a.lower(), r, c) for c, a, r, _ in rows])
        ordered = sorted(zip(rows, bps, strict=True), key=lambda t: (t[0][2], t[0][0]))
        columns = [[r[i] for r, _ in ordered] for i in range(4)] + [[b for _, b in ordered]]
        return pa.table(columns, schema=WEIGHTS_SCHEMA)  # contributor, address, role, score, weight_bps


@dataclass(frozen=True)
class QuerySplits(Sequence):
    """``split_queries``' answer: item q is query q's ``weight_bps`` (by ``rows``) or None."""

    bps: np.ndarray  # int64 [queries, rows]; all zero where ok is False
    ok: np.ndarray  # bool [queries]: some contributor has a positive score

    def __len__(self) -> int:
        return len(self.ok)

    def __getitem__(self, q: int) -> np.ndarray | None:  # type: ignore[override]
        return self.bps[q] if self.ok[q] else None


@dataclass(frozen=True)
class _BatchPlan:
    """The fixed parts of ``weights_from_scores``' largest remainder, worked out once per split.

    Entries are in ``weights_from_scores``' quota order (providers, then labelers, each by id);
    ``tierank`` is each entry's place in its tie order, ``out`` reorders to the table's rows.
    """

    n_provider: int
    share: dict[str, int]
    tierank: np.ndarray
    out: np.ndarray
    rows: list[tuple[str, str, str]]
    tiebreak: list[tuple[str, str, str]]

    @classmethod
    def of(cls, split: ContributorSplit) -> _BatchPlan:
        """The plan for ``split``'s contributors and role shares (``ContributorSplit`` makes it once)."""
        entries = [(c, split.addresses[c], r) for r in ROLES for c in split.contributors[r]]
        tiebreak = [(a.lower(), r, c) for c, a, r in entries]
        tierank = np.empty(len(entries), dtype=np.int64)
        tierank[sorted(range(len(entries)), key=tiebreak.__getitem__)] = np.arange(len(entries))
        table_order = sorted(range(len(entries)), key=lambda i: (entries[i][2], entries[i][0]))
        out = np.array(table_order, dtype=np.intp)
        return cls(
            n_provider=len(split.contributors["provider"]),
            share={r: split.policy.share(r) for r in ROLES},
            tierank=tierank,
            out=out,
            rows=[entries[i] for i in out],
            tiebreak=tiebreak,
        )

    @cached_property
    def _role(self) -> np.ndarray:
        """Each entry's role: 0 provider, 1 labeler."""
        return np.repeat([0, 1], [self.n_provider, len(self.tierank) - self.n_provider])

    @cached_property
    def _entry_share(self) -> np.ndarray:
        """Each entry's role share, when both roles have credit."""
        return np.asarray([self.share[r] for r in ROLES], dtype=np.int64)[self._role]

    def split_one(self, grid: np.ndarray) -> np.ndarray | None:
        """``split_all`` of one query (1-D ``grid``), the same integers: table row order, or None."""
        n = len(grid)
        if n == 0 or float(grid.max()) * n >= 2**62:
            row = self._exact(grid)
            return None if row is None else row[self.out]
        g = grid.astype(np.int64)
        t_provider, t_labeler = int(g[: self.n_provider].sum()), int(g[self.n_provider :].sum())
        if not (t_provider or t_labeler):
            return None
        if max(t_provider, t_labeler) >= 2**53 or int(g.max()) >= (2**63 - 1) // TOTAL_BPS:
            return self._exact(grid)[self.out]
        # a role with no positive credit passes its share to the other (its own entries are 0)
        share = self._entry_share if t_provider and t_labeler else TOTAL_BPS
        den = np.where(self._role == 1, t_labeler or 1, t_provider or 1)
        bps, rem = np.divmod(g * share, den)
        left = TOTAL_BPS - int(bps.sum())
        if left:
            bps[self._largest(rem, den, left)] += 1
        return bps[self.out]

    def split_all(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Basis points [queries, entries] (table row order) and which queries have any credit.

        ``grid`` is each query's quantized per-entry credit (integers in 0..10**score_digits).
        Integer floors and remainders for all queries at once; a query whose numbers leave the
        exact range of int64/float64 (15 digits, huge totals) takes the Fraction path.
        """
        n_queries, n = grid.shape
        bps = np.zeros((n_queries, n), dtype=np.int64)
        if n_queries == 0:
            return bps, np.zeros(0, dtype=bool)
        if n == 0 or float(grid.max()) * n >= 2**62:  # int64 row sums could overflow: all exact
            ok = np.zeros(n_queries, dtype=bool)
            for q in range(n_queries):
                row = self._exact(grid[q])
                ok[q] = row is not None
                bps[q] = 0 if row is None else row
            return bps[:, self.out], ok
        g = grid.astype(np.int64)
        totals = np.stack([g[:, : self.n_provider].sum(1), g[:, self.n_provider :].sum(1)], axis=1)
        ok = totals.any(axis=1)
        # below 2**53 the float sums weights_from_scores takes are these exact sums
        fast = ok & (totals.max(axis=1) < 2**53) & (g.max(axis=1) < (2**63 - 1) // TOTAL_BPS)
        for q in np.flatnonzero(ok & ~fast):
            bps[q] = self._exact(grid[q])
        if fast.any():
            bps[fast] = self._fast(g[fast], totals[fast])
        return bps[:, self.out], ok

    def _fast(self, g: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Largest remainder in int64 for queries whose quotas and totals fit exactly."""
        role = self._role
        # a role with no positive credit passes its share to the other (its own entries are 0)
        share = np.where(totals.all(axis=1)[:, None], [[self.share[r] for r in ROLES]], TOTAL_BPS)
        den = np.where(totals == 0, 1, totals)[:, role]
        bps, rem = np.divmod(g * share[:, role], den)
        left = TOTAL_BPS - bps.sum(axis=1)
        frac = rem / den  # both below 2**53: each quotient is correctly rounded
        order = np.lexsort((np.broadcast_to(self.tierank, frac.shape), -frac), axis=-1)
        place = np.empty_like(order)
        np.put_along_axis(place, order, np.arange(order.shape[1])[None, :], axis=1)
        plus = place < left[:, None]
        # where the cut falls inside a run of equal floats, order that run exactly
        ranked = np.take_along_axis(frac, order, axis=1)
        inside = np.flatnonzero((left > 0) & (left < frac.shape[1]))
        at = left[inside]
        for q in inside[ranked[inside, at - 1] == ranked[inside, at]]:
            plus[q] = False
            plus[q, self._largest(rem[q], den[q], int(left[q]))] = True
        return bps + plus

    def _exact(self, grid: np.ndarray) -> np.ndarray | None:
        """One query as ``weights_from_scores`` computes it, in Fractions (entry order)."""
        parts = (grid[: self.n_provider], grid[self.n_provider :])
        totals = [int(p.sum()) for p in parts]  # the float sums weights_from_scores takes
        if not any(totals):
            return None
        shares = [
            0 if t == 0 else self.share[r] if all(totals) else TOTAL_BPS
            for r, t in zip(ROLES, totals, strict=True)
        ]
        quotas = [
            Fraction(s * int(q), t) if t else Fraction(0)
            for p, s, t in zip(parts, shares, totals, strict=True)
            for q in p.tolist()
        ]
        return np.asarray(largest_remainder(quotas, self.tiebreak), dtype=np.int64)

    def _largest(self, rem: np.ndarray, den: np.ndarray, left: int) -> np.ndarray:
        """The ``left`` entries with the largest remainder ``rem/den`` (ties by ``tierank``).

        Float division is monotonic, so float order is the exact order except inside groups of
        equal floats; the one group the cut may split is ordered exactly (Fractions).
        """
        frac = rem / den  # both below 2**53: each quotient is correctly rounded
        order = np.lexsort((self.tierank, -frac))
        cut = frac[order[left - 1]]
        if left == len(order) or frac[order[left]] != cut:
            return order[:left]
        above = np.flatnonzero(frac > cut)
        group = np.flatnonzero(frac == cut).tolist()
        group.sort(key=lambda i: (-Fraction(int(rem[i]), int(den[i])), int(self.tierank[i])))
        return np.concatenate([above, np.asarray(group[: left - len(above)], dtype=np.intp)])


def _stack_rows(matrices: list[sparse.csr_matrix], n_cols: int) -> sparse.csr_matrix:
    """The matrices' rows one under the other, each row's entries kept in their order (so its sum is)."""
    mats = [sparse.csr_matrix(m) for m in matrices]
    offsets = np.cumsum([0] + [m.nnz for m in mats])
    indptr = np.concatenate([[0]] + [m.indptr[1:] + o for m, o in zip(mats, offsets, strict=False)])
    return sparse.csr_matrix(
        (
            np.concatenate([m.data for m in mats] or [np.zeros(0)]),
            np.concatenate([m.indices for m in mats] or [np.zeros(0, np.int32)]),
            indptr,
        ),
        shape=(sum(m.shape[0] for m in mats), n_cols),
    )


def _credit_entries(
    credit: pa.Table, index: dict[str, int], providers: list[str]
) -> tuple[list[tuple[str, int, float]], list[float]]:
    """(provider, example index, share) from an ``example_credit`` table, in (example, provider)
    order, and each example's weight (its shares' sum: 1/(its duplicate group's size)).

    Every example must have credit rows; a provider of the examples table credited with nothing
    (all its examples copy earlier-registered ones) is listed with a zero share, so it shows in
    the weights table with 0 bps instead of vanishing.
    """
    ids = _strings(credit, "example_credit", "example_id")
    who = _strings(credit, "example_credit", "provider")
    if "share" not in credit.column_names:
        raise ContributorError(f"example_credit table has no 'share' column (columns: {credit.column_names})")
    shares = pc.cast(credit["share"], pa.float64()).to_pylist()
    rows: dict[tuple[int, str], float] = {}
    for e, p, v in zip(ids, who, shares, strict=True):
        if e not in index:
            raise ContributorError(f"example_credit names example {e!r}, which is not in the examples table")
        if not p:
            raise ContributorError(f"example_credit gives example {e!r} a share without a provider")
        if v is None or not math.isfinite(v) or not 0.0 < v <= 1.0:
            raise ContributorError(
                f"example_credit share of {p!r} in example {e!r} must be in (0, 1], got {v}"
            )
        if (index[e], p) in rows:
            raise ContributorError(f"example_credit lists provider {p!r} twice for example {e!r}")
        rows[(index[e], p)] = float(v)
    entries = [(p, e, v) for (e, p), v in sorted(rows.items())]
    per_example: list[list[float]] = [[] for _ in index]
    for _, e, v in entries:
        per_example[e].append(v)
    missing = [i for i, v in enumerate(per_example) if not v]
    if missing:
        first = next(e for e, i in index.items() if i == missing[0])
        raise ContributorError(f"{len(missing)} examples have no row in example_credit (e.g. {first!r})")
    weight = [math.fsum(v) for v in per_example]
    if max(weight) > 1.0 + 1e-9:
        raise ContributorError("example_credit shares of one example add up to more than 1")
    paid = {p for p, _, _ in entries}
    unpaid: dict[str, int] = {}
    for i, p in enumerate(providers):
        if p not in paid:
            unpaid.setdefault(p, i)
    entries.extend((p, i, 0.0) for p, i in sorted(unpaid.items()))
    return entries, weight


def _labeler_entries(
    annotations: pa.Table | None,
    consensus: pa.Table | None,
    index: dict[str, int],
    weight: list[float] | None = None,
) -> list[tuple[str, int, float]]:
    """(annotator, example index, share) for annotators who agreed with the consensus label;
    ``weight`` (by example index) scales an example's share (a duplicate group is credited once)."""
    if annotations is None or consensus is None or annotations.num_rows == 0 or consensus.num_rows == 0:
        return []
    agreed: dict[str, tuple[str, float]] = {}
    for e, label, conf in zip(
        _strings(consensus, "consensus", "example_id"),
        _strings(consensus, "consensus", "label"),
        consensus["confidence"].to_pylist()
        if "confidence" in consensus.column_names
        else [1.0] * consensus.num_rows,
        strict=True,
    ):
        if e in index and label is not None:
            agreed[e] = (label, float(conf if conf is not None else 1.0))
    voters: dict[str, set[str]] = {}
    others: set[tuple[str, str]] = set()  # listed with zero credit
    unknown = []
    for e, who, label in zip(
        _strings(annotations, "annotations", "example_id"),
        _strings(annotations, "annotations", "annotator"),
        _strings(annotations, "annotations", "label"),
        strict=True,
    ):
        if not who:
            unknown.append(e)
        elif e in agreed and label == agreed[e][0]:
            voters.setdefault(e, set()).add(who)
        elif e in index:
            others.add((who, e))
    if unknown:
        raise ContributorError(f"{len(unknown)} annotations have no annotator (examples {unknown[:10]})")
    out = []
    for e in sorted(voters):
        conf = agreed[e][1] / len(voters[e])
        if weight is not None:
            conf *= weight[index[e]]
        out.extend((who, index[e], conf) for who in sorted(voters[e]))
    out.extend((who, index[e], 0.0) for who, e in sorted(others))
    return out


def _latest_votes(annotations: pa.Table) -> dict[tuple[str, str], str]:
    """(example, annotator) -> label of the annotator's latest answer (``labeling.votes``' order:
    ``updated_at``, then ``annotation_id``, where the table has them); any row order gives the same."""
    ids = _strings(annotations, "annotations", "example_id")
    who = _strings(annotations, "annotations", "annotator")
    label = _strings(annotations, "annotations", "label")
    keys = [annotations[c].to_pylist() if c in annotations.column_names else [0] * annotations.num_rows
            for c in ("updated_at", "annotation_id")]
    unknown = [e for e, w in zip(ids, who, strict=True) if not w]
    if unknown:
        raise ContributorError(f"{len(unknown)} annotations have no annotator (examples {unknown[:10]})")
    rows = sorted(
        zip(ids, who, keys[0], keys[1], label, strict=True),
        key=lambda r: (r[0], r[1], r[2] is None, r[2] or 0, r[3] is None, r[3] or 0, r[4] or ""),
    )
    return {(e, w): lab for e, w, _, _, lab in rows}


def _pivotal_entries(
    annotations: pa.Table | None,
    consensus: pa.Table | None,
    index: dict[str, int],
    weight: list[float] | None,
    smoothing: float,
) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]]]:
    """(annotator, example index, share): how much each answer moved its example's consensus; and
    (annotator, example index, loss) for ``labelers='valued'``: the share where it pushed the label
    (else 0) times ``pi``, the chance that the label without it would have been right.

    From the stored tables alone (annotations and the consensus labels): each annotator's
    confusion matrix and the class prior are one Dawid-Skene M-step on the consensus labels,
    ``(count + smoothing) / (row total + smoothing * classes)``, kept fixed, except that an answer
    is read under its annotator's other answers (its own count left out of the row of its example's
    consensus label): counted in, an answer that happens to agree with the consensus vouches for
    itself, which a random labeler's few agreeing answers per class did enough, with many classes,
    to be paid like an informative one. An example's
    posterior is the prior times its answers' likelihoods; an answer's share is the posterior of
    the consensus label with every answer minus that posterior without this one (the
    leave-that-answer-out consensus, which is what leaving its labeler out does to the example
    with the confusions held). A pivotal answer for the consensus takes a large share, a
    redundant one (the others already settle the label) a small one, an answer against the
    consensus a negative one; an answer that carries no information (a constant labeler's, a
    random labeler's on average) moves nothing. Applied to the example's score, a pivotal answer
    behind a harmful (wrong) consensus label earns a negative credit, which ``net`` nets.
    """
    if annotations is None or consensus is None or annotations.num_rows == 0 or consensus.num_rows == 0:
        return [], []
    label_of: dict[str, str] = {}
    for e, label in zip(
        _strings(consensus, "consensus", "example_id"), _strings(consensus, "consensus", "label"), strict=True
    ):
        if e in index and label is not None:
            label_of[e] = label
    votes = {k: v for k, v in _latest_votes(annotations).items() if k[0] in index and v is not None}
    if not votes:
        return [], []
    classes = sorted(set(label_of.values()) | set(votes.values()))
    cls = {c: i for i, c in enumerate(classes)}
    people = sorted({w for _, w in votes})
    person = {w: i for i, w in enumerate(people)}
    n_k = len(classes)
    counts = np.zeros((len(people), n_k, n_k))
    prior = np.zeros(n_k)
    for c in label_of.values():
        prior[cls[c]] += 1.0
    for (e, w), lab in sorted(votes.items()):
        if e in label_of:
            counts[person[w], cls[label_of[e]], cls[lab]] += 1.0
    log_prior = np.log((prior + smoothing) / (prior.sum() + smoothing * n_k))
    log_conf = np.log((counts + smoothing) / (counts.sum(axis=2, keepdims=True) + smoothing * n_k))
    by_example: dict[str, list[tuple[str, str]]] = {}
    for (e, w), lab in sorted(votes.items()):
        by_example.setdefault(e, []).append((w, lab))
    out, wrong = [], []
    for e in sorted(by_example):
        answers = by_example[e]
        if e not in label_of:
            out.extend((w, index[e], 0.0) for w, _ in answers)
            wrong.extend((w, index[e], 0.0) for w, _ in answers)
            continue
        c = cls[label_of[e]]
        terms = np.stack([log_conf[person[w], :, cls[lab]] for w, lab in answers])
        for j, (w, lab) in enumerate(answers):  # each answer read under its labeler's other answers
            terms[j, c] = np.log((counts[person[w], c, cls[lab]] - 1.0 + smoothing)
                                 / (counts[person[w], c].sum() - 1.0 + smoothing * n_k))
        full = log_prior + terms.sum(axis=0)
        without = full[None, :] - terms
        shares = _posterior(full, c) - np.array([_posterior(row, c) for row in without])
        scale = 1.0 if weight is None else weight[index[e]]
        out.extend((w, index[e], round(float(v) * scale, 12) + 0.0)
                   for (w, _), v in zip(answers, shares.tolist(), strict=True))
        chance = [_right_without(row, c) for row in without]
        wrong.extend((w, index[e], round(max(float(v), 0.0) * pi * scale, 12) + 0.0)
                     for (w, _), v, pi in zip(answers, shares.tolist(), chance, strict=True))
    return out, wrong


def _posterior(log_odds: np.ndarray, c: int) -> float:
    z = log_odds - log_odds.max()
    p = np.exp(z)
    return float(p[c] / p.sum())


def _right_without(log_odds: np.ndarray, c: int) -> float:
    """The chance that the consensus without an answer is right, given that label ``c`` is wrong:
    the posterior over the other labels, renormalized, squared and summed (1/(K-1) when flat)."""
    others = np.delete(log_odds, c)
    if not len(others):
        return 0.0
    z = np.exp(others - others.max())
    q = z / z.sum()
    return float((q * q).sum())


def _checked_addresses(contributors: list[str], addresses: dict[str, str]) -> dict[str, str]:
    missing = [c for c in contributors if not addresses.get(c)]
    if missing:
        raise ContributorError(
            f"{len(missing)} contributors have no address in the registry: {', '.join(missing)}; "
            "register an EVM address for each before weighting"
        )
    bad = [c for c in contributors if not is_address(addresses[c])]
    if bad:
        raise ContributorError(f"contributors with an invalid EVM address: {', '.join(bad)}")
    return {c: to_checksum_address(addresses[c]) for c in contributors}


def contributor_weights(
    example_attribution: pa.Table,
    examples: pa.Table,
    annotations: pa.Table | None,
    consensus: pa.Table | None,
    addresses: dict[str, str],
    policy: WeightPolicy | None = None,
    credit: pa.Table | None = None,
    left_out: pa.Table | None = None,
) -> pa.Table:
    """The ``contributor_weights`` table (contributor, address, role, score, weight_bps); with
    ``credit`` (``example_credit``) duplicates are paid once, to their first registrant(s); with
    ``left_out`` (the run's ``LEFT_OUT_SCHEMA`` table) providers are paid by their left-out values
    (``WeightPolicy.providers``, the default)."""
    split = ContributorSplit.build(examples, annotations, consensus, addresses, policy, credit)
    return split.weights(example_attribution, left_out)
