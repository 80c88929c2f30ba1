"""The precision a model file stores its weights in. The auditor computes in float32; a file stored in
float16 or bfloat16 is read exactly, every edit of it is rounded back to that precision before it is
checked, and it is written in that precision again, so what is audited is what is written."""
from __future__ import annotations

import torch
from torch import nn

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def stored_float_dtype(state: dict) -> str | None:
    """The one floating-point dtype of `state`'s tensors when it is not float32 ("float16", "bfloat16",
    "float64"), "mixed" for several (computed and written as float32), None for float32."""
    dtypes = {t.dtype for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if len(dtypes) > 1:
        return "mixed"
    return _NAMES.get(dtypes.pop()) if dtypes else None


def half_dtype(spec) -> torch.dtype | None:
    """The half precision (float16 or bfloat16) the spec's model is stored in, else None."""
    return HALF.get(getattr(spec, "weights_dtype", None) or "")


@torch.no_grad()
def round_to(model: nn.Module, dtype: torch.dtype) -> bool:
    """Round every floating-point parameter and buffer of `model` to `dtype` and back, in place (what writing
    it in `dtype` keeps); True when any value changed."""
    changed = False
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and t.dtype != dtype:
            rounded = t.to(dtype).to(t.dtype)
            if not changed and not torch.equal(rounded, t):
                changed = True
            t.copy_(rounded)
    return changed


def state_in(state: dict, dtype: torch.dtype | None) -> dict:
    """`state` with its floating-point tensors in `dtype` (as it is written); unchanged when None."""
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def precision_note(spec) -> str | None:
    """What the reader should know about a model stored in another precision than float32."""
    name = getattr(spec, "weights_dtype", None)
    if name in HALF:
        return (f"the model file stores its weights as {name}: they are read exactly and computed in float32 here, "
                f"so figures can differ in the last digits from {name} inference; an edited model is rounded to {name} "
                f"before its figures are taken, and written as .safetensors in {name} (as .onnx or .pt2 in float32)")
    if name == "float64":
        return ("the model file stores its weights as float64: they are computed in float32 here (rounded to "
                "float32), and an edited model is written in float32")
    if name == "mixed":
        return ("the model file stores its weights in several precisions (float16 or bfloat16 beside float32, as a "
                "mixed-precision checkpoint does): they are computed in float32 here, and an edited model is "
                "written in float32")
    return None
