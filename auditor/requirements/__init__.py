"""Requirement metrics, `Requirement` objects and their parsing."""
from .metrics import (
                      METRICS,
                      Fixes,
                      MetricInfo,
                      MetricReport,
                      Outcomes,
                      attack_success_rate,
                      compute_metrics,
                      cue_accuracy,
                      features_used,
                      group_table,
                      predict,
                      sparsity,
)
from .requirement import (
                      DEFAULT_VERDICT,
                      VERDICT_MODES,
                      Requirement,
                      RequirementResult,
                      parse_requirement,
                      parse_requirements,
)

__all__ = ["DEFAULT_VERDICT", "METRICS", "VERDICT_MODES", "Fixes", "MetricInfo", "MetricReport", "Outcomes",
           "Requirement", "RequirementResult",
           "attack_success_rate", "compute_metrics", "cue_accuracy", "features_used", "group_table",
           "parse_requirement", "parse_requirements", "predict", "sparsity"]
