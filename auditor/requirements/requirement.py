"""Requirements: a metric, a direction and a threshold, parsed from "metric <= value"."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import AuditorError
from .metrics import METRICS

_EXPR = re.compile(r"^\s*([a-z_]+)(?:\[([^\]]+)\])?\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


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

    def check(self, metrics: dict[str, float]) -> "RequirementResult":
        if self.key not in metrics:
            info = METRICS[self.metric]
            why = {"groups": "a binary task with protected attributes", "trigger": "a data set with a Trojan trigger",
                   "cue": "a data set with a spurious cue", "fixes": "a set of fixes (--fix)",
                   "reference": "a model before the edit"}.get(info.needs or "", "this model and data")
            raise AuditorError(f"requirement {self.expr!r} cannot be evaluated here: {self.key} needs {why}")
        value = float(metrics[self.key])
        return RequirementResult(self.expr, self.key, value, self.threshold, self.op, self.holds(value))

    def evaluate(self, model, data, split: str = "test") -> "RequirementResult":
        from .metrics import compute_metrics
        return self.check(compute_metrics(model, data, split).metrics)


@dataclass
class RequirementResult:
    expr: str
    metric: str
    value: float
    threshold: float
    op: str
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def parse_requirement(text: str | Requirement) -> Requirement:
    """Parse `"metric <= value"` / `"metric >= value"`; unknown metrics list the valid ones."""
    if isinstance(text, Requirement):
        return text
    m = _EXPR.match(str(text))
    if not m:
        raise AuditorError(f"cannot parse requirement {text!r}: write 'metric <= value' or 'metric >= value', "
                           "e.g. 'demographic_parity <= 0.05'")
    metric, attribute, op, value = m.groups()
    if metric not in METRICS:
        raise AuditorError(f"unknown metric {metric!r} in {text!r}; valid metrics: {', '.join(METRICS)}")
    if attribute and METRICS[metric].needs != "groups":
        raise AuditorError(f"{metric} takes no [attribute]; only group metrics do")
    try:
        threshold = float(value)
    except ValueError:
        raise AuditorError(f"threshold {value!r} in {text!r} is not a number") from None
    return Requirement(metric, op, threshold, attribute)


def parse_requirements(texts) -> list[Requirement]:
    return [parse_requirement(t) for t in (texts or [])]
