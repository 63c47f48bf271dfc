"""The labels of the Fisher's gradient passes: every class at its weight, or labels drawn from the model's own
predictions once there are many classes.

The Fisher of the cross-entropy, ``Σ_i Σ_c p_c(x_i) φ_icφ_icᵀ``, is the Gram of the rows ``√p_c φ_ic``: one
gradient pass per class. Beyond ``FISHER_SAMPLES`` classes each row instead takes that many labels drawn
from its own ``p``, each at ``1/√FISHER_SAMPLES``: an unbiased estimate (Kronfluence's sampled-label
Fisher) whose cost stops growing with the classes. The draws are keyed by (run seed, checkpoint, row
index), so a row draws the same labels whichever chunk or shard holds it, and a replay draws them again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

# Why 16: summing every class took pay's features 14.4 s against the gradients' 0.17 s at 100 classes, and
# the whole-gradient features 4.9 s against 0.09 s (1,900 rows, 3 checkpoints, one thread); drawn, 2.6 s
# and 0.9 s. 16 drawn labels paid about as well: on the LOCO of ``bench/attribution_lds.py`` (20 providers,
# some with flipped labels; tables of 25 and 60 classes, split seeds 0 / 1, logistic regression and the
# MLP) empirical / exact Fisher / 16 drawn averaged 0.786 / 0.841 / 0.827 over the eight for pay, 0.622 /
# 0.701 / 0.700 for the whole-gradient features (stop 74).
FISHER_SAMPLES = 16
_WORDS_PER_STEP = 4  # Philox4x64 gives four 64-bit words per counter step; a uniform double takes one
assert FISHER_SAMPLES % _WORDS_PER_STEP == 0  # so that each row's draws start at a counter step


def fisher_labels(
    p: torch.Tensor, *, seed: int, checkpoint: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(labels, weights) of each gradient pass whose weighted Grams add up to the Fisher of the rows'
    probabilities ``p`` [n, classes] (rows ``start .. start + n`` of the training set): every class ``c``
    at ``√p_c``, or, beyond ``FISHER_SAMPLES`` classes, that many labels per row drawn from ``p`` (the
    inverse of its cumulative sum at ``fisher_uniforms``), each at ``1/√FISHER_SAMPLES``."""
    n, classes = p.shape
    if classes <= FISHER_SAMPLES:
        for c in range(classes):
            yield torch.full((n,), c, dtype=torch.int64), p[:, c].sqrt()
        return
    cdf = p.double().cumsum(dim=1)
    uniforms = fisher_uniforms(seed, checkpoint, start, n) * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, uniforms).clamp_(max=classes - 1)
    weights = torch.full((n,), FISHER_SAMPLES**-0.5)
    for s in range(FISHER_SAMPLES):
        yield drawn[:, s].contiguous(), weights


def fisher_uniforms(seed: int, checkpoint: int, start: int, n: int) -> torch.Tensor:
    """``[n, FISHER_SAMPLES]`` float64 uniforms of rows ``start .. start + n``: a Philox stream keyed by the
    sha256 of (seed, checkpoint), its counter moved to the first row, so any slice of rows draws what the
    whole set draws there (numpy's counter-based generator; no per-row state)."""
    digest = hashlib.sha256(f"fisher/{seed}/{checkpoint}".encode()).digest()
    bits = np.random.Philox(key=int.from_bytes(digest[:16], "little"))
    bits.advance(start * FISHER_SAMPLES // _WORDS_PER_STEP)
    return torch.from_numpy(np.random.Generator(bits).random((n, FISHER_SAMPLES)))
