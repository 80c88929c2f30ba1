"""Populations of models: deterministic members, splits, cache, parallel build, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from auditor import zoo
from auditor.cli import main


def test_member_configs_are_deterministic_varied_and_split():
    a = zoo.member_configs("adult", 40)
    assert a == zoo.member_configs("adult", 40)
    assert zoo.member_config("adult", 7) == a[7]  # independent of the population size
    assert len({c.hidden for c in a}) >= 6 and len({c.seed for c in a}) == 40
    assert len({c.epochs for c in a}) > 1 and len({c.rows for c in a}) > 1
    assert {len(c.hidden) for c in a} == {1, 2, 3}
    splits = [zoo.split_of(i) for i in range(100)]
    assert splits.count("test") == 10 and splits.count("val") == 10 and splits.count("train") == 80
    assert zoo.split_indices("adult", "test", 30) == [0, 10, 20]
    with pytest.raises(Exception, match="no population"):
        zoo.member_config("mnist", 0)


def test_training_a_member_is_bit_exact_and_accurate():
    cfg = zoo.member_config("adult", 2)
    s1, acc1 = zoo.train_member(cfg)
    s2, acc2 = zoo.train_member(cfg)
    assert acc1 == acc2 and acc1 > 0.8
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.slow
def test_parallel_build_equals_sequential_and_cache_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITOR_ZOO_DIR", str(tmp_path / "par"))
    counts = zoo.build_population("adult", n_models=11, workers=2, splits=("test",))
    assert counts == {"test": 2}
    par = zoo.load_population("adult", "test", n_models=11, build=False)
    monkeypatch.setenv("AUDITOR_ZOO_DIR", str(tmp_path / "seq"))
    seq = zoo.load_population("adult", "test", n_models=11, workers=1)
    assert [b.sha256 for b in par] == [b.sha256 for b in seq]
    assert len(par) == 2 and par[0].spec.provenance["population"] == {"task": "adult", "version": zoo.ZOO_VERSION,
                                                                       "index": 0, "split": "test"}
    data = zoo.task_data("adult")
    for b in par:
        assert b.spec.arch["in_features"] == data.n_inputs
        acc = float((b.model(data.test.X).argmax(1) == data.test.y).float().mean())
        assert acc > 0.78
    # the cache is compact: one safetensors file per split
    files = list((tmp_path / "seq").glob("*.safetensors"))
    assert len(files) == 1 and files[0].stat().st_size < 200_000
    with pytest.raises(Exception, match="not built"):
        zoo.load_population("adult", "val", n_models=11, build=False)


def test_cli_zoo_show(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUDITOR_ZOO_DIR", str(tmp_path))
    assert main(["zoo", "build", "--task", "adult", "--models", "2", "--split", "test"]) == 0
    assert main(["zoo", "show", "--task", "adult", "--models", "2", "--json", str(tmp_path / "z.json")]) == 0
    out = json.loads((tmp_path / "z.json").read_text())
    assert out["splits"]["test"]["cached"] == 1 and out["splits"]["train"]["cached"] == 0
    assert "population adult" in capsys.readouterr().out


def test_bigger_mlps_population_reaches_width_512_and_depth_4():
    """`adult-wide` (issue 15, item 5): the same Adult data, hidden widths 128-512 and 2-4 layers, so that
    edit speed can be reported against model size."""
    configs = zoo.member_configs("adult-wide", 60)
    assert {len(c.hidden) for c in configs} == {2, 3, 4}
    assert max(max(c.hidden) for c in configs) == 512 and min(min(c.hidden) for c in configs) == 128
    assert any(len(c.hidden) == 4 and c.hidden[0] == 512 for c in configs)
    assert zoo.member_configs("adult-wide", 4) != zoo.member_configs("adult", 4)  # its own members
    assert zoo.TASKS["adult-wide"].data == "adult" and zoo.default_size("adult-wide") == zoo.DEFAULT_SIZE


def test_family_like_a_users_model_spans_depths_and_widths_around_it():
    from auditor.data.base import AuditData, Split
    from auditor.models import ModelBundle, ModelSpec, build_architecture

    def bundle(hidden):
        arch = {"name": "mlp", "in_features": 5, "hidden": hidden, "num_classes": 2}
        return ModelBundle(build_architecture(arch), ModelSpec(arch=arch))

    import pandas as pd

    split = Split(torch.zeros(3000, 5), torch.zeros(3000, dtype=torch.long), pd.DataFrame(index=range(3000)))
    data = AuditData("mine", "tabular", split, split, split, [f"x{i}" for i in range(5)],
                     {f"x{i}": [i] for i in range(5)}, [], ["no", "yes"])
    fam = zoo.family_like(bundle([100, 40]), data)
    assert fam.depths == (1, 2, 2, 3) and {50, 100, 200, 40} <= set(fam.widths)
    assert fam.rows == (1500, 2250, 3000) and len(fam.epochs) == 3 and fam.epochs[0] < fam.epochs[-1]
    assert zoo.family_like(bundle([300, 300, 300, 300]), data).depths == (3, 4, 4, 4)
    # a logistic regression (no hidden layer, e.g. a converted scikit-learn one): a population of its depth too
    assert zoo.family_like(bundle([]), data).depths == (0, 0, 0, 1)
    assert zoo.family_like(bundle([16]), data, depths=(0,)).depths == (0,)  # what the depth hint tells one to run
    assert max(zoo.family_like(bundle([400]), data).widths) == 512
    assert zoo.family_like(bundle([16]), data, depths=(4,), widths=(512,)).widths == (512,)
    with pytest.raises(Exception, match="MLPs"):
        zoo.family_like(ModelBundle(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1)), ModelSpec(arch={})), data)
    with pytest.raises(Exception, match="no population for task 'mnist'.*zoo build --data"):
        zoo.member_config("mnist", 0)


def test_user_task_that_is_not_built_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITOR_ZOO_DIR", str(tmp_path))
    with pytest.raises(Exception, match="no user population 'user-0123456789ab'.*auditor zoo build --data"):
        zoo.load_population("user-0123456789ab", "test")
    assert main(["editor", "train", "--zoo", "user-0123456789ab", "--requirement", "dp"]) == 2
    assert main(["editor", "train", "--zoo", str(tmp_path), "--requirement", "dp"]) == 2  # no manifest there
