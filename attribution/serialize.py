"""Model <-> bytes, deterministic so the same weights pin to the same CID.

safetensors: a JSON header with sorted keys, then raw little-endian tensors; no pickle, no
timestamps. The ``ModelSpec`` rides in the header metadata so serving rebuilds the module.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load, save
from torch import nn

from .errors import AttributionError
from .task import ModelSpec

_SPEC_KEY = "caravan.model_spec"


def model_to_bytes(model: nn.Module, spec: ModelSpec) -> bytes:
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={_SPEC_KEY: spec.to_json()})


def model_from_bytes(data: bytes) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the module (eval mode) and its spec from ``model_to_bytes`` output."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        spec = ModelSpec.from_json(json.loads(data[8 : 8 + n])["__metadata__"][_SPEC_KEY])
    except (struct.error, ValueError, KeyError, TypeError) as err:
        raise AttributionError(f"not a Caravan model file (safetensors with a model spec): {err}") from err
    model = spec.build(0)
    model.load_state_dict(load(data))
    return model.eval(), spec
