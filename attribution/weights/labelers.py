"""A labeler's credit per example: by agreement with consensus, or by how far each answer moved it.

Labelers by agreement (``labelers='agree'``): an example's labeler credit goes to the annotators
whose label agreed with consensus, ``confidence / n_agreeing`` each (the Dawid–Skene posterior of
the consensus label, shared equally).

Labelers by pivotal answers (``labelers='pivotal'``): each answer's share of its example is how much
it moved the consensus, the posterior of the consensus label with every answer minus that without
this answer, under confusion matrices and a class prior estimated in one Dawid-Skene M-step from the
stored consensus labels (``label_smoothing`` pseudo-counts, as the consensus's own Dawid-Skene
smooths its cells: the pipeline reads them from the consensus record, ``labeling.auto_smoothing``
unless set) and held fixed, each answer read under its labeler's other answers (its own left out of
the count, so an answer that agrees with the consensus cannot vouch for itself: counted in, a random
labeler's few lucky agreements per class were paid like an informative labeler's, 143 of the
labelers' 3,000 bps in a 30-class test). Leaving a labeler out removes one answer per example, so
this is the leave-that-labeler-out consensus, computed from the run's tables. Against the royalty
bench's leave-that-labeler-out truth (first pay run / mean of four), counted in -> left out: digits
0.986 / 0.989 -> 0.941 / 0.952, 12 classes 0.771 / 0.743 -> 0.941 / 0.909, 20 classes 0.943 / 0.971
-> 0.880 / 0.926, 40 classes 0.771 / 0.810 -> 0.941 / 0.941, wine 1.000 / 0.968 -> 0.986 / 0.945,
two tables of 2 classes unchanged. The moves are in the faulty labelers' pay: the random labeler's
is now 0 in every world and the constant one's at most 5 bps, the adversarial one's 0 but on wine
and the 2-class tables, where its answers say much (the other label) and the truth agrees; where 3
to 40 classes leave them near zero, the truth puts them on either side of it. A pivotal answer takes
a large share, a redundant one a small one, an answer against the consensus a negative one, an
uninformative one (a constant labeler's; a random one's on average) about none. The share is applied
to the sign of the example's credit times the largest |credit|: one unit per flip, plus when the
consensus label helped, minus when it hurt (a flip's value is the score under the label minus the
score under the label it replaced, which the run does not store; for a right label the replaced
one's harm dominates). An answer that pushed the consensus wrong thus earns a negative credit, which
``net`` offsets. Records without ``labelers`` read back as ``'agree'``.

Labelers by the value of what their answers changed (``labelers='valued'``, the default: in the
benchmark's five worlds it tracks leave-that-labeler-out retraining best): the same moves, valued by
what the label an answer displaced was probably worth. Where the consensus label helped (its
example's credit > 0) it is probably right and the label without the answer probably wrong: one unit
per posterior moved, as ``'pivotal'``. Where it hurt (credit < 0) it is probably wrong, and so is
the label it displaced unless that one is the truth: an answer that pushed the wrong label loses
only the chance ``pi`` that, without it, the consensus would have been right (``pi``: the
leave-that-answer-out posterior over the other labels, squared and summed, from ``1/(K-1)`` when it
is flat to 1 when it is sure), and an answer that pulled away from the wrong label earns nothing
(which way it pulled is unknown). ``'pivotal'`` charged such an answer a whole unit, as if the label
it displaced were right, and so underpaid the less accurate honest labelers.

Labelers by their left-out value (``labelers='left_out'``, with a ``left_out`` table that has
labeler rows, ``attribution.left_out``): each labeler's target-loss rise when the run retrains on
the consensus refitted without its answers, shrunk toward what ``'valued'`` pays by its seeds' noise
as the providers' values are (``shrunk_values``); a labeler whose absence hurt nothing earns
nothing. Without labeler rows it pays as ``'valued'``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import ContributorError
from .columns import string_column


def agreement_entries(
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
        string_column(consensus, "consensus", "example_id"),
        string_column(consensus, "consensus", "label"),
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
        string_column(annotations, "annotations", "example_id"),
        string_column(annotations, "annotations", "annotator"),
        string_column(annotations, "annotations", "label"),
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
    ids = string_column(annotations, "annotations", "example_id")
    who = string_column(annotations, "annotations", "annotator")
    label = string_column(annotations, "annotations", "label")
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


def answer_moves(
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
    for e, label in zip(string_column(consensus, "consensus", "example_id"),
                        string_column(consensus, "consensus", "label"), strict=True):
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
