"""Editor registry: display name -> Editor class, and the one order editors are offered in.

Adding an editor is one new file: put a module anywhere under `auditor/editors/` (a subpackage
too) whose editor classes carry `@register_editor`; `discover()` finds it by that decorator and
imports it, so pages, the CLI and `editors_for` list it without further edits.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from ..errors import AuditorError
from .base import Editor

EDITORS: dict[str, type[Editor]] = {}
MARKER = re.compile(r"^\s*@register_editor\b", re.M)  # a module that registers editors uses the decorator
KIND_ORDER = {"learned": 0, "rank-one": 1, "baseline": 2}


def register_editor(cls: type[Editor]) -> type[Editor]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    EDITORS[cls.name] = cls
    return cls


def _registers(spec) -> bool:
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return True  # no readable source (a compiled install): import it to find out
    try:
        return MARKER.search(Path(origin).read_text(encoding="utf-8")) is not None
    except OSError:
        return True


def editor_modules(package: str, path=None) -> list[str]:
    """Names of the modules under `package` (subpackages included) that register editors, without importing them."""
    if path is None:
        path = importlib.import_module(package).__path__
    out = []
    for info in pkgutil.iter_modules(path):
        name = f"{package}.{info.name}"
        spec = info.module_finder.find_spec(name)  # without importing it (or its package)
        if spec is None:
            continue
        if _registers(spec):
            out.append(name)
        if info.ispkg and spec.submodule_search_locations:
            out += editor_modules(name, spec.submodule_search_locations)
    return out


def discover(package: str = __package__) -> list[str]:
    """Import every module under `package` (subpackages included) that registers an editor; the
    names of those modules. Modules without `@register_editor` (training code, helpers) are not imported."""
    names = editor_modules(package)
    for name in names:
        importlib.import_module(name)
    return names


def get_editor(name: str, **settings) -> Editor:
    if name not in EDITORS:
        raise AuditorError(f"unknown editor {name!r}; available: {', '.join(sorted(EDITORS))}")
    return EDITORS[name](**settings)


def order_key(cls: type[Editor]) -> tuple:
    """learned, then rank-one (dynamic first), then baselines; by name within each."""
    return (KIND_ORDER.get(cls.kind, len(KIND_ORDER)), not cls.name.startswith("dynamic"), cls.name)


def editors_for(bundle=None, data=None, metric: str | None = None) -> list[type[Editor]]:
    """The editors to offer, in THE order used everywhere (`order_key`).

    With `bundle` and `data`: only editors that can edit this model on this data (`supports` is
    None; one that raises while checking is left out). With `metric` (`demographic_parity[sex]`
    counts as `demographic_parity`): only editors whose `targets` include it."""
    base = metric.split("[", 1)[0].strip() if metric else None
    out = []
    for cls in EDITORS.values():
        if base is not None and base not in cls.targets:
            continue
        if bundle is not None and data is not None:
            try:
                if cls().supports(bundle, data) is not None:
                    continue
            except Exception:  # noqa: BLE001 (an editor that cannot even check is not usable here)
                continue
        out.append(cls)
    return sorted(out, key=order_key)


def unavailable_editors(bundle, data) -> list[tuple[type[Editor], str]]:
    """The registered editors that cannot edit this model on this data, each with its reason (from
    `supports`; an editor that raises while checking gives that error), in `order_key`'s order."""
    out = []
    for cls in sorted(EDITORS.values(), key=order_key):
        try:
            reason = cls().supports(bundle, data)
        except Exception as exc:  # noqa: BLE001 (the reason shown is the error)
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            reason = f"it could not check this model ({type(exc).__name__}: {first})"
        if reason is not None:
            out.append((cls, str(reason)))
    return out
