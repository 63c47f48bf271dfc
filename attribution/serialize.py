"""Model and TRAK features <-> bytes, deterministic so the same content pins to the same CID.

safetensors: a JSON header, then raw little-endian tensors; no pickle, no timestamps. Our own
facts (the ``ModelSpec``, projection seed, sizes) ride in ONE header-metadata entry as
canonical JSON, so the header's bytes never depend on a hash map's iteration order.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch
from safetensors.torch import load, save
from torch import nn

from .errors import AttributionError
from .projector import LayerProjection, Projector
from .task import ModelSpec, ModuleSpec

_SPEC_KEY = "caravan.model_spec"
_FEATURES_KEY = "caravan.trak_features"
FEATURES_FORMAT = 1


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _metadata(data: bytes, key: str, what: str) -> str:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + n])["__metadata__"][key]
    except (struct.error, ValueError, KeyError, TypeError) as err:
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
    from .trak import CheckpointFeatures, FeatureStore, TrakFeatures, frozen_model

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
        prefix = f"checkpoint.{j}.state."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model, scored = frozen_model(spec, state)
        store = FeatureStore(spill_bytes)
        store.append(tensors[f"checkpoint.{j}.features"].numpy())
        kernel_inv = tensors[f"checkpoint.{j}.kernel_inv"].numpy()
        checkpoints.append(CheckpointFeatures(model, scored, store, kernel_inv))
    return TrakFeatures(spec, Projector(layers, meta["k"], meta["seed"]), checkpoints, meta["n_train"])
