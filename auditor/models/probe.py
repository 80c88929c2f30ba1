"""Bounds for an ONNX graph: the declared sizes of its initialisers and constants, and its probe run.

A 7 KB graph can build a 16 000 x 16 000 constant at run time (`ConstantOfShape`, `Expand`, ...).
Before the converted model runs on a probe input, ONNX shape inference (with data propagation)
gives every value's shape: a value over the probe budget is refused before it is allocated. When a
shape cannot be known in advance (dims that depend on data, control flow), the probe runs in a
subprocess with an address-space limit (`resource.setrlimit(RLIMIT_AS)`, set after the imports,
so it bounds what the graph allocates) and a CPU and wall-clock time limit. See `auditor.budgets`
for the limits and the environment variables that raise them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..budgets import BudgetError, check, limit, limit_bytes, size_text
from ..errors import AuditorError

CONTROL_FLOW = {"Loop", "Scan", "If", "SequenceMap"}
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


def tensor_bytes(t) -> int:
    """Declared size of a TensorProto (its dims times its element size), whatever data it holds."""
    n = 1
    for d in t.dims:
        n *= max(int(d), 0)
    return n * _ITEMSIZE.get(int(t.data_type), 8)


def check_declared(tensors, name: str) -> None:
    """Initialisers and constants: the largest and the sum of their declared sizes, before conversion."""
    total, largest, largest_name = 0, 0, ""
    for t in tensors:
        b = tensor_bytes(t)
        total += b
        if b > largest:
            largest, largest_name = b, t.name or "(a constant)"
    check(f"{name}: its initialisers and constants (largest {largest_name!r}, {size_text(largest)})", total,
          "AUDITOR_MAX_ONNX_MB")


def _dims(value, batch_symbols: set, batch: int) -> list[int] | None:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param in batch_symbols:
            out.append(batch)
        else:
            return None
    return out


def static_plan(proto, batch: int, name: str) -> bool:
    """True when every value's shape is known for a probe of `batch` rows and each is under the probe
    budget (the probe may then run here); False when some shape is unknown (run it in a subprocess).
    A value known to be over the budget is refused (BudgetError) before anything runs."""
    import onnx

    nodes = list(proto.graph.node)
    if any(n.op_type in CONTROL_FLOW for n in nodes):
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return False
    inits = {t.name for t in proto.graph.initializer}
    batch_symbols = set()
    for i in proto.graph.input:
        if i.name not in inits and i.type.tensor_type.shape.dim:
            d0 = i.type.tensor_type.shape.dim[0]
            if d0.HasField("dim_param"):
                batch_symbols.add(d0.dim_param)
    values = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    cap = limit_bytes("AUDITOR_PROBE_MEMORY_MB")
    known = True
    for n in nodes:
        for out in n.output:
            if not out:
                continue
            v = values.get(out)
            dims = None if v is None else _dims(v, batch_symbols, batch)
            if dims is None:
                known = False
                continue
            size = 1
            for d in dims:
                size *= d
            size *= _ITEMSIZE.get(int(v.type.tensor_type.elem_type), 8)
            if size > cap:
                raise BudgetError(f"{name}: its value {out!r} ({n.op_type}, shape {dims}) would need {size_text(size)} "
                                  f"on a probe input, over the limit of {size_text(cap)}; raise it with "
                                  "AUDITOR_PROBE_MEMORY_MB=MB if you trust the model")
    return known


def probe_in_subprocess(path: Path, shape: list[int], name: str) -> None:
    """Convert and run the graph at `path` on a probe input in a child process under a memory and time
    limit; a child that runs out of either is a BudgetError, another failure an AuditorError."""
    _run_child("_child", [str(path), json.dumps(shape)], shape, name, "the converted model")


def probe_custom_in_subprocess(arch_file: Path, arch_class: str, kwargs: dict, shape: list[int] | None,
                               name: str) -> None:
    """Import `arch_class` from `arch_file`, build it with `kwargs` and run it on a probe input (when
    `shape` is known) in a child process under the same memory and time limits as an ONNX probe, so
    a trusted class that allocates without bound is refused before it runs in this process."""
    _run_child("_child_custom", [str(arch_file), arch_class, json.dumps(kwargs), json.dumps(shape)], shape or [],
               name, arch_class)


def _run_child(entry: str, argv: list[str], shape: list[int], name: str, what: str) -> None:
    seconds = limit("AUDITOR_PROBE_SECONDS")
    from ..child import child_env, python_command

    env = child_env()
    cmd = python_command(f"from auditor.models.probe import {entry}; {entry}()", *argv)  # no module from the cwd
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, env=env)
    except subprocess.TimeoutExpired:
        raise BudgetError(f"{name}: the probe run took over {seconds:g} s; raise the limit with "
                          "AUDITOR_PROBE_SECONDS if you trust the model") from None
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and last == "ok":
        return
    if last.startswith("memory") or proc.returncode in (-9, 137):
        raise BudgetError(f"{name}: the probe run needs more than {size_text(limit_bytes('AUDITOR_PROBE_MEMORY_MB'))}; "
                          "raise the limit with AUDITOR_PROBE_MEMORY_MB=MB if you trust the model")
    if last.startswith("time") or proc.returncode in (-24, -9):
        raise BudgetError(f"{name}: the probe run took over {seconds:g} s; raise the limit with "
                          "AUDITOR_PROBE_SECONDS if you trust the model")
    if last.startswith("error "):
        raise AuditorError(f"{name}: {what} fails on an input of shape {[2, *shape]}: {last[6:206]}")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    raise AuditorError(f"{name}: the probe run failed ({tail})")


def _limit_child() -> None:  # pragma: no cover (runs in the subprocess)
    """Bound this process: address space (what it holds now plus the probe budget) and CPU time."""
    import resource
    import signal

    seconds = int(limit("AUDITOR_PROBE_SECONDS"))
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + limit_bytes("AUDITOR_PROBE_MEMORY_MB") + 256 * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
    signal.signal(signal.SIGXCPU, lambda *_: (print("time"), os._exit(4)))


def _report_child(run) -> None:  # pragma: no cover (runs in the subprocess)
    """Run `run()`; the last line printed is ok, memory, or error TEXT; then exit."""
    try:
        run()
    except MemoryError:
        print("memory", flush=True)
        os._exit(3)
    except RuntimeError as exc:
        text = str(exc)
        if "alloc" in text.lower() or "memory" in text.lower():
            print("memory", flush=True)
            os._exit(3)
        print("error " + (text.splitlines()[0] if text else type(exc).__name__), flush=True)
        os._exit(1)
    except (Exception, SystemExit) as exc:
        print("error " + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__), flush=True)
        os._exit(1)
    print("ok", flush=True)
    os._exit(0)


def _child() -> None:  # pragma: no cover (runs in the subprocess)
    import onnx
    import torch

    from .onnx_format import _convert, _fix_layer_norms, _onnx2torch
    from .spec import ModelSpec

    path, shape = sys.argv[1], json.loads(sys.argv[2])
    _onnx2torch()
    torch.set_num_threads(1)
    _limit_child()

    def run():  # converted as the load converts it (opset brought down where onnx2torch needs)
        proto = onnx.load_model(path, load_external_data=False)
        module = _convert(proto, ModelSpec(arch={"name": "onnx"}), Path(path).name).eval()
        _fix_layer_norms(module)
        with torch.no_grad():
            module(torch.randn(2, *shape))

    _report_child(run)


def _child_custom() -> None:  # pragma: no cover (runs in the subprocess)
    import torch

    from .custom import _import_class

    arch_file, arch_class, kwargs, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    torch.set_num_threads(1)
    _limit_child()

    def run():  # only memory and time are judged here: other failures are reported by the real load
        try:
            cls, _ = _import_class(Path(arch_file), arch_class)
            model = cls(**kwargs).eval()
            if shape:
                with torch.no_grad():
                    model(torch.zeros(2, *shape))
        except MemoryError:
            raise
        except RuntimeError as exc:
            if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
                raise
        except (Exception, SystemExit):
            pass

    _report_child(run)
