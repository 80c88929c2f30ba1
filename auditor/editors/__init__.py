"""Editors: base contract, registry, and every registered editor (importing a module registers it)."""
from .base import Callback, Editor, EditResult, WeightDelta
from .registry import EDITORS, get_editor, list_editors, register_editor
from . import pruning  # noqa: F401  (registers)

__all__ = ["EDITORS", "Callback", "EditResult", "Editor", "WeightDelta", "get_editor", "list_editors",
           "register_editor"]
