"""Model and TRAK features <-> bytes, deterministic so the same content pins to the same CID.

safetensors: a JSON header, then raw little-endian tensors; no pickle, no timestamps. Our own
facts (the ``ModelSpec``, projection seed, sizes) ride in ONE header-metadata entry as
canonical JSON, so the header's bytes never depend on a hash map's iteration order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from .errors import AttributionError
from .model_task import ModelTask
from .projector import LayerProjection, Projector
from .task import ModelSpec, ModuleSpec

if TYPE_CHECKING:
    from .trak_model import ModelTrakFeatures

_SPEC_KEY = "caravan.model_spec"
_FEATURES_KEY = "caravan.trak_features"
FEATURES_FORMAT = 1


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (its header: an 8-byte little-endian length, then JSON);
    ValueError where ``data`` is not one."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})
    except (struct.error, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"not a safetensors file: {err}") from err


def tensors_digest(named: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """The sha256 (hex) of named tensors: each name, dtype, shape and bytes, in name order. A training
    record names its encoded inputs, initial weights and checkpoints by it, so that a replay which parts
    from the run says where."""
    h = hashlib.sha256()
    for name in sorted(named):
        value = named[name]
        if isinstance(value, torch.Tensor):  # bfloat16 has no numpy type: its bits, as int16
            value = value.detach().cpu()
            value = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
        a = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def checkpoints_of_features(data: bytes) -> list[dict[str, torch.Tensor]]:
    """The checkpoints' state dicts a features file holds (``features_to_bytes``,
    ``model_features_to_bytes``: ``checkpoint.{j}.state.{name}``), in order; none where ``data`` is not a
    safetensors file. Replay checks a stored model and features through them."""
    try:
        tensors = load(data)
    except SafetensorError:
        return []
    states: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = key.split(".", 3)
        if len(parts) == 4 and parts[0] == "checkpoint" and parts[2] == "state" and parts[1].isdigit():
            states.setdefault(int(parts[1]), {})[parts[3]] = value
    return [states[j] for j in sorted(states)] if sorted(states) == list(range(len(states))) else []


def tensor_gaps(a: bytes, b: bytes, *, relative: bool = False) -> dict[str, float] | None:
    """Each tensor's largest absolute gap between two safetensors files (``relative``: over ``a``'s largest
    entry); None where they hold other names or shapes (or either is not one)."""
    try:
        ta, tb = load(a), load(b)
    except SafetensorError:
        return None
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return None
    gaps = {k: float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0 for k in ta}
    if relative:
        gaps = {k: g / (float(ta[k].double().abs().max()) or 1.0) if g else 0.0 for k, g in gaps.items()}
    return gaps


def _metadata(data: bytes, key: str, what: str) -> str:
    try:
        return safetensors_metadata(data)[key]
    except (ValueError, KeyError) as err:
        raise AttributionError(
            f"not a Caravan {what} file (safetensors with {key!r} metadata): {err}"
        ) from err


def _spec(text: str, given: ModuleSpec | None) -> ModelSpec | ModuleSpec:
    """The stored ``ModelSpec``, or the caller's ``ModuleSpec`` if it names the same architecture."""
    if given is None:
        if "module" in json.loads(text):
            raise AttributionError(f"these bytes hold a custom module {text}; pass its ModuleSpec as spec=")
        return ModelSpec.from_json(text)
    if given.to_json() != text:
        raise AttributionError(f"the bytes hold {text}, not the given spec {given.to_json()}")
    return given


def model_to_bytes(model: nn.Module, spec: ModelSpec | ModuleSpec) -> bytes:
    """The state dict as fp32 safetensors bytes, ``spec``'s JSON in the metadata for ``model_from_bytes``."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={_SPEC_KEY: spec.to_json()})


def model_from_bytes(data: bytes, spec: ModuleSpec | None = None) -> tuple[nn.Module, ModelSpec | ModuleSpec]:
    """Rebuild the module (eval mode) and its spec from ``model_to_bytes`` output."""
    spec = _spec(_metadata(data, _SPEC_KEY, "model"), spec)
    model = spec.build(0)
    model.load_state_dict(load(data))
    return model.eval(), spec


def features_to_bytes(features) -> bytes:
    """Everything ``attribute_query`` needs (checkpoints, projection, features, kernel inverses).

    The features are read chunk by chunk from their store (memory maps stay on disk until
    here), but the result is one bytes object: size it as ``checkpoints × n_train × k × 4``.
    """
    tensors: dict[str, torch.Tensor] = {}
    for i, lp in enumerate(features.projector.layers):
        for side, mat in (("q", lp.q), ("r", lp.r)):
            if mat is not None:
                tensors[f"projector.{i}.{side}"] = mat.contiguous()
    for j, ck in enumerate(features.checkpoints):
        for name, value in ck.model.state_dict().items():
            tensors[f"checkpoint.{j}.state.{name}"] = value.detach().to(torch.float32).contiguous()
        phi = np.concatenate([np.asarray(c, dtype=np.float32) for c in ck.store.chunks])
        tensors[f"checkpoint.{j}.features"] = torch.from_numpy(phi)
        tensors[f"checkpoint.{j}.kernel_inv"] = torch.from_numpy(np.ascontiguousarray(ck.kernel_inv))
    meta = {
        "format": FEATURES_FORMAT,
        "spec": features.spec.to_json(),
        "k": features.projector.k,
        "seed": features.projector.seed,
        "n_layers": len(features.projector.layers),
        "n_checkpoints": len(features.checkpoints),
        "n_train": features.n_train,
    }
    return save(tensors, metadata={_FEATURES_KEY: _canonical(meta)})


def features_from_bytes(data: bytes, spec: ModuleSpec | None = None, *, spill_bytes: int = 256 * 2**20):
    """Rebuild ``TrakFeatures`` from ``features_to_bytes`` output (as loaded from a CID)."""
    from .trak import CheckpointFeatures, TrakFeatures, frozen_model

    meta = json.loads(_metadata(data, _FEATURES_KEY, "TRAK features"))
    if meta.get("format") != FEATURES_FORMAT:
        raise AttributionError(
            f"TRAK features format {meta.get('format')} is not {FEATURES_FORMAT}; re-export them"
        )
    stored = meta["spec"]  # a JSON string; the first exports of format 1 held it as an object
    spec = _spec(stored if isinstance(stored, str) else _canonical(stored), spec)
    tensors = load(data)
    layers = tuple(
        LayerProjection(tensors.get(f"projector.{i}.q"), tensors.get(f"projector.{i}.r"))
        for i in range(meta["n_layers"])
    )
    checkpoints = []
    for j in range(meta["n_checkpoints"]):
        state, store = _checkpoint(tensors, j, spill_bytes)
        model, scored = frozen_model(spec, state)
        kernel_inv = tensors[f"checkpoint.{j}.kernel_inv"].numpy()
        checkpoints.append(CheckpointFeatures(model, scored, store, kernel_inv))
    return TrakFeatures(spec, Projector(layers, meta["k"], meta["seed"]), checkpoints, meta["n_train"])


_TASK_KEY = "caravan.model_task"
_MODEL_FEATURES_KEY = "caravan.model_trak_features"
MODEL_FEATURES_FORMAT = 3  # 3: each layer in its own columns, the kernel inverse by layer blocks


def _same_task(stored: str, task: ModelTask, what: str) -> None:
    if stored != task.to_json():
        raise AttributionError(f"these {what} bytes are for {stored}, not the given task {task.to_json()}")


def task_model_to_bytes(model: nn.Module, task: ModelTask) -> bytes:
    """A ``ModelTask`` model's weights, with the task's architecture (``task.to_json()``) in the header."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={_TASK_KEY: task.to_json()})


def task_model_from_bytes(data: bytes, task: ModelTask) -> nn.Module:
    """The model (eval mode) from ``task_model_to_bytes`` output; ``task`` (rebuilt from the stored
    encoding) must name the same architecture."""
    _same_task(_metadata(data, _TASK_KEY, "model"), task, "model")
    model = task.fresh(0)
    model.load_state_dict(load(data))
    return model.eval()


def model_features_to_bytes(features: ModelTrakFeatures) -> bytes:
    """``ModelTrakFeatures`` (checkpoint weights, projected training gradients, kernel inverses, and the
    Fisher where pay solves with it); the projections are seeded, so their seeds and sizes are stored,
    not their matrices."""
    tensors: dict[str, torch.Tensor] = {}
    for j, ck in enumerate(features.checkpoints):
        for name, value in ck.model.state_dict().items():
            tensors[f"checkpoint.{j}.state.{name}"] = value.detach().to("cpu", torch.float32).contiguous()
        tensors[f"checkpoint.{j}.features"] = torch.from_numpy(features.features(j))
        for b, block in enumerate(ck.kernel_inv.blocks):
            tensors[f"checkpoint.{j}.kernel_inv.{b}"] = torch.from_numpy(np.ascontiguousarray(block))
        if ck.gram is not None:  # the Fisher pay solves with (``fisher_gram``)
            tensors[f"checkpoint.{j}.gram"] = ck.gram.contiguous()
    meta = {
        "format": MODEL_FEATURES_FORMAT,
        "task": features.task.to_json(),
        "projectors": [[[p.k, p.seed, p.index, p.distribution, p.checkpoint, p.offset, p.exact]
                        for p in ck.projectors] for ck in features.checkpoints],
        "n_checkpoints": len(features.checkpoints),
        "n_train": features.n_train,
        **({"epochs": features.epochs} if features.epochs is not None else {}),  # the MLP's stopping ridge
    }
    return save(tensors, metadata={_MODEL_FEATURES_KEY: _canonical(meta)})


def model_features_from_bytes(data: bytes, task: ModelTask, *, spill_bytes: int = 256 * 2**20
                              ) -> ModelTrakFeatures:
    """``ModelTrakFeatures`` from ``model_features_to_bytes`` output, for ``task`` (the same architecture)."""
    from .kernels.projection import LayerProjector
    from .trak_model import BlockInverse, ModelCheckpointFeatures, ModelTrakFeatures, frozen_task_model

    meta = json.loads(_metadata(data, _MODEL_FEATURES_KEY, "TRAK features"))
    if meta.get("format") != MODEL_FEATURES_FORMAT:
        raise AttributionError(f"TRAK features format {meta.get('format')} is not {MODEL_FEATURES_FORMAT}")
    _same_task(meta["task"], task, "TRAK features")
    tensors = load(data)
    checkpoints = []
    for j in range(meta["n_checkpoints"]):
        state, store = _checkpoint(tensors, j, spill_bytes)
        model, scored = frozen_task_model(task, state)
        projectors = [LayerProjector(*row) for row in meta["projectors"][j]]
        blocks = [tensors[f"checkpoint.{j}.kernel_inv.{b}"].numpy() for b in range(len(projectors))]
        kernel_inv = BlockInverse(blocks, [p.offset for p in projectors])
        checkpoints.append(ModelCheckpointFeatures(model, scored, projectors, store, kernel_inv,
                                                   tensors.get(f"checkpoint.{j}.gram")))
    return ModelTrakFeatures(task, checkpoints, meta["n_train"], checkpoints[0].kernel_inv.shape[0],
                             meta.get("epochs"))


def _checkpoint(tensors: dict[str, torch.Tensor], j: int, spill_bytes: int):
    """Checkpoint `j`'s stored state dict and its feature store."""
    from .trak import FeatureStore

    prefix = f"checkpoint.{j}.state."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    store = FeatureStore(spill_bytes)
    store.append(tensors[f"checkpoint.{j}.features"].numpy())
    return state, store
