"""The editor contract (`auditor.editors.testing.check_editor`) over the whole registry, that it
catches editors that break it, the registry's one order (`editors_for`) and module discovery."""
from __future__ import annotations

import copy
import dataclasses
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
import torch

from auditor.editors import EDITORS, Editor, editors_for, get_editor
from auditor.editors.registry import discover, editor_modules
from auditor.editors.testing import check_editor, check_settings
from auditor.errors import AuditorError
from tests.editor_cases import editor_params, fast_settings, pick_pair, sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", editor_params())
def test_every_registered_editor_meets_the_contract(name):
    cls = EDITORS[name]
    pick_pair(cls)  # skips (with every sample's reason) when no sample model fits the editor
    report = check_editor(cls(**fast_settings(cls)))
    assert report.editor == name
    assert {"no-silent-change", "revert", "determinism", "thread-safety", "json-result", "refusal"} <= set(
        report.checks)
    assert report.refusals, "no refusal was checked"


def test_check_editor_picks_a_sample_and_reports():
    report = check_editor(EDITORS["magnitude-pruning"])
    assert (report.model, report.data) == ("compas_mlp", "compas")
    assert report.requirements == ["sparsity >= 0.5", "accuracy >= 0.6"]
    assert report.changed and report.layers
    assert report.to_dict()["editor"] == "magnitude-pruning"


def test_check_editor_takes_a_bundle_data_and_requirements():
    bundle, data = sample("adult_mlp", "adult")
    report = check_editor(get_editor("magnitude-pruning", sparsity=0.2), bundle, data,
                          requirements=["sparsity >= 0.2"], threads=False)
    assert (report.model, report.data) == ("adult_mlp", "adult") and "thread-safety" in report.skipped
    with pytest.raises(AuditorError, match="both a bundle and its data"):
        check_editor(EDITORS["magnitude-pruning"], bundle)


# --- editors that break the contract are caught ---------------------------------------------------

def _prune_first(model, fraction=0.5):
    w = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0].weight
    with torch.no_grad():
        w[w.abs() < w.abs().flatten().quantile(fraction)] = 0


@dataclass
class _Hyper:
    fraction: float = field(default=0.5, metadata={"help": "fraction of the first layer's weights to zero"})


class _Good(Editor):
    name = "test-good"
    description = "zeroes the smallest weights of the first Linear layer"
    targets = ("sparsity",)
    Hyper = _Hyper

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        _prune_first(model, self.hparams.fraction)
        log.append({"step": "prune", "fraction": self.hparams.fraction})


class _NoHelp(_Good):
    @dataclass
    class Hyper:
        fraction: float = 0.5  # a comment is not help


class _Counting(_Good):
    """Keeps state between edits: the second edit differs from the first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        self.calls += 1
        _prune_first(model, min(0.9, self.hparams.fraction + 0.1 * self.calls))
        log.append({"step": "prune"})


class _TouchesData(_Good):
    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        data.train.X[0, 0] += 1.0
        _prune_first(model)


class _SilentNoop(_Good):
    def edit(self, bundle, data, requirements=(), **kwargs):
        result = super().edit(bundle, data, requirements, **kwargs)
        result.log = [step for step in result.log if step.get("changed") is not False]  # hides the no-op
        return result

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        pass


class _Crashes(_Good):
    def supports(self, bundle, data):
        return None  # claims it can edit anything

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        _prune_first(model)  # IndexError on a model without Linear layers


class _NumpyExtras(_Good):
    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        _prune_first(model)
        return {"fraction": torch.tensor(0.5)}


@pytest.mark.parametrize("editor, message", [
    (_NoHelp, "has no help"),
    (_Counting, "differ between two edits"),
    (_SilentNoop, "changed nothing and its log does not say so"),
    (_Crashes, "crashed with IndexError"),
    (_NumpyExtras, "not plain JSON"),
])
def test_check_editor_catches_broken_editors(editor, message):
    with pytest.raises(AssertionError, match=message):
        check_editor(editor, *sample("compas_mlp", "compas"), requirements=["sparsity >= 0.5"])


def test_check_editor_catches_an_editor_that_changes_the_data():
    bundle, shared = sample("compas_mlp", "compas")
    data = copy.deepcopy(shared)  # its own copy: this editor scribbles on it
    with pytest.raises(AssertionError, match="changed the data"):
        check_editor(_TouchesData, bundle, data, requirements=["sparsity >= 0.5"])


def test_the_good_editor_passes():
    report = check_editor(_Good, *sample("compas_mlp", "compas"), requirements=["sparsity >= 0.5"])
    assert report.changed and len(report.layers) == 1 and report.seconds >= 0


# --- settings --------------------------------------------------------------------------------------

def test_every_setting_has_help_and_valid_choices():
    for cls in EDITORS.values():
        check_settings(cls)


def test_setting_choices_use_the_tokens():
    f = {x.name: x for x in dataclasses.fields(EDITORS["dynamic-rank-one"].Hyper)}
    assert f["layer"].metadata["choices"] == "layer"
    assert f["check_split"].metadata["choices"] == "split" and f["split"].metadata["choices"] == "split"
    assert f["attribution"].metadata["choices"] == "attribution"
    assert f["samples"].metadata["help"].startswith("clean samples")
    g = {x.name: x for x in dataclasses.fields(EDITORS["finetune-fairness"].Hyper)}
    assert g["attribute"].metadata["choices"] == "protected"
    assert g["metric"].metadata["choices"] == ["demographic_parity", "equalized_odds"]


def test_one_editor_instance_keeps_no_log():
    editor = get_editor("magnitude-pruning", sparsity=0.3)
    bundle, data = sample("compas_mlp", "compas")
    first = editor.edit(bundle, data, device="cpu")
    second = editor.edit(bundle, data, device="cpu")
    assert first.log == second.log and first.log is not second.log
    assert not hasattr(editor, "log")


# --- the registry's order --------------------------------------------------------------------------

def test_editors_for_orders_learned_rank_one_dynamic_first_then_baselines():
    names = [c.name for c in editors_for()]
    assert sorted(names) == sorted(EDITORS)
    kinds = [EDITORS[n].kind for n in names]
    assert kinds == sorted(kinds, key=["learned", "rank-one", "baseline"].index)
    rank_one = [n for n in names if EDITORS[n].kind == "rank-one"]
    assert rank_one[0] == "dynamic-rank-one"
    for kind in ("learned", "baseline"):
        group = [n for n in names if EDITORS[n].kind == kind]
        assert group == sorted(group)


def test_editors_for_filters_by_model_data_and_metric():
    bundle, data = sample("digits_cnn_trojan", "digits-trojan")
    names = [c.name for c in editors_for(bundle, data)]
    assert names[:2] == ["dynamic-rank-one", "rank-one"]
    assert "finetune-fairness" not in names and "metanet-fairness" not in names
    assert all(EDITORS[n]().supports(bundle, data) is None for n in names)
    compas_bundle, compas = sample("compas_mlp", "compas")
    fair = [c.name for c in editors_for(compas_bundle, compas, "demographic_parity[race]")]
    assert "finetune-fairness" in fair
    assert all("demographic_parity" in EDITORS[n].targets for n in fair)
    assert [c.name for c in editors_for(metric="sparsity")] == [
        "metanet-pruning", "magnitude-pruning", "magnitude-pruning-finetune"]


def test_editors_for_leaves_out_an_editor_that_raises_while_checking(monkeypatch):
    class Broken(_Good):
        name = "test-broken"

        def supports(self, bundle, data):
            raise RuntimeError("cannot even check")

    monkeypatch.setitem(EDITORS, Broken.name, Broken)
    bundle, data = sample("compas_mlp", "compas")
    assert Broken not in editors_for(bundle, data)
    assert Broken in editors_for()  # without a model and data nothing is checked


# --- adding an editor is one new file --------------------------------------------------------------

def test_a_new_editor_module_is_discovered(tmp_path, monkeypatch):
    pkg = tmp_path / "extra_editors"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("raise RuntimeError('a module that registers nothing is not imported')\n")
    (pkg / "sub" / "mine.py").write_text(textwrap.dedent('''
        from auditor.editors import Editor
        from auditor.editors.registry import register_editor


        @register_editor
        class Mine(Editor):
            name = "test-discovered"
            description = "found by discover()"

            def _edit(self, model, data, requirements, device, callback, *, log, **_):
                pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert discover("extra_editors") == ["extra_editors.sub.mine"]
        assert "test-discovered" in EDITORS
    finally:
        EDITORS.pop("test-discovered", None)
        for mod in [m for m in sys.modules if m.startswith("extra_editors")]:
            del sys.modules[mod]


def test_the_shipped_modules_are_found_without_training_code():
    found = editor_modules("auditor.editors")
    assert {"auditor.editors.rank_one", "auditor.editors.mend", "auditor.editors.metanet.editors",
            "auditor.editors.baselines.finetune_fairness"} <= set(found)
    assert not [m for m in found if m.endswith((".train", ".runtime", ".testing", ".registry", ".base"))]
    assert {EDITORS[n].__module__ for n in EDITORS} <= set(found)
