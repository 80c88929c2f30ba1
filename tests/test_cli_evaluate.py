import json
import subprocess
import sys

import pytest

from auditor.cli import main
from tests.conftest import SAMPLES

ADULT = str(SAMPLES / "adult_mlp.safetensors")


def test_adult_fairness_fails_with_exit_1(tmp_path, capsys):
    out = tmp_path / "e.json"
    rc = main(["evaluate", ADULT, "adult", "--require", "demographic_parity <= 0.05", "--json", str(out)])
    assert rc == 1
    printed = capsys.readouterr().out
    assert "demographic_parity <= 0.05" in printed and "FAIL" in printed and "Female" in printed
    payload = json.loads(out.read_text())
    assert payload["metrics"]["accuracy"] >= 0.84
    req = payload["requirements"][0]
    assert set(req) >= {"expr", "metric", "value", "threshold", "passed"} and req["passed"] is False
    assert set(payload["groups"]["sex"]) == {"Female", "Male"}


def test_passing_requirements_exit_0():
    assert main(["evaluate", str(SAMPLES / "digits_cnn_trojan.safetensors"), "digits-trojan",
                 "--require", "accuracy >= 0.95", "--require", "attack_success_rate >= 0.9"]) == 0


@pytest.mark.parametrize("args, message", [
    (["evaluate", ADULT, "adult", "--require", "acuracy >= 0.9"], "unknown metric 'acuracy'"),
    (["evaluate", "missing.safetensors", "adult"], "model file not found"),
    (["evaluate", ADULT, "digits"], "model takes tabular inputs"),
    (["evaluate", ADULT, "nowhere"], "unknown data 'nowhere'"),
])
def test_bad_input_exit_2_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_csv_with_schema_options(tmp_path, adult):
    # The raw Adult test rows, as a user would bring them in a CSV
    path = tmp_path / "adult_test.csv"
    adult.test.raw.to_csv(path, index=False)
    rc = main(["evaluate", ADULT, str(path), "--target", "income", "--positive", ">50K",
               "--protected", "sex,race", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    payload = json.loads((tmp_path / "o.json").read_text())
    assert payload["metrics"]["accuracy"] > 0.8 and "sex" in payload["groups"]


@pytest.mark.slow
def test_console_script_installed():
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "evaluate", ADULT, "adult"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "accuracy" in proc.stdout
