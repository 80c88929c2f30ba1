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
