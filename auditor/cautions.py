"""Cautions about how a model and its data were read: what loading noticed but nothing refuses, said
with every evaluation (the CLI's warnings, the report's, the dashboard's)."""
from __future__ import annotations

import numpy as np
import torch

from .data.base import AuditData
from .models.bundle import ModelBundle


def reading_cautions(bundle: ModelBundle, data: AuditData) -> list[str]:
    """Every caution about reading `bundle` on `data`: the model's code, the images' range, the class names,
    then what loading the data noticed (`data.notes`)."""
    return (model_notes(bundle) + range_notes(bundle, data) + output_notes(bundle, data)
            + class_name_notes(bundle.spec.class_names, data) + list(data.notes))


def output_notes(bundle: ModelBundle, data: AuditData, rows: int = 256) -> list[str]:
    """A warning when the model's outputs look like probabilities (every row in [0, 1], summing to 1):
    predictions and metrics are right, but the editors take outputs for logits, so their losses and margins
    are off; the model should return its logits (or their log)."""
    X = next((s.X[:rows] for s in (data.test, data.val, data.train) if len(s)), None)
    if X is None:
        return []
    try:
        from .models import predict_logits

        out = predict_logits(bundle.model, X)
    except Exception:  # noqa: BLE001 - a model that cannot run is refused elsewhere, with its reason
        return []
    if out.dim() != 2 or out.shape[1] < 2 or not bool(((out >= 0) & (out <= 1)).all()):
        return []
    if bundle.spec.single_logit and bool((out[:, 0] == 0).all()):  # [0, z]: is z itself a probability?
        return ["the model's one output lies in [0, 1] on every row checked: it looks like a probability "
                "sigmoid(z), not the logit z, so every row is read as the positive class (z > 0); have the model "
                "return z (or torch.logit of its output)"]
    if not torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3):
        return []
    return ["the model's outputs look like probabilities (each row lies in [0, 1] and sums to 1), not logits: "
            "predictions and metrics are right, but the editors read outputs as logits, so their losses and "
            "margins are off; have the model return its logits (or torch.log of the probabilities)"]


def model_notes(bundle: ModelBundle) -> list[str]:
    """Warnings about how the model was read: weights stored in another precision than float32, a spec
    drafted by `auditor spec init` (guesses nobody has confirmed), architecture code other than the code it
    was saved with."""
    from .models.precision import precision_note

    prov = bundle.spec.provenance if isinstance(bundle.spec.provenance, dict) else {}
    notes = [note] if (note := precision_note(bundle.spec)) else []
    if prov.get("drafted_by"):
        notes.append(f"the model's spec was drafted by {prov['drafted_by']} from the data (input reading, class "
                     "names and their order were guessed by probe runs): confirm it against the model's documentation, "
                     "then delete \"drafted_by\" from its provenance")
    changed = prov.get("code_changed")
    if not isinstance(changed, dict):
        return notes
    return notes + [f"the architecture code given ({changed.get('file')}, class {changed.get('class')}: sha256 "
            f"{str(changed.get('given_sha256'))[:12]}) is not the code this model was saved with "
            f"({changed.get('recorded_file')}: sha256 {str(changed.get('recorded_sha256'))[:12]}): the same weights "
            "may compute something else; pass the file the model was saved with"]


def range_notes(bundle: ModelBundle, data: AuditData) -> list[str]:
    """A warning when the images lie far outside the value range the spec says the model reads (0-255
    pixels for a model of [0, 1] ones): `value_range`, standardised by `normalize` when the spec has one.
    Arrays are taken as they are; image files were read onto that range."""
    inp = bundle.spec.input if isinstance(bundle.spec.input, dict) else {}
    rng = inp.get("value_range")
    if data.kind != "image" or not isinstance(rng, (list, tuple)) or len(rng) != 2:
        return []
    lo, hi = float(rng[0]), float(rng[1])
    norm = inp.get("normalize") or {}
    if norm:
        mean, std = np.asarray(norm["mean"], float), np.asarray(norm["std"], float)
        lo, hi = float(np.min((lo - mean) / std)), float(np.max((hi - mean) / std))
    X = next((s.X for s in (data.test, data.val, data.train) if len(s)), None)
    if X is None or hi <= lo:
        return []
    a, b = float(X.min()), float(X.max())
    if b <= hi + (hi - lo) and a >= lo - (hi - lo):
        return []
    reads = f"[{lo:.4g}, {hi:.4g}]" + (" (value_range after its normalize)" if norm else "")
    return [f"the images hold values from {a:.4g} to {b:.4g}, but the model spec says it reads values in {reads}; "
            "arrays are taken as they are: scale them as the model was trained (image files in class folders are "
            "read onto the spec's value_range and normalize)"]


def class_name_notes(spec_names, data: AuditData) -> list[str]:
    """A warning when the model's class names share none with the data's (named, not numbered) classes:
    the target may not be what the model predicts."""
    names, ours = [str(c) for c in spec_names or []], [str(c) for c in data.class_names]
    numbered = ours == [str(i) for i in range(len(ours))]
    if not names or numbered or set(names) & set(ours):
        return []
    if {n.casefold() for n in names} & {n.casefold() for n in ours}:
        return [f"the model's class names ({', '.join(names[:6])}) differ from the data's ({', '.join(ours[:6])}) "
                "only in case; logit i is read as the data's class i"]
    return [f"the model's classes ({', '.join(names[:6])}) share no name with the data's target classes "
            f"({', '.join(ours[:6])}): check that the target column is what the model predicts; logit i is "
            "read as the data's class i"]
