"""The attribution task: which model, how it trains, and which layers we can score exactly.

One object carries everything a method needs (model, loss, optimizer settings), as in
dattri's ``AttributionTask``; the methods never see Dagster or any other room.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from .errors import DeviceUnavailableError, UnsupportedModelError, UnsupportedOptimizerError

# Leaves without parameters that act on each example independently.
ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus,
    nn.Identity, nn.Flatten,
)
# Leaves with parameters whose per-example gradients ghost.py computes exactly.
SCORED = (nn.Linear, nn.LayerNorm)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def exact_cuda_fp32() -> None:
    """fp32 on CUDA as the CPU computes it, and repeatable: no TF32 (cuDNN rounds a convolution's fp32
    inputs to 10-bit mantissas by default), cuDNN's deterministic algorithms chosen without benchmarking,
    and torch's deterministic kernels where it has them (an embedding's gradient is otherwise summed by
    atomics, in any order: the text recipe moved by ~1e-8 between two runs on an H200; ops without one
    warn), attention by its plain kernel (the memory-efficient one sums its gradient in any order).
    cuBLAS needs its workspace fixed for that, before its first call. Set for the whole process,
    as torch's flags are: a run on a GPU then repeats bit for bit there and a CPU replay starts from the
    same arithmetic (bench/replay_devices.py). A ``precision="bf16"`` run, which trades exactness for
    speed, is left to torch's defaults."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.use_deterministic_algorithms(True, warn_only=True)


_NUDGE: ContextVar[int | None] = ContextVar("step_nudge", default=None)


# How many units in the last place a nudge moves a weight trained by AdamW (``nudge_units``).
ADAMW_NUDGE_UNITS = 256


@contextmanager
def nudged_steps(salt: int) -> Iterator[None]:
    """Inside this block every training step leaves each weight it trains some units in the last place
    up or down (``nudge_units``: one under SGD, more under AdamW), as drawn from ``salt`` and the step's
    number (``last_bits``, which every training loop calls): the last-bit differences another
    platform's rounding makes, at every weight and at every step. Replay's second retrain runs so, to
    see how far training carries such differences on the auditor's machine (its band): another thread
    count alone repeats a run bit for bit on a GPU's deterministic kernels, and the MLP's on the CPU
    (its reductions are not split). Nudged at the start alone, how far a run moved varied tenfold with
    the salt (on ATen's unvectorized kernels the image recipe's largest score moved by 3.5e-5 to 6.0e-4
    over five salts), so one sample could not bound another platform's rounding (a run on its AVX-512
    kernels landed up to 3.6x such a spread away); nudged one unit at every step, as that rounding is,
    over six salts on each kernel set the other set's run landed at most 1.5x the spread away (the
    left-out values, means of few retrains: 3.0x, from 4.0x; against their pooled noise,
    ``value_noise``, at most 1.4 standard errors) (``bench/replay_devices.py``, before ``nudge_units``).
    The block is this thread's (a context variable): training elsewhere is untouched."""
    token = _NUDGE.set(salt)
    try:
        yield
    finally:
        _NUDGE.reset(token)


def nudge_units(config: TrainConfig) -> int:
    """How many units in the last place ``nudged_steps`` moves each weight of a run trained under
    ``config`` by, at every step: one under SGD, ``ADAMW_NUDGE_UNITS`` under AdamW. SGD's update follows
    the gradient, so a difference carries in proportion to its size and one unit is what another
    platform's rounding leaves. AdamW's does not (m / sqrt(v)): a gradient near zero, whose sign
    rounding decides, moves its weight by the learning rate either way, so a run parts from another only
    where such a choice (or a ReLU's, a max-pool's) flips, and by how far that flip carries, not by how
    large the difference was. One unit then left the band to chance: on the end-to-end test's 120
    grayscale shapes (image recipe, 12 data seeds) a two-thread run landed 1.5e-3 to 2e-1 of the largest
    score from a one-thread one in 10 seeds, while single-unit nudges stayed within rounding (under 1e-4
    of it) in 9 of 24 salts, and replay's band (3x the gap one salt left) fell short of the two-thread
    run in 4 of 12 seeds. At 256 units every salt parts and stands where the spread stops growing (4096
    units moved runs as far), and the band held the two-thread run in all 12 seeds (scores, sums, values,
    each seed's value), at the price of a wider band: ``docs/replay.md``, "One unit is not enough under
    AdamW"."""
    return ADAMW_NUDGE_UNITS if config.optimizer == "adamw" else 1


def last_bits(params: Iterable[nn.Parameter], step: int, units: int = 1) -> None:
    """After training step ``step``: inside ``nudged_steps``, each of ``params`` ``units`` units in the
    last place (its own, exactly) up or down; elsewhere nothing."""
    salt = _NUDGE.get()
    if salt is None:
        return
    # the CPU generator keeps 32 bits of a seed: hashed, so no two (salt, step) pairs share one by design
    seed = int.from_bytes(hashlib.blake2b(f"{salt}:{step}".encode(), digest_size=4).digest(), "little")
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for p in params:
            if p.device not in generators:
                generators[p.device] = torch.Generator(p.device).manual_seed(seed)
            g = generators[p.device]
            up = torch.randint(0, 2, p.shape, generator=g, device=p.device, dtype=torch.bool)
            unit = torch.nextafter(p, torch.where(up, torch.inf, -torch.inf).to(p.dtype)) - p  # exact
            p.add_(unit * units)


@dataclass(frozen=True)
class ModelSpec:
    """A feed-forward classifier that can be rebuilt from bytes (logistic regression: no hidden layer)."""

    sizes: tuple[int, ...]
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    layer_norm: bool = False

    def build(self, seed: int) -> nn.Module:
        """Fresh model with weights drawn from ``seed`` (independent of the global RNG)."""
        if len(self.sizes) < 2:
            raise UnsupportedModelError(f"ModelSpec.sizes needs input and output sizes, got {self.sizes}")
        devices = torch.random.fork_rng(devices=[])
        with devices:
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            for i, (d_in, d_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
                layers.append(nn.Linear(d_in, d_out))
                if i < len(self.sizes) - 2:
                    if self.layer_norm:
                        layers.append(nn.LayerNorm(d_out))
                    layers.append(_ACTIVATIONS[self.activation]())
            return nn.Sequential(*layers)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): one spec, one text, in run ids and model bytes."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec ``to_json`` wrote, ``sizes`` a tuple again."""
        raw = json.loads(text)
        return cls(sizes=tuple(raw["sizes"]), activation=raw["activation"], layer_norm=raw["layer_norm"])


@dataclass(frozen=True)
class ModuleSpec:
    """Any ``nn.Module`` made by ``factory()`` from nn.Linear/nn.LayerNorm and elementwise activations.

    ``forward`` must treat the examples of a batch independently and call each scored layer once
    (the trainer refuses a layer called twice). ``name`` identifies the architecture in run ids
    and model bytes; loading such bytes needs the same spec (``model_from_bytes(data, spec)``).
    """

    factory: Callable[[], nn.Module]
    n_features: int
    n_classes: int
    name: str

    @property
    def sizes(self) -> tuple[int, int]:
        """``(n_features, n_classes)``: the two ends of a ``ModelSpec``'s ``sizes``, which callers read."""
        return (self.n_features, self.n_classes)

    def build(self, seed: int) -> nn.Module:
        """Fresh ``factory()`` model with weights drawn from ``seed`` (the global CPU RNG left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.factory()

    def to_json(self) -> str:
        """Canonical JSON of ``name`` and ``sizes`` (not ``factory``): the architecture in run ids."""
        doc = {"module": self.name, "sizes": list(self.sizes)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of an attributed run. SGD is the default because its update is lr * gradient.

    ``per_target`` keeps one score column per target (pairwise ghost form everywhere) instead
    of one score against the mean target loss (cheapest exact form per layer). A ``linear``
    schedule decays the rate to zero over the run, so training settles at the optimum of a
    convex model and retraining is reproducible. ``device`` is where the model, the batch and the
    ghost products live (``auto``: CUDA when present); the trained model and its checkpoints
    come back on the CPU. The rest serve the ``ModelTask`` driver (``attribution.inrun``):
    ``optimizer="adamw"`` (with ``adam_betas``, ``adam_eps``) is scored through Adam's own update;
    ``precision="bf16"`` autocasts the forward pass on a GPU (scores still sum in fp32);
    ``target_every=k`` recomputes the target gradient every k steps and reuses it in between: an
    approximation (1, the default, is exact) that drops the target rows from most passes.
    ``target_pass="joint"`` lets the target rows ride in the batch's pass (fastest); ``"separate"``
    gives them a pass of their own first, so activations are held for the batch's rows only
    (peak memory near plain training's, for large models). ``trak_k``: TRAK's projection, dims of the
    whole gradient for the tabular features, of each layer for ``ModelTask`` models. ``trak_kernel``, which
    every TRAK feature build reads unless told otherwise: the gradients' Gram at the given labels
    (``"empirical"``, the default: the text, image and Hugging Face recipes') or the Fisher of the model's
    own predictions (``"fisher"``, the MLP recipe's; one gradient pass per class, or 16 of drawn labels);
    ``docs/attribution.md`` has the figures each was chosen by. TRAK's ridge:
    for the tabular features (``attribution.trak``) early stopping's, n over the summed learning rates of
    the steps taken (``trak.stopping_ridge``), plus ``trak_damping`` times the kernel's mean diagonal, which
    keeps it invertible; ``trak_model_damping`` times the mean nonzero eigenvalue of each
    layer's block for ``ModelTask`` models (``attribution.trak_model``, networks stopped early: its
    ``block_inverse`` says why so much more). ``patience`` (any recipe, the MLP's too) stops early: the mean
    target loss is measured after every epoch, training ends once ``patience`` epochs pass without a
    new lowest, and the run is that of its best epoch (model, scores, checkpoints), so ``epochs`` is a
    ceiling. A fixed count overtrains: removing data then shortens training and lowers the target
    loss, and every contributor looks harmful (``trainer.EarlyStop``). ``spill_bytes``: what TRAK's
    feature rows and early stopping's epoch states may hold in RAM; past it they go to temporary files.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    lr_schedule: Literal["constant", "linear"] = "constant"
    weight_decay: float = 0.0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    n_checkpoints: int = 3
    trak_k: int = 512
    trak_damping: float = 1e-3
    trak_model_damping: float = 0.1
    trak_kernel: Literal["fisher", "empirical"] = "empirical"
    per_target: bool = False
    spill_bytes: int = 256 * 2**20
    chunk_rows: int = 4096
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    precision: Literal["fp32", "bf16"] = "fp32"
    target_every: int = 1
    target_pass: Literal["joint", "separate"] = "joint"
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise UnsupportedOptimizerError(
                f"optimizer {self.optimizer!r} is not supported for per-step attribution: no score formula "
                "covers its update, and the SGD formula would be silently wrong; use 'sgd' or 'adamw'"
            )
        if self.target_pass not in ("joint", "separate"):
            raise ValueError(
                f"TrainConfig.target_pass must be 'joint' or 'separate', got {self.target_pass!r}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"TrainConfig.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        b1, b2 = self.adam_betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or not self.adam_eps > 0:
            raise ValueError(f"TrainConfig.adam_betas must lie in [0, 1) and adam_eps be > 0, got "
                             f"{self.adam_betas}, {self.adam_eps}")
        if self.target_every > 1 and self.per_target:
            raise ValueError("TrainConfig.target_every > 1 (reused target gradients) needs per_target=False")
        for name in ("epochs", "batch_size", "n_checkpoints", "trak_k", "chunk_rows", "target_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 epoch (None: train every epoch), got "
                             f"{self.patience}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(
                f"TrainConfig.lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.lr must be > 0 and weight_decay >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def torch_device(self) -> torch.device:
        """The device training runs on; ``cuda`` on a machine without one is a ``DeviceUnavailableError``
        (the trainer asks before any training starts). On CUDA, fp32 is kept exact (`exact_cuda_fp32`)."""
        if self.device == "cpu":
            return torch.device("cpu")
        if torch.cuda.is_available():
            if self.precision == "fp32":
                exact_cuda_fp32()
            return torch.device("cuda")
        if self.device == "auto":
            return torch.device("cpu")
        raise DeviceUnavailableError(
            "TrainConfig.device='cuda' but torch sees no CUDA device here (torch.cuda.is_available() is "
            f"False, torch {torch.__version__}); use device='auto' to fall back to the CPU, or 'cpu'"
        )

    def run_settings(self) -> dict[str, object]:
        """The settings that define a run's numbers (its id hashes them). The device counts only off
        the CPU, and settings added later only when they differ from their defaults, so runs made
        before they existed keep their ids."""
        later = {"adam_betas": (0.9, 0.999), "adam_eps": 1e-8, "precision": "fp32", "target_every": 1,
                 "target_pass": "joint", "trak_model_damping": 0.1, "patience": None}
        settings = {k: v for k, v in vars(self).items()
                    if k != "device" and not (k in later and v == later[k])}
        device = self.torch_device()
        if device.type != "cpu":
            settings["device"] = device.type
        return settings

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1.0 - step / total_steps)


@dataclass(frozen=True)
class AttributionTask:
    """Model + loss (cross-entropy over class indices) + training config."""

    spec: ModelSpec | ModuleSpec
    config: TrainConfig = field(default_factory=TrainConfig)

    @property
    def n_classes(self) -> int:
        """The model's output width, ``spec.sizes[-1]``: labels are class indices below it."""
        return self.spec.sizes[-1]

    @property
    def n_features(self) -> int:
        """The width of each input row the model takes, ``spec.sizes[0]``."""
        return self.spec.sizes[0]


def scored_layers(model: nn.Module) -> list[nn.Module]:
    """The layers with parameters, in forward order; refuses anything we cannot score exactly.

    BatchNorm is refused because it couples the examples of a batch: a per-example gradient
    then depends on the whole batch and the ghost identity no longer holds.
    """
    layers: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, _BATCHNORM):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) couples the examples of a batch, so per-example "
                "attribution is undefined; use LayerNorm or no normalization"
            )
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.LayerNorm):
            _check_layer_norm(name, module)
            if own:
                layers.append(module)
        elif isinstance(module, SCORED):
            layers.append(module)
        elif own:
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) has parameters but is not nn.Linear or "
                "nn.LayerNorm; its per-example gradients are not supported"
            )
        elif not list(module.children()) and not isinstance(module, ELEMENTWISE):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) is not an elementwise activation; supported: "
                + ", ".join(c.__name__ for c in ELEMENTWISE)
            )
    if not layers:
        raise UnsupportedModelError("the model has no nn.Linear layer to attribute")
    return layers


def _check_layer_norm(name: str, module: nn.LayerNorm) -> None:
    """One trailing dim (its per-example gradient is then a flat vector per example)."""
    if len(module.normalized_shape) != 1:
        raise UnsupportedModelError(f"layer {name!r}: LayerNorm must normalize one trailing dim")
