"""Editor registry: display name -> Editor class. Pages and the CLI list editors from here."""
from __future__ import annotations

from ..errors import AuditorError
from .base import Editor

EDITORS: dict[str, type[Editor]] = {}


def register_editor(cls: type[Editor]) -> type[Editor]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    EDITORS[cls.name] = cls
    return cls


def get_editor(name: str, **settings) -> Editor:
    if name not in EDITORS:
        raise AuditorError(f"unknown editor {name!r}; available: {', '.join(sorted(EDITORS))}")
    return EDITORS[name](**settings)


def list_editors(bundle=None, data=None) -> list[type[Editor]]:
    """Every editor, or those that can edit `bundle` on `data`."""
    out = []
    for cls in EDITORS.values():
        if bundle is not None and data is not None and cls().supports(bundle, data):
            continue
        out.append(cls)
    return out
