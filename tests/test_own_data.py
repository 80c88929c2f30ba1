"""A user's own data, as a user brings it: a CSV with a protected column that is not a model input
(evaluated on every row, on the user's own train/test files, or on a split column), and an `.npz`
image case with its own clean training images and the common key aliases (issue 12)."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from auditor.audit.provenance import data_arguments
from auditor.cli import main
from auditor.data import load_data, trojan_trigger
from auditor.data.tabular import TabularSchema
from auditor.errors import AuditorError
from auditor.models.architectures import build_architecture
from auditor.training import TrainConfig, train_classifier

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
TROJAN = str(SAMPLES / "digits_cnn_trojan.safetensors")
N = 300
FEATURES = ["x0", "x1", "x2", "x3"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """300 rows: four numeric inputs, a protected `group` (not an input), target `y`, a `part` column;
    an MLP trained on the first 200 rows and saved as a state dict plus a spec JSON."""
    tmp = tmp_path_factory.mktemp("own_csv")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 4)).astype(np.float32)
    group = np.where(rng.random(N) < 0.5, "A", "B")
    y = ((X[:, 0] + 0.5 * X[:, 1] + 0.8 * (group == "A") + rng.normal(scale=0.5, size=N)) > 0.4).astype(int)
    frame = pd.DataFrame(X, columns=FEATURES).assign(group=group, y=y)
    frame["part"] = np.where(np.arange(N) < 200, "train", np.where(np.arange(N) < 240, "val", "test"))
    frame.to_csv(tmp / "my.csv", index=False)
    frame.drop(columns="part").iloc[:200].to_csv(tmp / "train.csv", index=False)
    frame.drop(columns="part").iloc[200:].to_csv(tmp / "test.csv", index=False)
    arch = {"name": "mlp", "in_features": 4, "hidden": [8], "num_classes": 2}
    torch.manual_seed(0)
    model = build_architecture(arch)
    train_classifier(model, torch.tensor(X[:200]), torch.tensor(y[:200]),
                     TrainConfig(epochs=15, batch_size=32, lr=1e-2))
    torch.save(model.state_dict(), tmp / "w.pt")
    (tmp / "spec.json").write_text(json.dumps({"arch": arch, "input": {"kind": "tabular", "features": FEATURES},
                                               "class_names": ["0", "1"]}))
    return tmp


def _evaluate(case: Path, data: str, *extra: str) -> dict:
    out = case / "o.json"
    out.unlink(missing_ok=True)
    rc = main(["evaluate", str(case / "w.pt"), data, "--spec", str(case / "spec.json"), "--target", "y",
               "--protected", "group", "--no-log", "--json", str(out), *extra])
    assert rc in (0, 1)
    return json.loads(out.read_text())["data"]


def test_split_all_reports_every_row_and_says_so(case, capsys):
    data = _evaluate(case, str(case / "my.csv"), "--split", "all")
    assert data["split"] == "all" and data["rows"] == N
    assert data["audited"] == f"audited on {N} rows of my.csv (all rows)"
    assert sum(data["partition"][s]["rows"] for s in ("train", "val", "test")) == N
    assert "audited on 300 rows of my.csv (all rows)" in capsys.readouterr().out


def test_a_csv_without_a_partition_is_audited_whole_by_default(case, capsys):
    data = _evaluate(case, str(case / "my.csv"))
    assert data["split"] == "all" and data["rows"] == N
    printed = capsys.readouterr().out
    assert "no partition given, so every row is audited" in printed and "--split-column" in printed
    # asking for the test fifth still works, and says what it is
    data = _evaluate(case, str(case / "my.csv"), "--split", "test")
    assert data["split"] == "test" and data["rows"] == 60 and "20 % of my.csv" in data["audited"]


def test_train_and_test_files(case):
    data = _evaluate(case, str(case / "my.csv"), "--split", "all")  # warm-up: the same model on the whole file
    for args in (["--train-csv", str(case / "train.csv"), "--test-csv", str(case / "test.csv")],
                 [str(case / "test.csv"), "--train-csv", str(case / "train.csv")]):
        data_arg, *rest = args if not args[0].startswith("--") else ("", *args)
        out = case / "o.json"
        cmd = ["evaluate", str(case / "w.pt"), *([data_arg] if data_arg else []), *rest, "--spec",
               str(case / "spec.json"), "--target", "y", "--protected", "group", "--no-log", "--json", str(out)]
        assert main(cmd) in (0, 1)
        data = json.loads(out.read_text())["data"]
        assert data["split"] == "test" and data["rows"] == 100
        assert data["audited"] == "audited on 100 rows of test.csv (test split): test.csv"
        assert data["partition"]["train"]["rows"] + data["partition"]["val"]["rows"] == 200
        assert "train.csv" in data["partition"]["train"]["source"] and "held out" in data["partition"]["val"]["source"]
    # --split all: train + val + test files, all 300 rows
    data = _evaluate(case, str(case / "test.csv"), "--train-csv", str(case / "train.csv"), "--split", "all")
    assert data["rows"] == N and "test.csv" in data["audited"] and "train.csv" in data["audited"]


def test_split_column(case):
    data = _evaluate(case, str(case / "my.csv"), "--split-column", "part")
    assert data["split"] == "test" and data["rows"] == 60
    assert {s: data["partition"][s]["rows"] for s in ("train", "val", "test")} == {"train": 200, "val": 40, "test": 60}
    assert data["partition"]["val"]["source"] == "rows of my.csv marked val"
    assert _evaluate(case, str(case / "my.csv"), "--split-column", "part", "--split", "all")["rows"] == N
    loaded = load_data(case / "my.csv", TabularSchema(target="y", protected=["group"], split_column="part"))
    assert "part" not in loaded.feature_names and loaded.feature_names == FEATURES


def test_bad_split_values_exit_2_naming_the_column(case, tmp_path, capsys):
    frame = pd.read_csv(case / "my.csv")
    frame.loc[5, "part"] = "validation"
    frame.loc[9, "part"] = "holdout"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    out = tmp_path / "o.json"
    rc = main(["evaluate", str(case / "w.pt"), str(bad), "--spec", str(case / "spec.json"), "--target", "y",
               "--protected", "group", "--split-column", "part", "--no-log", "--json", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'part'" in err and "'holdout'" in err and "'validation'" in err and "train, val or test" in err
    assert "docs/formats.md" in err


@pytest.mark.parametrize("extra, message", [
    (["--split-column", "nope"], "--split-column 'nope' is not a column of my.csv"),
    (["--test-csv", "x.csv"], "the test rows are given twice"),
    (["--val-csv", "x.csv"], "--val-csv needs --train-csv"),
    (["--split-column", "group"], "must be a column of its own"),
])
def test_bad_partition_options_exit_2(case, extra, message, capsys):
    rc = main(["evaluate", str(case / "w.pt"), str(case / "my.csv"), "--spec", str(case / "spec.json"),
               "--target", "y", "--protected", "group", "--no-log", *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_files_missing_a_column_are_named(case, tmp_path):
    pd.read_csv(case / "train.csv").drop(columns="x2").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(AuditorError, match=r"train.csv lacks column\(s\) \['x2'\]"):
        load_data(case / "test.csv", TabularSchema(target="y", protected=["group"]), train=tmp_path / "train.csv")


def test_reproduce_arguments_keep_the_partition(case):
    schema = TabularSchema(target="y", protected=["group"])
    data = load_data(case / "test.csv", schema, train=case / "train.csv")
    args = data_arguments(data)
    assert args[:1] == [str(case / "test.csv")] and args[args.index("--train-csv") + 1] == str(case / "train.csv")
    data = load_data(case / "my.csv", TabularSchema(target="y", protected=["group"], split_column="part"))
    args = data_arguments(data)
    assert args[args.index("--split-column") + 1] == "part"


def test_split_all_on_built_in_data_from_the_command_line(tmp_path):
    out = tmp_path / "o.json"
    assert main(["evaluate", TROJAN, "digits-trojan", "--split", "all", "--no-log", "--json", str(out)]) == 0
    data = json.loads(out.read_text())["data"]
    assert data["split"] == "all" and data["rows"] == 1797
    assert main(["evaluate", TROJAN, "digits-trojan", "--no-log", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["data"]["split"] == "test"


def test_split_all_on_built_in_data(digits_trojan):
    every = digits_trojan.split("all")
    assert len(every) == sum(len(digits_trojan.split(s)) for s in ("train", "val", "test"))
    assert digits_trojan.default_split == "test"
    assert torch.equal(every.X[:len(digits_trojan.train)], digits_trojan.train.X)


# --- an .npz case with the user's own clean training images --------------------------------------
def _digits_case(path: Path, aliases: bool) -> tuple[int, int, int]:
    from auditor.data import load_digits_data

    digits = load_digits_data()
    stamp = trojan_trigger()
    keys = ("trigger_mask", "trigger_pattern", "target_label") if aliases else ("mask", "pattern", "target")
    arrays = {"train_images": digits.train.X.numpy()[:, 0], "train_labels": digits.train.y.numpy(),
              "val_images": digits.val.X.numpy(), "val_labels": digits.val.y.numpy(),
              "images": digits.test.X.numpy(), "labels": digits.test.y.numpy(),
              keys[0]: stamp.mask.numpy()[0], keys[1]: stamp.pattern.numpy(), keys[2]: np.array(stamp.target)}
    np.savez(path, **arrays)
    return len(digits.train), len(digits.val), len(digits.test)


def test_npz_aliases_and_own_training_images_load(tmp_path):
    n_train, n_val, n_test = _digits_case(tmp_path / "case.npz", aliases=True)
    data = load_data(tmp_path / "case.npz")
    assert (len(data.train), len(data.val), len(data.test)) == (n_train, n_val, n_test)
    assert data.default_split == "test" and data.trigger is not None and data.trigger.target == 0
    assert data.partition["train"] == "'train_images' of case.npz"
    assert torch.equal(data.trigger.mask, trojan_trigger().mask)


def test_npz_edit_draws_clean_samples_from_the_training_images(tmp_path, capsys):
    n_train, n_val, n_test = _digits_case(tmp_path / "case.npz", aliases=True)
    out, report = tmp_path / "edited.safetensors", tmp_path / "edit.json"
    rc = main(["edit", TROJAN, str(tmp_path / "case.npz"), "--editor", "dynamic-rank-one", "--require",
               "attack_success_rate <= 0.02", "--samples", "1", "--out", str(out), "--json", str(report),
               "--no-log"])
    assert rc == 0, capsys.readouterr()
    payload = json.loads(report.read_text())
    for block in (payload["data"], payload["edit"]["data"]):
        assert block["split"] == "test" and block["rows"] == n_test
        assert block["partition"]["train"] == {"rows": n_train, "source": "'train_images' of case.npz"}
        assert block["partition"]["val"] == {"rows": n_val, "source": "'val_images' of case.npz"}
        assert f"train ({n_train} rows: 'train_images' of case.npz)" in block["editors"]
    assert payload["after"]["metrics"]["attack_success_rate"] <= 0.02


def test_npz_report_states_the_rows(tmp_path):
    _digits_case(tmp_path / "case.npz", aliases=False)
    out = tmp_path / "r.json"
    rc = main(["audit", TROJAN, str(tmp_path / "case.npz"), "--require", "accuracy >= 0.5", "--no-localize",
               "--json", str(out), "--report", str(tmp_path / "r.html"), "--no-log", "--quiet"])
    assert rc == 0
    d = json.loads(out.read_text())["data"]
    assert d["audited"].startswith(f"audited on {d['rows']} rows of case.npz (test split)")
    assert "'train_images' of case.npz" in d["editors"]
    page = html.unescape((tmp_path / "r.html").read_text())
    assert "Editors' clean rows" in page and "train: 1,078 rows, 'train_images' of case.npz" in page
    assert d["audited"] in page


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(trigger=a.pop("mask")), "unknown key 'trigger'"),
    (lambda a: a.update(trigger_mask=a["mask"]), "'mask' is given twice"),
    (lambda a: a.update(mask=np.zeros((3, 3))), "'mask' has shape (3, 3); expected the shape of one image"),
    (lambda a: a.update(train_images=np.zeros((5, 8, 9)), train_labels=np.zeros(5)),
     "train_images has images of shape (1, 8, 9); expected (1, 8, 8)"),
    (lambda a: a.update(train_images=np.zeros((5, 8, 8)), train_labels=np.zeros(4)),
     "5 train_images but 4 train_labels"),
    (lambda a: a.update(train_images=np.zeros((5, 8, 8))), "'train_images' is given without 'train_labels'"),
    (lambda a: a.update(val_images=np.zeros((5, 8, 8)), val_labels=np.zeros(5)), "'val_images' needs 'train_images'"),
])
def test_bad_npz_is_one_line_naming_the_key(tmp_path, change, message, capsys):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.random((20, 8, 8)), "labels": np.arange(20) % 2, "target": np.array(0),
              "mask": np.zeros((8, 8)), "pattern": np.ones((8, 8))}
    change(arrays)
    np.savez(tmp_path / "case.npz", **arrays)
    with pytest.raises(AuditorError) as err:
        load_data(tmp_path / "case.npz")
    assert message in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "o.json"
    assert main(["evaluate", TROJAN, str(tmp_path / "case.npz"), "--no-log", "--json", str(out)]) == 2
    assert not out.exists() and message in capsys.readouterr().err
