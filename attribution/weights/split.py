"""Who shares each example's credit (``ContributorSplit``), and a run's or a prediction's split.

Providers take their examples' credit (through ``example_credit``, duplicates once), labelers their
answers' (``attribution.weights.labelers``); the split is built once and applied to any score vector:
a run's scores, a prediction's, or a batch of predictions' at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from eth_utils import is_address, to_checksum_address
from scipy import sparse

from schemas import ROLES, TOTAL_BPS, WEIGHTS_SCHEMA

from ..errors import ContributorError
from .basis_points import BatchPlan, QuerySplits, largest_remainder, quantize, quantize_columns
from .columns import string_column
from .labelers import agreement_entries, answer_moves
from .policy import MOVES, VALUED, WeightPolicy


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
    _batch: BatchPlan = field(init=False, repr=False, compare=False)
    _stacked: sparse.csr_matrix = field(init=False, repr=False, compare=False)  # both roles' rows
    _aligned: tuple[tuple[str, ...], np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._batch = BatchPlan.of(self)
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
        ids = string_column(examples, "examples", "example_id")
        providers = string_column(examples, "examples", "provider")
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
            entries["labeler"], wrong_entries = answer_moves(
                annotations, consensus, index, weight, policy.label_smoothing
            )
        else:
            entries["labeler"] = agreement_entries(annotations, consensus, index, weight)
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
        ids = string_column(example_attribution, "example_attribution", "example_id")
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
            from ..left_out import provider_values

            values = provider_values(left_out, copies=self.policy.copies)
        if left_out is not None and self.policy.labelers == "left_out":
            from ..left_out import labeler_values

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
        entries' units where it hurt (``attribution.weights.labelers`` says why)."""
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
        from ..left_out import shrunk_values

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
    ids = string_column(credit, "example_credit", "example_id")
    who = string_column(credit, "example_credit", "provider")
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
