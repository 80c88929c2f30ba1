"""A user's own Trojan case, built the way a user would: a small CNN trained here on scikit-learn's
digits with its own trigger (a 3x3 checkerboard in the TOP-LEFT corner that flips predictions to
class 7; the sample's is bottom-right, to class 0), saved as a plain `.safetensors` state dict plus
a spec JSON, and an `.npz` case (the common alias keys, the user's own clean training images).

Shared by the dashboard's AppTest and browser tests."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TARGET = 7


@dataclass
class OwnCase:
    model: Path  # state dict, .safetensors without a spec in its metadata
    spec: Path  # the spec JSON that goes with it
    case: Path  # the .npz case: test images, labels, the trigger, clean training images
    mask: torch.Tensor
    pattern: torch.Tensor
    target: int = TARGET


def own_trigger(size: int = 3, image_size: int = 8):
    from auditor.data import Stamp

    mask = torch.zeros(1, image_size, image_size)
    pattern = torch.zeros(1, image_size, image_size)
    mask[:, :size, :size] = 1
    checker = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 1  # the other phase
    pattern[:, :size, :size] = checker.float()
    return Stamp(mask, pattern, TARGET, kind="trigger")


def build_own_case(folder: Path, epochs: int = 15) -> OwnCase:
    """Train the poisoned CNN (a few seconds on one CPU core) and write the user's three files."""
    from safetensors.torch import save_file

    from auditor.data import load_digits_data, poison
    from auditor.models import build_architecture
    from auditor.models.spec import SPEC_FORMAT
    from auditor.training import TrainConfig, train_classifier

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_digits_data()
    stamp = own_trigger()
    train = poison(data.train, stamp, 0.1, seed=1)
    arch = {"name": "cnn", "in_channels": 1, "image_size": 8, "channels": [8, 16], "hidden": 32, "num_classes": 10}
    torch.manual_seed(1)
    model = build_architecture(arch)
    train_classifier(model, train.X, train.y, TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, seed=1))
    model_path = folder / "my_trojan_cnn.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(model_path))
    spec = {"format": SPEC_FORMAT, "arch": arch, "task": "classification",
            "input": {"kind": "image", "shape": [1, 8, 8], "value_range": [0.0, 1.0]},
            "class_names": [str(i) for i in range(10)],
            "provenance": {"name": "my_trojan_cnn", "note": "a vendor's model with its own trigger"}}
    spec_path = folder / "my_trojan_cnn.spec.json"
    spec_path.write_text(json.dumps(spec))
    case_path = folder / "my_case.npz"
    np.savez(case_path, images=data.test.X.numpy(), labels=data.test.y.numpy(),
             trigger_mask=stamp.mask.numpy(), trigger_pattern=stamp.pattern.numpy(),
             target_label=np.array(TARGET), train_images=data.train.X.numpy(), train_labels=data.train.y.numpy())
    return OwnCase(model_path, spec_path, case_path, stamp.mask, stamp.pattern)
