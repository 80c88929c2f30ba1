"""Evaluate a model against requirements: the numbers every page, report and CLI shows."""
from __future__ import annotations

from dataclasses import dataclass, field

from .cautions import reading_cautions
from .data.base import AuditData
from .errors import AuditorError, channels_last_hint
from .models.architectures import predict_logits
from .models.files import ModelBundle
from .requirements import (
    DEFAULT_VERDICT,
    Fixes,
    Outcomes,
    Requirement,
    RequirementResult,
    compute_metrics,
    parse_requirements,
)
from .requirements.uncertainty import RESAMPLES

# Groups whose rate rests on fewer rows are left out of gap metrics (`--min-group`)
DEFAULT_MIN_GROUP = 30


@dataclass
class Evaluation:
    """Metrics overall and per group, their 95 % intervals, and each requirement's verdict. `to_dict`
    is the stable JSON shape:
    `{"metrics": {name: value}, "intervals": {name: {"value", "low", "high", "n"[, "groups"][, "note"]}},
      "groups": {attribute: {group: {name: value}}},
      "requirements": [{"expr", "metric", "value", "threshold", "op", "passed", "verdict", "low", "high", "n",
                        "note"}],
      "passed": bool, "verdict_mode": "strict"|"point", "min_group": int, "warnings": [str],
      "small_groups": {attribute: {group: {"rows", "positives", "negatives", "left_out_of", "unreliable_in"}}},
      ...}`."""

    metrics: dict[str, float]
    groups: dict[str, dict[str, dict[str, float]]]
    requirements: list[RequirementResult] = field(default_factory=list)
    model_sha256: str = ""
    data_sha256: str = ""
    data_name: str = ""
    split: str = "test"
    rows: int = 0
    intervals: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    small_groups: dict[str, dict] = field(default_factory=dict)
    verdict_mode: str = DEFAULT_VERDICT
    min_group: int = DEFAULT_MIN_GROUP
    outcomes: Outcomes | None = field(default=None, repr=False)  # the rows behind the metrics (not serialised)
    unused_features: list[str] | None = None  # raw features the model does not read (where features_used is measured)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.requirements)

    @property
    def inconclusive(self) -> list[RequirementResult]:
        return [r for r in self.requirements if r.verdict == "inconclusive"]

    def unreliable(self, key: str, primary: str | None = None) -> str | None:
        """Why `key` cannot be judged (a gap over groups under `min_group` when fewer than two are larger)."""
        base = key.split("[", 1)[0]
        attr = key[key.index("[") + 1:-1] if "[" in key else primary
        for a, flagged in self.small_groups.items():
            if base in ("demographic_parity", "equalized_odds") and a != attr:
                continue
            for g, info in flagged.items():
                if any(u.split(" ")[0] in (key, f"{base}[{a}]") for u in info.get("unreliable_in", [])):
                    return (f"fewer than two {a} groups have {self.min_group} rows or more behind this rate "
                            f"({a}={g}: {info['rows']} rows, {info['positives']} positive, {info['negatives']} "
                            f"negative): {key} rests on too few rows to judge")
        return None

    def judge(self, requirements, mode: str | None = None, primary: str | None = None) -> list[RequirementResult]:
        """Verdicts of `requirements` on these metrics and intervals (`mode`: strict or point)."""
        self.verdict_mode = mode or self.verdict_mode
        self.requirements = [r.check(self.metrics, self.intervals, self.verdict_mode, self.unreliable(r.key, primary))
                             for r in parse_requirements(requirements)]
        for r in self.requirements:
            if r.metric == "features_used" and self.unused_features is not None and not r.note:
                r.note = self.reads_note()
        return self.requirements

    def reads_note(self) -> str:
        """Which raw features the model does not read (a data-minimisation requirement names them)."""
        unused = self.unused_features or []
        total = int(self.metrics.get("features_used", 0)) + len(unused)
        if not unused:
            return f"reads all {total} raw features"
        return f"does not read {', '.join(unused)} ({len(unused)} of {total} raw features)"

    def to_dict(self) -> dict:
        return {"metrics": dict(self.metrics), "intervals": self.intervals, "groups": self.groups,
                "requirements": [r.to_dict() for r in self.requirements], "passed": self.passed,
                "verdict_mode": self.verdict_mode, "min_group": self.min_group, "warnings": list(self.warnings),
                "small_groups": self.small_groups, "unused_features": self.unused_features,
                "model": {"sha256": self.model_sha256},
                "data": {"name": self.data_name, "sha256": self.data_sha256, "split": self.split, "rows": self.rows}}


def warnings_of(before, after=None) -> list[str]:
    """The warnings of an audit, once each: those of the model before an edit and of the edited one (`after`),
    each that holds for one of them only saying which ("before the edit: ...", "after the edit: ...")."""
    was = list(dict.fromkeys(getattr(before, "warnings", [])))
    if after is None:
        return was
    now = list(dict.fromkeys(getattr(after, "warnings", [])))
    return [*(w if w in now else f"before the edit: {w}" for w in was),
            *(f"after the edit: {w}" for w in now if w not in was)]


def check_compatible(bundle: ModelBundle, data: AuditData) -> None:
    """The model's input size and class count must match the data; a clear error when not."""
    arch = bundle.spec.arch
    expected = arch.get("in_features")
    if expected is not None and data.kind == "tabular" and int(expected) != data.n_inputs:
        raise AuditorError(f"model expects {expected} inputs but data {data.name!r} gives {data.n_inputs}; "
                           "is this the data the model was trained on (same columns and preprocessing)?")
    if data.kind != bundle.spec.input_kind:
        raise AuditorError(f"model takes {bundle.spec.input_kind} inputs but data {data.name!r} is {data.kind}")
    shape = bundle.spec.input.get("shape")
    if data.kind == "image" and shape and list(shape) != data.input_shape:
        raise AuditorError(f"model expects images of shape {shape} but data {data.name!r} has "
                           f"{data.input_shape}{channels_last_hint(shape, data.input_shape)}")
    n_classes = bundle.spec.num_classes
    target = getattr(data.stamp, "target", None)
    if len(data.class_names) > n_classes and target is not None and int(target) >= n_classes:
        raise AuditorError(f"data {data.name!r} names class {int(target)} as the class its "
                           f"{data.stamp.kind} pushes towards, but the model predicts only {n_classes} classes "
                           f"(0 to {n_classes - 1}): give the target's class index")
    if len(data.class_names) > n_classes:
        raise AuditorError(f"model predicts {n_classes} class{'es' if n_classes != 1 else ''} but data "
                           f"{data.name!r} has {len(data.class_names)}")
    probe = next((s.X[:2] for s in (data.test, data.val, data.train) if len(s)), None)
    if probe is not None:  # ONNX graphs and custom code say nothing about their input size: try it
        try:
            out = predict_logits(bundle.model, probe)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise AuditorError(f"the model cannot run on data {data.name!r} (inputs of shape "
                               f"{list(probe.shape[1:])}): {str(exc).splitlines()[0][:160]}") from None
        if out.dim() != 2 or out.shape[1] < len(data.class_names):
            raise AuditorError(f"the model returns outputs of shape {list(out.shape[1:])} but data "
                               f"{data.name!r} has {len(data.class_names)} classes")
        if data.kind == "tabular" and out.dim() == 2 and out.shape[1] > len(data.class_names):
            raise AuditorError(
                f"the model returns {out.shape[1]} outputs but data {data.name!r} has {len(data.class_names)} "
                f"classes ({', '.join(map(repr, data.class_names))}): with --positive a CSV target is read as "
                "two outcomes (that label against the rest), so the model's other classes would count as wrong "
                "predictions. Leave --positive out to read every value of the target as a class of its own (in "
                "order: numbers by value, else as text)")
        names = list(bundle.spec.class_names)
        if out.dim() == 2 and names and len(names) != out.shape[1]:
            raise AuditorError(f"the model spec names {len(names)} classes ({', '.join(map(repr, names[:6]))}) but the "
                               f"model returns {out.shape[1]} outputs: class_names must give one name per output, "
                               "in the model's output order (logit 0 first)")
    check_class_order(bundle.spec.class_names, data)


def check_class_order(spec_names, data: AuditData) -> None:
    """The model's class names (its output order) against the data's: the same classes in another order
    would read every prediction as another class, so it is refused."""
    names, ours = [str(c) for c in spec_names or []], [str(c) for c in data.class_names]
    folded, ours_folded = [n.casefold() for n in names], [n.casefold() for n in ours]
    if names and len(names) == len(ours) and folded != ours_folded and sorted(folded) == sorted(ours_folded):
        binary = (" For a CSV target, --positive names the class the data puts second (logit 1)."
                  if len(ours) == 2 else "")
        raise AuditorError(f"the model spec's class_names put the classes in the order {names} (logit 0 first), but "
                           f"data {data.name!r} orders them {ours}: every prediction would be read as another class. "
                           "Check that class_names follow the model's output order." + binary)


def evaluate(bundle: ModelBundle, data: AuditData, requirements=(), split: str | None = None,
             reference: ModelBundle | None = None, fixes: Fixes | None = None, *,
             verdict: str = DEFAULT_VERDICT, min_group: int = DEFAULT_MIN_GROUP,
             resamples: int = RESAMPLES) -> Evaluation:
    """Metrics of `bundle` on `data`, their 95 % bootstrap intervals, and the verdict of every
    requirement (strings or Requirement). `verdict`: "strict" (a requirement whose interval straddles
    its threshold is not met) or "point" (the value alone decides). `min_group`: groups whose rate
    rests on fewer rows are left out of gap metrics, with a warning. `resamples`: 0 skips intervals."""
    from .requirements.uncertainty import intervals

    reqs: list[Requirement] = parse_requirements(requirements)
    check_compatible(bundle, data)
    split = data.resolve_split(split)  # None: the data's default (all rows of a user's file without a partition)
    report = compute_metrics(bundle.model, data, split,
                             reference=None if reference is None else reference.model, fixes=fixes,
                             min_group=min_group)
    ev = Evaluation(report.metrics, report.groups, [], bundle.sha256, data.sha256, data.name, split,
                    len(data.split(split)),
                    warnings=reading_cautions(bundle, data) + list(report.warnings), small_groups=report.small_groups,
                    verdict_mode=verdict, min_group=int(min_group), outcomes=report.outcomes,
                    unused_features=report.unused_features)
    if resamples:
        ev.intervals = intervals(report.metrics, report.outcomes, resamples=resamples)
    ev.judge(reqs, verdict, data.primary_protected)
    return ev
