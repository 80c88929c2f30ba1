"""The CLI starts like a CLI: `auditor --help` and `auditor log` import no heavy library.

Checked by looking at `sys.modules` in a fresh interpreter after the command, not by timing
(the machines running the tests are shared; start-up figures belong in a benchmark or a report).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from auditor.cli import COMMANDS, build_parser
from tests.conftest import ROOT, SAMPLES

HEAVY = ("torch", "pandas", "sklearn", "scipy", "captum", "matplotlib", "plotly", "auditor.editors")

# Run a command with auditor.cli.main in a fresh interpreter; print its exit code and the heavy
# modules it imported as JSON on the last line.
_PROBE = """
import contextlib, io, json, sys
from auditor.cli import main
argv = json.loads(sys.argv[1])
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
heavy = json.loads(sys.argv[2])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in heavy if m in sys.modules), "out": out.getvalue()}))
"""


def _probe(argv: list[str], db) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "AUDITOR_DB": str(db)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def db_with_entry(tmp_path):
    from auditor.store import AuditLog
    db = tmp_path / "audit.db"
    AuditLog(db).append("evaluation", model_sha256="ab" * 32, data_name="adult", passed=True,
                        results={"label": "startup test"})
    return db


@pytest.mark.parametrize("argv", [["--help"], [], ["log"], ["log", "list"], ["log", "show", "1"],
                                  ["log", "show", "1", "--json"], ["log", "verify"], ["log", "--help"],
                                  ["evaluate", "--help"]])
def test_help_and_log_import_no_heavy_library(argv, db_with_entry):
    result = _probe(argv, db_with_entry)
    assert result["loaded"] == [], f"`auditor {' '.join(argv)}` imported {result['loaded']}"
    assert result["rc"] == (2 if argv == [] else 0), result["out"]


def test_log_show_prints_the_entry(db_with_entry):
    result = _probe(["log", "show", "1"], db_with_entry)
    assert "startup test" in result["out"] and "adult" in result["out"]


def test_top_level_help_lists_every_command(db_with_entry):
    out = _probe(["--help"], db_with_entry)["out"]
    for name, helptext in COMMANDS.items():
        assert name in out and helptext[:30] in out


def test_unknown_command_is_refused_with_exit_2(db_with_entry):
    result = _probe(["evalute"], db_with_entry)
    assert result["rc"] == 2 and "invalid choice" in result["out"]


@pytest.mark.slow
def test_evaluate_imports_no_captum_matplotlib_or_editors(tmp_path):
    result = _probe(["evaluate", str(SAMPLES / "adult_mlp.safetensors"), "adult",
                     "--require", "accuracy >= 0.5"], tmp_path / "audit.db")
    assert result["rc"] == 0, result["out"]
    assert "torch" in result["loaded"]  # it did run the model
    assert not {"captum", "matplotlib", "auditor.editors"} & set(result["loaded"]), result["loaded"]


def test_importing_the_package_is_light():
    code = ("import sys, json, auditor, auditor.cli, auditor.store, auditor.errors; "
            f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_lazy_public_names():
    import auditor
    import auditor.evaluate  # the submodule of the same name must not shadow the function
    from auditor import evaluate, load_model
    assert callable(evaluate) and evaluate is sys.modules["auditor.evaluate"].evaluate
    assert auditor.evaluate is evaluate and callable(load_model)
    for name in auditor.__all__:
        assert getattr(auditor, name) is not None
    with pytest.raises(AttributeError):
        auditor.no_such_name  # noqa: B018
    from auditor import zoo  # submodules still import by name
    assert zoo.__name__ == "auditor.zoo"


def test_full_parser_has_the_light_table_commands():
    """Every name in the light table is a module that registers that subcommand."""
    full = build_parser(commands=COMMANDS)
    light = build_parser([])
    choices = lambda p: next(a for a in p._actions if a.dest == "command").choices
    assert list(choices(full)) == list(choices(light)) == list(COMMANDS)
    for name, sub in choices(full).items():
        assert sub.get_default("func") is not None, name


def test_default_model_size_limit_matches_the_loader():
    from auditor.cli.common import DEFAULT_MAX_MODEL_MB
    from auditor.models.files import DEFAULT_MAX_BYTES
    assert DEFAULT_MAX_MODEL_MB == DEFAULT_MAX_BYTES / 2**20
