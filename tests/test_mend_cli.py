"""`auditor editor mend MODEL DATA`: a MEND editor trained for a user's own model from the command line (it
used to need the repository's sample_models/build_mend.py), found by `--editor mend` beside the model."""
from __future__ import annotations

import json
import shutil

import torch

from auditor.cli import main
from auditor.models import load_model, save_model
from tests.conftest import SAMPLES
from tests.test_metanet import _one_logit


def _wrong_rows(bundle, data, n=3):
    """Test rows the model gets right, asked to take the other label (edits to make)."""
    X, y = data.test.X, data.test.y
    with torch.no_grad():
        right = (bundle.model(X).argmax(1) == y).nonzero().squeeze(1)[:n].tolist()
    return [f"test:{r}={1 - int(y[r])}" for r in right]


def test_a_mend_editor_is_trained_for_a_users_model_and_found_by_the_mend_editor(tmp_path):
    from auditor import load_data

    adult = load_data("adult")
    one = _one_logit(load_model(SAMPLES / "adult_mlp.safetensors"))  # a one-logit model: its head reads [0, z]
    model = save_model(one, tmp_path / "credit.safetensors")
    assert main(["editor", "mend", str(model), "adult", "--steps", "60", "--json", str(tmp_path / "m.json")]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert (tmp_path / "mend_credit.safetensors").is_file() and summary["validation"]["step"] == 60
    out = tmp_path / "edited.safetensors"
    fixes = _wrong_rows(one, adult)
    args = ["edit", str(model), "adult", "--editor", "mend", "--out", str(out), "--json", str(tmp_path / "e.json"),
            "--no-log"]
    for f in fixes:
        args += ["--fix", f]
    assert main(args) in (0, 1)  # ran: the editor file was found beside the model
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["edit"]["editor"] == "mend" and load_model(out).model.out.out_features == 1
    # a copy of the model elsewhere has no editor beside it: the refusal says how to train one
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(model, other / "credit.safetensors")
    assert main(["edit", str(other / "credit.safetensors"), "adult", "--editor", "mend", "--fix", fixes[0],
                 "--out", str(other / "e.safetensors"), "--no-log"]) == 2
