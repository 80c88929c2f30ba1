"""Adapters that change inference and ride in the model file: a key-value codebook at one Linear layer.

`CodebookLinear` is an `nn.Linear` with a codebook (GRACE, Hartvigsen et al. 2023): keys (inputs of
the layer), values (outputs to use instead), radii and the label each entry asks for. An input whose
nearest key lies within that key's radius gets the key's value as the layer's output; every other
input goes through the layer unchanged. An empty codebook is the plain layer: the same state dict
(its tensors are left out), so the same sha256.

In a model file the codebook's tensors are in the weights (`out.codebook_keys`, ...) and the spec
lists the adapter (`"adapters": [{"type": "codebook", "layer": "out", "radius": 3.2}]`);
`build_model(spec, state)` rebuilds the architecture with the adapters sized from the weights. ONNX
files cannot hold a codebook the auditor could read back (`check_adapters_saveable`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import AuditorError
from .architectures import build_architecture

ADAPTER_TYPES = ("codebook",)
CODEBOOK_TENSORS = ("codebook_keys", "codebook_values", "codebook_radii", "codebook_labels")


class CodebookLinear(nn.Linear):
    """A Linear layer whose output is replaced by a stored value near a stored key (see the module doc)."""

    adapter_tensors = CODEBOOK_TENSORS  # tensors an edit may add or resize (checked by `check_editor`)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, entries: int = 0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        kw = {"device": device}
        self.register_buffer("codebook_keys", torch.zeros(entries, in_features, dtype=dtype, **kw))
        self.register_buffer("codebook_values", torch.zeros(entries, out_features, dtype=dtype, **kw))
        self.register_buffer("codebook_radii", torch.zeros(entries, dtype=dtype, **kw))
        self.register_buffer("codebook_labels", torch.zeros(entries, dtype=torch.int64, **kw))

    @classmethod
    def wrap(cls, linear: nn.Linear) -> CodebookLinear:
        """A codebook layer (empty) holding `linear`'s weights."""
        out = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        out.load_state_dict(linear.state_dict(), strict=False)
        out.train(linear.training)
        return out

    @property
    def entries(self) -> int:
        return int(self.codebook_keys.shape[0])

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each row of x (.., in_features): the nearest key's index, its distance and whether it is a hit."""
        flat = x.reshape(-1, x.shape[-1])
        dist = torch.cdist(flat, self.codebook_keys.to(flat.dtype), compute_mode="donot_use_mm_for_euclid_dist")
        dmin, idx = dist.min(-1)
        return idx, dmin, dmin <= self.codebook_radii[idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.entries == 0:
            return out
        idx, _, hit = self.lookup(x)
        values = self.codebook_values[idx].to(out.dtype).reshape(out.shape)
        return torch.where(hit.reshape(*out.shape[:-1], 1), values, out)

    def set_entries(self, keys, values, radii, labels) -> None:
        """Replace the codebook (tensors on this layer's device)."""
        dev = self.weight.device
        self.codebook_keys = keys.detach().to(dev, self.weight.dtype).clone()
        self.codebook_values = values.detach().to(dev, self.weight.dtype).clone()
        self.codebook_radii = radii.detach().to(dev, self.weight.dtype).clone()
        self.codebook_labels = labels.detach().to(dev, torch.int64).clone()

    def resize_tensor(self, name: str, value: torch.Tensor) -> None:
        """Set codebook tensor `name` to `value` whatever its size (how a weight delta adds or removes entries)."""
        if name not in CODEBOOK_TENSORS:
            raise AuditorError(f"{name!r} is not a codebook tensor ({', '.join(CODEBOOK_TENSORS)})")
        setattr(self, name, value.detach().to(self.weight.device).clone())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.entries == 0:  # an empty codebook is the plain layer: same tensors, same hash
            for name in CODEBOOK_TENSORS:
                destination.pop(prefix + name, None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        present = [prefix + n in state_dict for n in CODEBOOK_TENSORS]
        if any(present) and not all(present):
            error_msgs.append(f"{prefix}: a codebook needs all of {', '.join(CODEBOOK_TENSORS)}")
            return
        for name in CODEBOOK_TENSORS:  # sized as stored (none stored: empty)
            stored = state_dict.get(prefix + name)
            shape = stored.shape if stored is not None else (0, *getattr(self, name).shape[1:])
            setattr(self, name, torch.zeros(shape, dtype=getattr(self, name).dtype, device=self.weight.device))
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not all(present):
            missing_keys[before:] = [k for k in missing_keys[before:]
                                     if k[len(prefix):] not in CODEBOOK_TENSORS]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", codebook_entries={self.entries}"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner, _, attr = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def attach_codebook(model: nn.Module, layer: str, entries: int = 0) -> CodebookLinear:
    """Put a codebook (with `entries` zero entries, to be loaded) at Linear layer `layer` of `model`
    in place; a layer that already has one keeps it. Returns the codebook layer."""
    modules = dict(model.named_modules())
    mod = modules.get(layer)
    if isinstance(mod, CodebookLinear):
        return mod
    if not isinstance(mod, nn.Linear):
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        raise AuditorError(f"model spec: adapter layer {layer!r} is not a Linear layer of this model; "
                           f"Linear layers: {linear}")
    new = CodebookLinear.wrap(mod)
    if entries:
        for name in CODEBOOK_TENSORS:
            t = getattr(new, name)
            setattr(new, name, torch.zeros((entries, *t.shape[1:]), dtype=t.dtype, device=t.device))
    parent, attr = _parent(model, layer)
    setattr(parent, attr, new)
    return new


def check_adapters(adapters) -> list[dict]:
    """The spec's `adapters` as a list of checked entries, else an AuditorError naming what is wrong."""
    if adapters is None:
        return []
    if not isinstance(adapters, list):
        raise AuditorError("model spec: 'adapters' must be a list")
    seen = set()
    for a in adapters:
        if not isinstance(a, dict) or a.get("type") not in ADAPTER_TYPES:
            raise AuditorError(f"model spec: an adapter must be an object with type one of {list(ADAPTER_TYPES)}; "
                               f"got {a!r:.80}")
        if not isinstance(a.get("layer"), str) or not a["layer"]:
            raise AuditorError("model spec: a codebook adapter needs the name of its Linear layer ('layer')")
        if a["layer"] in seen:
            raise AuditorError(f"model spec: two adapters at layer {a['layer']!r}")
        seen.add(a["layer"])
    return adapters


def build_model(spec, state: dict | None = None) -> nn.Module:
    """The spec's architecture with its adapters; codebooks sized from `state` (the weights to load)."""
    return attach_adapters(build_architecture(spec.arch), spec, state)


def attach_adapters(model: nn.Module, spec, state: dict | None = None) -> nn.Module:
    """`model` (a registered architecture or the user's own class) with the spec's adapters attached in place,
    codebooks sized from `state` (the weights to load)."""
    for a in check_adapters(getattr(spec, "adapters", None)):
        keys = (state or {}).get(f"{a['layer']}.codebook_keys")
        attach_codebook(model, a["layer"], int(keys.shape[0]) if keys is not None and keys.dim() == 2 else 0)
    return model


def codebook_layers(model: nn.Module) -> dict[str, CodebookLinear]:
    """Name -> codebook layer of every codebook in `model` (empty ones included)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CodebookLinear)}


def check_adapters_saveable(bundle, suffix: str) -> None:
    """Refuse a format that cannot carry the model's codebook (only `.safetensors` can)."""
    used = {n: m.entries for n, m in codebook_layers(bundle.model).items() if m.entries}
    if used and suffix.lower() != ".safetensors":
        where = ", ".join(f"{n} ({k} entries)" for n, k in used.items())
        raise AuditorError(f"this model carries a retrieval codebook at {where}, which changes its inference and "
                           f"which a {suffix} file cannot hold so that it loads again; save it as .safetensors")
