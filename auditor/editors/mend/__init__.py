"""MEND-style learned gradient editor: fix specific mistakes ("this input should be that label").

The fine-tuning gradient of a Linear layer for one example is the outer product of the
back-propagated delta and the layer input u; a small learned network (`GradientEditor`) maps
(u, delta) to a better pair and the edit is their outer product times a learned step per layer.
Editors are trained per model (`train_mend`, `sample_models/build_mend.py`); those for the sample
models ship as `auditor/editors/weights/mend_<model>.safetensors`, and one trained for your model is
found next to the model file or on the editor search path (`auditor.editors.weights`).

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> from auditor.fixes import parse_fixes
    >>> bundle = load_model("sample_models/digits_cnn.safetensors")
    >>> data = load_data("digits", spec=bundle.spec)
    >>> fixes = parse_fixes(["5=3"], data)              # test row 5 should be a 3
    >>> result = get_editor("mend").edit(bundle, data, fixes=fixes)
    >>> int(result.bundle.model(fixes.X).argmax(1)[0])
    3
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ...errors import AuditorError
from ...models.files import ModelBundle
from ..base import Editor
from ..registry import register_editor
from ..weights import editor_search_path
from .hooks import capture_factors, default_layers, margin_loss, resolve_layers, split_head
from .net import GradientEditor, apply_editor, load_gradient_editor, read_editor_info, save_gradient_editor
from .train import MendConfig, train_mend

PATTERN = "mend_*.safetensors"


def editor_dirs(bundle: ModelBundle | None = None) -> list[Path]:
    """Where trained editors are looked for: the editor search path (`auditor.editors.weights`) with the
    model file's folder added: $AUDITOR_EDITOR_DIR, the model's folder, ~/.auditor/editors, the package."""
    extra = [Path(bundle.source).resolve().parent] if bundle is not None and bundle.source else []
    return editor_search_path(extra)


def find_editor_file(bundle: ModelBundle) -> tuple[Path | None, str]:
    """The trained editor for this model: one trained on exactly these weights, else one trained on
    a model of the same name and architecture (an already edited copy). (path or None, how it matched)."""
    sha, name = bundle.sha256, bundle.spec.provenance.get("name")
    ancestors = lineage(bundle)
    by_name = None
    for folder in editor_dirs(bundle):
        for path in sorted(folder.glob(PATTERN)):
            info = read_editor_info(path)
            if info is None:
                continue
            if info.get("model_sha256") == sha:
                return path, "trained on these weights"
            if by_name is None and info.get("model_sha256") in ancestors:
                by_name = path
    if by_name is not None:
        return by_name, f"trained on the unedited {name!r}, which these weights were edited from"
    return None, ""


def lineage(bundle: ModelBundle) -> set[str]:
    """The weights sha256 of every model `bundle` was edited from: its edits in this process, and those
    recorded in the file it was loaded from."""
    from ...audit.provenance import earlier_edits

    records = [*bundle.history, *earlier_edits(bundle)]
    return {r["sha_before"] for r in records if isinstance(r, dict) and isinstance(r.get("sha_before"), str)}


def same_name_editors(bundle: ModelBundle) -> list[Path]:
    """Editors trained on another model of this model's name and architecture (not its ancestors)."""
    name = bundle.spec.provenance.get("name")
    found = []
    for folder in editor_dirs(bundle):
        for path in sorted(folder.glob(PATTERN)):
            info = read_editor_info(path)
            if info and name and info.get("model_name") == name and info.get("arch") == bundle.spec.arch:
                found.append(path)
    return found


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> tuple[GradientEditor, dict]:
    return load_gradient_editor(path)


@dataclass
class MendHyper:
    editor_path: str | None = field(default=None, metadata={
        "help": "a trained editor file; None: found by the model's sha256 or name"})
    margin: float | None = field(default=None, metadata={
        "help": "scale each row's step until its label wins by this log-prob margin (None: the margin the editor was "
                "trained with)"})
    search: int | None = field(default=None, metadata={
        "help": "row step multipliers: powers of sqrt(2) from 1/2 up to 2^search; 0: the learned step (None: as in "
                "training)"})
    rounds: int | None = field(default=None, metadata={
        "help": "rows still short after a round get another from the edited weights (None: as in training)"})


@register_editor
class Mend(Editor):
    """Fix given mistakes with one learned gradient step on the last Linear layers (MEND)."""

    name = "mend"
    description = "MEND-style learned gradient editor: fixes given mistakes (--fix ROW=LABEL) in one step"
    kind = "learned"
    targets = ("edit_success", "generality")
    Hyper = MendHyper

    def _path(self, bundle: ModelBundle) -> tuple[Path | None, str]:
        if self.hparams.editor_path:
            path = Path(self.hparams.editor_path)
            return (path, "given") if path.is_file() else (None, "")
        return find_editor_file(bundle)

    def supports(self, bundle: ModelBundle, data) -> str | None:
        path, _ = self._path(bundle)
        if path is None:
            if self.hparams.editor_path:
                return f"editor file {self.hparams.editor_path} does not exist"
            other = same_name_editors(bundle)
            if other:
                return (f"{other[0].name} was trained on other weights of a model named "
                        f"{bundle.spec.provenance.get('name')!r}, not on these (weights sha256 {bundle.sha256[:16]}) "
                        "nor on a model they were edited from; a learned editor applied to other weights can wreck "
                        "them. Train one for these weights: `auditor editor mend MODEL DATA [--spec SPEC.json] "
                        "[--arch-file FILE.py --arch-class NAME --trust-code]`, or use `finetune-fix`")
            return ("no trained MEND editor for this model on the editor search path ($AUDITOR_EDITOR_DIR, the "
                    "model's folder, ~/.auditor/editors, the shipped ones); train one for it (about a minute on a "
                    "CPU) with `auditor editor mend MODEL DATA [--spec SPEC.json] [--arch-file FILE.py "
                    "--arch-class NAME --trust-code]` (DATA: a built-in name, an .npz case or image folder, or a CSV "
                    "with --target COL [--positive L] [--protected A,B] [--categorical C,D]; any model torch.fx can "
                    "trace below its last two Linear layers; it writes mend_MODEL.safetensors beside the model, where "
                    "it is found), or from Python with `auditor.editors.mend.train_mend(bundle, data)` and "
                    "`save_gradient_editor`; `finetune-fix` fixes the same mistakes without a trained editor")
        info = read_editor_info(path)
        if info is None:
            return f"{path} is not a MEND editor file"
        modules = dict(bundle.model.named_modules())
        for layer, n_in, n_out in info["layers"]:
            m = modules.get(layer)
            if not isinstance(m, nn.Linear) or (m.in_features, m.out_features) != (n_in, n_out):
                return f"the editor in {path.name} edits layer {layer!r} ({n_in}->{n_out}), which this model lacks"
        return None

    def _edit(self, model, data, requirements, device, callback, *, log, fixes=None, bundle=None):
        if fixes is None or len(fixes.y) == 0:
            raise AuditorError("the mend editor fixes given mistakes: pass fixes (CLI: --fix ROW=LABEL)")
        path, how = self._path(bundle)  # looked up again: the editor keeps no state between calls
        if path is None:
            raise AuditorError("no trained MEND editor for this model")
        editor, info = _load_cached(str(path), path.stat().st_mtime)
        editor = editor.to(device)
        X, y = fixes.X.to(device), fixes.y.to(device)
        callback(0.1, f"editing {len(y)} example(s) with {path.name}")
        trained = info.get("training", {})
        margin = self.hparams.margin if self.hparams.margin is not None else float(trained.get("margin", 0.5))
        search = self.hparams.search if self.hparams.search is not None else int(trained.get("search", 3))
        rounds = self.hparams.rounds if self.hparams.rounds is not None else int(trained.get("rounds", 4))
        scales = apply_editor(model, editor, X, y, margin, search, rounds)
        alpha = [round(float(a), 4) for a in scales]
        with torch.no_grad():
            fixed = int((model(X).argmax(1) == y).sum())
        log.append({"step": "mend", "editor": path.name, "matched": how, "layers": editor.layer_names,
                    "examples": len(y), "margin": margin, "step_multipliers": alpha, "fixed": fixed})
        return {"editor_file": str(path), "layers": editor.layer_names, "step_multipliers": alpha,
                "fixed": fixed, "examples": len(y)}


__all__ = ["GradientEditor", "Mend", "MendConfig", "MendHyper", "apply_editor", "capture_factors",
           "default_layers", "find_editor_file", "load_gradient_editor", "margin_loss", "resolve_layers",
           "save_gradient_editor",
           "split_head", "train_mend"]
