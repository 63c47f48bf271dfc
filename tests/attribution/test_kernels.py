"""Every kernel against torch.func per-example gradients: fp32, several targets, padded sequences.

The reference forms each example's gradient with ``vmap(grad)`` and takes the inner products
explicitly; the kernels never form them (except where that is their cheapest exact form).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from attribution.errors import UnsupportedModelError
from attribution.inrun import ModuleTaps, has_tied_parameters, scored_modules
from attribution.kernels import kernel_for
from attribution.kernels import linear as linear_kernel
from attribution.model_task import classification_loss, concat

from .kernel_models import CASES, Case, param_sums, step_scores

N_TRAIN, N_TARGETS = 7, 4


def per_example_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[n, P]``: each row's loss gradient over every trainable parameter (shared ones once)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def loss(p: dict, row: dict) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in row.items()}
        inputs = {k: v for k, v in one.items() if k != "labels"}
        logits = functional_call(model, p, (), inputs)
        return torch.nn.functional.cross_entropy(logits, one["labels"])

    g = vmap(grad(loss), in_dims=(None, 0))(params, batch)
    return torch.cat([g[k].flatten(1) for k in params], 1)


def kernel_parts(model: torch.nn.Module, train: dict, targets: dict):
    """The kernels' factored gradients of the train rows and the target rows (one pass of both)."""
    scored = scored_modules(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    with ModuleTaps(scored) as taps:
        rows = concat(train, targets)
        grads = taps.grads(classification_loss(model, rows).sum(), len(rows["labels"]))
    for p in trainable:
        p.requires_grad_(True)
    nb = len(train["labels"])
    return [g.rows(slice(0, nb)) for g in grads], [g.rows(slice(nb, None)) for g in grads]


def driver_gram_ok(case: Case, model: torch.nn.Module, gram_ok: bool) -> bool:
    """As the driver decides: tied parameters (a module's gradient alone is not the parameter's)
    rule the Gram form out; the summed-target form keeps the cross terms."""
    tied = has_tied_parameters(scored_modules(model))
    assert tied == case.tied
    return gram_ok and not tied


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm())


def _data(case: Case, seed: int):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return case.build(), case.batch(N_TRAIN, gen), case.batch(N_TARGETS, gen)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("gram_ok", [True, False], ids=["cheapest", "summed-target"])
def test_summed_scores_match_torch_func(case: Case, gram_ok: bool) -> None:
    model, train, targets = _data(case, 0)
    ref = per_example_grads(model, train) @ per_example_grads(model, targets).sum(0)
    tr, tv = kernel_parts(model, train, targets)
    pre = {id(p): 1.0 for p in model.parameters()}
    got = step_scores(tr, tv, pre, per_target=False, gram_ok=driver_gram_ok(case, model, gram_ok))
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("gram_ok", [True, False], ids=["gram", "one-pass-per-target"])
def test_per_target_scores_match_torch_func(case: Case, gram_ok: bool) -> None:
    model, train, targets = _data(case, 1)
    ref = per_example_grads(model, train) @ per_example_grads(model, targets).T
    tr, tv = kernel_parts(model, train, targets)
    pre = {id(p): 1.0 for p in model.parameters()}
    got = step_scores(tr, tv, pre, per_target=True, gram_ok=driver_gram_ok(case, model, gram_ok))
    assert got.shape == (N_TRAIN, N_TARGETS)
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preconditioned_scores_and_summed_gradient_match_torch_func(case: Case) -> None:
    """A diagonal preconditioner (Adam's) per parameter: ``⟨g_i, P ⊙ Σ_v g_v⟩``; and the batch sum."""
    model, train, targets = _data(case, 2)
    gen = torch.Generator().manual_seed(3)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    pre = {id(p): torch.rand(p.shape, generator=gen) + 0.5 for _, p in named}
    flat_pre = torch.cat([pre[id(p)].flatten() for _, p in named])
    g_train = per_example_grads(model, train)
    ref = g_train @ (flat_pre * per_example_grads(model, targets).sum(0))
    tr, tv = kernel_parts(model, train, targets)
    assert rel_err(step_scores(tr, tv, pre, per_target=False, gram_ok=False), ref) <= 1e-4
    sums = param_sums(tr)
    got_sum = torch.cat([sums[id(p)].flatten() for _, p in named])
    assert rel_err(got_sum, g_train.sum(0)) <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("known", [True, False], ids=["sgd-fused", "adam-after-sum"])
def test_summed_and_dot_match_torch_func(case: Case, known: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each module's batch sum and ``⟨g_i, P ⊙ Σ_v g_v⟩`` in one go: with the weighting known up front
    (SGD) or made from the sum (Adam), and where rows' gradients are formed, in chunks of 3 rows."""
    model, train, targets = _data(case, 4)
    gen = torch.Generator().manual_seed(5)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    pre = {id(p): torch.rand(p.shape, generator=gen) + 0.5 for _, p in named}
    g_train, g_targets = per_example_grads(model, train), per_example_grads(model, targets)
    ref = g_train @ (torch.cat([pre[id(p)].flatten() for _, p in named]) * g_targets.sum(0))
    tr, tv = kernel_parts(model, train, targets)
    target_sums = param_sums(tv)
    widest = max(p.numel() for _, p in named)
    monkeypatch.setitem(linear_kernel._CHUNK_BYTES, "cpu", 3 * widest * 4)
    decided, pays = [], linear_kernel.materializing_pays

    def spy(*args: object) -> bool:
        decided.append(pays(*args))
        return decided[-1]

    monkeypatch.setattr(linear_kernel, "materializing_pays", spy)
    sums, total, seen = {}, torch.zeros(N_TRAIN), []
    for g in tr:
        weighted = [target_sums[id(p)] * pre[id(p)] for p in g.params]

        def from_sum(s: list[torch.Tensor], weighted: list[torch.Tensor] = weighted) -> list[torch.Tensor]:
            seen[:] = s
            return weighted

        got_sums, dots = g.summed_and_dot(weighted if known else from_sum)
        if not known:  # the weighting was made from this module's own complete sum
            assert all(torch.equal(a.reshape(b.shape), b) for a, b in zip(seen, got_sums, strict=True))
        for p, part in zip(g.params, got_sums, strict=True):
            sums[id(p)] = part if id(p) not in sums else sums[id(p)] + part
        total += dots
    assert any(decided) == case.long
    assert rel_err(total, ref) <= 1e-4
    got_sum = torch.cat([sums[id(p)].flatten() for _, p in named])
    assert rel_err(got_sum, g_train.sum(0)) <= 1e-5


# ---------------------------------------------------------------- single modules, by autograd row by row


def loop_grads(module: torch.nn.Module, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, P]``: each row's gradient of ``⟨b_i, module(x_i)⟩``, by autograd one row at a time."""
    params = list(module.parameters())
    rows = []
    for i in range(len(x)):
        out = module(x[i : i + 1])
        gs = torch.autograd.grad((out.float() * b[i : i + 1]).sum(), params)
        rows.append(torch.cat([g.to_dense().flatten() for g in gs]))
    return torch.stack(rows)


def module_grads(module: torch.nn.Module, x: torch.Tensor, b: torch.Tensor):
    kernel = kernel_for("m", module)
    return kernel.grads(module, kernel.keep(module, (x,), {}), b)


@pytest.mark.parametrize("known", [True, False], ids=["sgd-fused", "adam-after-sum"])
def test_bf16_rows_formed_for_summed_and_dot_follow_fp32(known: bool) -> None:
    """Under autocast (bf16 inputs and output gradients) the formed rows' sums and dots are fp32 and
    follow the fp32 ones as closely as bf16 inputs allow."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(16, 12)
    x, b = torch.randn(5, 48, 16, generator=gen), torch.randn(5, 48, 12, generator=gen)
    w = [torch.randn(12, 16, generator=gen), torch.randn(12, generator=gen)]
    ref = loop_grads(linear, x, b)
    g = module_grads(linear, x.bfloat16(), b.bfloat16())
    sums, dots = g.summed_and_dot(w if known else lambda s: w)
    assert dots.dtype == sums[0].dtype == torch.float32
    assert rel_err(dots, ref @ torch.cat([w[0].flatten(), w[1]])) <= 1e-2
    assert rel_err(torch.cat([sums[0].flatten(), sums[1]]), ref.sum(0)) <= 1e-2


def test_sparse_embedding_is_the_dense_one() -> None:
    """``sparse=True`` changes how torch stores the gradient, not its value."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(9, 4, padding_idx=0, sparse=True)
    ids = torch.randint(0, 9, (5, 6), generator=gen)
    b = torch.randn(5, 6, 4, generator=gen)
    ref = loop_grads(emb, ids, b)
    g = module_grads(emb, ids, b)
    assert rel_err(g.summed()[0].flatten(), ref.sum(0)) <= 1e-6
    assert rel_err(g.gram(g), ref @ ref.T) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rms_norm_default_eps_is_torchs(dtype: torch.dtype) -> None:
    """``eps=None``: the fp32 epsilon for fp32 and bf16 inputs alike (inputs small enough to show it)."""
    gen = torch.Generator().manual_seed(0)
    norm = torch.nn.RMSNorm(8)
    x = (torch.randn(4, 3, 8, generator=gen) * 3e-4).to(dtype)
    b = torch.randn(4, 3, 8, generator=gen)
    ref = loop_grads(norm, x, b)
    g = module_grads(norm, x, b)
    assert rel_err(g.dot([torch.ones(8)]), ref.sum(1)) <= (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize(
    "option", [{"max_norm": 1.0}, {"scale_grad_by_freq": True}], ids=["max_norm", "scale_grad_by_freq"]
)
def test_embedding_options_that_couple_rows_are_refused_by_name(option: dict) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3, **option), torch.nn.Linear(3, 2))
    with pytest.raises(UnsupportedModelError, match=rf"'0' \(Embedding\): {next(iter(option))}"):
        scored_modules(model)
