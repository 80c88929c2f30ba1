"""Requirement metrics, `Requirement` objects and their parsing."""
from .metrics import (METRICS, Fixes, MetricInfo, MetricReport, attack_success_rate, compute_metrics,
                      cue_accuracy, features_used, group_table, predict, sparsity)
from .requirement import Requirement, RequirementResult, parse_requirement, parse_requirements

__all__ = ["METRICS", "Fixes", "MetricInfo", "MetricReport", "Requirement", "RequirementResult",
           "attack_success_rate", "compute_metrics", "cue_accuracy", "features_used", "group_table",
           "parse_requirement", "parse_requirements", "predict", "sparsity"]
