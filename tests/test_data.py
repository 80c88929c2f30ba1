import gzip

import numpy as np
import pandas as pd
import pytest
import torch

from auditor import AuditorError, TabularSchema, load_data
from auditor.data import add_cue, load_csv, poison
from auditor.data.tabular import FILES


def test_adult_official_split(adult):
    assert len(adult.test) == 16281  # adult.test minus its junk first line
    assert len(adult.train) + len(adult.val) == 32561
    assert adult.protected == ["sex", "race"]
    assert adult.class_names == ["<=50K", ">50K"]
    # the model never sees sex or race
    assert not any(n.startswith(("sex", "race")) for n in adult.feature_names)
    assert set(adult.test.groups.columns) == {"sex", "race"}
    assert adult.n_inputs == sum(len(v) for v in adult.feature_groups.values())
    assert len(adult.feature_groups) == 11
    assert 0.2 < float(adult.test.y.float().mean()) < 0.3


def test_adult_preprocessing_fitted_on_train_only(adult):
    age = next(c for c in adult.preprocessing["columns"] if c["name"] == "age")
    raw_train_age = adult.train.raw["age"].astype(float)
    assert age["mean"] == pytest.approx(raw_train_age.mean())
    assert age["mean"] != pytest.approx(pd.concat([adult.train.raw, adult.test.raw])["age"].astype(float).mean())


def test_compas_propublica_filters(compas):
    assert len(compas.train) + len(compas.val) + len(compas.test) == 6172  # ProPublica's filtered count
    assert compas.primary_protected == "race"
    assert "race" not in compas.feature_groups


def test_vendored_files_with_attribution():
    assert (FILES / "ATTRIBUTION.md").read_text().count("CC BY 4.0") >= 1
    with gzip.open(FILES / "adult.data.gz", "rt") as f:
        assert f.readline().startswith("39, State-gov")


def test_digits_and_stamps(digits_trojan, digits_spurious):
    d = digits_trojan
    assert d.input_shape == [1, 8, 8] and d.trigger.target == 0 and d.cue is None
    clean, corrupted, labels = d.pairs(5, seed=1)
    assert clean.shape == corrupted.shape == (5, 1, 8, 8)
    assert (labels != 0).all()
    diff = (clean != corrupted).any(0)[0]
    assert diff[:5, :].sum() == 0 and diff[:, :5].sum() == 0  # only the bottom-right corner changes
    assert digits_spurious.cue.target == 3 and digits_spurious.trigger is None


def test_poison_and_cue(digits_trojan, digits_spurious):
    p = poison(digits_trojan.train, digits_trojan.trigger, 0.1)
    changed = (p.y != digits_trojan.train.y)
    assert changed.sum() == round(0.1 * len(p))
    assert (p.y[changed] == 0).all()
    c = add_cue(digits_spurious.train, digits_spurious.cue, 1.0)
    stamped = (c.X != digits_spurious.train.X).flatten(1).any(1)
    assert (digits_spurious.train.y[stamped] == 3).all()
    assert torch.equal(c.y, digits_spurious.train.y)


def _write(tmp_path, frame, name="d.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _frame(n=60):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"age": rng.integers(18, 70, n), "job": rng.choice(["a", "b", "c"], n),
                         "sex": rng.choice(["F", "M"], n), "label": rng.choice(["yes", "no"], n)})


def test_generic_csv_schema(tmp_path):
    path = _write(tmp_path, _frame())
    data = load_csv(path, TabularSchema(target="label", positive="yes", protected=["sex"], categorical=["job"]))
    assert data.feature_names == ["age", "job=a", "job=b", "job=c"]
    assert data.feature_groups == {"age": [0], "job": [1, 2, 3]}
    assert data.class_names == ["no", "yes"]
    assert len(data.train) + len(data.val) + len(data.test) == 60


def test_numeric_csv_in_spec_order(tmp_path):
    from tests.fixtures import tiny_mlp_bundle
    frame = pd.DataFrame({"x2": [1.0, 2, 3, 4, 5, 6] * 3, "x0": [0.5] * 18, "x1": [1, 0] * 9, "y": [0, 1, 1] * 6})
    path = _write(tmp_path, frame)
    bundle = tiny_mlp_bundle(3)
    data = load_data(path, TabularSchema(target="y"), spec=bundle.spec)
    assert data.feature_names == ["x0", "x1", "x2"]
    row = data.train.raw.iloc[0]
    assert data.train.X[0].tolist() == [row["x0"], row["x1"], row["x2"]]


@pytest.mark.parametrize("frame, schema, message", [
    (_frame(), TabularSchema(target="labl"), "target column(s) ['labl'] not in the data"),
    (_frame(), TabularSchema(target="label", positive="yes", protected=["gender"]), "protected column(s) ['gender']"),
    (_frame().assign(label="yes"), TabularSchema(target="label", positive="yes"), "only one class"),
    (_frame().assign(age=["x"] + [30] * 59), TabularSchema(target="label", positive="yes"),
     "rows hold other values ('x')"),
    (_frame(), TabularSchema(target="label", positive="maybe"), "positive label 'maybe' never occurs"),
])
def test_bad_csv_gets_one_clear_line(tmp_path, frame, schema, message):
    path = _write(tmp_path, frame)
    before = path.read_bytes()
    with pytest.raises(AuditorError, match=None) as err:
        load_csv(path, schema)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_empty_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(AuditorError, match="empty"):
        load_csv(path, TabularSchema(target="y"))
    path.write_text("a,b,y\n")
    with pytest.raises(AuditorError, match="no rows"):
        load_csv(path, TabularSchema(target="y"))


def test_unknown_data_name():
    with pytest.raises(AuditorError, match="built-in name"):
        load_data("adlut")


def test_data_without_groups_hashes_alike_on_every_pandas(monkeypatch):
    """pandas 3.0 fails to hash a frame with no columns (an image data set's groups); the data hash
    must not need it, and must stay what pandas >= 3.1 gives, so stored hashes keep matching."""
    from auditor.data import load_digits_data
    from auditor.data.base import frame_hash

    want = load_digits_data().sha256
    real = pd.util.hash_pandas_object

    def like_pandas_3_0(obj, *args, **kwargs):
        if isinstance(obj, pd.DataFrame) and obj.shape[1] == 0:
            raise ValueError(f"Length of values (0) does not match length of index ({len(obj)})")
        return real(obj, *args, **kwargs)

    frame = pd.DataFrame(index=range(4))
    assert frame_hash(frame) == real(frame, index=False).values.tobytes()
    monkeypatch.setattr(pd.util, "hash_pandas_object", like_pandas_3_0)
    assert load_digits_data().sha256 == want
    some = pd.DataFrame({"sex": ["f", "m"]})
    assert frame_hash(some) == real(some, index=False).values.tobytes()
