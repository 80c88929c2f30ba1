"""scikit-learn models: `.skops` files converted exactly, and skl2onnx graphs audited up to their scores
(issue 18). Models are trained here on a subsample of the vendored Adult data."""
from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("skops")
pytest.importorskip("skl2onnx")
if importlib.util.find_spec("onnx2torch") is None:  # imported by the auditor without torchvision
    pytest.skip("needs onnx2torch", allow_module_level=True)

import onnxruntime as ort  # noqa: E402
import skops.io as sio  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from auditor import load_data  # noqa: E402
from auditor.cli import main  # noqa: E402
from auditor.data.tabular import _read_adult  # noqa: E402
from auditor.editors.registry import editors_for  # noqa: E402
from auditor.models import ModelSpec, load_model, predict_logits, save_model  # noqa: E402
from auditor.requirements import compute_metrics  # noqa: E402

NUM = ["age", "education-num", "hours-per-week", "capital-gain", "capital-loss"]
CAT = ["workclass", "education", "marital-status", "occupation", "relationship", "native-country"]


def _pipeline(clf):
    return Pipeline([("prep", ColumnTransformer([("num", StandardScaler(), NUM),
                                                 ("cat", OneHotEncoder(handle_unknown="ignore"), CAT)])),
                     ("clf", clf)])


@pytest.fixture(scope="module")
def adult():
    train = _read_adult("adult.data.gz").sample(2500, random_state=0)
    test = _read_adult("adult.test.gz")
    return train, test


@pytest.fixture(scope="module", params=["logistic", "mlp"])
def skops_model(request, adult, tmp_path_factory):
    train, _ = adult
    clf = LogisticRegression(max_iter=500) if request.param == "logistic" else \
        MLPClassifier((16,), max_iter=150, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = _pipeline(clf).fit(train[NUM + CAT], train["income"])
    path = tmp_path_factory.mktemp("skops") / f"{request.param}.skops"
    sio.dump(est, path)
    return request.param, est, path


def _probs(model, X):
    return torch.softmax(predict_logits(model, X).double(), dim=1).numpy()


def test_skops_pipeline_is_converted_exactly(skops_model, adult, tmp_path):
    kind, est, path = skops_model
    _, test = adult
    bundle = load_model(path)
    assert bundle.format == "skops"
    assert bundle.spec.arch["name"] == "mlp" and bundle.spec.arch["hidden"] == ([] if kind == "logistic" else [16])
    assert bundle.spec.preprocessing["columns"][0] == {"name": "age", "type": "numeric", "log1p": False,
                                                       "mean": pytest.approx(est[0].transformers_[0][1].mean_[0]),
                                                       "std": pytest.approx(est[0].transformers_[0][1].scale_[0])}
    data = load_data("adult", spec=bundle.spec)
    rows = data.split("test")
    assert len(rows.y) == len(test)
    # the binary model keeps its one score: no row of zeros counted as pruned weights
    assert bundle.spec.single_logit and bundle.model.out.weight.shape[0] == 1
    if kind == "logistic":
        assert compute_metrics(bundle.model, data, "test").metrics["sparsity"] == 0.0
    want = est.predict_proba(test[NUM + CAT])
    got = _probs(bundle.model, rows.X)
    assert np.abs(got - want).max() < 1e-6  # every row of adult.test
    assert (got.argmax(1) == want.argmax(1)).all()
    # the CLI's evaluate on the same rows gives scikit-learn's accuracy
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(path), "adult", "--split", "test", "--json", str(out), "--no-log"]) == 0
    acc = json.loads(out.read_text())["metrics"]["accuracy"]
    truth = (test["income"] == ">50K").to_numpy()
    assert acc == pytest.approx(float(((want[:, 1] > want[:, 0]) == truth).mean()), abs=1e-12)


def test_edited_model_goes_back_to_skops_onnx_and_safetensors(skops_model, adult, tmp_path):
    kind, est, path = skops_model
    _, test = adult
    bundle = load_model(path)
    edited = bundle.copy()
    with torch.no_grad():
        edited.model.out.weight[-1] += 0.05
        edited.model.out.bias[-1] -= 0.1
    assert bundle.sha256 == load_model(path).sha256  # the original is untouched
    save_model(edited, tmp_path / "e.skops")
    back = sio.load(tmp_path / "e.skops", trusted=sio.get_untrusted_types(file=tmp_path / "e.skops"))
    assert type(back) is type(est) and type(back[-1]) is type(est[-1])
    data = load_data("adult", spec=bundle.spec)
    want = _probs(edited.model, data.split("test").X)
    assert np.abs(back.predict_proba(test[NUM + CAT]) - want).max() < 1e-6
    for suffix in (".onnx", ".safetensors"):
        again = load_model(save_model(edited, tmp_path / f"e{suffix}"))
        assert np.abs(_probs(again.model, data.split("test").X) - want).max() < 1e-5


def test_editors_offered_for_converted_models(skops_model):
    kind, _, path = skops_model
    bundle = load_model(path)
    data = load_data("adult", spec=bundle.spec)
    names = {cls.name for cls in editors_for(bundle, data)}
    assert {"finetune-fairness", "dynamic-rank-one"} & names, names
    from auditor.editors.registry import EDITORS, unavailable_editors

    refused = dict((cls.name, reason) for cls, reason in unavailable_editors(bundle, data))
    assert set(EDITORS) == names | set(refused)  # every editor applies or says why not
    assert all(isinstance(r, str) and r for r in refused.values())
    assert "finetune-fix" in names and "magnitude-pruning" in names
    assert "rank-one" in refused and "pairs" in refused["rank-one"]  # says why (no corrupted twins on Adult)


def test_refused_skops_types_and_steps(adult, tmp_path):
    train, _ = adult
    imputer = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)),
                        ("clf", LogisticRegression(max_iter=200))])
    imputer.fit(train[NUM], train["income"])
    sio.dump(imputer, tmp_path / "imp.skops")
    with pytest.raises(Exception, match="MissingIndicator, which the auditor does not load"):
        load_model(tmp_path / "imp.skops")  # refused unread: its type is not on the allow-list
    coded = Pipeline([("impute", SimpleImputer(missing_values=-1, strategy="median")),
                      ("clf", LogisticRegression(max_iter=200))])
    coded.fit(train[NUM], train["income"])
    sio.dump(coded, tmp_path / "coded.skops")
    with pytest.raises(Exception, match=r"SimpleImputer\(missing_values=-1\) cannot be converted"):
        load_model(tmp_path / "coded.skops")
    assert main(["evaluate", str(tmp_path / "imp.skops"), "adult", "--no-log"]) == 2
    drop = _pipeline(LogisticRegression(max_iter=200))
    drop.set_params(prep__cat__drop="first")
    drop.fit(train[NUM + CAT], train["income"])
    sio.dump(drop, tmp_path / "drop.skops")
    with pytest.raises(Exception, match="drop='first'"):
        load_model(tmp_path / "drop.skops")


def _scaled_one_hot(shape: str):
    """Vendor pipelines that standardise their one-hot columns too (a StandardScaler after the encoder)."""
    if shape == "scaler-after-all":  # passthrough numbers, dense one-hot, then a scaler over the whole matrix
        prep = ColumnTransformer([("num", "passthrough", NUM),
                                  ("cat", OneHotEncoder(sparse_output=False, handle_unknown="ignore"), CAT)])
        return [("prep", prep), ("scale", StandardScaler())]
    if shape == "sparse-with-mean-false":  # the sparse one-hot only takes a scaler without centring
        prep = ColumnTransformer([("num", StandardScaler(), NUM), ("cat", OneHotEncoder(handle_unknown="ignore"), CAT)])
        return [("prep", prep), ("scale", StandardScaler(with_mean=False))]
    inner = Pipeline([("onehot", OneHotEncoder(sparse_output=False, handle_unknown="ignore")),
                      ("scale", StandardScaler())])  # the scaler inside the ColumnTransformer's own pipeline
    return [("prep", ColumnTransformer([("num", StandardScaler(), NUM), ("cat", inner, CAT)]))]


@pytest.mark.parametrize("shape", ["scaler-after-all", "sparse-with-mean-false", "scaler-in-column-pipeline"])
def test_standardised_one_hot_columns_are_converted_exactly(shape, adult, tmp_path):
    train, test = adult
    clf = LogisticRegression(max_iter=500) if shape != "sparse-with-mean-false" else \
        MLPClassifier((8,), max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = Pipeline(_scaled_one_hot(shape) + [("clf", clf)]).fit(train[NUM + CAT], train["income"])
    sio.dump(est, tmp_path / "v.skops")
    bundle = load_model(tmp_path / "v.skops")
    cols = {c["name"]: c for c in bundle.spec.preprocessing["columns"]}
    work = cols["workclass"]
    assert len(work["mean"]) == len(work["std"]) == len(work["categories"])
    if shape == "sparse-with-mean-false":
        assert work["mean"] == [0.0] * len(work["categories"]) and min(work["std"]) < 0.5
    else:  # the share of training rows in each category is what the scaler subtracts
        share = (train["workclass"].astype(str) == work["categories"][0]).mean()
        assert work["mean"][0] == pytest.approx(share)
    data = load_data("adult", spec=bundle.spec)
    want = est.predict_proba(test[NUM + CAT])
    assert np.abs(_probs(bundle.model, data.split("test").X) - want).max() < 1e-6  # every row of adult.test
    edited = bundle.copy()
    with torch.no_grad():
        edited.model.out.bias[-1] += 0.2
    back_path = save_model(edited, tmp_path / "e.skops")
    back = sio.load(back_path, trusted=sio.get_untrusted_types(file=back_path))
    got = _probs(edited.model, data.split("test").X)
    assert np.abs(back.predict_proba(test[NUM + CAT]) - got).max() < 1e-6
    again = load_model(save_model(edited, tmp_path / "e.safetensors"))  # the spec's scaled one-hot columns kept
    assert again.spec.preprocessing == edited.spec.preprocessing


def test_a_function_transformer_is_read_only_as_a_passthrough(adult, tmp_path):
    from sklearn.preprocessing import FunctionTransformer

    train, test = adult
    plain = Pipeline([("prep", ColumnTransformer([("num", "passthrough", NUM[:3])])),
                      ("clf", LogisticRegression(max_iter=500))]).fit(train[NUM[:3]], train["income"])
    sio.dump(plain, tmp_path / "plain.skops")
    bundle = load_model(tmp_path / "plain.skops")  # fitted, the "passthrough" is an identity FunctionTransformer
    assert [c["name"] for c in bundle.spec.preprocessing["columns"]] == NUM[:3]
    data = load_data("adult", spec=bundle.spec)
    assert np.abs(_probs(bundle.model, data.split("test").X) - plain.predict_proba(test[NUM[:3]])).max() < 1e-6
    logged = Pipeline([("prep", ColumnTransformer([("num", FunctionTransformer(np.log1p), NUM[:3])])),
                       ("clf", LogisticRegression(max_iter=500))]).fit(train[NUM[:3]], train["income"])
    sio.dump(logged, tmp_path / "logged.skops")
    with pytest.raises(Exception, match="numpy.log1p, which the auditor does not load"):  # never loaded
        load_model(tmp_path / "logged.skops")


def _other_preprocessing(shape: str):
    from sklearn.compose import make_column_selector
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler

    onehot = OneHotEncoder(handle_unknown="ignore")
    if shape == "minmax-maxabs":
        return ColumnTransformer([("a", MinMaxScaler(feature_range=(-1, 2)), NUM[:3]), ("b", MaxAbsScaler(), NUM[3:]),
                                  ("cat", onehot, CAT)])
    if shape == "robust-remainder":  # the numbers are the remainder, scaled
        return ColumnTransformer([("cat", onehot, CAT)], remainder=RobustScaler())
    if shape == "passthrough-remainder":
        return ColumnTransformer([("cat", onehot, CAT)], remainder="passthrough")
    return ColumnTransformer([("num", StandardScaler(), make_column_selector(dtype_include="number")),
                              ("cat", onehot, make_column_selector(dtype_exclude="number"))])


@pytest.mark.parametrize("shape", ["minmax-maxabs", "robust-remainder", "passthrough-remainder", "column-selector"])
def test_other_scalers_remainders_and_column_selectors_are_converted_exactly(shape, adult, tmp_path):
    train, test = adult
    est = Pipeline([("prep", _other_preprocessing(shape)), ("clf", LogisticRegression(max_iter=1000))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(train[NUM + CAT], train["income"])
    sio.dump(est, tmp_path / "v.skops")
    bundle = load_model(tmp_path / "v.skops")
    assert sorted(c["name"] for c in bundle.spec.preprocessing["columns"]) == sorted(NUM + CAT)
    data = load_data("adult", spec=bundle.spec)
    assert np.abs(_probs(bundle.model, data.split("test").X) - est.predict_proba(test[NUM + CAT])).max() < 1e-6


def test_a_clipping_scaler_is_refused(adult, tmp_path):
    from sklearn.preprocessing import MinMaxScaler

    train, _ = adult
    est = Pipeline([("scale", MinMaxScaler(clip=True)), ("clf", LogisticRegression(max_iter=500))])
    sio.dump(est.fit(train[NUM], train["income"]), tmp_path / "clip.skops")
    with pytest.raises(Exception, match=r"MinMaxScaler\(clip=True\) clips its output"):
        load_model(tmp_path / "clip.skops")


def test_a_model_fitted_on_an_array_reads_the_columns_inputs_names(adult, tmp_path, capsys):
    """A pipeline fitted on a numpy array has no column names: the CSV columns come from --inputs, in order."""
    train, test = adult
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    est.fit(train[NUM].to_numpy(), train["income"])
    sio.dump(est, tmp_path / "arr.skops")
    frame = test[NUM + ["income"]].sample(frac=1.0, random_state=0)
    frame[list(reversed(frame.columns))].to_csv(tmp_path / "people.csv", index=False)  # another column order
    base = ["evaluate", str(tmp_path / "arr.skops"), str(tmp_path / "people.csv"), "--target", "income",
            "--positive", ">50K", "--no-log"]
    assert main(base) == 2
    assert "unnamed array of 5 columns (x0, x1, x2, x3, ...)" in capsys.readouterr().err
    assert main(base + ["--inputs", ",".join(NUM[:4])]) == 2
    assert "reads 5 unnamed columns but --inputs names 4" in capsys.readouterr().err
    out = tmp_path / "ev.json"
    assert main(base + ["--inputs", ",".join(NUM), "--json", str(out)]) in (0, 1)
    want = float((est.predict(frame[NUM].to_numpy()) == frame["income"]).mean())
    assert json.loads(out.read_text())["metrics"]["accuracy"] == pytest.approx(want, abs=1e-12)
    bundle = load_model(tmp_path / "arr.skops")
    from auditor.data import TabularSchema
    from auditor.data import load_data as load

    data = load(tmp_path / "people.csv", TabularSchema(target="income", positive=">50K", inputs=NUM), spec=bundle.spec)
    assert data.notes[0].startswith("the model was fitted on an unnamed array: its columns x0, x1, x2, x3, x4 are "
                                    "read from age")
    assert [c["name"] for c in bundle.spec.preprocessing["columns"]] == NUM  # named now: kept when it is saved
    again = load_model(save_model(bundle, tmp_path / "named.safetensors"))
    assert again.spec.input["features"] == NUM
    # a file whose columns are the stand-in names themselves needs no --inputs
    frame.rename(columns=dict(zip(NUM, [f"x{i}" for i in range(5)]))).to_csv(tmp_path / "x.csv", index=False)
    fresh = load_model(tmp_path / "arr.skops")
    data = load(tmp_path / "x.csv", TabularSchema(target="income", positive=">50K"), spec=fresh.spec)
    assert float((predict_logits(fresh.model, data.split("all").X).argmax(1).numpy() == data.split("all").y.numpy())
                 .mean()) == pytest.approx(want, abs=1e-12)


def _adult_onnx(tmp_path, zipmap: bool):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    data = load_data("adult")
    train = data.split("train")
    X, y = train.X.numpy()[:2500], train.y.numpy()[:2500]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((16,), max_iter=150, random_state=0).fit(X, y)
    options = {} if zipmap else {id(clf): {"zipmap": False}}
    proto = to_onnx(clf, initial_types=[("X", FloatTensorType([None, X.shape[1]]))], target_opset=17,
                    options=options)
    path = tmp_path / "vendor.onnx"
    path.write_bytes(proto.SerializeToString())
    spec = {"arch": {"name": "onnx", "num_classes": 2},
            "input": {"kind": "tabular", "shape": [X.shape[1]]}, "class_names": list(data.class_names),
            "preprocessing": data.preprocessing}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return clf, path, tmp_path / "spec.json", data


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_skl2onnx_heads_are_audited_up_to_the_scores(tmp_path, zipmap):
    clf, path, spec_path, data = _adult_onnx(tmp_path, zipmap)
    bundle = load_model(path, spec=ModelSpec.from_json(spec_path.read_text()))
    head = bundle.spec.provenance["onnx_head"]
    assert head["scores"] == "sigmoid" and ("ZipMap" in head["operators"]) == zipmap
    rows = data.split("all")
    want = clf.predict_proba(rows.X.numpy())
    got = _probs(bundle.model, rows.X)
    assert np.abs(got - want).max() < 1e-6 and (got.argmax(1) == want.argmax(1)).all()
    linear = [m for m in bundle.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear[-1].out_features == 1  # the one score, read as [z - z, z]: no row of zeros counted as pruned
    assert all(bool(m.weight.abs().sum(1).gt(0).all()) for m in linear)
    # an audit with a fairness editor writes an ONNX with the vendor's outputs
    out = tmp_path / "edited.onnx"
    rc = main(["audit", str(path), "adult", "--spec", str(spec_path), "--require", "demographic_parity <= 0.05",
               "--editor", "finetune-fairness", "--out", str(out), "--json", str(tmp_path / "r.json"),
               "--baselines", "none", "--no-localize", "--no-log", "--quiet"])
    assert rc in (0, 1)
    vendor = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [o.name for o in vendor.get_outputs()]
    assert [i.name for i in sess.get_inputs()] == ["X"]
    x = rows.X.numpy()[:200]
    label, probs = sess.run(None, {"X": x})
    edited = load_model(out)
    mine = _probs(edited.model, torch.from_numpy(x))
    if zipmap:
        probs = np.array([[p[0], p[1]] for p in probs])
    assert np.abs(probs - mine).max() < 1e-5
    assert (np.asarray(label) == mine.argmax(1)).mean() > 0.99
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["provenance"]["onnx_head"]["scores"] in ("sigmoid", "softmax")


def test_unrecognised_onnx_head_is_refused(tmp_path):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    clf = LogisticRegression().fit(X, X[:, 0] > 0)
    path = tmp_path / "lr.onnx"
    path.write_bytes(to_onnx(clf, initial_types=[("X", FloatTensorType([None, 4]))], target_opset=17)
                     .SerializeToString())
    spec = {"arch": {"name": "onnx", "num_classes": 2}, "input": {"kind": "tabular", "shape": [4]},
            "class_names": ["no", "yes"]}
    with pytest.raises(Exception, match="LinearClassifier"):
        load_model(path, spec=spec)


@pytest.mark.usefixtures("navigation_mode")
def test_dashboard_loads_a_skops_upload(skops_model, adult):
    from tests.test_app import app, texts

    kind, _, path = skops_model
    if kind != "logistic":
        pytest.skip("one upload is enough")
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value(("credit.skops", path.read_bytes(), "application/octet-stream"))
    at.run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.model_label == "credit" and audit.current.format == "skops"


@pytest.mark.usefixtures("navigation_mode")
def test_dashboard_reads_an_unnamed_array_model_from_the_columns_chosen(adult, tmp_path):
    """On the Load page the model input columns (every column, by default) name an unnamed model's columns in
    their order; a named model is not told about columns it does not read."""
    from tests.test_app import app, texts, upload

    train, test = adult
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    est.fit(train[NUM].to_numpy(), train["income"])
    sio.dump(est, tmp_path / "arr.skops")
    frame = test[NUM + ["sex", "income"]].iloc[:800]
    at = app()
    upload(at, "arr.skops", (tmp_path / "arr.skops").read_bytes(), "people.csv", frame.to_csv(index=False).encode())
    at.multiselect(key="up_protected").set_value(["sex"]).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert "fitted on an unnamed array: its columns x0, x1, x2, x3, x4 are read from age" in texts(at.warning), \
        (texts(at.warning), audit.data.notes)
    want = float((est.predict(frame[NUM].to_numpy()) == frame["income"]).mean())
    assert audit.current.spec.input["features"] == NUM
    acc = compute_metrics(audit.current.model, audit.data, audit.data.resolve_split("all")).metrics["accuracy"]
    assert acc == pytest.approx(want, abs=1e-12)
