"""Learned (metanetwork) editors: graph, symmetry, exact masks, DDP training, shipped editors."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auditor import zoo
from auditor.editors import get_editor
from auditor.editors.metanet.editors import editor_path
from auditor.editors.metanet.graph import batch, prepare
from auditor.editors.metanet.net import MetaNet, NetConfig, assemble
from auditor.editors.metanet.runtime import cond_features, edited_logits, group_index_of, load_metanet, reference_rows
from auditor.errors import AuditorError
from auditor.models import ModelBundle, build_architecture, load_model
from auditor.requirements import compute_metrics, features_used, sparsity
from auditor.requirements.surrogates import js_divergence

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"metanet-fairness": "demographic_parity", "metanet-equalized-odds": "equalized_odds",
           "metanet-minimisation": "features_used", "metanet-pruning": "sparsity"}


@pytest.fixture(scope="module")
def adult():
    return zoo.task_data("adult")


@pytest.fixture(scope="module")
def held_out():
    """Held-out population members (never seen in editor training) and the shipped adult_mlp."""
    models = zoo.load_population("adult", "test", limit=4)
    return models + [load_model(ROOT / "sample_models" / "adult_mlp.safetensors")]


def _mlp(hidden, seed=0, n_in=100):
    torch.manual_seed(seed)
    return build_architecture({"name": "mlp", "in_features": n_in, "hidden": hidden, "num_classes": 2}).eval()


def _randomise_heads(net: MetaNet):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in list(net.edge_head.parameters()) + list(net.node_head.parameters()):
            p.normal_(0, 0.3)
        net.dw_scale.fill_(0.5)
        net.db_scale.fill_(0.5)


def test_untrained_editor_is_close_to_identity_and_strength_zero_is_exact(adult):
    model = _mlp([32, 16])
    net = MetaNet(NetConfig(adult.n_inputs, 2, len(adult.feature_groups), mode="residual"))
    m = prepare(model, reference_rows(adult, 256))
    g = batch([m], net.cfg.n_inputs, 2, net.cfg.max_depth)
    t = torch.tensor([[0.0, 1.0]])
    params = assemble(net.cfg, g, net(g, cond_features("residual", t, 11)), t)[0]["params"]
    assert all(torch.equal(params[n][0], p) for n, p in model.named_parameters())
    X = adult.test.X[:2000]
    logits = edited_logits(model, params, X)
    assert float(js_divergence(model(X), logits[1]).detach()) < 1e-3


def test_permuting_hidden_neurons_permutes_the_edit(adult):
    """Equivariance: relabelling hidden neurons of a layer relabels the predicted edit the same way."""
    model = _mlp([16, 8])
    perm1, perm2 = torch.randperm(16), torch.randperm(8)
    permuted = _mlp([16, 8])
    with torch.no_grad():
        permuted.fc1.weight.copy_(model.fc1.weight[perm1])
        permuted.fc1.bias.copy_(model.fc1.bias[perm1])
        permuted.fc2.weight.copy_(model.fc2.weight[perm2][:, perm1])
        permuted.fc2.bias.copy_(model.fc2.bias[perm2])
        permuted.out.weight.copy_(model.out.weight[:, perm2])
        permuted.out.bias.copy_(model.out.bias)
    X = adult.test.X[:500]
    assert torch.allclose(model(X), permuted(X), atol=1e-5)
    for mode in ("residual", "prune", "gate"):
        net = MetaNet(NetConfig(adult.n_inputs, 2, len(adult.feature_groups), mode=mode)).eval()
        _randomise_heads(net)
        ref = reference_rows(adult, 256)
        t = torch.tensor([[0.7 if mode != "gate" else 4.0]])
        outs = []
        for mdl in (model, permuted):
            g = batch([prepare(mdl, ref)], 100, 2, net.cfg.max_depth)
            with torch.no_grad():
                out = net(g, cond_features(mode, t, 11))
                outs.append(assemble(net.cfg, g, out, t, group_index_of(adult))[0]["params"])
        a, b = outs
        assert torch.allclose(a["fc1.weight"][0][perm1], b["fc1.weight"][0], atol=1e-5), mode
        assert torch.allclose(a["fc2.weight"][0][perm2][:, perm1], b["fc2.weight"][0], atol=1e-5), mode
        assert torch.allclose(a["out.weight"][0][:, perm2], b["out.weight"][0], atol=1e-5), mode
        assert torch.allclose(a["fc1.bias"][0][perm1], b["fc1.bias"][0], atol=1e-5), mode


def test_hard_masks_meet_structural_targets_exactly(adult):
    model = _mlp([64, 32])
    ref = reference_rows(adult, 256)
    gidx = group_index_of(adult)
    for mode, values in (("prune", [0.5, 0.9, 0.97]), ("gate", [1.0, 5.0, 10.0])):
        net = MetaNet(NetConfig(adult.n_inputs, 2, len(adult.feature_groups), mode=mode)).eval()
        _randomise_heads(net)
        g = batch([prepare(model, ref)], 100, 2, net.cfg.max_depth)
        t = torch.tensor([values])
        with torch.no_grad():
            params = assemble(net.cfg, g, net(g, cond_features(mode, t, 11)), t, gidx)[0]["params"]
        for k, v in enumerate(values):
            edited = _mlp([64, 32])
            edited.load_state_dict({n: p[k] for n, p in params.items()})
            if mode == "prune":
                n = sum(p.numel() for n_, p in edited.named_parameters() if n_.endswith("weight"))
                assert sparsity(edited) == pytest.approx(int(-(-v * n // 1)) / n, abs=1e-9)
            else:
                assert features_used(edited, adult.feature_groups) == int(v)
                dropped = (edited.fc1.weight == 0).all(0)
                for cols in adult.feature_groups.values():  # a feature is kept or dropped as a whole
                    assert bool(dropped[cols].all()) or not bool(dropped[cols].any())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_process_training_runs(tmp_path):
    out = tmp_path / "tiny.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "auditor.cli", "editor", "train", "--task", "adult", "--requirement", "sparsity", "--steps", "3",
           "--train-limit", "4", "--val-limit", "1", "--models-per-step", "2", "--conditions", "2", "--rows", "128",
           "--hidden", "8", "--layers", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = load_metanet(out)
    assert trained.info["training"]["world_size"] == 2
    assert trained.info["requirement"] == "sparsity" and trained.info["validation"]


def test_out_of_family_models_are_refused(adult):
    from auditor.data import load_compas
    compas = load_compas()
    compas_mlp = load_model(ROOT / "sample_models" / "compas_mlp.safetensors")
    deep = ModelBundle(_mlp([16, 16, 16, 16, 16]), zoo.load_population("adult", "test", limit=1)[0].spec)
    for name in SHIPPED:
        editor = get_editor(name, weights=str(editor_path("adult", SHIPPED[name])))  # Adult's editor, not COMPAS'
        reason = editor.supports(compas_mlp, compas)
        assert reason and "compas" in reason
        assert "Linear layers" in editor.supports(deep, adult)
        with pytest.raises(AuditorError, match="cannot edit this model"):
            editor.edit(compas_mlp, compas, [])


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_editor_meets_its_requirement_on_held_out_models(name, adult, held_out):
    if not editor_path("adult", SHIPPED[name]).exists():
        pytest.skip("shipped editor file missing: run python sample_models/build_editors.py")
    req = {"metanet-fairness": "demographic_parity <= 0.03", "metanet-equalized-odds": "equalized_odds <= 0.05",
           "metanet-minimisation": "features_used <= 5", "metanet-pruning": "sparsity >= 0.9"}[name]
    # accuracy it may cost (fairness costs accuracy by nature: ThresholdOptimizer loses 2-3 points
    # at demographic parity 0.01 on these models; the learned EO editor loses up to 4 points, more than
    # ThresholdOptimizer); never down to the majority-class rate (0.764)
    floor = {"metanet-fairness": 0.04, "metanet-equalized-odds": 0.05, "metanet-minimisation": 0.03,
             "metanet-pruning": 0.02}[name]
    editor = get_editor(name)
    for bundle in held_out:
        assert editor.supports(bundle, adult) is None
        before = compute_metrics(bundle.model, adult).metrics
        sha = bundle.sha256
        result = editor.edit(bundle, adult, [req])
        assert bundle.sha256 == sha  # the original is untouched
        after = compute_metrics(result.bundle.model, adult).metrics
        metric, threshold = SHIPPED[name], float(req.split()[-1])
        if name == "metanet-pruning":
            assert after["sparsity"] >= 0.9
        elif name == "metanet-minimisation":
            assert after["features_used"] <= 5
        else:  # calibrated on training rows: the test split may differ by sampling noise
            assert after[metric] <= threshold + 0.02, (bundle.name, after[metric])
        assert after["accuracy"] >= before["accuracy"] - floor, (bundle.name, before["accuracy"], after["accuracy"])
        if before["accuracy"] > 0.8:  # a good model stays well above the majority-class rate
            assert after["accuracy"] >= 0.79, (bundle.name, after["accuracy"])
        assert torch.equal(torch.cat([p.flatten() for p in result.reverted().model.parameters()]),
                           torch.cat([p.flatten() for p in bundle.model.parameters()]))


@pytest.fixture(scope="module")
def compas():
    return zoo.task_data("compas")


@pytest.mark.parametrize("name,req,floor", [("metanet-fairness", "demographic_parity <= 0.1", 0.09),
                                            ("metanet-equalized-odds", "equalized_odds <= 0.15", 0.09),
                                            ("metanet-minimisation", "features_used <= 3", 0.02),
                                            ("metanet-pruning", "sparsity >= 0.5", 0.02)])
def test_shipped_compas_editors_meet_their_requirement(name, req, floor, compas):
    """The COMPAS editors are found for compas_mlp (never seen in training) and a held-out member.
    Fairness over race (4 groups) costs COMPAS models much of their lift over the majority class
    (0.545), so the bounds are looser than Adult's; the accuracy must stay above that rate."""
    if not editor_path("compas", SHIPPED[name]).exists():
        pytest.skip("shipped editor file missing: run python sample_models/build_editors.py --task compas")
    models = [load_model(ROOT / "sample_models" / "compas_mlp.safetensors"), zoo.load_population("compas", "test",
                                                                                                   limit=1)[0]]
    # COMPAS has 3.7k training rows (228 'Other'): the calibration aims 0.03 below the bound
    editor = get_editor(name, **({"margin": 0.03} if "fair" in name or "odds" in name else {}))
    metric, threshold = SHIPPED[name], float(req.split()[-1])
    for bundle in models:
        assert editor.supports(bundle, compas) is None
        before = compute_metrics(bundle.model, compas).metrics
        result = editor.edit(bundle, compas, [req])
        after = compute_metrics(result.bundle.model, compas).metrics
        if name == "metanet-pruning":
            assert after["sparsity"] >= threshold
        elif name == "metanet-minimisation":
            assert after["features_used"] <= threshold
        else:  # calibrated on training rows; the test split's small groups (76 rows) add noise
            assert after[metric] <= threshold + 0.03, (bundle.name, after[metric])
            assert before[metric] > threshold + 0.1  # it had something to fix
            assert "race" not in str(result.bundle.spec.input)  # an ordinary MLP: reads no attribute
        assert after["accuracy"] >= before["accuracy"] - floor, (bundle.name, before["accuracy"], after["accuracy"])
        assert after["accuracy"] >= 0.56, (bundle.name, after["accuracy"])


def test_relay_carries_an_input_proxy_to_the_output_and_keeps_the_model(adult):
    """The relay (fairness calibration) rewires one hidden neuron per layer to carry ReLU(x @ w + c) to the
    output layer; with the output not reading it yet, the model's decisions barely change."""
    from auditor.editors.metanet.runtime import layer_activations, relay
    model = zoo.load_population("adult", "test", limit=3)[2].model  # two or more hidden layers
    params = {n: t.detach().unsqueeze(0) for n, t in model.state_dict().items()}
    X = adult.val.X[:2000]
    acts, logits = layer_activations(model, params, X)
    assert len(acts) >= 3 and torch.allclose(logits[0], model(X), atol=1e-5)
    w = torch.randn(X.shape[1], generator=torch.Generator().manual_seed(0))
    relayed, last = relay(model, params, acts, w, 0.5)
    acts_r, logits_r = layer_activations(model, relayed, X)
    assert torch.allclose(acts_r[-1][0][:, last[0]], (X @ w + 0.5).relu(), atol=1e-4)
    agree = (logits_r[0].argmax(1) == logits[0].argmax(1)).float().mean()
    assert agree >= 0.97, agree
    assert {n: t.shape for n, t in relayed.items()} == {n: t.shape for n, t in params.items()}


@pytest.mark.parametrize("metric", ["demographic_parity", "equalized_odds"])
def test_calibration_reports_what_the_written_edit_does(metric, adult):
    """The figures `calibrate` picks by (counted over all candidates at once) are the chosen edit's own."""
    from auditor.editors.metanet.editors import trained_editor
    from auditor.editors.metanet.runtime import calibrate, calibration_rows, edited_logits
    from auditor.requirements.surrogates import demographic_parity_gap, equalized_odds_gap
    if not editor_path("adult", metric).exists():
        pytest.skip("shipped editor file missing")
    model = zoo.load_population("adult", "test", limit=2)[1].model
    trained = trained_editor("adult", metric)
    grid = trained.propose(model, adult, [0.0, 0.2, 0.6])
    X, y, onehot = calibration_rows(adult, "train", "sex", 3000)
    pick = calibrate(model, grid, X, y, onehot, metric, 0.02, torch.linspace(-2, 2, 41), torch.linspace(0, 3, 7))
    pred = edited_logits(model, pick["params"], X)[0].argmax(1)
    assert float((pred == y).float().mean()) == pytest.approx(pick["accuracy"], abs=1e-6)
    codes = onehot.argmax(1)
    level = demographic_parity_gap(pred.double(), codes) if metric == "demographic_parity" else \
        equalized_odds_gap(pred.double(), y, codes)
    assert float(level) == pytest.approx(pick["level"], abs=1e-6)
    assert pick["feasible"] and pick["level"] <= 0.02


def test_calibration_never_picks_a_constant_predictor(adult):
    """An aim only a constant predictor meets (gap 0, reached by shifting every row to one class) is
    reported as not reached; the fairest edit that still tells rows apart is chosen instead."""
    from auditor.editors.metanet.editors import trained_editor
    from auditor.editors.metanet.runtime import calibrate, calibration_rows, edited_logits
    if not editor_path("adult", "demographic_parity").exists():
        pytest.skip("shipped editor file missing")
    model = zoo.load_population("adult", "test", limit=1)[0].model
    grid = trained_editor("adult", "demographic_parity").propose(model, adult, [0.0, 0.3])
    X, y, onehot = calibration_rows(adult, "train", "sex", 3000)
    pick = calibrate(model, grid, X, y, onehot, "demographic_parity", 0.0, torch.linspace(-60, 60, 41))
    rate = float(edited_logits(model, pick["params"], X)[0].argmax(1).float().mean())
    assert 0.0 < rate < 1.0 and not pick["feasible"] and pick["level"] > 0


def test_an_edit_that_does_not_use_the_learned_change_says_so_and_names_its_editor():
    """Calibration may pick strength 0 (only the output layer's bias or proxy moves): that used to read as a
    learned edit."""
    from auditor import load_data, load_model

    bundle = load_model(ROOT / "sample_models" / "adult_mlp.safetensors")
    data = load_data("adult", spec=bundle.spec)
    result = get_editor("metanet-fairness").edit(bundle, data, ["demographic_parity <= 0.3"])
    assert result.extras["editor_file"] == "metanet_adult_dp.safetensors"
    if result.extras["strength"] == 0:
        assert result.extras["learned_change_used"] is False
        assert any("learned network's change was not used" in e.get("message", "") for e in result.log)
    else:
        assert result.extras["learned_change_used"] is True


class _Scorer(torch.nn.Module):
    """A user's own MLP class: named layers, functional ReLU, a dropout (a no-op in eval mode)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(100, 64), torch.nn.Linear(64, 32), torch.nn.Linear(32, 2)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x):
        return self.l3(self.drop(torch.relu(self.l2(torch.nn.functional.relu(self.l1(x))))))


class _Skip(_Scorer):
    def forward(self, x):
        h = torch.relu(self.l2(torch.relu(self.l1(x))))
        return self.l3(h) + self.l3(h)  # two paths from h


def test_a_users_own_mlp_class_gets_the_same_edit_as_the_same_weights_in_sequential(adult):
    """The metanetwork reads any module whose forward is Linear -> ReLU -> ... -> Linear (its torch.fx
    trace), not only `nn.Sequential`; a model that is not one is refused with what it does instead."""
    from auditor.editors.metanet.graph import mlp_layers

    sample = load_model(ROOT / "sample_models" / "adult_mlp.safetensors")
    mine = _Scorer().eval()
    sd = sample.model.state_dict()
    mine.load_state_dict({f"{new}.{p}": sd[f"{old}.{p}"] for new, old in (("l1", "fc1"), ("l2", "fc2"), ("l3", "out"))
                          for p in ("weight", "bias")})
    assert [n for n, _ in mlp_layers(mine)] == ["l1", "l2", "l3"]
    users = ModelBundle(mine, sample.spec)
    a = get_editor("metanet-fairness").edit(sample, adult, ["demographic_parity <= 0.05"])
    b = get_editor("metanet-fairness").edit(users, adult, ["demographic_parity <= 0.05"])
    ea, eb = a.bundle.model.state_dict(), b.bundle.model.state_dict()
    for new, old in (("l1", "fc1"), ("l2", "fc2"), ("l3", "out")):
        assert torch.allclose(eb[f"{new}.weight"], ea[f"{old}.weight"], atol=1e-5)
    assert compute_metrics(b.bundle.model, adult, "test").metrics["demographic_parity"] <= 0.05
    skip = ModelBundle(_Skip().eval(), sample.spec)
    assert "reads" in get_editor("metanet-fairness").supports(skip, adult)
    with pytest.raises(AuditorError, match="a skip or branch"):
        mlp_layers(skip.model)


def _one_logit(bundle: ModelBundle) -> ModelBundle:
    """The same classifier as one logit z = (w1 - w0) h + (b1 - b0), read as [0, z] (a BCE-trained vendor model)."""
    import copy

    from auditor.models.custom import read_single_logit

    sd = bundle.model.state_dict()
    spec = copy.deepcopy(bundle.spec)
    spec.arch = {**spec.arch, "num_classes": 1}
    spec.single_logit = True
    model = build_architecture(spec.arch)
    model.load_state_dict({**{k: v for k, v in sd.items() if not k.startswith("out.")},
                           "out.weight": sd["out.weight"][1:] - sd["out.weight"][:1],
                           "out.bias": sd["out.bias"][1:] - sd["out.bias"][:1]})
    return ModelBundle(read_single_logit(model.eval()), spec)


def test_a_one_logit_model_is_edited_as_the_two_output_mlp_it_equals(adult):
    """A model with one logit (read as [0, z]) is edited by the metanetworks as [0; w] and written back as one
    logit: its requirement met, its shape kept; pruning, whose exact zeros would not survive that, says so."""
    sample = load_model(ROOT / "sample_models" / "adult_mlp.safetensors")
    one = _one_logit(sample)
    X = adult.split("test").X
    with torch.no_grad():
        assert torch.allclose(one.model(X).softmax(1), sample.model(X).softmax(1), atol=1e-5)
    before = compute_metrics(one.model, adult, "test").metrics
    result = get_editor("metanet-fairness").edit(one, adult, ["demographic_parity <= 0.05"])
    edited = result.bundle.model
    assert edited.out.weight.shape == (1, one.model.out.in_features)  # still the vendor's one logit
    after = compute_metrics(edited, adult, "test").metrics
    assert before["demographic_parity"] > 0.1 and after["demographic_parity"] <= 0.05
    assert after["accuracy"] >= before["accuracy"] - 0.04
    assert any("written back as one logit" in str(e.get("message", "")) for e in result.log)
    kept = get_editor("metanet-minimisation").edit(one, adult, ["features_used <= 4"]).bundle.model
    assert features_used(kept, adult.feature_groups) <= 4
    assert "one-logit model" in get_editor("metanet-pruning").supports(one, adult)
    from auditor.jobs import why_no_editor_training  # the Train page does not offer to train it either

    assert "one-logit model" in why_no_editor_training(one, adult, "sparsity")
    assert why_no_editor_training(one, adult, "demographic_parity") is None


class _OneLogitScorer(torch.nn.Module):
    """A vendor's own class trained with BCEWithLogitsLoss: Linear -> ReLU -> Linear -> ReLU -> Linear(., 1)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(100, 64), torch.nn.Linear(64, 32), torch.nn.Linear(32, 1)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_a_users_own_one_logit_mlp_class_is_read_through_its_own_forward(adult):
    """The [0, z] reading around a one-logit model of the user's class is the auditor's, not the model's: the
    metanetwork reads the class's own forward (it was refused for applying 'zeros_like'), and the whole model
    still traces (torch.fx, for the splits the editors use)."""
    from auditor.editors.metanet.graph import mlp_layers
    from auditor.models.custom import read_single_logit

    one = _one_logit(load_model(ROOT / "sample_models" / "adult_mlp.safetensors"))
    sd = one.model.state_dict()
    mine = _OneLogitScorer()
    mine.load_state_dict({f"{new}.{p}": sd[f"{old}.{p}"] for new, old in (("l1", "fc1"), ("l2", "fc2"), ("l3", "out"))
                          for p in ("weight", "bias")})
    users = ModelBundle(read_single_logit(mine.eval()), one.spec)
    torch.fx.symbolic_trace(users.model)
    assert [n for n, _ in mlp_layers(users.model)] == ["l1", "l2", "l3"]
    assert get_editor("metanet-fairness").supports(users, adult) is None
    result = get_editor("metanet-fairness").edit(users, adult, ["demographic_parity <= 0.05"])
    assert result.bundle.model.l3.weight.shape == (1, 32)
    assert compute_metrics(result.bundle.model, adult, "test").metrics["demographic_parity"] <= 0.05
