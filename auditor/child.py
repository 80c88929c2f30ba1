"""Starting a child Python that imports nothing from the folder it was started in.

`python -c CODE` and `python -m MODULE` put the current folder first on `sys.path`, so an `onnx.py` or
`torch.py` shipped beside a vendor's model would be imported by a child that checks it. The child's
first statement drops that entry (Python imports `site` and the codecs before it adds it); the package
itself comes from PYTHONPATH, which the caller sets to the folder holding `auditor`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding the `auditor` package


def python_command(code: str, *argv: str) -> list[str]:
    """`python -c` running `code` without the current folder on its module path."""
    return [sys.executable, "-c", f"import sys; del sys.path[0]; {code}", *argv]


def child_env() -> dict[str, str]:
    """The environment for such a child: this process's, with the package's folder first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    return env
