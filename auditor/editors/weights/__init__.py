"""Shipped learned-editor weights (package data, each with a card `NAME.md`) and where editor files
are looked for.

Files shipped here:
- `metanet_adult_<dp|eo|minimisation|pruning>.safetensors`: graph metanetworks for Adult MLPs
  (editors `metanet-*`; rebuilt by `python sample_models/build_editors.py`);
- `mend_<model>.safetensors`: MEND gradient editors for the sample models `digits_cnn` and
  `adult_mlp` (editor `mend`; rebuilt by `python sample_models/build_mend.py`).

The search path, first match wins:
1. every folder in `$AUDITOR_EDITOR_DIR` (several separated by `os.pathsep`), then the folder in
   `$AUDITOR_METANET_DIR` (the older name, still read);
2. folders the caller adds (the `mend` editor adds the model file's folder, so an editor trained
   with `build_mend.py --model my.safetensors` beside `my.safetensors` is found);
3. the user's folder `~/.auditor/editors` (editors you trained for your own models);
4. this package's folder, so that the shipped editors work after a plain `pip install`.

    >>> from auditor.editors.weights import editor_search_path, find_editor_weights
    >>> find_editor_weights("metanet_adult_dp.safetensors").name
    'metanet_adult_dp.safetensors'

Editor weights are tensors plus JSON metadata (safetensors): loading one runs no code.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PACKAGED_DIR = Path(__file__).resolve().parent
ENV_VARS = ("AUDITOR_EDITOR_DIR", "AUDITOR_METANET_DIR")


def user_editor_dir() -> Path:
    """The user's own folder for editor files: `~/.auditor/editors` (beside the audit log)."""
    return Path.home() / ".auditor" / "editors"


def editor_search_path(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The folders searched for editor files, in order (only those that exist, each once):
    `$AUDITOR_EDITOR_DIR` entries, `$AUDITOR_METANET_DIR`, `extra`, `~/.auditor/editors`, the package."""
    dirs = [Path(p).expanduser() for var in ENV_VARS for p in os.environ.get(var, "").split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    dirs += [user_editor_dir(), PACKAGED_DIR]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def find_editor_weights(name: str, extra: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The first file called `name` on the search path, or None."""
    for folder in editor_search_path(extra):
        path = folder / name
        if path.is_file():
            return path
    return None


__all__ = ["ENV_VARS", "PACKAGED_DIR", "editor_search_path", "find_editor_weights", "user_editor_dir"]
