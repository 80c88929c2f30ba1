"""One device choice for a run, seeding, and the progress callback type."""
from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

# Progress reports: callback(fraction done in [0, 1], message). The one definition; editors, the audit
# session, trade-offs and the zoo import it from here.
Callback = Callable[[float, str], None]


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


_GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded_global_rng(seed: int):
    """Torch's global CPU generator seeded with `seed` for the block and put back after, under one
    process-wide lock: module initialisers draw from it and take no generator, and without the lock an
    edit in another thread that seeds or draws in between changes the result."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
