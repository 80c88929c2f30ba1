"""The package works when pip-installed, not only from this checkout.

Builds a wheel from a copy of the source (so stale `build/` output cannot leak into it), installs it
with `--no-deps` into a fresh virtual environment outside the repository (with the system's
site-packages for torch and the other dependencies), and from a temporary working directory:
- imports every `auditor` module the dashboard (`app.py`, `pages/`) imports, and checks that
  `auditor` comes from the virtual environment, not from this checkout (the checkout may be
  installed in editable mode in the system's site-packages: its finder must lose);
- runs `auditor edit` with a learned editor whose weights are package data, and checks that the
  editor found them inside the installed package and edited the model.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import setuptools

from auditor.editors.weights import PACKAGED_DIR, editor_search_path, find_editor_weights

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=120):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def _dashboard_modules() -> list[str]:
    """Every `auditor...` module that app.py and pages/*.py import."""
    found = set()
    for path in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        text = path.read_text()
        found.update(re.findall(r"^\s*from\s+(auditor(?:\.\w+)*)\s+import\b", text, re.M))
        found.update(re.findall(r"^\s*import\s+(auditor(?:\.\w+)*)", text, re.M))
    return sorted(found)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, env, workdir): the wheel of this tree installed in a fresh venv."""
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1) and not importlib.util.find_spec("wheel"):
        pytest.skip("building a wheel without network needs setuptools >= 70.1 or the wheel package")
    tmp = tmp_path_factory.mktemp("packaging")
    assert ROOT not in tmp.parents
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "auditor", src / "auditor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp", ".*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AUDITOR_", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", HOME=str(tmp / "home"),
               AUDITOR_DB=str(tmp / "audit.db"))
    dist = tmp / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", dist, src], cwd=tmp, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(dist.glob("auditor-*.whl"))
    assert len(wheels) == 1, wheels

    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # The system's pip runs inside the venv (system site-packages are visible) and installs into it.
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheels[0]],
                cwd=tmp, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    work = tmp / "work"
    work.mkdir()
    return python, env, work, env_dir


@pytest.mark.slow
def test_wheel_holds_the_learned_editors_and_the_dashboard_imports_it(installed):
    python, env, work, env_dir = installed
    modules = _dashboard_modules() + ["auditor", "auditor.editors", "auditor.report"]
    if (ROOT / "auditor" / "audit" / "__init__.py").exists():
        modules.append("auditor.audit")
    code = ("import importlib, json, sys; import auditor\n"
            f"mods = {sorted(set(modules))!r}\n"
            "for m in mods: importlib.import_module(m)\n"
            "from auditor.editors.weights import PACKAGED_DIR, editor_search_path\n"
            "print(json.dumps({'auditor': auditor.__file__, 'weights': str(PACKAGED_DIR),\n"
            "                  'files': sorted(p.name for p in PACKAGED_DIR.iterdir()),\n"
            "                  'path': [str(p) for p in editor_search_path()], 'prefix': sys.prefix}))\n")
    proc = _run([python, "-c", code], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    venv_dir = env_dir.resolve()
    assert Path(out["auditor"]).resolve().is_relative_to(venv_dir), f"auditor imported from {out['auditor']}"
    assert not Path(out["auditor"]).resolve().is_relative_to(ROOT)
    assert Path(out["weights"]).resolve().is_relative_to(venv_dir)
    shipped = sorted(p.name for p in (ROOT / "auditor" / "editors" / "weights").iterdir()
                     if p.suffix in (".safetensors", ".md"))
    assert shipped and set(shipped) <= set(out["files"]), set(shipped) - set(out["files"])
    assert out["path"] == [out["weights"]]  # no $AUDITOR_EDITOR_DIR, no ~/.auditor/editors here


@pytest.mark.slow
def test_installed_cli_edits_with_a_packaged_learned_editor(installed):
    python, env, work, env_dir = installed
    cli = python.parent / ("auditor.exe" if os.name == "nt" else "auditor")
    assert cli.exists()
    out, report = work / "e.safetensors", work / "e.json"
    proc = _run([cli, "edit", ROOT / "sample_models" / "adult_mlp.safetensors", "adult",
                 "--editor", "metanet-fairness", "--require", "demographic_parity <= 0.05", "--out", out,
                 "--json", report, "--no-log"], cwd=work, env=env, timeout=240)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert out.exists() and report.exists()
    assert "metanet-fairness edited" in proc.stdout, proc.stdout[-2000:]
    edit = json.loads(report.read_text())
    text = json.dumps(edit)
    assert "metanet-fairness" in text
    assert edit["before"]["model"]["sha256"] != edit["after"]["model"]["sha256"]
    # the weights the editor used are the packaged ones, inside the venv
    code = ("from auditor.editors.metanet.editors import editor_path\n"
            "print(editor_path('adult', 'demographic_parity'))")
    where = _run([python, "-c", code], cwd=work, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    path = Path(where.stdout.strip().splitlines()[-1]).resolve()
    assert path.is_file() and path.is_relative_to(env_dir.resolve()), path


def test_editor_search_path_order(tmp_path, monkeypatch):
    """$AUDITOR_EDITOR_DIR entries, then $AUDITOR_METANET_DIR, the caller's folders, ~/.auditor/editors, the
    package; missing folders are skipped; the first file of a name wins."""
    a, b, old, model_dir, home = (tmp_path / n for n in ("a", "b", "old", "model", "home"))
    for d in (a, b, old, model_dir, home / ".auditor" / "editors"):
        d.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AUDITOR_EDITOR_DIR", os.pathsep.join([str(a), str(tmp_path / "missing"), str(b)]))
    monkeypatch.setenv("AUDITOR_METANET_DIR", str(old))
    path = editor_search_path([model_dir])
    assert path == [a, b, old, model_dir, home / ".auditor" / "editors", PACKAGED_DIR]
    name = "metanet_adult_dp.safetensors"
    assert find_editor_weights(name) == PACKAGED_DIR / name
    (b / name).write_bytes(b"")
    assert find_editor_weights(name) == b / name
    monkeypatch.delenv("AUDITOR_EDITOR_DIR")
    monkeypatch.delenv("AUDITOR_METANET_DIR")
    assert editor_search_path() == [home / ".auditor" / "editors", PACKAGED_DIR]
    assert find_editor_weights("no_such_editor.safetensors") is None


def test_every_name_the_benchmarks_import_from_the_library_exists():
    """A benchmark broke silently when a helper it imports was removed from `auditor` (no test imports them)."""
    import ast
    import importlib

    missing = []
    for path in sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "auditor":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}: {node.module}.{alias.name}")
    assert not missing, missing
