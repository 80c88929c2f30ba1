"""The dynamic loop's checks skip the rows whose decision an edit below an MLP head cannot flip
(`ChainBound`): the decisions stay exactly the whole edited model's, on a user's own MLP."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from auditor import load_data
from auditor.data import poison
from auditor.editors import get_editor
from auditor.editors.rank_one import _CheckModel, apply_delta, compute_delta
from auditor.editors.unchanged_rows import ChainBound, spectral_bound
from auditor.evaluate import evaluate
from auditor.layers import split_model
from auditor.models import ModelBundle, ModelSpec
from auditor.models.architectures import editable_layers
from auditor.training import TrainConfig, train_classifier
from tests.fixtures import assert_no_hooks

pytestmark = pytest.mark.usefixtures("one_thread")


class WideMLP(nn.Module):
    """A user's MLP with a wide hidden layer (the head above `fc1` costs most of a check)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 384)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(384, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.out(self.drop(nn.functional.leaky_relu(self.fc2(x)).tanh()))


@pytest.fixture(scope="module")
def mlp():
    data = load_data("digits-trojan")
    torch.manual_seed(0)
    model = WideMLP()
    train = poison(data.train, data.stamp, 0.1, seed=0)
    train_classifier(model, train.X, train.y, TrainConfig(epochs=8, batch_size=64, lr=2e-3, seed=0))
    spec = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [1, 8, 8]},
                     class_names=[str(i) for i in range(10)])
    return ModelBundle(model.eval(), spec), data


def test_spectral_bound_is_an_upper_bound():
    g = torch.Generator().manual_seed(0)
    for shape in [(10, 300), (256, 64), (64, 64)]:
        w = torch.randn(shape, generator=g)
        assert spectral_bound(w) >= float(torch.linalg.matrix_norm(w, 2))


def test_chain_is_found_above_an_mlp_layer_and_not_through_other_ops(mlp):
    bundle, _ = mlp
    split = split_model(bundle.model, ["fc1", "fc2", "out"])
    kinds = [type(s).__name__ if isinstance(s, nn.Module) else getattr(s, "__name__", "fn")
             for s in split.chain("fc1")]
    assert kinds[0] == "relu" and "Linear" in kinds and kinds[-1] == "Linear" and "Dropout" in kinds
    assert split.chain("fc2") is not None
    assert split.chain("out") is None  # nothing above the output layer to skip

    class Gelu(WideMLP):
        def forward(self, x):  # GELU is not 1-Lipschitz: no chain bound
            return self.out(nn.functional.gelu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))

    class Skip(WideMLP):
        def forward(self, x):  # a value read twice above fc1: not a chain
            h = torch.relu(self.fc1(x.flatten(1)))
            return self.out(torch.relu(self.fc2(h)) + h.sum(1, keepdim=True))

    for cls in (Gelu, Skip):
        assert split_model(cls().eval(), ["fc1"]).chain("fc1") is None


def test_rows_it_calls_unchanged_keep_their_decision():
    """Soundness on random changes of every size: no row called unchanged changes its prediction."""
    torch.manual_seed(0)
    model = WideMLP().eval()
    split = split_model(model, ["fc1"])
    bound = ChainBound(split.chain("fc1"))
    X = torch.randn(400, 1, 8, 8)
    with torch.no_grad():
        h = model.fc1(X.flatten(1))
        logits = model(X)
        called = 0
        for size in (1e-3, 1e-2, 1e-1, 1.0):
            change = size * torch.randn_like(h)
            same = bound.unchanged(h, change, logits)
            after = model.out(model.drop(nn.functional.leaky_relu(model.fc2(torch.relu(h + change))).tanh()))
            assert torch.equal(after.argmax(1)[same], logits.argmax(1)[same]), size
            called += int(same.sum())
        assert called > 0


def test_checks_skip_rows_and_keep_every_decision_of_the_whole_model(mlp):
    bundle, data = mlp
    model = bundle.copy().model.eval()
    checks = _CheckModel(model, [n for n, _ in editable_layers(model)])
    X, (clean, corrupted, _) = data.val.X, data.pairs(3, 0)
    with torch.no_grad():
        checks.at(None)(X)
        checks.start()
        update = compute_delta(model, "fc1", clean, corrupted, data.train.X)
        apply_delta(model, update)
        got = checks.at("fc1", update, 1.0)(X)
        assert torch.equal(got.argmax(1), model(X).argmax(1))
        assert 0 < checks.stats["rows_skipped"] < len(X) and checks.stats["low_rank_runs"] == 1
        checks.accepted("fc1")  # an accepted edit: the first run's logits no longer stand for skipped rows
        skipped = checks.stats["rows_skipped"]
        assert torch.allclose(checks.at("fc1", update, 0.5)(X), model(X), atol=1e-5)
        assert checks.stats["rows_skipped"] == skipped
    assert_no_hooks(model)


def test_the_loop_repairs_the_mlp_with_rows_skipped(mlp):
    bundle, data = mlp
    m0 = evaluate(bundle, data).metrics
    assert m0["attack_success_rate"] > 0.5
    result = get_editor("dynamic-rank-one", samples=1, seed=0, layer="fc1").edit(bundle, data)
    m = evaluate(result.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m
    assert result.extras["check_runs"]["rows_skipped"] > 0
