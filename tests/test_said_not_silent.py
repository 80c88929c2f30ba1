"""What a vendor's model and data got wrong used to pass silently; each is now refused or said.

Found by trying the tool as users would: their own CSV (variant labels, other category spellings, the
protected attribute as an input), their own spec (class order, class count), their own files (random
bytes, a pickled whole model, an ONNX graph with its own input and output names), learned editors found
by name, stacked edits in the dashboard."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from auditor import TabularSchema, load_data, load_model
from auditor.audit import AuditSession
from auditor.audit.provenance import reproduce_command
from auditor.audit.uploads import csv_values
from auditor.data.tabular import from_frames
from auditor.editors import get_editor
from auditor.editors.base import WeightDelta, parameters_changed
from auditor.errors import AuditorError
from auditor.evaluate import check_compatible, evaluate
from auditor.fixes import parse_fixes
from auditor.report import validate_report
from auditor.report.evidence import regulatory_evidence
from auditor.requirements import parse_requirement


def _frames(seed: int = 0, n: int = 300) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.integers(18, 70, n), "gender": rng.choice(["F", "M"], n),
                          "job": rng.choice(["a", "b", "c"], n), "approved": rng.choice(["no", "yes"], n)})
    return {"train": frame.iloc[:200], "val": frame.iloc[200:250], "test": frame.iloc[250:].reset_index(drop=True)}


def test_a_spec_whose_classes_are_in_another_order_or_number_is_refused(adult_mlp, adult):
    swapped = adult_mlp.copy()
    swapped.spec.class_names = list(reversed(adult.class_names))
    with pytest.raises(AuditorError, match=r"order .*every prediction would be read as another class"):
        check_compatible(swapped, adult)
    three = adult_mlp.copy()
    three.spec.class_names = [*adult.class_names, "maybe"]
    with pytest.raises(AuditorError, match="names 3 classes .* returns 2 outputs"):
        check_compatible(three, adult)
    other = adult_mlp.copy()
    other.spec.class_names = ["denied", "approved"]
    ev = evaluate(other, adult, split="test", resamples=0)
    assert any("share no name with the data's target classes" in w for w in ev.warnings)


def test_target_variants_unseen_categories_and_a_protected_input_are_said():
    frames = _frames()
    frames["test"].loc[:4, "approved"] = "Yes"
    frames["test"].loc[5:9, "gender"] = "f"
    schema = TabularSchema(target="approved", positive="yes", protected=["gender"], categorical=["gender", "job"])
    prep = {"version": 1, "columns": [{"name": "age", "type": "numeric", "mean": 40.0, "std": 10.0},
                                      {"name": "gender", "type": "categorical", "categories": ["F", "M"]},
                                      {"name": "job", "type": "categorical", "categories": ["a", "b", "c"]}]}
    data = from_frames("vendor", frames, schema, preprocessing=prep)
    notes = " | ".join(data.notes)
    assert "'Yes' differs from 'yes' only in case or spaces" in notes
    assert "column 'gender': 5 of 300 rows hold values the model's stored preprocessing has no category for" in notes
    assert "reads protected attribute(s) 'gender'" in notes
    # the rows are still read as documented: the variant is a negative, the unseen value all zeros
    assert data.test.y[:5].sum() == 0 and data.test.X[5:10, 1:3].abs().sum() == 0
    clean = from_frames("clean", _frames(), TabularSchema(target="approved", positive="yes", protected=["gender"],
                                                          categorical=["job"]))
    assert clean.notes == []
    reordered = from_frames("vendor", _frames(), TabularSchema(target="approved", positive="yes", protected=["gender"],
                                                               inputs=["job", "gender", "age"]), preprocessing=prep)
    assert any("differ from the model's spec" in n and n.endswith("given in another order than the model reads them")
               for n in reordered.notes)
    recast = from_frames("vendor", _frames(), TabularSchema(target="approved", positive="yes", protected=["gender"],
                                                            categorical=["age"]), preprocessing=prep)
    assert any(n.endswith("read as numbers, not categories: age") for n in recast.notes)  # the spec reads it so


def test_the_positive_label_choice_reads_every_row():
    rows = "age,outcome\n" + "".join(f"{i},no\n" for i in range(300)) + "".join(f"{i},yes\n" for i in range(5))
    assert csv_values(rows.encode(), "outcome") == ["no", "yes"]


def test_random_bytes_and_a_pickled_whole_model_are_named_as_such(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AuditorError, match="neither a zip archive .* nor a pickle"):
        load_model(junk)  # without a spec too: the file is read (safely) before a spec is asked for
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), whole)
    with pytest.raises(AuditorError) as err:
        load_model(whole)
    text = str(err.value)
    assert "torch.save(model)" in text and "torch.nn.modules.container.Sequential" in text
    assert "\x1b" not in text and "Re-running" not in text


def _case(path, **extra):
    rng = np.random.default_rng(0)
    arrays = dict(images=rng.random((40, 1, 8, 8), dtype=np.float32), labels=np.arange(40) % 10,
                  mask=np.ones((8, 8), np.float32) * 0, pattern=np.zeros((8, 8), np.float32), target=np.array(3))
    arrays["mask"][-2:, -2:] = 1
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_an_image_case_with_an_unknown_kind_or_a_target_outside_the_model_is_refused(tmp_path, digits_cnn):
    with pytest.raises(AuditorError, match="'kind' is 'Cue'; it must be"):
        load_data(_case(tmp_path / "kind.npz", kind=np.array("Cue")))
    far = load_data(_case(tmp_path / "far.npz", target=np.array(12)))
    with pytest.raises(AuditorError, match="names class 12 as the class its trigger pushes towards, but the model "
                                           "predicts only 10 classes"):
        check_compatible(digits_cnn, far)


def test_a_learned_editor_trained_on_other_weights_is_not_applied(digits_cnn, digits):
    fixes = parse_fixes(["5=3"], digits)
    assert get_editor("mend").supports(digits_cnn, digits) is None  # the shipped editor, trained on these weights
    # the same model name and architecture, other weights (retrained, or a sibling model): refused
    other = digits_cnn.copy()
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    reason = get_editor("mend").supports(other, digits)
    assert reason is not None and "trained on other weights" in reason and "finetune-fix" in reason
    # weights edited from the ones it was trained on (the dashboard's second edit): found through the lineage
    edited = get_editor("finetune-fix").edit(digits_cnn, digits, fixes=parse_fixes(["7=1"], digits)).bundle
    assert edited.sha256 != digits_cnn.sha256
    assert get_editor("mend").supports(edited, digits) is None
    assert get_editor("mend").edit(edited, digits, fixes=fixes).bundle.model(fixes.X).argmax(1).tolist() == [3]


def test_an_edited_onnx_keeps_the_vendors_input_and_output_names(tmp_path, digits):
    onnx = pytest.importorskip("onnx")
    from auditor.models.onnx_format import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path / "vendor.onnx"
    torch.onnx.export(net, (digits.test.X[:1],), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["scores"], dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})
    spec = {"arch": {"name": "onnx", "num_classes": 10}, "input": {"kind": "image", "shape": [1, 8, 8]},
            "class_names": digits.class_names}
    from auditor.models import ModelSpec

    bundle = load_model(path, spec=ModelSpec.from_dict(spec))
    edited = get_editor("magnitude-pruning").edit(bundle, digits).bundle
    out = export_onnx(edited, tmp_path / "edited.onnx")
    graph = onnx.load(str(out)).graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    assert inputs == ["pixels"] and [o.name for o in graph.output] == ["scores"]


def test_an_onnx_graph_that_is_not_its_specs_architecture_is_written_back_only_as_onnx(tmp_path, digits_cnn):
    from auditor.models.files import check_saveable

    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(256, 10))
    with torch.no_grad():
        bn[1].running_mean.uniform_(-0.5, 0.5)
        bn[1].running_var.uniform_(0.5, 2.0)
    bn.eval()
    path = tmp_path / "bn.onnx"
    torch.onnx.export(bn, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)  # folds the BatchNorm
    spec = copy.deepcopy(digits_cnn.spec)
    spec.arch = {"name": "sequential", "num_classes": 10, "layers": [
        {"type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1}, {"type": "batchnorm2d", "features": 4},
        "relu", "flatten", {"type": "linear", "in": 256, "out": 10}]}
    bundle = load_model(path, spec=spec)
    assert bundle.spec.arch["name"] == "onnx" and bundle.spec.provenance["arch_in_spec"]["name"] == "sequential"
    with pytest.raises(AuditorError):
        check_saveable(bundle, tmp_path / "bn.safetensors")


def test_retraining_from_scratch_is_refused_for_an_architecture_the_auditor_cannot_build(adult_mlp, adult):
    onnxish = adult_mlp.copy()
    onnxish.spec.arch = {"name": "custom", "class": "Net", "file": "net.py"}
    reason = get_editor("retrain-k-features").supports(onnxish, adult)
    assert reason is not None and "warm_start=true" in reason
    assert get_editor("retrain-k-features", warm_start=True).supports(onnxish, adult) is None
    assert get_editor("retrain-k-features").supports(adult_mlp, adult) is None


def test_refusals_name_the_method_and_the_attribute(digits_cnn, digits, adult):
    assert "fine-tuning against a Trojan or cue needs" in get_editor("finetune").supports(digits_cnn, digits)
    metrics = evaluate(load_model("sample_models/adult_mlp.safetensors"), adult, split="test", resamples=0).metrics
    with pytest.raises(AuditorError, match=r"names no protected attribute of this data; demographic_parity is "
                                           r"measured for race, sex"):
        parse_requirement("demographic_parity[gender] <= 0.1").check(metrics)
    with pytest.raises(AuditorError, match="measured over all groups at once"):
        parse_requirement("worst_group_accuracy[sex] >= 0.5").check(metrics)


def test_batchnorm_statistics_are_no_parameters_changed():
    before = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    after = copy.deepcopy(before)
    after.train()
    after(torch.randn(8, 3))  # running statistics and the batch counter move
    with torch.no_grad():
        after[0].weight[0, 0] += 1.0
    delta = WeightDelta.between(before, after)
    assert parameters_changed(delta) == 1  # one entry of one weight, not the whole tensor
    rows = {r["parameter"]: r for r in delta.changes()}
    assert "1.num_batches_tracked" not in rows and rows["1.running_mean"]["statistics"] is True


def test_article_15_lists_only_accuracy_and_robustness_requirements():
    d = {"requirements": [
        {"metric": "attack_success_rate", "op": "<=", "threshold": 0.02, "expr": "attack_success_rate <= 0.02",
         "after": {"value": 0.0, "verdict": "pass", "passed": True}},
        {"metric": "demographic_parity", "op": "<=", "threshold": 0.05, "expr": "demographic_parity <= 0.05",
         "after": {"value": 0.01, "verdict": "pass", "passed": True}}]}
    rows = regulatory_evidence(d)["rows"]
    art15 = next(r for r in rows if r["point"] == "Art. 15")
    text = " ".join(i["text"] for i in art15["evidence"])
    assert "attack_success_rate" in text and "demographic_parity" not in text


def test_fixes_given_to_an_editor_that_does_not_fix_mistakes_are_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "auditor.cli", "edit", "sample_models/digits_cnn_trojan.safetensors",
                          "digits-trojan", "--editor", "rank-one", "--fix", "3=1", "--out",
                          str(tmp_path / "x.safetensors"), "--no-log"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "does not fix given mistakes" in run.stderr and "mend" in run.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_stacked_edits_reproduce_as_a_chain_of_commands(trojan_cnn, digits_trojan):
    session = AuditSession(trojan_cnn, digits_trojan, ["attack_success_rate <= 0.02"],
                           model_path="/tmp/auditor-upload-x1/my_model.pt")
    session.spec_path = "/tmp/auditor-upload-x1/my_spec.json"
    session.run_edit("finetune", {"samples": 5})
    session.run_edit("dynamic-rank-one", {"samples": 1})
    command = reproduce_command(session)
    first, last = command.split("; auditor ")
    assert first.startswith("auditor edit my_model.pt digits-trojan --spec my_spec.json")
    assert "--editor finetune" in first and first.endswith("--out step1.safetensors")
    assert last.startswith("audit step1.safetensors digits-trojan") and "--editor dynamic-rank-one" in last
    assert "auditor-upload" not in command
    from auditor.audit.provenance import chain_note

    assert "one after another" in chain_note(session)
    report = validate_report(session.build_report())
    assert report["reproduce"]["note"] == chain_note(session)
    row = next(r for r in report["tradeoff"]["rows"] if r["method"] == "finetune → dynamic-rank-one") \
        if report.get("tradeoff") else None
    assert row is None or set(row["layers"]) >= set(session.edits[0].result.layers)


def test_other_architecture_code_than_the_model_was_saved_with_is_said(tmp_path, digits):
    code = ("import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n        self.fc = nn.Linear(64, 10)\n\n"
            "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    (tmp_path / "net.py").write_text(code)
    torch.save({"fc." + k: v for k, v in nn.Linear(64, 10).state_dict().items()}, tmp_path / "w.pt")
    from auditor.models import ModelSpec
    from auditor.models.files import save_model

    spec = ModelSpec.from_dict({"arch": {"name": "custom"}, "input": {"kind": "image", "shape": [1, 8, 8]},
                                "class_names": digits.class_names})
    bundle = load_model(tmp_path / "w.pt", spec=spec, arch_file=tmp_path / "net.py", arch_class="Net",
                        trust_code=True)
    saved = save_model(bundle, tmp_path / "saved.safetensors")
    same = evaluate(load_model(saved, arch_file=tmp_path / "net.py", arch_class="Net", trust_code=True), digits,
                    resamples=0)
    assert not any("code" in w for w in same.warnings)  # (an untrained model: it never predicts some digits)
    (tmp_path / "net.py").write_text(code.replace("x.flatten(1)", "x.flatten(1) * 2"))
    ev = evaluate(load_model(saved, arch_file=tmp_path / "net.py", arch_class="Net", trust_code=True), digits,
                  resamples=0)
    assert any(re.search(r"is not the code this model was saved with", w) for w in ev.warnings)


def test_auditor_threads_must_be_a_whole_number():
    run = subprocess.run([sys.executable, "-m", "auditor.cli", "evaluate", "sample_models/digits_cnn.safetensors",
                          "digits", "--no-log"], capture_output=True, text=True,
                         env={**__import__("os").environ, "AUDITOR_THREADS": "two"})
    assert run.returncode == 2 and "AUDITOR_THREADS must be a whole number" in run.stderr



def test_a_cue_gap_that_grows_only_because_accuracy_rose_is_no_side_effect(monkeypatch):
    import auditor.requirements.uncertainty as unc

    class Ev:  # what side_effects reads of an evaluation
        metrics, groups, outcomes = {}, {}, object()

    diffs = {"accuracy": {"change": 0.02, "low": 0.01, "high": 0.03},
             "cue_accuracy": {"change": 0.0, "low": -0.005, "high": 0.005},
             "cue_gap": {"change": 0.02, "low": 0.01, "high": 0.03}}
    monkeypatch.setattr(unc, "paired_differences", lambda *a, **k: diffs)
    assert unc.side_effects(Ev(), Ev()) == []
    diffs["cue_accuracy"] = {"change": -0.02, "low": -0.03, "high": -0.01}
    assert {e["metric"] for e in unc.side_effects(Ev(), Ev())} == {"cue_accuracy", "cue_gap"}


def test_the_retrieval_codebook_works_on_a_model_of_the_users_own_class(tmp_path, digits):
    from auditor.models import ModelSpec
    from auditor.models.files import save_model

    (tmp_path / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())\n"
        "        self.head = nn.Linear(32, 10)\n\n    def forward(self, x):\n        return self.head(self.body(x))\n")
    torch.manual_seed(0)
    state = {"body.1.weight": torch.randn(32, 64) * 0.1, "body.1.bias": torch.zeros(32),
             "head.weight": torch.randn(10, 32) * 0.1, "head.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "w.pt")
    spec = ModelSpec.from_dict({"arch": {"name": "custom"}, "input": {"kind": "image", "shape": [1, 8, 8]},
                                "class_names": digits.class_names})
    own = dict(arch_file=tmp_path / "net.py", arch_class="Net", trust_code=True)
    bundle = load_model(tmp_path / "w.pt", spec=spec, **own)
    now = int(bundle.model(digits.test.X[5:6]).argmax(1))
    fixes = parse_fixes([f"5={(now + 1) % 10}"], digits)
    assert get_editor("retrieval").supports(bundle, digits) is None
    edited = get_editor("retrieval").edit(bundle, digits, fixes=fixes).bundle
    saved = save_model(edited, tmp_path / "fixed.safetensors")
    again = load_model(saved, **own)
    assert int(again.model(digits.test.X[5:6]).argmax(1)) == (now + 1) % 10
    assert again.sha256 == edited.sha256


def test_a_stamp_is_described_as_it_is_blended_whole_image_or_one_channel():
    from auditor.present import _where

    red = np.zeros((3, 12, 12))
    red[0, :2, -2:] = 1
    assert _where(red) == "4-pixel patch (2×2) in the top-right corner, on the red channel only"
    tint = np.zeros((3, 12, 12))
    tint[2] = 0.5
    assert _where(tint) == "over the whole image (12×12), blended at 50 %, on the blue channel only"
    patch = np.zeros((8, 8))
    patch[-3:, -3:] = 1
    assert _where(patch) == "9-pixel patch (3×3) in the bottom-right corner"
    plus = np.zeros((28, 28))
    plus[5, 18:23], plus[3:8, 20] = 1, 1
    assert _where(plus) == "9-pixel pattern within a 5×5 box in the top-right corner"


def test_audit_takes_a_table_of_fixes(tmp_path):
    from auditor.cli import main

    (tmp_path / "fx.csv").write_text("row,label\n12,3\n40,7\n")
    out = tmp_path / "a.json"
    rc = main(["audit", "sample_models/digits_cnn.safetensors", "digits", "--editor", "mend", "--fixes",
               str(tmp_path / "fx.csv"), "--require", "accuracy >= 0.9", "--json", str(out), "--baselines", "none",
               "--no-log"])
    import json

    doc = json.loads(out.read_text())
    assert rc == 0 and "edit_success >= 1" in [r["expr"] for r in doc["requirements"]]
    assert "--fixes" in doc["reproduce"]["command"]
    # the mistakes to fix are a requirement of their own: no --require needed (it used to refuse the audit)
    rc = main(["audit", "sample_models/digits_cnn.safetensors", "digits", "--editor", "mend", "--fixes",
               str(tmp_path / "fx.csv"), "--json", str(out), "--baselines", "none", "--no-log"])
    doc = json.loads(out.read_text())
    assert rc == 0 and [r["expr"] for r in doc["requirements"]] == ["edit_success >= 1"]


def test_an_edit_that_undoes_mistakes_fixed_by_an_earlier_edit_is_said(tmp_path, digits_cnn, digits):
    first = AuditSession(digits_cnn, digits, [])
    wrong = np.flatnonzero(digits_cnn.model(digits.test.X).argmax(1).numpy() != digits.test.y.numpy())[:2]
    specs = [f"{r}={int(digits.test.y[r])}" for r in wrong]
    first.set_fixes(specs)
    first.run_edit("mend", {})
    assert first.evaluate().metrics["edit_success"] == 1.0
    path = first.save(tmp_path / "fixed.safetensors")
    again = AuditSession(load_model(path), digits, [])
    assert len(again.earlier_fixes()) == 1 and not any("earlier edit" in w for w in again.evaluate().warnings)
    # an edit that wrecks the model breaks the earlier fixes too: said with the evaluation
    again.run_edit("magnitude-pruning", {"sparsity": 0.97})
    notes = [w for w in again.evaluate().warnings if "fixed by an earlier edit (mend)" in w]
    assert notes and "are wrong again" in notes[0]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_named_as_such(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Evil(tmp_path / "ran")}, path)
    with pytest.raises(AuditorError, match=r"unpickling it would call (posix|os|nt)\.system, which could run code"):
        load_model(path)
    assert not (tmp_path / "ran").exists()


def test_class_names_that_differ_only_in_case(adult_mlp, adult):
    flipped = adult_mlp.copy()
    flipped.spec.class_names = [c.lower() for c in reversed(adult.class_names)]
    with pytest.raises(AuditorError, match="every prediction would be read as another class"):
        check_compatible(flipped, adult)
    cased = adult_mlp.copy()
    cased.spec.class_names = [c.lower() for c in adult.class_names]
    assert any("only in case" in w for w in evaluate(cased, adult, split="test", resamples=0).warnings)


def test_an_edited_model_is_written_with_ordinary_permissions(tmp_path, digits_cnn):
    import os
    import stat

    from auditor.models.files import save_model

    path = save_model(digits_cnn, tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_channels_last_images_with_a_chw_mask_blame_the_images(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 8, 8), np.float32)
    mask[:, -2:, -2:] = 1
    np.savez(tmp_path / "cl.npz", images=rng.random((40, 8, 8, 3), dtype=np.float32), labels=np.arange(40) % 10,
             mask=mask, pattern=mask, target=np.array(3))
    with pytest.raises(AuditorError, match=r"the images have shape \(40, 8, 8, 3\); these look like images stored "
                                           r"channels last"):
        load_data(tmp_path / "cl.npz")


def test_an_onnx_graph_exported_in_training_mode_is_told_to_export_in_eval_mode(tmp_path, digits):
    pytest.importorskip("onnx")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    net.train()
    path = tmp_path / "train.onnx"
    torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    from auditor.models import ModelSpec

    spec = ModelSpec.from_dict({"arch": {"name": "onnx", "num_classes": 10},
                                "input": {"kind": "image", "shape": [1, 8, 8]}, "class_names": digits.class_names})
    with pytest.raises(AuditorError, match=r"exported in training mode: call model.eval\(\)"):
        load_model(path, spec=spec)


def test_the_html_metrics_table_lists_a_gap_of_the_first_attribute_once(adult_mlp, adult, tmp_path):
    from auditor.report import write_html

    session = AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"])
    html = (write_html(session.build_report(), tmp_path / "r.html") or tmp_path / "r.html").read_text()
    table = html[html.index('id="metrics"'):html.index('id="metrics"') + 20000]
    assert table.count(">demographic_parity[sex]<") == 1 and table.count(">demographic_parity<") == 0


def test_a_fixes_table_with_empty_cells(digits):
    from auditor.fixes import fixes_table_specs

    frame = pd.DataFrame({"row": [12, None, None], "label": [3, None, 7]})
    with pytest.raises(AuditorError, match="fixes table row 3: its row is empty"):
        fixes_table_specs(frame, digits)
    assert fixes_table_specs(frame.iloc[:2], digits) == ["test:12=3"]


def test_magnitude_pruning_reaches_the_sparsity_asked_for_when_it_does_not_divide_evenly(adult):
    from auditor.requirements.metrics import sparsity
    from tests.fixtures import tiny_mlp_bundle

    bundle = tiny_mlp_bundle(in_features=adult.n_inputs, hidden=(7,))  # 714 weights: 0.3 of them is 214.2
    edited = get_editor("magnitude-pruning", sparsity=0.3).edit(bundle, adult).bundle
    assert sparsity(edited.model) >= 0.3


def test_a_three_class_model_on_a_two_outcome_csv_is_refused(adult):
    """--positive reads a CSV target as two outcomes; a model with more outputs would have every prediction
    of its other classes counted as wrong (an accuracy that is neither the 3-class nor the binary one)."""
    from auditor.models import ModelBundle, ModelSpec, build_architecture

    arch = {"name": "mlp", "in_features": adult.n_inputs, "hidden": [8], "num_classes": 3}
    torch.manual_seed(0)
    bundle = ModelBundle(build_architecture(arch).eval(), ModelSpec(arch=arch, input={"kind": "tabular"},
                                                                    class_names=["full", "over", "part"]))
    with pytest.raises(AuditorError, match=r"returns 3 outputs but data .* has 2 classes .*other classes would count"):
        check_compatible(bundle, adult)


def test_missing_protected_values_are_refused_with_their_rows(tmp_path):
    """A blank protected value used to become a group "nan" that counted in every fairness gap."""
    from auditor.data import load_csv

    frame = pd.concat(_frames().values(), ignore_index=True)
    frame.loc[[3, 7, 11], "gender"] = np.nan
    frame.loc[20, "gender"] = " "
    frame.to_csv(tmp_path / "people.csv", index=False)
    with pytest.raises(AuditorError, match=r"protected column 'gender' has 4 missing value\(s\) \(data rows 3, 7, 11, "
                                           r"20; .*'unknown'.* or drop those rows"):
        load_csv(tmp_path / "people.csv", TabularSchema(target="approved", protected=["gender"]))
    with pytest.raises(AuditorError, match="protected column 'gender' has 4 missing"):
        from_frames("people", {"train": frame.iloc[:200], "val": frame.iloc[200:250], "test": frame.iloc[250:]},
                    TabularSchema(target="approved", protected=["gender"]))


def test_a_float_coded_target_takes_positive_1_and_a_semicolon_file_is_read_and_said(tmp_path):
    from auditor.data import load_csv

    frame = pd.concat(_frames().values(), ignore_index=True)
    frame["approved"] = (frame["approved"] == "yes").astype(float)  # 0.0 / 1.0
    frame.to_csv(tmp_path / "float.csv", index=False)
    data = load_csv(tmp_path / "float.csv", TabularSchema(target="approved", positive="1", protected=["gender"],
                                                         categorical=["job"]))
    assert data.class_names[1] == "1.0"
    whole = torch.cat([data.train.y, data.val.y, data.test.y])
    assert int(whole.sum()) == int(frame["approved"].sum())
    schema = TabularSchema(target="approved", positive="1", protected=["gender"], categorical=["job"])
    for name, kw, said in (("semi.csv", {"sep": ";", "decimal": ","}, "';'-separated with ',' as the decimal mark"),
                           ("semi_point.csv", {"sep": ";"}, "';'-separated (its"),
                           ("tabs.tsv", {"sep": "\t"}, "tab-separated")):
        frame.to_csv(tmp_path / name, index=False, **kw)  # as a spreadsheet in a comma-decimal locale saves it
        other = load_csv(tmp_path / name, schema)
        assert any(f"{name} was read as {said}" in n for n in other.notes), other.notes
        for split in ("train", "val", "test"):  # the same numbers as the comma-separated file
            assert torch.equal(other.split(split).X, data.split(split).X)
            assert torch.equal(other.split(split).y, data.split(split).y)
    assert not any("was read as" in n for n in data.notes)
    from auditor.audit.uploads import csv_columns, csv_values  # the dashboard's column pickers read it alike
    from auditor.data.tabular import csv_dialect

    assert csv_dialect(b"income;debt\n1,5;0,2\n") == (";", ",")  # one row: its decimal commas still seen
    raw = (tmp_path / "semi.csv").read_bytes()
    assert list(csv_columns(raw).columns) == list(frame.columns) and csv_values(raw, "gender")



def test_a_windows_1252_csv_as_excel_saves_it_is_read_and_said(tmp_path):
    """Excel on Windows saves "CSV" in Windows-1252 (with ';' and decimal commas in German locales): accented
    group names and a '€' in a column name are read as written, and every result says how; a file that is
    neither UTF-8 nor Windows-1252 is refused naming the fix."""
    from auditor.audit.uploads import csv_columns, csv_values
    from auditor.data import load_csv

    frame = pd.concat(_frames().values(), ignore_index=True)
    frame["gender"] = frame["gender"].map({"F": "weiblich", "M": "männlich"})
    frame = frame.rename(columns={"age": "Schulden (€)"})
    frame.to_csv(tmp_path / "utf8.csv", index=False)
    frame.to_csv(tmp_path / "excel.csv", index=False, sep=";", encoding="cp1252", lineterminator="\r\n")
    schema = TabularSchema(target="approved", positive="yes", protected=["gender"], categorical=["job"])
    plain, excel = load_csv(tmp_path / "utf8.csv", schema), load_csv(tmp_path / "excel.csv", schema)
    assert any("excel.csv was read as ';'-separated" in n and "as Windows-1252 text" in n for n in excel.notes)
    assert not any("Windows-1252" in n for n in plain.notes)
    assert excel.feature_names == plain.feature_names and "Schulden (€)" in excel.feature_names
    for split in ("train", "val", "test"):
        assert torch.equal(excel.split(split).X, plain.split(split).X)
        assert list(excel.split(split).groups["gender"]) == list(plain.split(split).groups["gender"])
    raw = (tmp_path / "excel.csv").read_bytes()  # the dashboard's column pickers read it alike
    assert "Schulden (€)" in csv_columns(raw).columns and csv_values(raw, "gender") == ["männlich", "weiblich"]
    (tmp_path / "other.csv").write_bytes(b"a,b,y\n1," + b"\x81\x8d" + b",1\n")  # neither encoding
    with pytest.raises(AuditorError, match="neither UTF-8 nor Windows-1252 text; save it as UTF-8"):
        load_csv(tmp_path / "other.csv", TabularSchema(target="y"))


SINGLE_LOGIT_NET = '''
import torch
from torch import nn


class BinNet(nn.Module):
    """One logit, trained with BCEWithLogitsLoss."""

    def __init__(self, in_features=4):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))
'''


def test_a_single_logit_binary_model_is_read_as_two_classes_and_keeps_its_one_logit(tmp_path):
    """The commonest binary setup (nn.Linear(h, 1) + BCEWithLogitsLoss) used to be refused everywhere:
    `spec init` now reads its logit z as [0, z]; metrics match sigmoid(z) > 0.5; edits and ONNX export keep
    the vendor's single logit."""
    import importlib.util

    from auditor.data import load_csv
    from auditor.models.draft import draft_spec
    from auditor.models.onnx_format import export_onnx

    rng = np.random.default_rng(0)
    n = 1200
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n),
                          "gender": rng.choice(["F", "M"], n)})
    frame["d"] = (frame["gender"] == "M").astype(float) + 0.3 * rng.normal(size=n)  # a proxy of gender
    logit = 1.5 * frame["a"] - frame["b"] + 1.2 * frame["d"] - 0.6
    frame["approved"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame.to_csv(tmp_path / "people.csv", index=False)
    (tmp_path / "binnet.py").write_text(SINGLE_LOGIT_NET)
    module_spec = importlib.util.spec_from_file_location("binnet_user", tmp_path / "binnet.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.BinNet(4)
    X = torch.tensor(frame[["a", "b", "c", "d"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor((frame["approved"] == "yes").to_numpy(), dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(X).squeeze(1), y).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "binnet.pt")
    schema = TabularSchema(target="approved", positive="yes", protected=["gender"], inputs=["a", "b", "c", "d"])
    data = load_csv(tmp_path / "people.csv", schema)
    code = dict(arch_file=tmp_path / "binnet.py", arch_class="BinNet", trust_code=True)
    draft = draft_spec(tmp_path / "binnet.pt", data, **code)
    assert draft.spec["single_logit"] is True and draft.spec["arch"]["num_classes"] == 1
    assert any("[0, z]" in g for g in draft.guessed)
    bundle = load_model(tmp_path / "binnet.pt", spec=draft.spec, **code)
    ev = evaluate(bundle, data, split="test", resamples=0)
    sp = data.test
    with torch.no_grad():
        z = net(sp.X).squeeze(1)
    assert ev.metrics["accuracy"] == pytest.approx(float(((z > 0).long() == sp.y).double().mean()), abs=1e-9)
    before = evaluate(bundle, data, split="test", resamples=0).metrics["demographic_parity"]
    result = get_editor("finetune-fairness").edit(bundle, data, [parse_requirement("demographic_parity <= 0.35")])
    edited = result.bundle
    assert before > 0.45 and evaluate(edited, data, split="test", resamples=0).metrics["demographic_parity"] <= 0.4
    assert edited.model.head.weight.shape == (1, 16)  # still the vendor's one logit
    out = export_onnx(edited, tmp_path / "edited.onnx")
    import onnx
    import onnxruntime as ort

    assert [d.dim_value or d.dim_param for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] \
        == ["batch", 1]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: sp.X.numpy()})[0]
    with torch.no_grad():
        want = edited.model(sp.X)[:, 1:]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    back = load_model(out)
    assert back.spec.single_logit and evaluate(back, data, split="test", resamples=0).metrics["accuracy"] == \
        pytest.approx(evaluate(edited, data, split="test", resamples=0).metrics["accuracy"], abs=1e-3)


def _npz_case(path, images, labels, mask, pattern, **extra):
    np.savez(path, images=images, labels=labels, target=np.int64(3), mask=mask, pattern=pattern, **extra)
    return path


def test_a_trigger_on_another_scale_than_the_images_is_refused(tmp_path):
    """0/1 pattern stamped on 0..255 images is a near-black patch: the model never sees its trigger, and a
    backdoored model was certified clean (attack success 0 %)."""
    rng = np.random.default_rng(0)
    images = (rng.random((40, 1, 8, 8)) * 255).astype(np.uint8)
    labels = np.arange(40) % 4
    mask = np.zeros((8, 8), np.float32)
    mask[:2, :2] = 1
    with pytest.raises(AuditorError, match=r"images go up to 25\d but 'pattern' only to 1: .*images' scale"):
        load_data(str(_npz_case(tmp_path / "u8.npz", images, labels, mask, mask)))
    ok = load_data(str(_npz_case(tmp_path / "u8ok.npz", images, labels, mask, mask * 255)))
    assert float(ok.stamp.pattern.max()) == 255
    floats = load_data(str(_npz_case(tmp_path / "f.npz", images / 255.0, labels, mask, mask)))
    assert float(floats.test.X.max()) <= 1.0
    # a 0/255 mask blends x * (1 - 255) + p * 255: far outside any image, and attack success measured something else
    with pytest.raises(AuditorError, match=r"m255.npz: 'mask': the trigger's mask holds values from 0 to 255.*"
                                           r"divide it by 255"):
        load_data(str(_npz_case(tmp_path / "m255.npz", images / 255.0, labels, mask * 255, mask)))


def test_images_with_odd_strides_reach_the_model_with_ordinary_ones(tmp_path):
    """(N, H, W) images given a channel kept strides a convolution reads as channels-last, and a model's own
    `x.view(x.size(0), -1)` then failed inside Localize and every rank-one edit."""
    from auditor.data.base import Split

    X = torch.rand(6, 8, 8, 1).permute(0, 3, 1, 2)  # channels-last memory, counted as contiguous for C = 1
    split = Split(X, torch.zeros(6, dtype=torch.long), pd.DataFrame(index=range(6)))
    assert split.X.stride() == (64, 64, 8, 1) and torch.equal(split.X, X)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv(split.X[:1]).view(1, -1)  # the vendor's flatten works on what the auditor passes


def test_a_depthwise_convolution_is_skipped_by_localize_not_refused(digits_trojan):
    """A MobileNet-style model could not be localized at all: the grouped convolution, picked automatically,
    was refused. It is now left out of the ranking, and naming it is refused with the option to use."""
    from auditor.layers import resolve_layer
    from auditor.localize import rank_layers_for

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 16, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    ranking = rank_layers_for(model.eval(), digits_trojan, 2, 0)
    names = [str(n) for n in ranking["layer"]]
    assert "2" not in names and {"0", "3", "7"} <= set(names)
    from auditor.layers import check_editable

    with pytest.raises(AuditorError, match=r"grouped convolution \(groups=8\).*--layer NAME"):
        check_editable(resolve_layer(model, "2"), "2")


def test_outputs_that_look_like_probabilities_are_said(adult_mlp, adult):
    """Softmax inside the model: predictions are right, but the editors read outputs as logits."""
    from auditor.cautions import reading_cautions

    probs = adult_mlp.copy()
    probs.model = nn.Sequential(adult_mlp.model, nn.Softmax(dim=1))
    assert any("look like probabilities" in c for c in reading_cautions(probs, adult))
    assert not any("look like probabilities" in c for c in reading_cautions(adult_mlp, adult))
    # one output, read as one logit [0, z], that is in fact sigmoid(z): every row would be class 1
    from auditor.models.custom import read_single_logit

    one = adult_mlp.copy()
    one.model = read_single_logit(nn.Sequential(adult_mlp.model, nn.Softmax(dim=1), nn.Linear(2, 1), nn.Sigmoid()))
    one.spec.single_logit = True
    assert any("looks like a probability sigmoid(z)" in c for c in reading_cautions(one, adult))


def test_spec_init_reads_a_category_that_no_training_row_holds(tmp_path):
    """A vendor one-hot encodes every category of the file; the 60 % training part may miss a rare one.
    `spec init` used to fail with 'the data gives [13] inputs'; it now tries the categories of every row."""
    from auditor.data import load_csv
    from auditor.models.draft import draft_spec

    frame = pd.concat(_frames(n=400).values(), ignore_index=True)
    frame["part"] = np.where(frame.index < 240, "train", np.where(frame.index < 320, "val", "test"))
    frame.loc[frame.index[-1], "job"] = "rare"  # one test row
    frame.to_csv(tmp_path / "people.csv", index=False)
    schema = TabularSchema(target="approved", protected=["gender"], categorical=["job"], inputs=["age", "job"],
                           split_column="part")
    data = load_csv(tmp_path / "people.csv", schema)
    torch.manual_seed(0)
    arch = {"name": "mlp", "in_features": 5, "hidden": [8], "num_classes": 2}  # age + 4 categories
    from auditor.models import ModelBundle, ModelSpec, build_architecture, save_model

    save_model(ModelBundle(build_architecture(arch), ModelSpec(arch=arch, input={"kind": "tabular"})),
               tmp_path / "m.safetensors")
    draft = draft_spec(tmp_path / "m.safetensors", data)
    job = next(c for c in draft.spec["preprocessing"]["columns"] if c["name"] == "job")
    assert job["categories"] == ["a", "b", "c", "rare"]
    assert any("categories of every row (also job: 'rare'" in g for g in draft.guessed)


def test_spec_init_reads_an_mlp_over_flattened_pixels(tmp_path, digits):
    """nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)) saved as a state dict was
    refused ("an image model starts with a convolution")."""
    from auditor.models.draft import draft_spec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(digits.train.X), digits.train.y).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "flat.pt")
    draft = draft_spec(tmp_path / "flat.pt", digits)
    assert draft.spec["arch"]["name"] == "mlp" and draft.spec["arch"]["flatten"] is True
    bundle = load_model(tmp_path / "flat.pt", spec=draft.spec)
    with torch.no_grad():
        want = float((net(digits.test.X).argmax(1) == digits.test.y).double().mean())
    assert evaluate(bundle, digits, split="test", resamples=0).metrics["accuracy"] == pytest.approx(want, abs=1e-9)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(50, 10)).state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(AuditorError, match=r"Linear layer taking 50 inputs.*\(64 pixels when flattened\)"):
        draft_spec(tmp_path / "wrong.pt", digits)


def test_an_image_case_of_images_and_labels_alone_is_audited_for_accuracy(tmp_path, digits_cnn, digits):
    """A plain image classifier (no trigger, no cue) was refused: 'has no target array'."""
    X, y = digits.test.X.numpy(), digits.test.y.numpy()
    np.savez(tmp_path / "plain.npz", images=X, labels=y)
    data = load_data(str(tmp_path / "plain.npz"))
    assert data.stamp is None and data.trigger is None
    ev = evaluate(digits_cnn, data, resamples=0)
    with torch.no_grad():
        want = float((digits_cnn.model.eval()(torch.from_numpy(X)).argmax(1).numpy() == y).mean())
    assert ev.metrics["accuracy"] == pytest.approx(want, abs=1e-9)
    assert "attack_success_rate" not in ev.metrics
    np.savez(tmp_path / "target_only.npz", images=X, labels=y, target=np.int64(3))
    with pytest.raises(AuditorError, match="'target' is given without a trigger or cue"):
        load_data(str(tmp_path / "target_only.npz"))
    np.savez(tmp_path / "names.npz", images=X, labels=np.array(["cat", "dog"] * (len(y) // 2) + ["cat"] * (len(y) % 2)))
    with pytest.raises(AuditorError, match=r"holds class names \('cat', 'dog'.*give class indices"):
        load_data(str(tmp_path / "names.npz"))


def test_a_multi_class_csv_target_is_read_as_its_classes(tmp_path):
    """A 3-class tabular model had no way in: a target of 3 values needed --positive, and with it the 3-output
    model was read against 0/1 labels. Classes are now the target's values in order (numbers by value)."""
    from auditor.data import load_csv
    from auditor.data.tabular import class_order
    from auditor.models import ModelBundle, ModelSpec, build_architecture

    assert class_order(["10", "2", "1"]) == ["1", "2", "10"] and class_order(["part", "full"]) == ["full", "part"]
    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "gender": rng.choice(["F", "M"], n)})
    frame["band"] = np.select([frame["x1"] < -0.5, frame["x1"] > 0.5], ["part", "over"], "full")
    frame.to_csv(tmp_path / "hours.csv", index=False)
    data = load_csv(tmp_path / "hours.csv", TabularSchema(target="band", protected=["gender"], inputs=["x1", "x2"]))
    assert data.class_names == ["full", "over", "part"]
    whole = pd.concat([data.split(s).raw for s in ("train", "val", "test")])
    ys = torch.cat([data.split(s).y for s in ("train", "val", "test")]).numpy()
    assert (np.array(data.class_names)[ys] == whole["band"].to_numpy()).all()
    arch = {"name": "mlp", "in_features": 2, "hidden": [8], "num_classes": 3}
    torch.manual_seed(0)
    bundle = ModelBundle(build_architecture(arch).eval(), ModelSpec(arch=arch, input={"kind": "tabular"},
                                                                    class_names=["full", "over", "part"]))
    ev = evaluate(bundle, data, resamples=0)
    with torch.no_grad():
        pred = torch.cat([bundle.model(data.split(s).X).argmax(1) for s in ("train", "val", "test")]).numpy()
    assert ev.metrics["accuracy"] == pytest.approx(float((pred == ys).mean()), abs=1e-9)
    with pytest.raises(AuditorError, match="demographic_parity needs a binary task"):
        evaluate(bundle, data, requirements=[parse_requirement("demographic_parity <= 0.1")], resamples=0)
    genders = pd.concat([data.split(s).groups["gender"] for s in ("train", "val", "test")]).to_numpy()
    worst = min(float((pred[genders == g] == ys[genders == g]).mean()) for g in ("F", "M"))
    ev = evaluate(bundle, data, requirements=[parse_requirement("worst_group_accuracy >= 0.1")], resamples=300)
    assert ev.metrics["worst_group_accuracy"] == pytest.approx(worst, abs=1e-9)
    assert ev.requirements[0].low <= worst <= ev.requirements[0].high


def test_a_threshold_outside_its_metrics_range_is_refused_and_percentages_are_read():
    """'accuracy >= 85' used to be accepted and could never pass: a CI job reported FAIL, not bad input."""
    with pytest.raises(AuditorError, match=r"outside the range of accuracy \(0 to 1.*did you mean 0.85"):
        parse_requirement("accuracy >= 85")
    with pytest.raises(AuditorError, match="outside the range of demographic_parity"):
        parse_requirement("demographic_parity <= -0.1")
    assert parse_requirement("accuracy >= 85%").threshold == pytest.approx(0.85)
    assert parse_requirement("DEMOGRAPHIC_PARITY[race] <= 5 pp").threshold == pytest.approx(0.05)
    assert parse_requirement("Accuracy ≥ 0.8").op == ">="
    assert parse_requirement("cue_gap <= -0.05").threshold == -0.05 and parse_requirement("features_used <= 5")
    with pytest.raises(AuditorError, match="is a count"):
        parse_requirement("features_used <= 5 %")


def test_a_torchscript_file_is_named_as_such_with_how_to_convert_it(tmp_path):
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    spec = {"arch": {"name": "mlp", "in_features": 4, "hidden": [8], "num_classes": 2}, "input": {"kind": "tabular"}}
    with pytest.raises(AuditorError, match=r"TorchScript archive .*torch.jit.load\('scripted.pt'\).state_dict\(\)"):
        load_model(tmp_path / "scripted.pt", spec=spec)


def test_an_onnx_graph_with_its_batch_fixed_to_one_is_told_to_export_a_batch_axis(tmp_path, digits):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()

    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = net[0], net[3]

        def forward(self, x):
            return self.out(torch.relu(self.conv(x)).view(1, -1))  # the vendor's batch of one, baked in

    torch.onnx.export(Viewing().eval(), (digits.test.X[:1],), str(tmp_path / "one.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"])
    with pytest.raises(AuditorError, match=r"batch axis is fixed to 1 .*dynamic_axes"):
        load_model(tmp_path / "one.onnx", spec={"arch": {"name": "onnx", "num_classes": 10},
                                               "input": {"kind": "image", "shape": [1, 8, 8]}})


def test_an_identifier_column_read_as_an_input_is_said(tmp_path):
    from auditor.data import load_csv

    frame = pd.concat(_frames().values(), ignore_index=True)
    frame["customer_id"] = np.arange(100000, 100000 + len(frame))
    frame.to_csv(tmp_path / "people.csv", index=False)
    data = load_csv(tmp_path / "people.csv", TabularSchema(target="approved", protected=["gender"],
                                                           categorical=["job"]))
    assert any("'customer_id' holds a different whole number on every row" in n for n in data.notes)
    data = load_csv(tmp_path / "people.csv", TabularSchema(target="approved", protected=["gender"], categorical=["job"],
                                                           inputs=["age", "job"]))
    assert not any("customer_id" in n for n in data.notes)


def test_a_small_group_of_a_multi_class_task_is_said_when_left_out(tmp_path):
    from auditor.data import load_csv
    from auditor.models import ModelBundle, ModelSpec, build_architecture

    rng = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "race": rng.choice(["a", "b"], n)})
    frame["band"] = np.select([frame["x1"] < -0.5, frame["x1"] > 0.5], ["part", "over"], "full")
    frame.loc[:9, "race"] = "tiny"
    frame.to_csv(tmp_path / "h.csv", index=False)
    data = load_csv(tmp_path / "h.csv", TabularSchema(target="band", protected=["race"], inputs=["x1", "x2"]))
    arch = {"name": "mlp", "in_features": 2, "hidden": [8], "num_classes": 3}
    torch.manual_seed(0)
    bundle = ModelBundle(build_architecture(arch).eval(), ModelSpec(arch=arch, input={"kind": "tabular"},
                                                                    class_names=["full", "over", "part"]))
    ev = evaluate(bundle, data, resamples=0, min_group=30)
    assert ev.small_groups["race"]["tiny"]["left_out_of"] == ["worst_group_accuracy"]
    assert any("race=tiny is small (10 rows" in w for w in ev.warnings)
    assert ev.metrics["worst_group_accuracy"] == min(ev.groups["race"][g]["accuracy"] for g in ("a", "b"))


def test_a_date_column_is_named_as_dates_not_as_a_category():
    from auditor.data.tabular import _numeric_column

    frame = pd.DataFrame({"applied_on": pd.date_range("2020-01-01", periods=60).strftime("%Y-%m-%d"),
                          "month": ["Jan", "Feb", "Mar"] * 20})
    with pytest.raises(AuditorError, match="they look like dates: .*--inputs"):
        _numeric_column(frame, "applied_on")
    with pytest.raises(AuditorError, match="declare it categorical"):
        _numeric_column(frame, "month")


def test_parameters_changed_counts_entries_not_tensors(adult_mlp, adult):
    """The report said 1,152 parameters changed where pruning zeroed 576: it added up whole tensors."""
    result = get_editor("magnitude-pruning", sparsity=0.5).edit(adult_mlp, adult, [])
    before = dict(adult_mlp.model.named_parameters())
    by_hand = sum(int((p.detach() != before[n].detach()).sum()) for n, p in result.bundle.model.named_parameters())
    assert 0 < parameters_changed(result.delta) == by_hand
    assert by_hand < sum(p.numel() for p in result.bundle.model.parameters() if p.dim() > 1)


def test_blank_categorical_inputs_are_refused_like_numeric_ones():
    """Blank cells in a categorical input were one-hot encoded as all zeros (or fitted as a 'nan' category)
    with only an unseen-category note; a numeric input's blanks were refused. Both are refused now."""
    schema = TabularSchema(target="approved", positive="yes", categorical=["gender", "job"])
    frames = _frames()
    frames["test"].loc[3:5, "job"] = np.nan
    with pytest.raises(AuditorError, match=r"categorical column 'job' has 3 missing value\(s\).*first at row 3"):
        from_frames("vendor", frames, schema)
    frames = _frames()
    frames["train"].loc[0, "gender"] = np.nan
    with pytest.raises(AuditorError, match="categorical column 'gender' has 1 missing.*does not impute"):
        from_frames("vendor", frames, schema)
    # a model trained with 'nan' as a category of its own reads blanks as that category
    prep = {"version": 1, "columns": [{"name": "age", "type": "numeric", "mean": 40.0, "std": 10.0},
                                      {"name": "job", "type": "categorical", "categories": ["a", "b", "c", "nan"]}]}
    frames = _frames()
    frames["test"].loc[3:5, "job"] = np.nan
    data = from_frames("vendor", frames, TabularSchema(target="approved", positive="yes", categorical=["job"]),
                       preprocessing=prep)
    assert data.test.X[3:6, 4].tolist() == [1.0, 1.0, 1.0]


def test_a_minimised_model_is_audited_on_data_without_the_columns_it_dropped(adult_mlp, adult, tmp_path):
    """After a data-minimisation edit the saved model still asked for every dropped column, so a vendor could not
    stop collecting them: evaluating on a CSV without them failed. The saved spec now marks the columns the model
    no longer reads, and data without them is audited (said in the notes) with the same predictions."""
    from auditor.data.tabular import ADULT_SCHEMA, _read_adult
    from auditor.models import save_model

    result = get_editor("drop-features", k=4).edit(adult_mlp, adult, [])
    path = save_model(result.bundle, tmp_path / "min.safetensors")
    saved = load_model(path)
    unused = [c["name"] for c in saved.spec.preprocessing["columns"] if c.get("unused")]
    assert len(unused) == len(saved.spec.preprocessing["columns"]) - 4
    assert sorted(result.extras["dropped"]) == sorted(unused)  # the edit names what it dropped, as the file marks
    assert any(e.get("step") == "note" and "dropped 7:" in e.get("message", "") for e in result.log)
    assert not any(c.get("unused") for c in result.bundle.spec.preprocessing["columns"])  # the bundle's own spec
    test = _read_adult("adult.test.gz").iloc[:400].reset_index(drop=True)
    frames = {"train": test.iloc[:200], "val": test.iloc[200:300], "test": test.iloc[300:].reset_index(drop=True)}
    full = from_frames("full", frames, ADULT_SCHEMA, preprocessing=saved.spec.preprocessing)
    slim = from_frames("slim", {k: f.drop(columns=unused) for k, f in frames.items()}, ADULT_SCHEMA,
                       preprocessing=saved.spec.preprocessing)
    assert any("are not in the data: the model no longer reads them" in n for n in slim.notes)
    with torch.no_grad():
        assert torch.equal(saved.model(full.test.X).argmax(1), saved.model(slim.test.X).argmax(1))
    # a dense model marks nothing: every column is still required
    dense = load_model(save_model(adult_mlp, tmp_path / "dense.safetensors"))
    assert not any(c.get("unused") for c in dense.spec.preprocessing["columns"])
    with pytest.raises(AuditorError, match="not in the data"):
        from_frames("slim", {k: f.drop(columns=unused) for k, f in frames.items()}, ADULT_SCHEMA,
                    preprocessing=dense.spec.preprocessing)


def test_auto_baselines_say_which_editors_for_the_requirement_could_not_run(trojan_cnn, digits_trojan):
    """`--baselines auto` compared only the editors that could run, and left out the others without a word."""
    from auditor.audit.pipeline import run_audit

    outcome = run_audit(trojan_cnn, digits_trojan, ["sparsity >= 0.5"], editor="magnitude-pruning", localize=False)
    rows = outcome.session.tradeoff.rows.set_index("method")
    assert "metanet-pruning" in rows.index
    assert rows.loc["metanet-pruning", "error"].startswith("not run here: metanetworks edit tabular MLPs")
    ran = rows[rows["error"].isna()]
    assert len(ran) >= 2 and "magnitude-pruning" in " ".join(ran.index)


def test_channels_last_images_are_named_not_the_other_array(tmp_path):
    """'images' stored (N, H, W, C) beside a correct (N, C, H, W) train_images: the error blamed train_images."""
    rng = np.random.default_rng(0)
    nhwc = rng.random((12, 16, 16, 1)).astype(np.float32)
    nchw = np.transpose(nhwc, (0, 3, 1, 2))
    labels = np.arange(12) % 3
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels, train_images=nchw, train_labels=labels)
    with pytest.raises(AuditorError, match=r"'images' has shape \(16, 16, 1\) but train_images \(1, 16, 16\); "
                                           r"it is channels last \(N, H, W, C\)"):
        load_data(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", images=nchw, labels=labels, train_images=nhwc, train_labels=labels)
    with pytest.raises(AuditorError, match=r"train_images has images of shape \(16, 16, 1\).*channels last"):
        load_data(str(tmp_path / "b.npz"))


def test_an_editor_asked_for_a_requirement_it_does_not_aim_at_says_so(adult_mlp, adult):
    """Magnitude pruning asked for `features_used <= 4` pruned by its own sparsity without a word, and the
    refusal of metanet-pruning offered it "for the same requirement"."""
    session = AuditSession(adult_mlp, adult, ["features_used <= 4"])
    note = session.aim_note("magnitude-pruning")
    assert note.startswith("magnitude-pruning aims at sparsity, not at features_used: the requirement is checked")
    assert "drop-features" in note and "magnitude-pruning" not in note.split("here:")[1]
    assert session.aim_note("drop-features") is None
    way = session.way_forward(type("Pruner", (), {"targets": ("sparsity", "features_used")}), "it cannot")
    assert "for features_used:" in way and "magnitude-pruning" not in way


def test_the_report_page_counts_small_groups_not_every_warning(adult_mlp, adult):
    """"Groups under 30 rows: 1" counted every warning (an unseen-category note, say), with no group that small."""
    session = AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"], min_group=30)
    contents = session.report_contents()
    flagged = session.evaluate("pristine").small_groups
    assert contents["small_groups"] == sum(len(g) for g in flagged.values()) > 0  # Adult's smallest races
    roomy = AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"], min_group=0).report_contents()
    assert roomy["small_groups"] == 0


def test_a_data_minimisation_verdict_names_the_features_the_model_no_longer_reads(adult_mlp, adult):
    """`features_used <= 4` said PASS with a count; an auditor must see which features were dropped. The verdict's
    note, the report's requirement row and the CLI's requirement lines name them."""
    from auditor.cli.edit import print_comparison
    from auditor.report import render_html

    s = AuditSession(adult_mlp, adult, ["features_used <= 4"])
    record = s.run_edit("drop-features", {"k": 4})
    dropped = sorted(record.result.extras["dropped"])
    before, after = s.evaluate("pristine"), s.evaluate()
    total = int(before.metrics["features_used"])
    assert before.requirements[0].note == f"reads all {total} raw features"
    assert sorted(after.unused_features) == dropped
    names = ", ".join(after.unused_features)
    assert after.requirements[0].note == f"does not read {names} ({len(dropped)} of {total} raw features)"
    html = render_html(s.build_report(rerun_tradeoff=False))
    assert f"after: does not read {after.unused_features[0]}" in html
    out = __import__("io").StringIO()
    print_comparison(before, after, out)
    assert f"after, does not read {after.unused_features[0]}" in out.getvalue()


def test_a_fine_tune_after_a_minimisation_keeps_the_dropped_inputs_out(adult_mlp, adult):
    """finetune-fairness after drop-features brought a dropped column back (features used 4 -> 5), silently undoing
    the earlier edit; the fine-tunes now keep exact zeros at zero and say how many."""
    from auditor.requirements import features_used

    slim = get_editor("drop-features", k=4).edit(adult_mlp, adult, []).bundle
    assert features_used(slim.model, adult.feature_groups) == 4
    fair = get_editor("finetune-fairness").edit(slim, adult, ["demographic_parity <= 0.05"])
    assert fair.changed and features_used(fair.bundle.model, adult.feature_groups) == 4
    assert any(e.get("step") == "note" and "kept at zero" in e.get("message", "") for e in fair.log)
    first = dict(slim.model.named_parameters())
    for name, p in fair.bundle.model.named_parameters():
        assert not bool((p.detach()[first[name].detach() == 0] != 0).any()), name
    dense = get_editor("finetune-fairness").edit(adult_mlp, adult, ["demographic_parity <= 0.05"])
    assert not any(e.get("step") == "note" and "kept at zero" in e.get("message", "") for e in dense.log)


def test_a_retraining_baseline_that_cannot_run_is_not_offered_by_default_and_keeps_its_kind(adult_mlp, adult):
    """Compare pre-selected reweighing-retrain for a user's own class; it failed as a 'post-processing' row with its
    reason only in the JSON."""
    theirs = copy.deepcopy(adult_mlp)
    theirs.spec.arch["name"] = "custom"
    session = AuditSession(theirs, adult, ["demographic_parity <= 0.05"])
    assert "reweighing-retrain" in session.baseline_choices()
    why = session.unavailable_alternatives()
    assert list(why) == ["reweighing-retrain"]
    assert "'custom' is not one the auditor can build" in why["reweighing-retrain"]
    assert AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"]).unavailable_alternatives() == {}
    session.run_tradeoff(["reweighing-retrain"])
    row = session.tradeoff.rows.set_index("method").loc["reweighing-retrain"]
    assert row["kind"] == "retraining" and row["error"]


def test_a_numeric_protected_attribute_with_many_values_is_said(tmp_path):
    """--protected age makes every age a group of its own: said, with how to audit bands (not guessed)."""
    from auditor.data import TabularSchema, load_csv

    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"x": rng.normal(size=n), "age": rng.integers(18, 80, n), "sex": rng.choice(["F", "M"], n),
                          "y": rng.choice(["no", "yes"], n)})
    frame.to_csv(tmp_path / "p.csv", index=False)
    data = load_csv(tmp_path / "p.csv", TabularSchema(target="y", positive="yes", protected=["age", "sex"],
                                                      inputs=["x"]))
    said = [n for n in data.notes if "protected attribute 'age' is numeric" in n]
    assert len(said) == 1 and "62 distinct values" in said[0] and "age_band" in said[0]
    assert not any("'sex' is numeric" in n for n in data.notes)


def test_keeping_k_features_on_a_model_with_fewer_runs_with_its_defaults():
    """The dashboard offers drop-features first; run with its defaults (k = 5) on a model of 2 raw features it
    failed with "k must be between 1 and the 2 raw features; got 5"."""
    from auditor.editors import get_editor
    from tests.fixtures import tabular_data

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2)).astype(np.float32)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(np.int64)
    data = tabular_data(X, y, {"g": rng.choice(["a", "b"], 400).tolist()})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    from auditor.models import ModelBundle, ModelSpec

    bundle = ModelBundle(model.eval(), ModelSpec(arch={"name": "custom"}, class_names=["0", "1"]))
    for name, kw in (("drop-features", {}), ("retrain-k-features", {"warm_start": True})):
        result = get_editor(name, **kw).edit(bundle, data, [])
        assert result.extras["k"] == 1  # one fewer than the model reads
        held = get_editor(name, **kw).edit(bundle, data, ["features_used <= 10"])  # already holds: keeps both
        assert held.extras["k"] == 2
    with pytest.raises(AuditorError, match="k must be between 1 and the 2 raw features; got 3"):
        get_editor("drop-features", k=3).edit(bundle, data, [])
