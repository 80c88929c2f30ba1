"""Learned editors: a graph metanetwork trained on a population of MLPs edits a model in one pass.

- `graph`: an MLP as a graph (neurons = nodes, weights = edges) with reference statistics.
- `net`: the message-passing metanetwork, its heads and `assemble` (edited params + hard masks).
- `runtime`: what editing needs: requirement kinds, editor files (`save_metanet`, `load_metanet`
  -> `TrainedMetaNet`), calibration.
- `train`: `train_editor(TrainSettings(...), out)` (one process or torchrun/DDP); imported only
  to train (`from auditor.editors.metanet.train import TrainSettings, train_editor`).
- `editors`: the registered editors `metanet-fairness`, `metanet-equalized-odds`,
  `metanet-minimisation`, `metanet-pruning`, whose weights are found by `auditor.editors.weights`.
"""
from .runtime import KINDS, TrainedMetaNet, load_metanet, requirement_kind, save_metanet

__all__ = ["KINDS", "TrainedMetaNet", "load_metanet", "requirement_kind", "save_metanet"]
