"""`ModelBundle` (a loaded model: module, spec, source, hash) and the weights' hash."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .architectures import count_parameters
from .spec import ModelSpec


def weights_sha256(model_or_state: nn.Module | dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes; same bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ModelBundle:
    """A loaded model: the module, its spec, where it came from, and its weights' hash."""

    model: nn.Module
    spec: ModelSpec
    source: str = ""
    format: str = "safetensors"
    history: list = field(default_factory=list)
    # The vendor's own object the weights came from (a scikit-learn estimator read from a `.skops`
    # file), so an edited copy can be written back as the same type; never serialised with the spec.
    origin: object = None

    @property
    def sha256(self) -> str:
        return weights_sha256(self.model)

    @property
    def n_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source else self.spec.provenance.get("name", "model")

    def copy(self) -> ModelBundle:
        """A deep copy: editing it never touches this bundle."""
        return ModelBundle(copy.deepcopy(self.model), copy.deepcopy(self.spec), self.source,
                           self.format, list(self.history), copy.deepcopy(self.origin))

    def to(self, device) -> ModelBundle:
        self.model.to(device)
        return self
