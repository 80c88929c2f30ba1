"""Gradient factors of Linear layers, shared by the MEND and editable-training editors.

For a Linear layer y = W u + b and a loss summed over examples, dL/dW = sum_b delta_b u_b^T with
u_b the layer's input and delta_b = dL/dy_b. `capture_factors` returns (u, delta) per layer
with hooks that are always removed, also when the forward pass raises.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AuditorError
from ...models.architectures import computed_weight


def _own_linear(m: nn.Module) -> bool:
    """A Linear layer whose weight is its own (no parametrization such as weight_norm computes it): the weight
    these editors write."""
    return isinstance(m, nn.Linear) and not computed_weight(m)


def default_layers(model: nn.Module, n: int = 2) -> list[str]:
    """The names of the last `n` Linear layers with weights of their own (the layers a mistake fix edits by
    default)."""
    names = [name for name, m in model.named_modules() if _own_linear(m)]
    if not names:
        raise AuditorError("the model has no Linear layer to edit (with a weight of its own: none that a "
                           "parametrization such as weight_norm computes)")
    return names[-n:]


def resolve_layers(model: nn.Module, layers: list[str] | None, n: int = 2) -> list[str]:
    """Check that each named layer exists and is a Linear layer with a weight of its own (default: the last `n`
    such layers)."""
    if not layers:
        return default_layers(model, n)
    modules = dict(model.named_modules())
    for name in layers:
        if not _own_linear(modules.get(name)):
            linear = [k for k, m in modules.items() if _own_linear(m)]
            raise AuditorError(f"layer {name!r} is not a Linear layer of this model with a weight of its own (a "
                               f"parametrization such as weight_norm computes none of these): {linear}")
    return list(layers)


@contextmanager
def _recording(model: nn.Module, layers: list[str]):
    modules = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def fn(_module, args, out):
            if torch.is_grad_enabled() and not out.requires_grad:  # frozen weights: still differentiate
                out = out.detach().requires_grad_()
            inputs[name] = args[0]
            outputs[name] = out
            return out
        return fn

    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(hook(name)))
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def capture_factors(model: nn.Module, layers: list[str], X: torch.Tensor, y: torch.Tensor,
                    loss_fn=None) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """{layer: (u, delta)} for the summed loss of `model` on (X, y) (cross-entropy by default),
    and the logits. u is (rows, in_features), delta is (rows, out_features); nothing is stored
    on the model's parameters."""
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="sum"))
    with torch.enable_grad(), _recording(model, layers) as (inputs, outputs):
        logits = model(X)
        missing = [n for n in layers if n not in outputs]
        if missing:
            raise AuditorError(f"layers {missing} were not used in the forward pass")
        outs = [outputs[n] for n in layers]
        grads = torch.autograd.grad(loss_fn(logits, y), outs, allow_unused=True)
    factors = {}
    for name, out, g in zip(layers, outs, grads):
        u = inputs[name].detach()
        g = torch.zeros_like(out) if g is None else g
        factors[name] = (u.reshape(-1, u.shape[-1]), g.detach().reshape(-1, g.shape[-1]))
    return factors, logits.detach()


class _Trunk(nn.Module):
    """The part of a traced model below a layer: its input, computed by running the model."""

    def __init__(self, split, layer: str):
        super().__init__()
        self.split, self.layer = split, layer

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.split.capture(X, [self.layer])[1][self.layer][0]


def split_head(model: nn.Module, first_layer: str) -> tuple[nn.Module, nn.Module]:
    """(trunk, head) of a model cut just before `first_layer`: head keeps the layer names, so features
    computed once by the trunk can be reused while the head is edited. An `nn.Sequential` is sliced;
    any other model (your own class, an ONNX graph) is cut on its torch.fx trace, which works where
    only the layer's input crosses the cut (no skip connection around it)."""
    from ...layers import split_model

    if isinstance(model, nn.Sequential):
        names = [n for n, _ in model.named_children()]
        if first_layer not in names:
            raise AuditorError(f"layer {first_layer!r} is not a top-level layer of the model; layers: {names}")
        i = names.index(first_layer)
        children = list(model.named_children())
        # plain Sequentials: slicing keeps the model's own class, and a one-logit model's class reads its
        # output as [0, z], which the trunk's features are not; the head keeps that reading
        from ...models.custom import read_like

        return nn.Sequential(OrderedDict(children[:i])), read_like(model, nn.Sequential(OrderedDict(children[i:])))
    split = split_model(model, [first_layer])
    if split is None or first_layer not in split.layers:
        raise AuditorError(f"cannot cut the model below layer {first_layer!r}: torch.fx cannot trace it (or the "
                           "layer is not called as a module); an editor is trained on models it can cut")
    if split.cut_values(first_layer) != 1:
        raise AuditorError(f"cannot cut the model below layer {first_layer!r}: {split.cut_values(first_layer)} "
                           "values cross the cut (a skip connection around the layer); choose later layers")
    return _Trunk(split, first_layer), split.tail(first_layer)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Per-row max(0, margin + max_{c != y} log p_c - log p_y): zero iff y wins by `margin` (ENN's
    contrastive edit loss)."""
    logp = logits.log_softmax(-1)
    target = logp.gather(1, y[:, None]).squeeze(1)
    other = logp.masked_fill(F.one_hot(y, logp.shape[1]).bool(), float("-inf")).max(1).values
    return F.relu(margin + other - target)
