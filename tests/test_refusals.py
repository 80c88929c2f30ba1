"""Refusals with a way forward: every "cannot edit this model" names the reason and a path that works
today (a command that runs for this case, or an editor that applies), and which trigger an audit tests."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from auditor import load_data, load_model
from auditor.audit import AuditSession
from auditor.audit.uploads import data_for_stamp_choice, stamp_question
from auditor.editors import get_editor
from auditor.zoo import TASKS

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def adult_mlp():
    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    return bundle, load_data("adult", spec=bundle.spec)


def test_metanet_without_a_population_suggests_what_works(adult_mlp):
    """A user's tabular task (no population): no `auditor editor train --task X`, which would fail with
    "no population for task"; the attribute-blind fine-tuning baseline that applies is named instead."""
    bundle, data = adult_mlp
    theirs = dataclasses.replace(data, name="german_test", _sha=None)
    reason = get_editor("metanet-fairness").supports(bundle, theirs)
    assert "german_test" not in TASKS and "editor train --task german_test" not in reason
    # its own population, the flags filled in from the data and quoted for the shell
    assert "`auditor zoo build --data your.csv --target income --positive '>50K' --protected sex,race" in reason
    assert "--like YOUR_MODEL" in reason and "auditor editor train --zoo" in reason
    session = AuditSession(bundle, theirs, ["demographic_parity <= 0.05"])
    missing = dict(session.unavailable_editors())
    assert "Applies here instead, for demographic_parity: finetune-fairness" in missing["metanet-fairness"]
    assert not {c.name for c in session.editors()} & set(missing)


def test_metanet_with_a_population_names_the_command_that_trains_one(tmp_path):
    bundle = load_model(SAMPLES / "compas_mlp.safetensors")  # COMPAS' editors ship: point at a missing file
    editor = get_editor("metanet-fairness", weights=str(tmp_path / "metanet_compas_dp.safetensors"))
    reason = editor.supports(bundle, load_data("compas", spec=bundle.spec))
    assert "compas" in TASKS and "`auditor editor train --task compas --requirement demographic_parity`" in reason


def test_every_refusal_has_a_way_forward():
    bundle = load_model(SAMPLES / "digits_cnn_trojan.safetensors")
    session = AuditSession(bundle, load_data("digits-trojan"))
    for name, reason in session.unavailable_editors():
        assert "Applies here instead" in reason or "Editors that apply to this model here" in reason, name


def test_the_sample_trigger_is_asked_for_not_assumed(adult_mlp):
    trojan = load_model(SAMPLES / "digits_cnn_trojan.safetensors")
    assert stamp_question(trojan, "digits-trojan") is None  # the sample with its own trigger
    assert stamp_question(None, "digits") is None and stamp_question(adult_mlp[0], "adult") is None
    q = stamp_question(load_model(SAMPLES / "digits_cnn.safetensors"), "digits-trojan")
    assert set(q["options"]) == {"sample", "case", "none"} and q["options"]["sample"].startswith("The sample's trigger")
    assert [data_for_stamp_choice("digits-trojan", c) for c in ("sample", "case", "none")] == \
        ["digits-trojan", None, "digits"]


def test_the_cli_refusal_carries_the_way_forward_too(adult_mlp):
    """`auditor edit --editor X` on a model X cannot edit goes through `check_editor`: same way forward."""
    from auditor.cli import main

    bundle, data = adult_mlp  # a user's task without a trained metanetwork (COMPAS' editors ship)
    session = AuditSession(bundle, dataclasses.replace(data, name="german_test", _sha=None),
                           ["demographic_parity <= 0.1"])
    with pytest.raises(Exception, match="Applies here instead, for demographic_parity: finetune-fairness"):
        session.check_editor("metanet-fairness")
    assert main(["edit", str(SAMPLES / "adult_mlp.safetensors"), "adult", "--editor", "dynamic-rank-one",
                 "--out", "never-written.safetensors"]) == 2
    assert not Path("never-written.safetensors").exists()


def test_cli_says_when_a_builtin_trigger_is_not_the_models_own(capsys):
    from auditor.cli import main

    clean = str(Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn.safetensors")
    trojan = str(Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn_trojan.safetensors")
    main(["evaluate", clean, "digits-trojan", "--no-log"])
    assert "not necessarily your model's" in capsys.readouterr().err
    main(["evaluate", trojan, "digits-trojan", "--no-log"])
    assert "not necessarily" not in capsys.readouterr().err
