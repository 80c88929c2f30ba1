"""Hostile and broken CSVs (property-based, hypothesis): every one gives a clear AuditorError or a
valid data set, never another exception, and the file on disk is never changed.

Each example writes a CSV from generated cells, so the tests reach the text level: missing
columns, wrong types, NaN and empty cells, no rows, one class, unseen categories, unicode,
huge values, duplicated column names, ragged rows.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from auditor import AuditorError, ModelSpec, evaluate, load_data
from auditor.cli import main
from auditor.data import TabularSchema, fit_preprocessing, read_csv
from auditor.editors import get_editor
from auditor.models import ModelBundle, build_architecture, save_model

# AUDITOR_FUZZ_EXAMPLES=2000 runs a long random search; the suite runs a fixed, fast one
FUZZ = int(os.environ.get("AUDITOR_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=FUZZ or 40, deadline=None, derandomize=not FUZZ, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# cells: the well-formed, the wrong type, the missing, the huge, the unicode
NUMBERS = st.one_of(st.integers(-1000, 1000).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["1e308", "-1e308", "1e400", "1e-320", "99999999999999999999999",
                                     "nan", "NaN", "inf", "-inf", "", " ", "NA", "null", "1,5", "0x10",
                                     "True", "False"]))
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
CELLS = st.one_of(NUMBERS, TEXT, st.sampled_from(["a", "b", "c", "é", "名前", "🙂", "\u200b", "\x00"]))
LABELS = st.one_of(st.sampled_from(["0", "1"]), st.sampled_from(["yes", "no", "maybe", "", "nan", "1.0"]))
BASE_COLUMNS = ["y", "num", "cat", "g"]


ASPECTS = ["size", "cells", "target", "header", "positive", "protected", "categorical", "inputs"]


@st.composite
def hostile_csv(draw):
    """(csv text, schema): a table with a target, a numeric, a categorical and a protected column,
    with 0 to 2 aspects made hostile (so that tables which do load also reach evaluation and
    editing): too few rows, hostile cells, a bad target, a changed header, a bad schema."""
    k = draw(st.integers(0, 2))
    aspects = set(draw(st.lists(st.sampled_from(ASPECTS), min_size=k, max_size=k, unique=True)))
    pick = lambda aspect, clean, *hostile: draw(st.sampled_from(hostile)) if aspect in aspects else clean  # noqa: E731
    n = draw(st.integers(0, 9)) if "size" in aspects else draw(st.integers(10, 40))
    rate = draw(st.sampled_from([2, 5, 20])) if "cells" in aspects else 0  # one hostile cell in `rate`
    bad = lambda: rate and draw(st.integers(0, rate - 1)) == 0  # noqa: E731
    target_kind = pick("target", "clean", "one-class", "three-values", "words", "hostile")
    header = list(BASE_COLUMNS)
    rows = []
    for i in range(n):
        y = {"clean": str(i % 2), "one-class": "1", "three-values": str(i % 3), "words": ["yes", "no"][i % 2],
             "hostile": draw(LABELS)}[target_kind]
        num = draw(NUMBERS) if bad() else str(draw(st.integers(0, 90)))
        cat = draw(CELLS) if bad() else draw(st.sampled_from(["a", "b", "c"]))
        g = draw(CELLS) if bad() else draw(st.sampled_from(["F", "M"]))
        rows.append([y, num, cat, g])
    change = pick("header", "none", "drop", "duplicate", "rename", "extra", "ragged", "unicode-header")
    if change == "drop":
        k = draw(st.integers(0, len(header) - 1))
        header.pop(k)
        rows = [r[:k] + r[k + 1:] for r in rows]
    elif change == "duplicate":
        k = draw(st.integers(0, len(header) - 1))
        header.append(header[k])
        rows = [r + [r[k]] for r in rows]
    elif change == "rename":
        k = draw(st.integers(0, len(header) - 1))
        header[k] = draw(TEXT)
    elif change == "extra":
        header.append(draw(TEXT))
        rows = [r + [draw(CELLS)] for r in rows]
    elif change == "ragged" and rows:
        k = draw(st.integers(0, len(rows) - 1))
        rows[k] = rows[k] + [draw(CELLS)] * draw(st.integers(1, 3)) if draw(st.booleans()) else rows[k][:2]
    elif change == "unicode-header":
        header = [h + draw(st.sampled_from(["é", "名", "🙂", " "])) for h in header]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    schema = TabularSchema(
        target="y", positive=pick("positive", None, "1", "yes", "absent"),
        protected=pick("protected", ["g"], [], ["missing"], ["g", "cat"]),
        categorical=pick("categorical", ["cat"], [], ["cat", "num"], ["g"]),
        inputs=pick("inputs", None, ["num", "cat"], ["num"], ["nope"], ["y"]))
    return buf.getvalue(), schema


def _write(tmp: Path, text: str) -> tuple[Path, str]:
    path = tmp / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _random_model(data) -> ModelBundle:
    spec = ModelSpec(arch={"name": "mlp", "in_features": data.n_inputs, "hidden": [4], "num_classes": 2},
                     input={"kind": "tabular", "features": list(data.feature_names), "shape": [data.n_inputs]},
                     class_names=list(data.class_names), preprocessing=data.preprocessing)
    torch.manual_seed(0)
    return ModelBundle(build_architecture(spec.arch), spec)


def _check_valid(data) -> None:
    """What a data set that loaded must satisfy."""
    for s in ("train", "val", "test"):
        sp = data.split(s)
        assert torch.isfinite(sp.X).all(), f"non-finite inputs in {s}"
        assert set(sp.y.tolist()) <= {0, 1}
        assert len(sp.groups) == len(sp.y) == len(sp.X)
    assert len(data.class_names) == 2


@SETTINGS
@given(case=hostile_csv())
def test_hostile_csv_gives_auditor_error_or_valid_data_and_file_unchanged(case):
    text, schema = case
    with tempfile.TemporaryDirectory() as tmp:
        path, digest = _write(Path(tmp), text)
        try:
            data = load_data(path, schema)
        except AuditorError as exc:
            event("refused")
            assert str(exc) and "\n" not in str(exc)
        else:
            event("loaded")
            _check_valid(data)
            bundle = _random_model(data)
            try:
                ev = evaluate(bundle, data, ["accuracy >= 0.5"])
                assert all(math.isfinite(v) or math.isnan(v) for v in ev.metrics.values())
                get_editor("magnitude-pruning").edit(bundle, data, ["sparsity >= 0.5"], device="cpu")
            except AuditorError as exc:
                assert "\n" not in str(exc)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.fixture(scope="module")
def clean_model(tmp_path_factory):
    """A model (random weights, real preprocessing) fitted on a clean table with categories a, b, c."""
    import pandas as pd
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"num": rng.integers(0, 90, 60), "cat": rng.choice(["a", "b", "c"], 60)})
    prep = fit_preprocessing(frame, ["num", "cat"], ["cat"])
    spec = ModelSpec(arch={"name": "mlp", "in_features": 4, "hidden": [4], "num_classes": 2},
                     input={"kind": "tabular", "features": ["num", "cat=a", "cat=b", "cat=c"], "shape": [4]},
                     class_names=["0", "1"], preprocessing=prep)
    torch.manual_seed(0)
    path = save_model(ModelBundle(build_architecture(spec.arch), spec), tmp_path_factory.mktemp("m") / "m.safetensors")
    return path, spec


@SETTINGS
@given(case=hostile_csv())
def test_hostile_csv_through_a_models_preprocessing(case, clean_model):
    """Missing columns and unseen categories relative to what the model was fitted on."""
    text, schema = case
    model_path, spec = clean_model
    with tempfile.TemporaryDirectory() as tmp:
        path, digest = _write(Path(tmp), text)
        try:
            data = load_data(path, schema, spec=spec)
        except AuditorError as exc:
            assert "\n" not in str(exc)
        else:
            _check_valid(data)
            assert data.n_inputs == 4  # unseen categories become all-zero one-hot rows
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@settings(max_examples=FUZZ // 4 or 15, deadline=None, derandomize=not FUZZ, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_csv())
def test_cli_exits_0_1_or_2_never_a_traceback(case, clean_model):
    text, schema = case
    model_path, _ = clean_model
    with tempfile.TemporaryDirectory() as tmp:
        path, digest = _write(Path(tmp), text)
        args = ["evaluate", str(model_path), str(path), "--target", schema.target]
        if schema.positive:
            args += ["--positive", schema.positive]
        if schema.protected:
            args += ["--protected", ",".join(schema.protected)]
        err_buf = io.StringIO()
        with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        err = err_buf.getvalue()
        assert code in (0, 1, 2)
        if code == 2:
            assert err.startswith("auditor: error: ") and err.count("\n") == 1
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# --- named cases: each row of the README's reliability table --------------------------------------
GOOD = "y,num,cat,g\n" + "".join(f"{i % 2},{i},{'abc'[i % 3]},{'FM'[i % 2]}\n" for i in range(40))
SCHEMA = TabularSchema(target="y", protected=["g"], categorical=["cat"])


@pytest.mark.parametrize("text, schema, match", [
    (GOOD.replace("y,num", "label,num"), SCHEMA, r"target column\(s\) \['y'\] not in the data"),
    (GOOD, TabularSchema(target="y", protected=["race"]), r"protected column\(s\) \['race'\]"),
    (GOOD.replace("\n1,3,", "\n1,three,"), SCHEMA, r"column 'num' should be numeric but .* \('three'\)"),
    (GOOD.replace("\n1,3,", "\n1,,"), SCHEMA, r"column 'num' has 1 missing value\(s\)"),
    (GOOD.replace("\n1,3,", "\n1,1e400,"), SCHEMA, "column 'num' holds a non-finite or huge value"),
    (GOOD.replace("\n1,3,", "\n1,nan,"), SCHEMA, r"column 'num' has 1 missing value\(s\)"),
    (GOOD.replace("\n1,3,", "\n,3,"), SCHEMA, "target column 'y' has missing values"),
    ("y,num,cat,g\n", SCHEMA, "has a header but no rows"),
    ("", SCHEMA, "is empty"),
    ("y,num,cat,g\n" + "1,1,a,F\n" * 20, SCHEMA, "only one class"),
    (GOOD.replace("y,num,cat,g", "y,num,cat,num"), SCHEMA, "column 'num' appears 2 times"),
    ("y,num,cat,g\n1,2,a,F\n0,2,b,M\n", SCHEMA, "too few rows"),
    (GOOD.replace("\n1,3,", "\n1,3,a,F,extra,"), SCHEMA, "cannot read data.csv as CSV"),
])
def test_named_bad_data(tmp_path, text, schema, match):
    path, digest = _write(tmp_path, text)
    with pytest.raises(AuditorError, match=match):
        load_data(path, schema)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_unicode_and_unseen_categories_are_fine(tmp_path, clean_model):
    _, spec = clean_model
    text = "y,num,cat,g\n" + "".join(f"{i % 2},{i},{'aé名🙂'[i % 4]},{'FM'[i % 2]}\n" for i in range(40))
    path, _ = _write(tmp_path, text)
    data = load_data(path, SCHEMA, spec=spec)
    raw = data.test.raw["cat"].tolist()
    X = data.test.X[:, 1:].numpy()
    for value, onehot in zip(raw, X):  # "a" keeps its one-hot input; unseen values get none
        assert onehot.sum() == (1.0 if value == "a" else 0.0)


def test_huge_but_finite_values_stay_finite(tmp_path):
    text = "y,num,cat,g\n" + "".join(f"{i % 2},{1e29 if i == 7 else i * 1e-300},a,F\n" for i in range(40))
    path, _ = _write(tmp_path, text)
    try:
        data = load_data(path, SCHEMA)
    except AuditorError as exc:
        assert "num" in str(exc)
    else:
        assert all(torch.isfinite(data.split(s).X).all() for s in ("train", "val", "test"))


def test_read_csv_never_writes(tmp_path):
    path, digest = _write(tmp_path, GOOD)
    read_csv(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# --- a user's own image case (.npz) -------------------------------------------------------------------
def _npz_choices():
    n = 20
    return {
        "images": [np.random.default_rng(0).random((n, 8, 8)), np.zeros((n, 1, 8, 8)), np.array(["a"] * n),
                   np.zeros((0, 8, 8)), np.full((n, 8, 8), np.nan), np.zeros((n,)), np.zeros((n, 8, 8), complex), None],
        "labels": [np.arange(n) % 2, np.arange(n - 1) % 2, np.array(["x"] * n), np.full(n, np.nan), np.full(n, -1),
                   np.zeros((n, 2)), np.array([]), np.arange(n) % 2 + 0.5, np.zeros(n), None],
        "target": [np.array(0), np.array([]), np.array("a"), np.array(99), np.array(-5), np.array(1.5), None],
        "mask": [np.zeros((8, 8)), np.zeros((3, 3)), np.array("m"), None],
        "pattern": [np.ones((8, 8)), np.ones((5,)), None],
        "corrupted": [None, np.zeros((n, 8, 8)), np.zeros((3,))],
        "kind": [None, np.array("cue"), np.array(["trigger"]), np.array(7)],
    }


@SETTINGS
@given(picks=st.fixed_dictionaries({k: st.sampled_from([0] * 2 * len(v) + list(range(len(v))))  # mostly valid
                                     for k, v in _npz_choices().items()}))
def test_hostile_npz_case_gives_auditor_error_or_valid_data(picks):
    choices = _npz_choices()
    arrays = {k: choices[k][i] for k, i in picks.items() if choices[k][i] is not None}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.npz"
        np.savez(path, **arrays)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            data = load_data(path)
        except AuditorError as exc:
            event("refused")
            assert "\n" not in str(exc)
        else:
            event("loaded")
            assert all(torch.isfinite(data.split(s).X).all() for s in ("train", "val", "test"))
            assert len(data.class_names) >= 2 and len(data.test) > 0
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_a_csv_with_an_absurd_column_count_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 14 MB CSV of a million columns ran for minutes and gigabytes in pandas before any check."""
    from auditor.data.tabular import read_csv

    path = tmp_path / "wide.csv"
    cols = [f"c{i}" for i in range(30000)]
    path.write_text(",".join(cols + ["y"]) + "\n" + ",".join(["1"] * 30001) + "\n")
    with pytest.raises(AuditorError, match=r"wide.csv has 30,001 columns, over the limit of 20,000.*MAX_COLUMNS"):
        read_csv(path)  # from the header line, before pandas parses anything
    monkeypatch.setenv("AUDITOR_MAX_COLUMNS", "40000")
    assert read_csv(path).shape == (1, 30001)
