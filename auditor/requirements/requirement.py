"""Requirements: a metric, a direction and a threshold, parsed from "metric <= value"."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ..errors import AuditorError
from .metrics import METRICS

VERDICT_MODES = ("strict", "point")
DEFAULT_VERDICT = "strict"  # CI: a requirement whose interval straddles the threshold is not met
_EXPR = re.compile(r"^\s*([A-Za-z_]+)(?:\[([^\]]+)\])?\s*(<=|>=)\s*([-+0-9.eE]+)\s*(%|pp)?\s*$")
_OPS = {"≤": "<=", "≥": ">=", "=<": "<=", "=>": ">="}
SIGNED_METRICS = frozenset({"cue_gap", "drawdown"})  # differences that may be negative (down to -1)


@dataclass(frozen=True)
class Requirement:
    """`metric op threshold`, e.g. `demographic_parity <= 0.05` or `demographic_parity[race] <= 0.1`."""

    metric: str
    op: str
    threshold: float
    attribute: str | None = None

    @property
    def key(self) -> str:
        return f"{self.metric}[{self.attribute}]" if self.attribute else self.metric

    @property
    def expr(self) -> str:
        return f"{self.key} {self.op} {self.threshold:g}"

    def holds(self, value: float) -> bool:
        return value <= self.threshold + 1e-12 if self.op == "<=" else value >= self.threshold - 1e-12

    def check(self, metrics: dict[str, float], intervals: dict | None = None, mode: str = "point",
              unreliable: str | None = None) -> RequirementResult:
        """The verdict on `metrics`: `pass` / `fail` when the whole 95 % interval (`intervals[key]`,
        see `auditor.requirements.uncertainty`) lies on one side of the threshold, `inconclusive` when
        it straddles it (or `unreliable` says why the value cannot be trusted, e.g. a gap over groups
        under the minimum size). Without an interval the verdict is the point estimate's. `passed` is
        what counts: in `mode="strict"` only `pass`; in `mode="point"` the point estimate alone."""
        if mode not in VERDICT_MODES:
            raise AuditorError(f"unknown verdict mode {mode!r}; choose one of {', '.join(VERDICT_MODES)}")
        if self.key not in metrics:
            info = METRICS[self.metric]
            if "[" in self.key:  # a metric per protected attribute: name the attributes there are
                attrs = sorted(k[len(self.metric) + 1:-1] for k in metrics if k.startswith(self.metric + "["))
                if attrs:
                    raise AuditorError(f"requirement {self.expr!r}: {self.key} names no protected attribute of this "
                                       f"data; {self.metric} is measured for {', '.join(attrs)} "
                                       f"(e.g. {self.metric}[{attrs[0]}])")
                if self.metric in metrics:
                    raise AuditorError(f"requirement {self.expr!r}: {self.metric} is measured over all groups at "
                                       f"once, not per attribute; write {self.metric}")
            why = {"groups": "a binary task with protected attributes", "trigger": "a data set with a Trojan trigger",
                   "cue": "a data set with a spurious cue",
                   "fixes": "mistakes to fix (--fix/--fixes of auditor edit or audit, with an editor that fixes them)",
                   "reference": "a model before the edit"}.get(info.needs or "", "this model and data")
            raise AuditorError(f"requirement {self.expr!r} cannot be evaluated here: {self.key} needs {why}")
        value = float(metrics[self.key])
        iv = (intervals or {}).get(self.key) or {}
        low, high, n = iv.get("low"), iv.get("high"), iv.get("n")
        point = self.holds(value)
        note = None
        if unreliable:
            verdict, note = "inconclusive", unreliable
        elif low is None or high is None:
            verdict = "pass" if point else "fail"
        elif self.holds(low) and self.holds(high):
            verdict = "pass"
        elif not self.holds(low) and not self.holds(high):
            verdict = "fail"
        else:
            verdict = "inconclusive"
            from ..present import format_interval, format_threshold  # units as everywhere else

            note = (f"the 95 % interval [{format_interval(self.key, low, high)}] straddles the threshold "
                    f"{format_threshold(self.key, self.threshold)}" + (f" ({n} rows)" if n else ""))
        passed = verdict == "pass" if mode == "strict" else point
        return RequirementResult(self.expr, self.key, value, self.threshold, self.op, passed, verdict, low, high, n,
                                 note)

    def evaluate(self, model, data, split: str = "test") -> RequirementResult:
        from .metrics import compute_metrics
        return self.check(compute_metrics(model, data, split).metrics)


@dataclass
class RequirementResult:
    expr: str
    metric: str
    value: float
    threshold: float
    op: str
    passed: bool  # counts as met under the verdict mode (strict: verdict == "pass"; point: value meets threshold)
    verdict: str = ""  # "pass", "fail" or "inconclusive" (the 95 % interval straddles the threshold)
    low: float | None = None
    high: float | None = None
    n: int | None = None
    note: str | None = None

    def __post_init__(self):
        if not self.verdict:
            self.verdict = "pass" if self.passed else "fail"

    def to_dict(self) -> dict:
        return asdict(self)


def parse_requirement(text: str | Requirement) -> Requirement:
    """Parse `"metric <= value"` / `"metric >= value"`; unknown metrics list the valid ones."""
    if isinstance(text, Requirement):
        return text
    expr = str(text)
    for alias, op in _OPS.items():
        expr = expr.replace(alias, op)
    m = _EXPR.match(expr)
    if not m:
        raise AuditorError(f"cannot parse requirement {text!r}: write 'metric <= value' or 'metric >= value', "
                           "e.g. 'demographic_parity <= 0.05'")
    metric, attribute, op, value, unit = m.groups()
    metric = metric.lower()
    if metric not in METRICS:
        raise AuditorError(f"unknown metric {metric!r} in {text!r}; valid metrics: {', '.join(METRICS)}")
    if attribute and METRICS[metric].needs != "groups":
        raise AuditorError(f"{metric} takes no [attribute]; only group metrics do")
    try:
        threshold = float(value)
    except ValueError:
        raise AuditorError(f"threshold {value!r} in {text!r} is not a number") from None
    if not math.isfinite(threshold):  # 1e400 is inf: always met (<=) or never, and JSON cannot hold it
        raise AuditorError(f"threshold {value!r} in {text!r} is not a finite number")
    counted = METRICS[metric].unit == "count"
    if unit and counted:
        raise AuditorError(f"{metric} is a count: write its threshold without {unit!r} ({text!r})")
    if unit:  # 85 % or 5 pp: the metric's fraction
        threshold /= 100.0
    low = -1.0 if metric in SIGNED_METRICS else 0.0
    if not counted and not low <= threshold <= 1.0:
        hint = f"; did you mean {threshold / 100:g} (or '{value} %')?" if 1.0 < abs(threshold) <= 100 else ""
        raise AuditorError(f"threshold {threshold:g} in {text!r} is outside the range of {metric} ({low:g} to 1, "
                           f"a fraction){hint}")
    return Requirement(metric, op, threshold, attribute)


def parse_requirements(texts) -> list[Requirement]:
    return [parse_requirement(t) for t in (texts or [])]
