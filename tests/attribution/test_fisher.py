"""The Fisher's labels: every class at its weight up to 16 classes, draws from the model's own predictions
beyond, keyed by row so that chunks and shards draw what the whole set draws; and the whole-gradient
features' drawn Fisher averages to the exact one."""

from __future__ import annotations

import torch

from attribution.fisher import FISHER_SAMPLES, fisher_labels, fisher_uniforms
from attribution.projector import Projector
from attribution.task import ModelSpec, scored_layers
from attribution.trak import FisherDraws, chunk_terms, frozen_model, projected_grads


def test_fisher_labels_are_every_class_at_its_weight_or_draws_from_the_predictions_beyond_the_limit():
    """Up to ``FISHER_SAMPLES`` classes every class is one pass at ``√p_c``; beyond, the passes are labels
    drawn from ``p`` at ``1/√S``, the same for the same seed, whose weighted counts average to ``p``."""
    gen = torch.Generator().manual_seed(0)
    few = torch.softmax(torch.randn(50, 6, generator=gen), 1)
    passes = list(fisher_labels(few, seed=1, checkpoint=0))
    assert [labels.tolist() for labels, _ in passes] == [[c] * 50 for c in range(6)]
    assert all(torch.equal(w, few[:, c].sqrt()) for c, (_, w) in enumerate(passes))
    many = torch.softmax(2 * torch.randn(50, 40, generator=gen), 1)
    counts = torch.zeros(50, 40, dtype=torch.float64)
    for r in range(200):
        passes = list(fisher_labels(many, seed=r, checkpoint=0))
        assert len(passes) == FISHER_SAMPLES and all(torch.all(w == FISHER_SAMPLES**-0.5) for _, w in passes)
        for labels, w in passes:
            counts[torch.arange(50), labels] += float(w[0]) ** 2
    again = [labels for labels, _ in fisher_labels(many, seed=199, checkpoint=0)]
    assert all(torch.equal(a, b) for a, b in zip(again, [lab for lab, _ in passes], strict=True))
    other = [labels for labels, _ in fisher_labels(many, seed=199, checkpoint=1)]
    assert not all(torch.equal(a, b) for a, b in zip(again, other, strict=True))
    assert float((counts / 200 - many.double()).abs().max()) < 0.03  # sd per cell <= 0.0089 (p = 0.5)


def test_a_rows_draws_do_not_depend_on_the_chunk_that_holds_it():
    """Rows ``start ..`` draw what the whole set draws at those rows, at any start (Philox's counter moved to
    the row): shards cut anywhere draw the labels the unsharded features draw."""
    whole = fisher_uniforms(3, 1, 0, 100)
    assert whole.shape == (100, FISHER_SAMPLES) and float(whole.min()) >= 0 and float(whole.max()) < 1
    for start in (1, 3, 37, 99):
        assert torch.equal(fisher_uniforms(3, 1, start, 100 - start), whole[start:])
    p = torch.softmax(torch.randn(100, 30, generator=torch.Generator().manual_seed(4)), 1)
    drawn = [labels for labels, _ in fisher_labels(p, seed=3, checkpoint=1)]
    tail = [labels for labels, _ in fisher_labels(p[37:], seed=3, checkpoint=1, start=37)]
    assert all(torch.equal(a[37:], b) for a, b in zip(drawn, tail, strict=True))


def test_the_whole_gradient_fisher_of_many_classes_averages_to_the_exact_one():
    """24 classes: a chunk's Gram term under drawn labels is an estimate of ``Σ_c p_c φ_cφ_cᵀ`` (summed here
    class by class from ``projected_grads`` at every label); the mean of 30 seeds' draws comes near it."""
    spec = ModelSpec((5, 7, 24))
    model, layers = frozen_model(spec, spec.build(2).state_dict())
    projector = Projector.build(scored_layers(spec.build(0)), 64, 0)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 24, (40,), generator=gen)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    exact = sum((phi.T @ phi).double() for phi in (
        p[:, c, None].sqrt() * projected_grads(model, layers, projector, x, torch.full((40,), c))
        for c in range(24)))
    grams = [chunk_terms(model, layers, projector, x, y, "fisher", FisherDraws(seed, 0, 0))[1]
             for seed in range(30)]
    spectrum = torch.linalg.eigvalsh
    err = [float((spectrum(g) - spectrum(exact)).norm() / spectrum(exact).norm())
           for g in (grams[0], torch.stack(grams).mean(0))]
    assert err[1] < 0.04 and err[1] < err[0] / 3, err  # one draw 0.077 off, the mean of 30: 0.008
