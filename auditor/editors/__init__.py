"""Editors: base contract, registry, and every registered editor (importing a module registers it)."""
from .base import Callback, Editor, EditResult, WeightDelta
from .registry import EDITORS, get_editor, list_editors, register_editor
from . import pruning  # noqa: F401  (registers)
from . import rank_one  # noqa: F401  (registers rank-one, dynamic-rank-one)
from . import finetune  # noqa: F401  (registers finetune, finetune-last-layer, static-rank-one-last)
from . import tabular_baselines  # noqa: F401  (registers finetune-fairness, magnitude-pruning-finetune, retrain-k-features, drop-features)
from . import mend, enn, fix_finetune  # noqa: F401  (registers mend, enn, finetune-fix)
from .metanet import editors as _metanet  # noqa: F401  (registers metanet-fairness, metanet-equalized-odds, metanet-minimisation, metanet-pruning)

__all__ = ["EDITORS", "Callback", "EditResult", "Editor", "WeightDelta", "get_editor", "list_editors",
           "register_editor"]
