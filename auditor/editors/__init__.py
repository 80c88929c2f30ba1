"""Editors: the contract (`base`), the registry (`registry`), the contract's checks (`testing`), and
every editor, one file or folder per method. Importing this package imports every module under
it that registers an editor (`registry.discover`): adding an editor is adding one file."""
from .base import Callback, Editor, EditResult, WeightDelta
from .registry import EDITORS, discover, editors_for, get_editor, register_editor

discover()

__all__ = ["EDITORS", "Callback", "EditResult", "Editor", "WeightDelta", "editors_for", "get_editor",
           "register_editor"]
