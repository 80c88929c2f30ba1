"""`check_editor`: the editor contract as one call, for anyone who writes an editor (like
scikit-learn's `check_estimator`).

    >>> from auditor.editors.testing import check_editor
    >>> report = check_editor(MyEditor)                        # doctest: +SKIP
    >>> report = check_editor(MyEditor(steps=5), bundle, data,  # doctest: +SKIP
    ...                       requirements=["sparsity >= 0.5"])

It edits a sample model (or the `bundle` and `data` given) and raises `AssertionError`, saying
which rule and which tensor or value, when the editor breaks a rule:

- **settings**: `name`, `kind`, `targets`; `Hyper` is a dataclass whose every field carries
  `metadata={"help": ...}` and, if any, valid `"choices"` (a list, or a token of `CHOICE_TOKENS`).
- **JSON**: the settings go to JSON and back to an equal `Hyper`; `EditResult.to_dict()` is
  plain JSON (no NaN, no numpy or torch values).
- **no silent change**: the input bundle (weights, sha256, training mode, hooks), the data and
  the fixes are the same after the edit; the result's `WeightDelta` holds exactly the tensors that
  changed, with their old and new values; an edit that changed nothing says so
  (`EditResult.changed` is False and its log has a note).
- **revert**: `result.reverted()` gives the original weights bit for bit; applying the delta to
  the reverted copy gives the edit back.
- **determinism**: the same settings and seed give the same weights, layers and log, bit for bit
  (in one process, at one intra-op thread).
- **thread safety**: one editor instance editing in two threads at once gives what it gives alone.
- **refusal**: a model without a Linear/Conv2d layer, a sample the editor does not support, and
  (for editors that fix mistakes) a call without fixes each raise `AuditorError` with a reason:
  never another exception, never a silent no-op.

Without `bundle` and `data` it picks the first sample (`sample_models/*.safetensors` with the
built-in data sets digits-trojan, digits-spurious, compas, digits, adult) that the editor
supports, preferring the ones its `targets` are about; requirements and fixes come from the
targets too. Returns a `CheckReport`. An editor that supports no sample raises `AuditorError`
(pass a bundle and data of your own).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AuditorError
from .base import CHOICE_TOKENS, Editor, EditResult
from .registry import KIND_ORDER

# --------------------------------------------------------------------------------------------
# samples: which model and data an editor is checked on

SAMPLE_DIR = Path(os.environ.get("AUDITOR_SAMPLE_MODELS") or Path(__file__).resolve().parents[2] / "sample_models")
# (model, data) pairs, smallest first; an editor runs on the first its targets prefer and it supports
SAMPLES = [("digits_cnn_trojan", "digits-trojan"), ("digits_cnn_spurious", "digits-spurious"),
           ("compas_mlp", "compas"), ("digits_cnn", "digits"), ("adult_mlp", "adult")]
PREFER = {"attack_success_rate": "digits_cnn_trojan", "cue_gap": "digits_cnn_spurious",
          "cue_accuracy": "digits_cnn_spurious", "worst_group_accuracy": "digits_cnn_spurious",
          "demographic_parity": "compas_mlp", "equalized_odds": "compas_mlp", "features_used": "compas_mlp",
          "sparsity": "compas_mlp", "edit_success": "digits_cnn", "generality": "digits_cnn"}
# a requirement that gives each target something to do
REQUIRE = {"attack_success_rate": "attack_success_rate <= 0.02", "cue_gap": "cue_gap <= 0.05",
           "cue_accuracy": "cue_gap <= 0.05", "worst_group_accuracy": "cue_gap <= 0.05",
           "demographic_parity": "demographic_parity <= 0.05", "equalized_odds": "equalized_odds <= 0.05",
           "features_used": "features_used <= 3", "sparsity": "sparsity >= 0.5", "edit_success": "edit_success >= 1"}
FLOOR = {"adult": "accuracy >= 0.8", "compas": "accuracy >= 0.6"}  # a utility floor; else accuracy >= 0.9
FIX_TARGETS = {"edit_success", "generality"}  # editors that fix given mistakes
VOLATILE = ("time", "second")  # log keys whose values are wall-clock times


@cache
def sample(model: str, data: str):
    """(bundle, data) of a sample, loaded once per process. Callers must never change them."""
    from ..data import load_data
    from ..models import load_model

    path = SAMPLE_DIR / f"{model}.safetensors"
    if not path.exists():
        raise AuditorError(f"sample model {path} not found (a source checkout has them; or set "
                           "$AUDITOR_SAMPLE_MODELS, or pass a bundle and data to check_editor)")
    bundle = load_model(path)
    return bundle, load_data(data, spec=bundle.spec)


def pick_sample(editor) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """The sample (model, data) names the editor supports, preferring those its targets are about
    (None when it supports none), and every refused sample's reason."""
    cls = editor if isinstance(editor, type) else type(editor)
    inst = editor if isinstance(editor, Editor) else cls()
    preferred = [PREFER[t] for t in cls.targets if t in PREFER]
    order = sorted(SAMPLES, key=lambda p: (p[0] not in preferred, SAMPLES.index(p)))
    reasons: dict[str, str] = {}
    for model, data in order:
        bundle, d = sample(model, data)
        reason = inst.supports(bundle, d)
        if reason is None:
            return (model, data), reasons
        reasons[model] = reason
    return None, reasons


def requirements_for(editor, data) -> list[str]:
    """One requirement on the editor's first target (where there is a natural one) plus a utility floor."""
    cls = editor if isinstance(editor, type) else type(editor)
    reqs = [REQUIRE[t] for t in cls.targets if t in REQUIRE][:1]
    return reqs + [FLOOR.get(data.name, "accuracy >= 0.9")]


def fixes_for(bundle, data, n: int = 2):
    """Mistakes to fix: the first `n` test rows the model gets wrong, with their true labels."""
    from ..fixes import make_fixes
    from ..models import predict_logits

    pred = predict_logits(bundle.model, data.test.X).argmax(1)
    wrong = torch.nonzero(pred != data.test.y).flatten()[:n]
    return make_fixes(data, data.test.X[wrong], data.test.y[wrong], seed=0)


# --------------------------------------------------------------------------------------------
# digests of what an edit must not change

def data_digest(data) -> str:
    """sha256 of everything in a data set: every split's inputs, labels, groups, raw rows and corrupted
    twins, the stamp, names and preprocessing (`AuditData.sha256` is cached and covers fewer fields)."""
    from ..data.base import frame_hash

    h = hashlib.sha256(repr((data.name, data.kind, data.feature_names, data.feature_groups, data.protected,
                             data.class_names, data.preprocessing, data.schema)).encode())
    for s in ("train", "val", "test"):
        sp = data.split(s)
        for t in (sp.X, sp.y, sp.corrupted):
            h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
        for f in (sp.groups, sp.raw):
            h.update(b"-" if f is None else frame_hash(f, index=True))
            h.update(b"-" if f is None else repr(list(f.columns)).encode())
    if data.stamp is not None:
        h.update(data.stamp.mask.numpy().tobytes() + data.stamp.pattern.numpy().tobytes())
        h.update(f"{data.stamp.target}{data.stamp.kind}".encode())
    return h.hexdigest()


def fixes_digest(fixes) -> str:
    if fixes is None:
        return "-"
    return hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in (fixes.X, fixes.y, fixes.X_equiv,
                                                                           fixes.y_equiv))).hexdigest()


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, d, {})) for m in model.modules()
               for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _snapshot(bundle, data, fixes) -> dict:
    source = Path(bundle.source) if bundle.source else None
    return {"sha256": bundle.sha256, "state": {k: v.detach().clone() for k, v in bundle.model.state_dict().items()},
            "training": bundle.model.training, "hooks": _hooks(bundle.model), "history": copy.deepcopy(bundle.history),
            "data": data_digest(data), "fixes": fixes_digest(fixes),
            "file": file_digest(source) if source is not None and source.is_file() else None}


def _same_input(name: str, before: dict, bundle, data, fixes, when: str) -> None:
    after = _snapshot(bundle, data, fixes)
    where = f"{name}: {when}"
    changed = [k for k, v in before["state"].items() if not torch.equal(v, after["state"][k])]
    assert not changed, f"{where} changed the input model's tensors {changed} (edits must work on a copy)"
    assert after["sha256"] == before["sha256"], f"{where} changed the input model's sha256"
    assert after["training"] == before["training"], f"{where} changed the input model's train/eval mode"
    assert after["hooks"] == before["hooks"], f"{where} left hooks on the input model"
    assert after["history"] == before["history"], f"{where} changed the input bundle's history"
    assert after["data"] == before["data"], f"{where} changed the data"
    assert after["fixes"] == before["fixes"], f"{where} changed the fixes"
    assert after["file"] == before["file"], f"{where} changed the model file"


# --------------------------------------------------------------------------------------------
# running edits the same way every time

@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count for this OS thread (it sets the float reduction order), restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seeded_edit(editor: Editor, bundle, data, requirements, fixes, *, seed: int = 0, threads: int = 1) -> EditResult:
    """`editor.edit` on CPU after seeding every generator with `seed`, at `threads` intra-op threads."""
    from ..backend import seed_everything

    with intra_op_threads(threads):
        seed_everything(seed)
        return editor.edit(bundle, data, requirements, device="cpu", fixes=fixes)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _stable_log(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in step.items() if not any(w in k for w in VOLATILE)} for step in log]


def _plain_json(value, path: str = "") -> list[str]:
    """Where `value` is not plain JSON (dict with str keys, list, str, int, float (finite), bool, None)."""
    if isinstance(value, dict):
        bad = [f"{path}: key {k!r} is not a string" for k in value if not isinstance(k, str)]
        return bad + [p for k, v in value.items() for p in _plain_json(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _plain_json(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {value} (not valid JSON)"]
    if value is None or isinstance(value, (str, int, float, bool)):
        return []
    return [f"{path}: {type(value).__module__}.{type(value).__name__}"]


# --------------------------------------------------------------------------------------------
# the checks

@dataclass
class CheckReport:
    """What `check_editor` ran and saw."""

    editor: str
    model: str
    data: str
    requirements: list[str]
    changed: bool  # whether the edit changed any weight
    layers: list[str]  # layers the edit changed
    seconds: float  # wall time of the reference edit
    checks: list[str] = field(default_factory=list)  # the checks that passed
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not apply
    refusals: dict[str, str] = field(default_factory=dict)  # unsupported case -> the reason the editor gave

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_settings(editor) -> None:
    """The class-level contract: name, kind, targets, and a `Hyper` whose fields carry help and choices."""
    cls = editor if isinstance(editor, type) else type(editor)
    assert issubclass(cls, Editor), f"{cls!r} is not an Editor subclass"
    assert cls.name and isinstance(cls.name, str), f"{cls.__name__} needs a `name`"
    assert cls.description, f"{cls.name}: needs a `description`"
    assert cls.kind in KIND_ORDER, f"{cls.name}: kind {cls.kind!r} is not one of {list(KIND_ORDER)}"
    assert isinstance(cls.targets, tuple) and all(isinstance(t, str) for t in cls.targets), \
        f"{cls.name}: `targets` must be a tuple of metric names"
    params = inspect.signature(cls._edit).parameters
    assert "log" in params and params["log"].kind is inspect.Parameter.KEYWORD_ONLY, \
        f"{cls.name}: `_edit` must take the edit's log as the keyword argument `log` (not keep it on self)"
    if cls.Hyper is None:
        return
    assert dataclasses.is_dataclass(cls.Hyper), f"{cls.name}: `Hyper` must be a dataclass"
    for f in dataclasses.fields(cls.Hyper):
        where = f"{cls.name}: setting {f.name!r}"
        helptext = f.metadata.get("help")
        assert isinstance(helptext, str) and helptext.strip(), \
            f'{where} has no help: declare it as field(default=..., metadata={{"help": "..."}})'
        choices = f.metadata.get("choices")
        assert choices is None or choices in CHOICE_TOKENS or (isinstance(choices, list) and choices), \
            f"{where}: choices {choices!r} must be a non-empty list or one of {CHOICE_TOKENS}"


def check_json(editor: Editor, result: EditResult | None = None) -> None:
    """Settings go to JSON and back unchanged; the result's `to_dict()` is plain JSON."""
    cls = type(editor)
    hp = dataclasses.asdict(editor.hparams) if editor.hparams is not None else {}
    text = json.dumps(hp, allow_nan=False)
    again = cls.hyper_from_dict(json.loads(text))
    assert again == editor.hparams, f"{cls.name}: settings {hp} do not survive a JSON round trip ({again})"
    assert cls(again).hparams == editor.hparams
    if result is not None:
        d = result.to_dict()
        bad = _plain_json(d, "to_dict()")
        assert not bad, f"{cls.name}: EditResult.to_dict() is not plain JSON: {bad[:5]}"
        assert json.loads(json.dumps(d, allow_nan=False)) == json.loads(json.dumps(d)), cls.name
        assert result.hyperparameters == hp, f"{cls.name}: result.hyperparameters differ from the settings"


def check_delta(name: str, bundle, result: EditResult) -> None:
    """The delta holds exactly the tensors that changed, with their old and new values; no-ops say so."""
    assert result.bundle is not bundle and result.bundle.model is not bundle.model, \
        f"{name}: the result must hold an edited copy, not the input bundle"
    old, new = _state(bundle.model), _state(result.bundle.model)
    modules = dict(result.bundle.model.named_modules())
    added = sorted(k for k in new.keys() - old.keys()  # an adapter's tensors (a codebook) may be added
                   if k.rpartition(".")[2] not in getattr(modules.get(k.rpartition(".")[0]), "adapter_tensors", ()))
    assert not added and old.keys() <= new.keys(), \
        f"{name}: the edit added or removed tensors: {sorted(old.keys() ^ new.keys())}"
    changed = sorted(k for k in new if k not in old or old[k].shape != new[k].shape or not torch.equal(old[k], new[k]))
    assert sorted(result.delta.before) == changed == sorted(result.delta.after), \
        f"{name}: the delta lists {sorted(result.delta.before)} but {changed} changed"
    for k in changed:
        assert torch.equal(result.delta.before[k], old[k]) if k in old else result.delta.before[k].numel() == 0, \
            f"{name}: delta.before[{k!r}] is not the original"
        assert torch.equal(result.delta.after[k], new[k]), f"{name}: delta.after[{k!r}] is not the edited value"
    assert result.changed == bool(changed), f"{name}: EditResult.changed is {result.changed}"
    assert result.layers == sorted({k.rsplit(".", 1)[0] for k in changed}), f"{name}: result.layers is wrong"
    if not changed:
        assert any(step.get("changed") is False for step in result.log), \
            f"{name}: the edit changed nothing and its log does not say so"
    assert result.bundle.history and result.bundle.history[-1].get("editor") == name, \
        f"{name}: the edited bundle's history does not record the edit"
    assert _hooks(result.bundle.model) == _hooks(bundle.model), f"{name}: the edited model has hooks left on it"
    assert not result.bundle.model.training or bundle.model.training, f"{name}: the edited model is left in train mode"


def check_revert(name: str, bundle, result: EditResult) -> None:
    """Reverting gives the original weights bit for bit; re-applying the delta gives the edit back."""
    reverted = result.reverted()
    orig, back = _state(bundle.model), _state(reverted.model)
    wrong = [k for k in orig if not torch.equal(orig[k], back[k])]
    assert not wrong, f"{name}: revert is not bit-exact for {wrong}"
    assert reverted.sha256 == bundle.sha256, f"{name}: the reverted model's sha256 differs from the original's"
    again = reverted.copy()
    result.delta.apply(again.model)
    assert again.sha256 == result.bundle.sha256, f"{name}: re-applying the delta does not give the edit back"


def check_same(name: str, first: EditResult, second: EditResult, what: str) -> None:
    s1, s2 = _state(first.bundle.model), _state(second.bundle.model)
    diff = [k for k in s1 if not torch.equal(s1[k], s2[k])]
    assert not diff, f"{name}: tensors {diff} differ {what}"
    assert first.layers == second.layers, f"{name}: changed layers differ {what}"
    assert first.hyperparameters == second.hyperparameters, f"{name}: hyperparameters differ {what}"
    assert _stable_log(first.log) == _stable_log(second.log), f"{name}: the logs differ {what}"


class _NoLayers(nn.Module):
    """A model without a Linear or Conv2d layer (constant logits): every editor must refuse it."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("logits", torch.zeros(n_classes))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def _expect_refusal(editor: Editor, bundle, data, requirements, fixes, case: str) -> str:
    """`edit` raises AuditorError with a reason (and leaves everything as it was)."""
    name = editor.name
    before = _snapshot(bundle, data, fixes)
    try:
        result = editor.edit(bundle, data, requirements, device="cpu", fixes=fixes)
    except AuditorError as exc:
        assert str(exc).strip(), f"{name}: refused {case} without a reason"
        _same_input(name, before, bundle, data, fixes, f"refusing {case}")
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (the point: any other exception is a crash)
        raise AssertionError(f"{name}: {case} crashed with {type(exc).__name__}: {exc}; it must raise "
                             "AuditorError with a reason (return it from `supports`)") from exc
    raise AssertionError(f"{name}: {case} was edited (changed={result.changed}) instead of refused with a reason")


def check_refusals(editor: Editor, bundle, data, requirements, fixes, report: CheckReport) -> None:
    cls = type(editor)
    # 1. a model it cannot edit
    from ..models.bundle import ModelBundle

    n_classes = len(data.class_names) or 2
    empty = ModelBundle(_NoLayers(n_classes), copy.deepcopy(bundle.spec))
    reason = editor.supports(empty, data)
    assert reason is None or (isinstance(reason, str) and reason.strip()), \
        f"{cls.name}: supports() must return None or a reason, got {reason!r}"
    report.refusals["a model without Linear/Conv2d layers"] = _expect_refusal(
        editor, empty, data, requirements, fixes, "a model without Linear/Conv2d layers")
    # 2. a sample it does not support
    unsupported = None
    if SAMPLE_DIR.is_dir():
        for model, data_name in SAMPLES:
            b, d = sample(model, data_name)
            why = editor.supports(b, d)
            if why is not None:
                unsupported = (model, data_name, b, d, why)
                break
    if unsupported is None:
        report.skipped["refuses an unsupported sample"] = "every sample is supported"
    else:
        model, data_name, b, d, why = unsupported
        assert isinstance(why, str) and why.strip(), f"{cls.name}: supports() on {model} gave no reason: {why!r}"
        got = _expect_refusal(editor, b, d, requirements_for(cls, d), fixes_for(b, d) if fixes else None,
                              f"{model} on {data_name}")
        assert why in got, f"{cls.name}: the refusal {got!r} does not give supports()'s reason {why!r}"
        report.refusals[f"{model} on {data_name}"] = got
    # 3. editors that fix mistakes, without mistakes to fix
    if FIX_TARGETS & set(cls.targets):
        report.refusals["no fixes"] = _expect_refusal(editor, bundle, data, requirements, None, "an edit without fixes")
    else:
        report.skipped["refuses an edit without fixes"] = "the editor does not fix given mistakes"
    report.checks.append("refusal")


def check_editor(editor, bundle=None, data=None, *, requirements=None, fixes=None, threads: bool = True,
                 refusal: bool = True) -> CheckReport:
    """Check an editor (a class, or an instance with the settings to check) against the editor contract.

    `bundle`, `data`: the model and data to edit (default: the first sample the editor supports);
    `requirements` (default: one on the editor's first target plus a utility floor) and `fixes`
    (default: for editors that fix mistakes, the first two test rows the model gets wrong) go to
    `edit`. `threads`/`refusal` False skip those checks. Raises AssertionError naming the broken
    rule; returns a `CheckReport`. See the module docstring for the rules."""
    editor = editor() if isinstance(editor, type) else editor
    cls = type(editor)
    name = cls.name
    check_settings(cls)
    check_json(editor)
    if (bundle is None) != (data is None):
        raise AuditorError("check_editor: give both a bundle and its data, or neither (a sample is picked)")
    if bundle is None:
        picked, reasons = pick_sample(editor)
        if picked is None:
            raise AuditorError(f"editor {name!r} supports no sample model ("
                               + "; ".join(f"{m}: {r}" for m, r in reasons.items()) + "); pass a bundle and data")
        bundle, data = sample(*picked)
    else:
        reason = editor.supports(bundle, data)
        assert reason is None, f"{name}: cannot edit the given model on the given data: {reason}"
    requirements = list(requirements) if requirements is not None else requirements_for(cls, data)
    if fixes is None and FIX_TARGETS & set(cls.targets):
        fixes = fixes_for(bundle, data)
    report = CheckReport(name, bundle.name, data.name, [str(r) for r in requirements], False, [], 0.0)
    report.checks += ["settings", "json-settings"]

    before = _snapshot(bundle, data, fixes)
    start = time.perf_counter()
    first = seeded_edit(editor, bundle, data, requirements, fixes)
    report.seconds = time.perf_counter() - start
    assert isinstance(first, EditResult), f"{name}: edit returned {type(first).__name__}, not an EditResult"
    _same_input(name, before, bundle, data, fixes, "the edit")
    check_delta(name, bundle, first)
    report.changed, report.layers = first.changed, first.layers
    report.checks.append("no-silent-change")
    check_revert(name, bundle, first)
    report.checks.append("revert")
    check_json(editor, first)
    report.checks.append("json-result")

    torch.rand(17)  # move the global generators on: the seed must put them back
    np.random.rand(3)
    second = seeded_edit(editor, bundle, data, requirements, fixes)
    check_same(name, first, second, "between two edits with the same settings and seed")
    report.checks.append("determinism")

    if threads:
        results: dict[int, EditResult] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def work(i: int) -> None:
            try:
                with intra_op_threads(1):
                    barrier.wait(60)
                    results[i] = editor.edit(bundle, data, requirements, device="cpu", fixes=fixes)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, in the calling thread)
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise AssertionError(f"{name}: an edit in a thread failed: {errors[0]!r}") from errors[0]
        for i in range(2):
            check_same(name, first, results[i], "when one instance edits in two threads at once")
        _same_input(name, before, bundle, data, fixes, "two edits in threads")
        report.checks.append("thread-safety")
    else:
        report.skipped["thread-safety"] = "not asked for"

    if refusal:
        check_refusals(editor, bundle, data, requirements, fixes, report)
    else:
        report.skipped["refusal"] = "not asked for"
    return report


__all__ = ["CheckReport", "check_editor", "check_json", "check_settings", "data_digest", "file_digest",
           "fixes_digest", "fixes_for", "intra_op_threads", "pick_sample", "requirements_for", "sample",
           "seeded_edit"]
