"""Which localization applies to which data, in one place (the dashboard, `auditor localize`,
`auditor audit` and the report all call `localize`).

- A trigger, a spurious cue or corrupted twins: layers ranked on `samples` (clean, corrupted)
  pairs from `pairs_split` whose corrupted twin the model gets wrong, as the dynamic editor picks
  them (`auditor.localize.pick_pairs`; drawn at random, and said, when too few misbehave), by
  `auditor.localize.rank_layers` (second moments from the clean training inputs) and, for images,
  per-pixel attributions of the first `show_pairs` pairs.
- Tabular data: attributions per raw feature on `rows` rows of `split`, drawn at random with `seed`
  (sorted, so the same rows every time), and, with protected groups and two classes, the layers
  that carry the score gap between the groups of the audited attribute on the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data.base import AuditData
from ..errors import AuditorError
from ..models.bundle import ModelBundle
from ..present import pixel_attribution, shown_image
from ..requirements import parse_requirements

DEFAULT_ROWS = 500


@dataclass
class Localization:
    """What the Localize step found: `ranking` (layers, best first), `features` (per raw feature,
    tabular), `pixels` (per-pixel maps for image pairs), the pairs used, and the settings."""

    kind: str  # "trigger", "cue", "twins", "fairness" or "features"
    ranking: pd.DataFrame | None = None
    features: pd.DataFrame | None = None
    pixels: dict | None = None
    clean: torch.Tensor | None = None
    corrupted: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)
    model_sha256: str = ""

    @property
    def top_layer(self) -> str | None:
        return None if self.ranking is None or self.ranking.empty else str(self.ranking.iloc[0]["layer"])

    @property
    def method_text(self) -> str | None:
        """One line saying how the layers were ranked."""
        if self.ranking is None:
            return None
        s = self.settings
        if self.kind == "fairness":
            r = self.ranking.iloc[0]
            return (f"layer integrated gradients of the score gap between groups of {s.get('attribute')} "
                    f"({r['high_group']} vs {r['low_group']}, {s.get('rows')} {s.get('split')} rows)")
        picked = s.get("pairs") or {}  # misbehaving: the model gets the corrupted twin wrong
        if picked.get("pick") != "misbehaving":
            pairs = f"{s['samples']} random pair(s)"
        elif picked.get("misbehaving", 0) >= s["samples"]:
            pairs = f"{s['samples']} misbehaving pair(s)"
        else:
            pairs = f"{picked['misbehaving']} misbehaving and {s['samples'] - picked['misbehaving']} other pair(s)"
        return (f"layer {s['method'].replace('_', ' ')} from corrupted to clean inputs ({pairs} from "
                f"{s['pairs_split']}, seed {s['seed']}), projected on the rank-one edit direction")

    def to_dict(self) -> dict:
        """Plain data (JSON): kind, settings, ranking and features as records."""
        return {"kind": self.kind, "settings": self.settings, "model_sha256": self.model_sha256,
                "method": self.method_text,
                "ranking": None if self.ranking is None else _records(self.ranking),
                "features": None if self.features is None else _records(self.features)}

    def to_report(self, class_names, original_sha256: str | None = None) -> dict:
        """The report's localization section (see `auditor/report/schema.json`)."""
        out: dict = {"available": True, "layers": None, "layer_method": self.method_text, "features": None,
                     "images": None, "settings": dict(self.settings),
                     "note": None if original_sha256 in (None, self.model_sha256) else
                     "computed on the model after an earlier edit"}
        if self.ranking is not None:
            total = float(self.ranking["score"].sum()) or 1.0
            out["layers"] = [{"layer": str(r["layer"]), "type": str(r["type"]), "score": float(r["score"]),
                              "share": float(r["score"]) / total, "rank": int(r["rank"])}
                             for r in self.ranking.to_dict("records")]
        if self.features is not None:
            out["features"] = [{"feature": str(r["feature"]), "attribution": float(r["attribution"]),
                                "importance": float(r["importance"]), "share": float(r["share"]),
                                "rank": int(r["rank"])} for r in self.features.to_dict("records")]
        if self.pixels is not None:
            px = self.pixels
            rnd = lambda a: np.round(a, 6).tolist()  # noqa: E731
            out["images"] = [
                {"title": f"clean (predicted {class_names[int(px['clean_prediction'][0])]})", "kind": "image",
                 "z": rnd(shown_image(self.clean[0]))},
                {"title": f"{self.kind if self.kind != 'twins' else 'corrupted'} (predicted "
                          f"{class_names[int(px['corrupted_prediction'][0])]})", "kind": "image",
                 "z": rnd(shown_image(self.corrupted[0]))},
                {"title": "attribution of the corrupted prediction", "kind": "attribution",
                 "z": rnd(pixel_attribution(px["corrupted"][0]))}]
        return out


def not_available(note: str) -> dict:
    """The report's localization section when none could run."""
    return {"available": False, "layers": None, "layer_method": None, "features": None, "images": None,
            "note": note}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def sample_rows(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` row indices out of `n_total`, at random with `seed`, sorted (all rows when n >= n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def audited_attribute(data: AuditData, requirements=()) -> str | None:
    """The protected attribute an audit is about: the first requirement's `[attribute]`, else the data's first."""
    for r in parse_requirements(requirements):
        if r.attribute:
            return r.attribute
    return data.primary_protected


def has_pairs(data: AuditData) -> bool:
    return data.stamp is not None or data.split("train").corrupted is not None


def localize(bundle: ModelBundle, data: AuditData, requirements=(), *, samples: int = 1, seed: int = 0,
             method: str = "integrated_gradients", n_steps: int = 32, rows: int = DEFAULT_ROWS,
             split: str = "test", pairs_split: str = "train", show_pairs: int = 3) -> Localization:
    """Run the localization that fits the data (see the module's docstring) on `bundle`'s model."""
    from .. import localize as loc

    if samples < 1 or n_steps < 1 or rows < 1:
        raise AuditorError("samples, steps and rows must be at least 1")
    model = bundle.model
    settings = {"samples": samples, "seed": seed, "method": method, "n_steps": n_steps}
    if has_pairs(data):
        kind = "trigger" if data.trigger is not None else "cue" if data.cue is not None else "twins"
        settings["pairs_split"] = pairs_split
        clean, corrupted, labels, picked = loc.pick_pairs(model, data, samples, seed, split=pairs_split)
        if len(clean) < samples:  # too few twins change the model's decision: say so, rank random pairs
            clean, corrupted, labels = data.pairs(samples, seed, split=pairs_split)
            picked.update(pick="random", rows=None, note=(
                f"only {picked['misbehaving']} clean sample(s) of {pairs_split} have a corrupted twin the model "
                f"gets wrong (of {picked['candidates']}): the {samples} pair(s) were drawn at random"))
        settings["pairs"] = picked
        ranking = loc.rank_layers(model, corrupted, clean, target=labels, reference=data.train.X, method=method,
                                  n_steps=n_steps)
        pixels = None
        if data.kind == "image" and show_pairs > 0:
            k = min(show_pairs, len(clean))
            pixels = loc.pixel_attributions(model, clean[:k], corrupted[:k], n_steps=n_steps)
        return Localization(kind, ranking, None, pixels, clean, corrupted, labels, settings, bundle.sha256)
    if data.kind != "tabular":
        raise AuditorError(f"data set {data.name!r} shows no misbehaviour to localize: it has no trigger, cue, "
                           "corrupted twins or protected groups (give an .npz case with a trigger or twins, or "
                           "a tabular data set)")
    sp = data.split(split)
    idx = sample_rows(len(sp), rows, seed)
    X = sp.X[idx]
    settings.update(rows=int(len(idx)), split=split)
    features = loc.feature_attributions(model, X, data.feature_groups, n_steps=n_steps)
    ranking, kind = None, "features"
    attr = audited_attribute(data, requirements)
    if attr and len(data.class_names) == 2:
        ranking = loc.fairness_layers(model, X, sp.groups[attr].to_numpy()[idx], seed=seed, method=method,
                                      n_steps=n_steps)
        kind = "fairness"
        settings["attribute"] = attr
    return Localization(kind, ranking, features, None, settings=settings, model_sha256=bundle.sha256)
