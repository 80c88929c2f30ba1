"""One device choice for a run, seeding, and a wall-clock timer."""
from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or `preferred` when given and available), else CPU."""
    if preferred and preferred != "auto":
        dev = torch.device(preferred)
        if dev.type == "cuda" and not torch.cuda.is_available():
            from .errors import AuditorError
            raise AuditorError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
        return dev
    env = os.environ.get("AUDITOR_DEVICE")
    if env:
        return torch.device(env)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def describe_device(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class Timer:
    seconds: float = 0.0


@contextmanager
def timed(device: torch.device | str | None = None):
    """`with timed() as t: ...` then `t.seconds` (synchronises CUDA so GPU work is counted)."""
    t = Timer()
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        yield t
    finally:
        if cuda:
            torch.cuda.synchronize()
        t.seconds = time.perf_counter() - start
