"""Baselines: the methods users would pick instead of a learned or rank-one edit, one file each.

- `finetune` (`finetune`, `finetune-last-layer`): fine-tuning on n clean samples (Trojans, cues).
- `magnitude_pruning` (`magnitude-pruning`), `pruning_finetune` (`magnitude-pruning-finetune`).
- `finetune_fairness` (`finetune-fairness`): cross-entropy plus a fairness penalty.
- `group_dro` (`finetune-worst-group`): group DRO fine-tuning for worst-group accuracy (two classes or more).
- `drop_features` (`drop-features`), `retrain_k_features` (`retrain-k-features`), with
  `feature_importance` (which raw features to keep).
- `fix_finetune` (`finetune-fix`) and `enn` (`enn`, editable training): fixing given mistakes.
- `fairlearn_mitigations`: ThresholdOptimizer and ExponentiatedGradient, which are not weight
  edits of the given model and so not registered editors.
- `common`: what the tabular baselines share.

The registry finds the editors here by their `@register_editor` (`auditor.editors.registry.discover`).
"""
