"""Learned editors: a graph metanetwork trained on a population of MLPs edits a model in one pass.

- `graph`: an MLP as a graph (neurons = nodes, weights = edges) with reference statistics.
- `net`: the message-passing metanetwork, its heads and `assemble` (edited params + hard masks).
- `train`: `train_editor(TrainSettings(...), out)` (one process or torchrun/DDP), editor files
  (`save_editor`, `load_editor` -> `TrainedMetaNet`).
- `editors`: the registered editors `metanet-fairness`, `metanet-equalized-odds`,
  `metanet-minimisation`, `metanet-pruning`, which load their weights from `sample_models/`.
"""
from .train import (KINDS, TrainSettings, TrainedMetaNet, load_editor, requirement_kind, save_editor,
                    train_editor)

__all__ = ["KINDS", "TrainSettings", "TrainedMetaNet", "load_editor", "requirement_kind", "save_editor",
           "train_editor"]
