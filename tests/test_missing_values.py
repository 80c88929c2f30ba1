"""Missing values in a user's CSV: read as the model's own pipeline fills them (the spec's "fill", drafted by
`spec init`, converted from a scikit-learn SimpleImputer), said in the data's notes, refused without a fill."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from auditor import load_data
from auditor.cli import main
from auditor.data import TabularSchema
from auditor.data.tabular import transform
from auditor.errors import AuditorError
from auditor.models import load_model, predict_logits
from tests.fixtures import fit_classifier

NUM, CAT = ["age", "income"], ["employment"]


def _loans(n: int = 900, seed: int = 3) -> pd.DataFrame:
    """A lender's applicants: an identifier, numbers with blanks, a text column with blanks, a group."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"applicant_id": [f"A{i:04d}" for i in range(n)], "age": rng.integers(18, 75, n),
                          "income": np.round(rng.lognormal(10.3, 0.5, n), 2),
                          "employment": rng.choice(["salaried", "self-employed", "unemployed"], n, p=[.6, .3, .1]),
                          "gender": rng.choice(["F", "M"], n)})
    score = frame["income"] / 30000 + (frame["age"] - 45) / 30 - 1.5 * (frame["employment"] == "unemployed")
    frame["approved"] = np.where(score + rng.normal(0, 0.3, n) > 1.0, "yes", "no")
    frame.loc[rng.choice(n, 40, replace=False), "income"] = np.nan
    frame.loc[rng.choice(n, 25, replace=False), "employment"] = np.nan
    return frame


def _vendor_inputs(frame: pd.DataFrame, fills: dict, mean: pd.Series, std: pd.Series) -> torch.Tensor:
    """The vendor's own pipeline: fill, standardise the numbers, one-hot the categories (sorted)."""
    filled = frame.fillna(fills)
    cats = sorted(filled["employment"].unique())
    onehot = np.stack([(filled["employment"] == c).to_numpy(float) for c in cats], 1)
    z = ((filled[NUM] - mean) / std).to_numpy(float)
    return torch.tensor(np.c_[z, onehot], dtype=torch.float32)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """A state dict trained on the vendor's own imputation, and the CSV it is audited on."""
    tmp = tmp_path_factory.mktemp("loans")
    frame = _loans()
    frame.to_csv(tmp / "loans.csv", index=False)
    fills = {"income": float(frame["income"].median()), "employment": "salaried"}
    filled = frame.fillna(fills)
    mean, std = filled[NUM].mean(), filled[NUM].std(ddof=0)
    X, y = _vendor_inputs(frame, fills, mean, std), torch.tensor((frame["approved"] == "yes").to_numpy(int))
    torch.manual_seed(0)
    model = fit_classifier(nn.Sequential(nn.Linear(X.shape[1], 16), nn.ReLU(), nn.Linear(16, 2)), X, y, 300, 0.03)
    torch.save(model.state_dict(), tmp / "m.pt")
    return tmp, frame, model, fills, mean, std


def _spec_init(tmp, *extra) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["spec", "init", str(tmp / "m.pt"), str(tmp / "loans.csv"), "--target", "approved", "--positive", "yes",
            "--protected", "gender", "--inputs", "age,income,employment", "--out", str(tmp / "spec.json"), "--force",
            *extra]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_spec_init_drafts_fills_and_text_columns_as_categories(vendor):
    tmp, frame, *_ = vendor
    rc, out, err = _spec_init(tmp)
    assert rc == 0, err
    spec = json.loads((tmp / "spec.json").read_text())
    cols = {c["name"]: c for c in spec["preprocessing"]["columns"]}
    train = load_data(str(tmp / "loans.csv"), TabularSchema(target="approved", positive="yes", protected=["gender"],
                                                            inputs=["age", "income", "employment"],
                                                            categorical=["employment"], fill_missing=True))
    rows = train.split("train").raw
    assert cols["income"]["fill"] == pytest.approx(float(rows["income"].median()))
    assert cols["employment"]["type"] == "categorical" and cols["employment"]["fill"] == "salaried"
    assert cols["employment"]["categories"] == ["salaried", "self-employed", "unemployed"]
    assert "fill" not in cols["age"]  # no missing value there: none drafted
    assert "employment (3 values)" in out and "missing values of income are read as" in out
    assert "SimpleImputer's statistics_" in out  # what to confirm
    assert "40 read as" in out and "25 read as 'salaried'" in out  # what the fills did, counted


def test_the_fill_gives_the_vendors_outputs_and_is_said(vendor):
    """With the vendor's own numbers in the spec, the auditor's inputs are the vendor's, blanks included."""
    tmp, frame, model, fills, mean, std = vendor
    assert _spec_init(tmp)[0] == 0
    spec = json.loads((tmp / "spec.json").read_text())
    for c in spec["preprocessing"]["columns"]:
        if c["type"] == "numeric":
            c.update(mean=float(mean[c["name"]]), std=float(std[c["name"]]))
        if c["name"] in fills:
            c["fill"] = fills[c["name"]]
    (tmp / "vendor_spec.json").write_text(json.dumps(spec))
    bundle = load_model(tmp / "m.pt", spec=str(tmp / "vendor_spec.json"))
    data = load_data(str(tmp / "loans.csv"), TabularSchema(target="approved", positive="yes", protected=["gender"]),
                     spec=bundle.spec)
    X = torch.cat([data.split(s).X for s in ("train", "val", "test")])
    frames = pd.concat([data.split(s).raw for s in ("train", "val", "test")], ignore_index=True)
    want = model(_vendor_inputs(frames, fills, mean, std)).detach()
    assert torch.allclose(predict_logits(bundle.model, X), want, atol=1e-5)
    assert any("'income': 40 read as" in n and "'employment': 25 read as 'salaried'" in n for n in data.notes)
    assert not any("no category for" in n for n in data.notes)  # the blanks are filled, not unseen categories


def test_without_a_fill_a_blank_is_refused_saying_how(vendor):
    tmp, *_ = vendor
    assert _spec_init(tmp)[0] == 0
    spec = json.loads((tmp / "spec.json").read_text())
    for c in spec["preprocessing"]["columns"]:
        c.pop("fill", None)
    (tmp / "nofill.json").write_text(json.dumps(spec))
    bundle = load_model(tmp / "m.pt", spec=str(tmp / "nofill.json"))
    with pytest.raises(AuditorError, match=r"missing value.*does not impute.*\"fill\"") as err:
        load_data(str(tmp / "loans.csv"), TabularSchema(target="approved", positive="yes", protected=["gender"]),
                  spec=bundle.spec)
    assert "SimpleImputer" in str(err.value)


def test_a_simple_imputer_pipeline_converts_exactly_and_goes_back_to_skops(vendor, tmp_path):
    pytest.importorskip("skops")
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    _, frame, *_ = vendor
    frame.to_csv(tmp_path / "loans.csv", index=False)
    nested = Pipeline([("prep", ColumnTransformer([
        ("num", Pipeline([("imp", SimpleImputer(strategy="median")), ("sc", StandardScaler())]), NUM),
        ("cat", Pipeline([("imp", SimpleImputer(strategy="most_frequent")),
                          ("oh", OneHotEncoder(handle_unknown="ignore"))]), CAT)])),
        ("clf", MLPClassifier((8,), max_iter=400, random_state=0))])
    flat = Pipeline([("imp", SimpleImputer(strategy="constant", fill_value=30000.0)), ("sc", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=300))])
    for name, est, cols in (("nested", nested, NUM + CAT), ("flat", flat, NUM)):
        est.fit(frame[cols], frame["approved"])
        sio.dump(est, tmp_path / f"{name}.skops")
        bundle = load_model(tmp_path / f"{name}.skops")
        fills = {c["name"]: c.get("fill") for c in bundle.spec.preprocessing["columns"]}
        data = load_data(str(tmp_path / "loans.csv"), TabularSchema(target="approved", protected=["gender"]),
                         spec=bundle.spec)
        X = torch.cat([data.split(s).X for s in ("train", "val", "test")])
        frames = pd.concat([data.split(s).raw for s in ("train", "val", "test")], ignore_index=True)
        ours = torch.softmax(predict_logits(bundle.model, X).double(), 1).numpy()
        assert np.abs(ours - est.predict_proba(frames[cols])).max() < 1e-5, name
        assert fills["income"] == (30000.0 if name == "flat" else pytest.approx(frame["income"].median()))
    # the README's promise: an edited model goes back to .skops from the command line
    out = tmp_path / "edited.skops"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["edit", str(tmp_path / "nested.skops"), str(tmp_path / "loans.csv"), "--target", "approved",
                   "--protected", "gender", "--editor", "finetune-fairness", "--require",
                   "demographic_parity <= 0.01", "--out", str(out), "--no-log"])
    assert rc in (0, 1) and out.exists()
    edited = sio.load(out, trusted=sio.get_untrusted_types(file=out))
    again = load_model(out)
    X = torch.from_numpy(transform(frame, again.spec.preprocessing))
    got = torch.softmax(predict_logits(again.model, X).double(), 1).numpy()
    assert np.abs(got - edited.predict_proba(frame[NUM + CAT])).max() < 1e-5


def test_scaled_one_hot_columns_in_a_spec():
    """A categorical column's "mean" / "std" scale its one-hot inputs; one value per category, both or neither."""
    from auditor.models import ModelSpec

    col = {"name": "job", "type": "categorical", "categories": ["a", "b", "c"], "mean": [0.5, 0.25, 0.25],
           "std": [0.5, 0.4, 0.4]}
    spec = {"arch": {"name": "mlp", "in_features": 3, "hidden": [], "num_classes": 2},
            "input": {"kind": "tabular", "features": ["job=a", "job=b", "job=c"], "shape": [3]},
            "class_names": ["no", "yes"], "preprocessing": {"version": 1, "columns": [col]}}
    ModelSpec.from_dict(spec)
    X = transform(pd.DataFrame({"job": ["a", "c", "zzz"]}), spec["preprocessing"])
    assert np.allclose(X, [[1.0, -0.625, -0.625], [-1.0, -0.625, 1.875], [-1.0, -0.625, -0.625]])
    with pytest.raises(AuditorError, match=r"'preprocessing.columns.0.std': column 'job' has 3 categories but 2"):
        ModelSpec.from_dict({**spec, "preprocessing": {"columns": [{**col, "std": [0.5, 0.4]}]}})
    with pytest.raises(AuditorError, match="'std' is a dependency of 'mean'"):
        ModelSpec.from_dict({**spec, "preprocessing": {"columns": [{k: v for k, v in col.items() if k != "std"}]}})
