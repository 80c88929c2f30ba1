"""Provenance of an audit: what a model written by an audit carries in its metadata (one format for
the CLI and the dashboard), and the command line that re-runs the audit."""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from ..data.base import AuditData
from .uploads import UPLOAD_PREFIX

# The metadata key of the provenance every model written by an audit carries (CLI and dashboard alike).
PROVENANCE_KEY = "auditor.edit"
PROVENANCE_FORMAT = "auditor.provenance/1"
BUILTIN_DATA = ("adult", "compas", "digits", "digits-trojan", "digits-spurious")


def data_arguments(data: AuditData) -> list[str]:
    """The DATA argument and schema options that load `data` again on the command line."""
    if data.name in BUILTIN_DATA and not (data.source or "").endswith((".csv", ".parquet", ".npz", ".zip")) \
            and not Path(data.source or "").is_dir():
        return [data.name]
    out = [_shown_path(data.source) if data.source else data.name]
    schema = data.schema or {}
    for key in ("target", "positive", "split_column"):
        if schema.get(key) not in (None, ""):
            out += [f"--{key.replace('_', '-')}", str(schema[key])]
    for key in ("protected", "categorical", "inputs"):
        if schema.get(key):
            out += [f"--{key}", ",".join(map(str, schema[key]))]
    out += [str(a) if str(a).startswith("--") else _shown_path(str(a))  # --train-csv/--val-csv, files as shown
            for a in (data.partition or {}).get("arguments", [])]
    return out


def provenance(session) -> dict:
    """What was done to `session`'s current model, to which original and data, with what outcome:
    the `auditor.edit` metadata of every model an audit writes. The last edit's fields are at the top
    level; `edits` lists every edit in order."""
    before, after = session.evaluate("pristine"), session.evaluate()
    edits = [*getattr(session, "earlier_edits", []), *(rec.to_dict() for rec in session.edits)]
    last = edits[-1] if len(edits) > len(getattr(session, "earlier_edits", [])) else {}
    return {"format": PROVENANCE_FORMAT, "editor": last.get("editor"),
            "hyperparameters": last.get("hyperparameters", {}), "layers": last.get("layers", []),
            "changes": last.get("changes", []), "seconds": last.get("seconds"), "device": last.get("device"),
            "log": last.get("log", []), "edits": edits, "earlier_edits": len(getattr(session, "earlier_edits", [])),
            "original_sha256": session.pristine_sha256, "original_source": session.model_path,
            "edited_sha256": session.current.sha256,
            "data": {"name": session.data.name, "sha256": session.data.sha256,
                     **session.data.data_block(session.split), "split": session.split, "rows": before.rows},
            "data_sha256": session.data.sha256, "requirements": [r.expr for r in session.requirements],
            "seed": session.seed, "run": session.run_id, "user": session.auditor_name or None,
            "command": session.command(),
            "before": {"passed": before.passed, "requirements": [r.to_dict() for r in before.requirements]},
            "after": {"passed": after.passed, "requirements": [r.to_dict() for r in after.requirements]}}


def earlier_edits(bundle) -> list[dict]:
    """The edits recorded in the file `bundle` was loaded from (its `auditor.edit` metadata, written by an
    earlier audit), in order, when the file's weights are those the record says it wrote; else []."""
    import json

    source = Path(bundle.source) if bundle.source else None
    if source is None or source.suffix.lower() != ".safetensors" or not source.is_file():
        return []
    from ..errors import AuditorError
    from ..models.files import read_metadata

    try:
        record = json.loads(read_metadata(source).get(PROVENANCE_KEY) or "{}")
    except (ValueError, RecursionError, OSError, AuditorError):
        return []
    edits = record.get("edits") if isinstance(record, dict) else None
    if not isinstance(edits, list) or record.get("edited_sha256") != bundle.sha256:
        return []
    return [e for e in edits if isinstance(e, dict)]


def _shown_path(path: str) -> str:
    """A path as a command line names it: relative to here when it can be; a dashboard upload's
    temporary copy by the name it was uploaded under."""
    if UPLOAD_PREFIX in path:
        return Path(path).name
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return path


def model_arguments(session) -> list[str]:
    """The model argument and what loads it again: its spec file and its own class, when it needs them."""
    out = [_shown_path(session.model_path or f"{session.model_label}.safetensors")]
    spec = session.pristine.spec
    if session.spec_path or Path(out[0]).suffix.lower() in (".pt", ".pth", ".bin"):
        out += ["--spec", _shown_path(session.spec_path) if session.spec_path else "SPEC.json"]
    if spec.arch.get("name") == "custom":
        out += ["--arch-file", str(spec.arch.get("file") or "MODEL.py"), "--arch-class",
                str(spec.arch.get("class") or "NAME"), "--trust-code"]
    return out


def _editor_arguments(session, rec) -> list[str]:
    from ..editors import EDITORS

    parts = ["--editor", rec.editor]
    hyper = getattr(EDITORS.get(rec.editor), "Hyper", None)
    defaults = dataclasses.asdict(hyper()) if hyper is not None else {}
    hp = rec.result.hyperparameters
    if hp.get("samples") is not None:
        parts += ["--samples", str(hp["samples"])]
    for k, v in hp.items():
        if k in ("samples", "seed") and not (k == "seed" and v != session.seed):
            continue
        if defaults.get(k, object()) != v:
            parts += ["--set", f"{k}={'none' if v is None else v}"]
    return parts


def reproduce_command(session) -> str:
    """The command line that re-runs this audit: `auditor audit` with the last edit and every setting
    that differs from the editor's defaults, the clean samples and seed the baselines used, and the
    baselines as run. Edits applied one after another are each an `auditor edit` first, in order, the
    audit starting from the last one's output (its report's "before" and baselines are then those of that
    model, not of the original: `chain_note`)."""
    model = model_arguments(session)
    data = data_arguments(session.data)
    common = (["--split", session.split] if session.split != "test" else [])
    for r in session.requirements:
        common += ["--require", r.expr]
    for f in session.fix_specs:
        common += ["--fix", f]
    steps = []
    for i, rec in enumerate(session.edits[:-1], 1):
        own = Path(str(model[0])).suffix.lower()
        out = f"step{i}{own if own in ('.onnx', '.pt2') else '.safetensors'}"  # a graph stays in its format
        steps.append(shlex.join(["auditor", "edit", model[0], *data, *model[1:], *common,
                                 *_editor_arguments(session, rec), "--seed", str(session.seed), "--out", out]))
        model = [out] + (model[-5:] if model[-1] == "--trust-code" else [])
    parts = ["auditor", "audit", model[0], *data, *model[1:], *common]
    if session.edits:
        parts += _editor_arguments(session, session.edits[-1])
    parts += ["--seed", str(session.seed)]
    parts += verdict_flags(getattr(session, "verdict_mode", "strict"), getattr(session, "min_group", 30),
                           getattr(session, "forbid_side_effects", False))
    if session.tradeoff is not None and not session.tradeoff_stale:
        parts += ["--baselines", ",".join(session.tradeoff_baselines) or "none"]
    elif session.edits:
        parts += ["--baselines", "none"]
    parts += ["--report", "report.html", "--pdf", "report.pdf", "--json", "report.json"]
    # "; ": an earlier edit that leaves a requirement unmet exits 1 and still writes its model
    return "; ".join([*steps, shlex.join(parts)])


def chain_note(session) -> str | None:
    """What a chained reproduce command re-runs, when the audit applied several edits one after another."""
    if len(session.edits) < 2:
        return None
    return (f"This audit applied {len(session.edits)} edits one after another; the command re-runs them in order, "
            "each `auditor edit` writing the model the next one starts from. The final model and its numbers are "
            "this report's; the last command's 'before' column and baselines start from the model the earlier edits "
            "wrote, not from the original.")


def verdict_flags(mode: str = "strict", min_group: int = 30, forbid_side_effects: bool = False) -> list[str]:
    """The verdict options of a command line that differ from the defaults."""
    out = [] if mode == "strict" else ["--verdict", mode]
    out += [] if min_group == 30 else ["--min-group", str(min_group)]
    return out + (["--forbid-side-effects"] if forbid_side_effects else [])
