"""Rank-one repair of networks the editor was not written for: a CNN with BatchNorm and a tiny
residual network, both plain `nn.Module` classes of a user (custom blocks inside `nn.Sequential`),
Trojan-trained here on the digits (issue 14, item 2). Keys must be read where each layer reads
them (inside a residual block, behind a custom module), the edit must hold with BatchNorm's
running statistics (eval mode), and the loop's checks that rerun only the part of the model above
the edited layer must give exactly the whole model's output."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor import load_data
from auditor.data import poison
from auditor.editors import get_editor
from auditor.editors.rank_one import apply_delta, compute_delta
from auditor.errors import AuditorError
from auditor.evaluate import evaluate
from auditor.layers import layer_io, layer_tail, layer_values
from auditor.models import ModelBundle, ModelSpec
from auditor.models.architectures import editable_layers
from auditor.training import TrainConfig, train_classifier
from tests.fixtures import assert_no_hooks

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvBN(nn.Module):
    """A user's block: 3x3 convolution (no bias), BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(ConvBN(1, 8), ConvBN(8, 16), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.features(x))


class Residual(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut a strided 1x1 conv + BN where needed."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBN(1, 8)
        self.blocks = nn.Sequential(Residual(8, 8), Residual(8, 16, stride=2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def _trojan(cls, seed: int = 0):
    data = load_data("digits-trojan")
    train = poison(data.train, data.stamp, 0.1, seed=seed)
    torch.manual_seed(seed)
    model = cls()
    train_classifier(model, train.X, train.y, TrainConfig(epochs=10, batch_size=64, lr=3e-3, seed=seed))
    spec = ModelSpec(arch={"name": cls.__name__}, input={"kind": "image", "shape": [1, 8, 8]},
                     class_names=[str(i) for i in range(10)])
    bundle = ModelBundle(model.eval(), spec)
    return bundle, data, evaluate(bundle, data).metrics


@pytest.fixture(scope="module")
def bn_net():
    return _trojan(BNNet)


@pytest.fixture(scope="module")
def resnet():
    return _trojan(TinyResNet)


def test_the_trojans_took(bn_net, resnet):
    for _, _, m in (bn_net, resnet):
        assert m["attack_success_rate"] > 0.9 and m["accuracy"] > 0.9


@pytest.mark.parametrize("which", ["bn_net", "resnet"])
def test_keys_are_read_where_each_layer_reads_them(which, request):
    """Keys times the layer's matrix give the layer's real output for every layer, inside residual
    blocks and custom modules alike (checked against a forward hook on the layer's output)."""
    bundle, data, _ = request.getfixturevalue(which)
    model = bundle.model
    X = data.test.X[:16]
    for name, layer in editable_layers(model):
        seen = []
        handle = layer.register_forward_hook(lambda m, a, out, s=seen: s.append(out.detach()))
        try:
            keys, values = layer_io(model, name, X)
        finally:
            handle.remove()
        assert torch.allclose(values, layer_values(layer, seen[0]), atol=1e-5), name
    assert_no_hooks(model)


def test_edit_holds_with_batchnorm_running_statistics(bn_net):
    """An edit of a convolution followed by BatchNorm is fitted in the convolution's output; in eval
    mode BatchNorm is a fixed affine map per channel (running statistics), so the corrupted twin's
    output after BatchNorm moves to the clean twin's by exactly the fitted amount, and no buffer changes."""
    bundle, data, _ = bn_net
    model = bundle.copy().model.eval()
    clean, corrupted, _ = data.pairs(1, seed=0)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    block = model.features[1]
    name = "features.1.conv"

    def after_bn(x):
        out = []
        handle = block.bn.register_forward_hook(lambda m, a, o: out.append(o.detach()))
        try:
            with torch.no_grad():
                model(x)
        finally:
            handle.remove()
        return out[0].flatten(2).transpose(1, 2)  # (N, positions, channels)

    k_bad, _ = layer_io(model, name, corrupted)
    k_good, _ = layer_io(model, name, clean)
    changed = (k_bad - k_good).abs().amax(-1) > 1e-6
    gap_before = (after_bn(corrupted) - after_bn(clean))[changed]
    upd = compute_delta(model, name, clean, corrupted, data.train.X, mu=1e-8)
    apply_delta(model, upd)
    gap_after = (after_bn(corrupted) - after_bn(clean))[changed]
    # the same gap from the fit alone: BatchNorm's scale times what the edited layer still misses
    bn = block.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    _, v_bad_after = layer_io(model, name, corrupted)
    _, v_good_after = layer_io(model, name, clean)  # the edit moves clean keys a little too
    predicted = (v_bad_after[changed] - v_good_after[changed]) * scale
    assert changed.sum() > 0 and torch.allclose(gap_after, predicted.float(), atol=1e-4)
    assert gap_after.norm() < 0.5 * gap_before.norm()  # 34.7 -> 11.0: the fit of 25 keys is not exact
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())


@pytest.mark.parametrize("which", ["bn_net", "resnet"])
def test_layer_tail_reruns_only_the_part_above_exactly(which, request):
    """The loop's checks: values crossing the cut below a layer (its input and any skip connection)
    are captured once; rerunning the part above gives the whole model's output, also after an edit."""
    bundle, data, _ = request.getfixturevalue(which)
    model = bundle.copy().model.eval()
    X = data.val.X[:64]
    for name, layer in editable_layers(model):
        tail = layer_tail(model, name)
        assert tail is not None, name
        with torch.no_grad():
            out, cut = tail.capture(X)
            assert torch.allclose(out, model(X), atol=1e-5)
            layer.weight.mul_(1.1)  # an edit of the layer: the cut below it stays valid
            assert torch.allclose(tail.run(cut), model(X), atol=1e-5), name
            layer.weight.div_(1.1)
    assert_no_hooks(model)


@pytest.mark.parametrize("which", ["bn_net", "resnet"])
def test_dynamic_rank_one_repairs_from_five_samples(which, request):
    """Issue 14's done-when: a BatchNorm and a residual model repaired from five clean samples with
    accuracy kept (test split, three sample choices)."""
    bundle, data, m0 = request.getfixturevalue(which)
    # the tiny residual net (16 features before its last layer) gets to 1.2-3.2 % (n = 5; 3.0-3.7 % with
    # neither skip-aware targets nor sibling edits): its check rows (train + val) meet the requirement,
    # the test split a little less where only its last layer is edited (seed 0)
    limit = {"bn_net": 0.02, "resnet": 0.035}[which]
    for seed in range(3):
        result = get_editor("dynamic-rank-one", samples=5, seed=seed).edit(bundle, data)
        m = evaluate(result.bundle, data).metrics
        assert m["attack_success_rate"] <= limit and m0["accuracy"] - m["accuracy"] <= 0.01, (seed, m)
        assert result.changed and result.extras["rank"] >= 1
        assert not any("running" in p for p in result.delta.before)  # BatchNorm statistics untouched
        assert result.extras["check_runs"]["tail_runs"] > 0  # checks reran only the part above the edit
    assert_no_hooks(bundle.model)


def test_loop_checks_stay_exact_after_an_accepted_edit_below(bn_net):
    """The loop's stand-in model: kept values of the layers above an accepted edit are dropped, so
    every check equals the whole model's output."""
    from auditor.editors.rank_one import _CheckModel

    bundle, data, _ = bn_net
    model = bundle.copy().model.eval()
    names = [n for n, _ in editable_layers(model)]
    checks = _CheckModel(model, names)
    X = data.val.X[:32]
    with torch.no_grad():
        checks.at(None)(X)  # the first check keeps the values below every layer
        assert torch.equal(checks.at("head.3")(X), model(X))
        assert checks.stats == {"tail_runs": 1, "full_runs": 1, "kept_runs": 0, "low_rank_runs": 0,
                                "rows_skipped": 0}
        model.features[0].conv.weight.mul_(1.2)  # an accepted edit below head.3
        checks.accepted("features.0.conv")
        assert "head.3" not in checks.cuts and "features.0.conv" in checks.cuts
        assert torch.allclose(checks.at("head.3")(X), model(X), atol=1e-6)
        assert torch.allclose(checks.at("features.0.conv")(X), model(X), atol=1e-6)


def test_a_checked_linear_edit_adds_its_low_rank_term_to_the_kept_output(bn_net):
    """A check after a new edit of a Linear layer takes the layer's output kept before any edit plus the
    edit's low-rank term (no matmul of the layer), and equals the whole model's output; once an edit of
    the layer is accepted its kept output is gone and the layer runs again."""
    from auditor.editors.rank_one import _CheckModel

    bundle, data, _ = bn_net
    model = bundle.copy().model.eval()
    checks = _CheckModel(model, [n for n, _ in editable_layers(model)])
    X, (clean, corrupted, _) = data.val.X[:64], data.pairs(3, 0)
    with torch.no_grad():
        checks.at(None)(X)
        checks.start()
        update = compute_delta(model, "head.1", clean, corrupted, data.train.X)
        assert update.factors is not None
        apply_delta(model, update, 0.5)
        assert torch.allclose(checks.at("head.1", update, 0.5)(X), model(X), atol=1e-5)
        assert checks.stats["low_rank_runs"] == 1
        checks.accepted("head.1")
        apply_delta(model, update, 0.5)  # strengthened: no longer the kept output plus one change
        assert torch.allclose(checks.at("head.1", update, 0.5)(X), model(X), atol=1e-5)
        assert checks.stats["low_rank_runs"] == 1 and checks.stats["tail_runs"] == 2
    assert_no_hooks(model)


def test_a_second_edit_of_the_same_model_starts_from_the_kept_checks(bn_net):
    """The loop's checks before any edit are kept by the model's weights: editing the same model again
    (another setting, Edit after Localize) skips the whole-model runs and gives the very same edit;
    a model with other weights, or the edited one, runs its own checks. (The output layer's refit is off
    here: it checks the edited model, whose values above the edit are new.)"""
    from auditor.editors.rank_one import clear_check_cache

    bundle, data, _ = bn_net
    clear_check_cache()
    edit = lambda b: get_editor("dynamic-rank-one", samples=1, seed=0, refit_output=False).edit(b, data)  # noqa: E731
    first, again = edit(bundle), edit(bundle)
    assert first.extras["check_runs"]["kept_runs"] == 0 and first.extras["check_runs"]["full_runs"] > 0
    assert again.extras["check_runs"]["kept_runs"] > 0 and again.extras["check_runs"]["full_runs"] == 0
    a, b = first.bundle.model.state_dict(), again.bundle.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e.get("accuracy_drop") for e in first.log] == [e.get("accuracy_drop") for e in again.log]
    assert edit(first.bundle).extras["check_runs"]["kept_runs"] == 0  # other weights
    clear_check_cache()
    get_editor("dynamic-rank-one", samples=1, seed=0).prepare(bundle, data)  # as Localize does
    prepared = edit(bundle)
    assert prepared.extras["check_runs"]["full_runs"] == 0 and prepared.bundle.sha256 == first.bundle.sha256
    other = bundle.copy()
    with torch.no_grad():
        other.model.head[1].bias.add_(0.01)  # in place, after the copy: its inherited digests no longer hold
    assert edit(other).extras["check_runs"]["kept_runs"] == 0
    assert_no_hooks(bundle.model)


def test_a_copy_hashes_as_its_source_until_changed():
    from auditor.layers import inherit_digests, model_hash

    torch.manual_seed(0)
    source = BNNet().eval()
    copy = BNNet().eval()
    copy.load_state_dict(source.state_dict())
    inherit_digests(source, copy)
    assert model_hash(copy) == model_hash(source)
    with torch.no_grad():
        copy.head[3].weight[0, 0] += 1.0
    assert model_hash(copy) != model_hash(source)
    with torch.no_grad():
        source.head[3].weight[0, 0] += 1.0  # the source changed after the copy: the copy hashes its own bytes
    fresh = BNNet().eval()
    fresh.load_state_dict(source.state_dict())
    inherit_digests(source, fresh)
    with torch.no_grad():
        source.head[3].weight[0, 0] -= 1.0
    assert model_hash(fresh) != model_hash(source)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        if h.sum() > 0:
            h = h.relu()
        return self.out(h)


def test_untraceable_model_is_checked_whole():
    from auditor.editors.rank_one import _CheckModel

    torch.manual_seed(0)
    model = Branchy().eval()
    assert layer_tail(model, "out") is None
    checks = _CheckModel(model, ["fc1", "out"])
    X = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(checks.at("out")(X), model(X))
    assert checks.stats == {"tail_runs": 0, "full_runs": 1, "kept_runs": 0, "low_rank_runs": 0,
                                "rows_skipped": 0}


def test_skip_aware_target_matches_the_block_sum_and_siblings_are_found(resnet):
    """Inside a residual block the skip path still carries the trigger: the "merge" target is what the
    block's last convolution must output so that the input of the layer reading the block's sum equals
    the clean twin's; fitting it brings that input much closer than the layer's own clean output does.
    The first convolution and the projection shortcut of a block read the same tensor (siblings)."""
    import copy

    from auditor.editors.rank_one import _changed_keys, merge_reader, merge_values
    from auditor.layers import sibling_layers

    bundle, data, _ = resnet
    clean, corrupted, _ = data.pairs(5, 0, split="train")
    model = bundle.model
    assert merge_reader(model, "blocks.0.conv2", clean) == "blocks.1.conv1"
    assert merge_reader(model, "blocks.0.conv1", clean) == "blocks.0.conv2"
    assert merge_reader(model, "fc", clean) is None
    assert sibling_layers(model, "blocks.1.conv1", clean) == ["blocks.1.shortcut.0"]
    assert sibling_layers(model, "blocks.0.conv1", clean) == []

    def reader_gap(edited):
        return float((layer_io(edited, "blocks.1.conv1", corrupted)[0]
                      - layer_io(edited, "blocks.1.conv1", clean)[0]).norm())

    def with_values(values):  # the corrupted twins' conv2 output replaced at the changed positions
        layer = dict(model.named_modules())["blocks.0.conv2"]

        def hook(_m, _a, out):
            flat = out.flatten(2).transpose(1, 2).clone()
            flat[changed] = values.to(flat)
            return flat.transpose(1, 2).reshape(out.shape)

        handle = layer.register_forward_hook(hook)
        try:
            return layer_io(model, "blocks.1.conv1", corrupted)[0]
        finally:
            handle.remove()

    keys, own_values, changed = _changed_keys(model, "blocks.0.conv2", clean, corrupted, 1e-6)
    merged = merge_values(model, "blocks.0.conv2", clean, corrupted, changed)
    want = layer_io(model, "blocks.1.conv1", clean)[0]
    before = reader_gap(model)
    own, merge = float((with_values(own_values) - want).norm()), float((with_values(merged) - want).norm())
    assert merge < 0.35 * own and own < before, (before, own, merge)

    def edited(target):
        out = copy.deepcopy(model)
        apply_delta(out, compute_delta(out, "blocks.0.conv2", clean, corrupted, data.train.X, target=target))
        return out

    assert reader_gap(edited("merge")) < reader_gap(edited("own")) < before
    assert_no_hooks(model)


def test_output_layer_is_the_linear_layer_that_gives_the_logits(bn_net, resnet):
    """The refit needs the layer whose output is the model's output; a model that applies anything after
    its last Linear layer has none."""
    from auditor.layers import output_layer

    X = bn_net[1].test.X[:4]
    assert output_layer(bn_net[0].model, X) == "head.3" and output_layer(resnet[0].model, X) == "fc"
    scaled = nn.Sequential(bn_net[0].model, nn.Softmax(dim=1))
    assert output_layer(scaled, X) is None
    assert_no_hooks(bn_net[0].model)


def test_refit_of_the_output_layer_gives_clean_rows_their_logits_back(bn_net):
    """What a change below costs clean inputs is given back, as far as the output layer can, on rows the
    refit never saw (the test split): fitted on training rows toward the unchanged model's logits."""
    from auditor.editors.rank_one import refit_output_delta

    bundle, data, m0 = bn_net
    model = bundle.copy().model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        original = model(data.train.X), model(data.test.X)
        conv = model.features[1].conv.weight
        conv.add_(0.7 * conv.std() * torch.randn_like(conv))  # collateral of an edit below (-4.4 pt)
        hurt = model(data.test.X)
    update = refit_output_delta(model, "head.3", data.train.X, original[0])
    assert update.residual_after < 0.5 * update.residual
    apply_delta(model, update)
    with torch.no_grad():
        mended = model(data.test.X)
    err = lambda z: float((z - original[1]).pow(2).mean())  # noqa: E731
    acc = lambda z: float((z.argmax(1) == data.test.y).float().mean())  # noqa: E731
    assert err(mended) < 0.5 * err(hurt)
    assert m0["accuracy"] - acc(hurt) > 0.02  # the change below cost clean rows; the refit gives most back
    assert m0["accuracy"] - acc(mended) < 0.5 * (m0["accuracy"] - acc(hurt)), (acc(hurt), acc(mended))


def test_the_loop_refits_the_output_layer_only_where_it_keeps_the_requirement(bn_net, resnet):
    """After edits that cost check rows, the output layer is refitted toward the unedited model's logits
    on clean training rows: kept on the BatchNorm net (the held-out check rows lose nothing, the
    requirement holds on the test split, only the output layer changes further); rolled back bit for
    bit on the residual net, where it would bring the backdoor back."""
    from auditor.editors.rank_one import clear_check_cache

    bundle, data, m0 = bn_net
    kw = dict(samples=1, seed=0)
    clear_check_cache()
    with_refit = get_editor("dynamic-rank-one", **kw).edit(bundle, data)
    clear_check_cache()
    without = get_editor("dynamic-rank-one", refit_output=False, **kw).edit(bundle, data)
    # the refit's checks run from the cut below the accepted edit, never the whole model once more
    assert with_refit.extras["check_runs"]["full_runs"] == without.extras["check_runs"]["full_runs"]
    step = next(e for e in with_refit.log if e.get("action") == "refit")
    assert step["accepted"] and step["layer"] == "head.3" and "head.3" in with_refit.extras["layers"]
    assert any(e.get("step") == "note" and "head.3 was refitted" in e["message"] and "not a rank-one" in e["message"]
               for e in with_refit.log)  # said where notes are said: auditor edit, the Edit page, the report's log
    before = next(e for e in reversed(without.log) if e.get("accepted"))
    assert step["accuracy"] >= before["accuracy"]
    a, b = with_refit.bundle.model.state_dict(), without.bundle.model.state_dict()
    assert {k for k in a if not torch.equal(a[k], b[k])} <= {"head.3.weight", "head.3.bias"}
    m = evaluate(with_refit.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m

    bundle, data, _ = resnet
    kw = dict(samples=5, seed=2, layer="blocks.1.conv1")  # held to the layer the ranking picks on a CPU: on an
    # H100 the scan's rounding chose another layer, which edited the output layer itself (nothing to refit)
    with_refit = get_editor("dynamic-rank-one", **kw).edit(bundle, data)
    without = get_editor("dynamic-rank-one", refit_output=False, **kw).edit(bundle, data)
    step = next(e for e in with_refit.log if e.get("action") == "refit")
    assert not step["accepted"] and step["reason"] == "a requirement is further from holding"
    assert [t["scale"] for t in step["tried"]] == [1.0, 0.5, 0.25]
    a, b = with_refit.bundle.model.state_dict(), without.bundle.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert_no_hooks(bundle.model)


def test_a_loop_held_to_one_layer_still_checks_and_refits_the_output_layer(bn_net):
    """With `layer` set the checks cut the model below that layer only; the refit's checks of the output
    layer (no cut below it) run the whole model instead of failing."""
    bundle, data, m0 = bn_net
    first = next(e["layer"] for e in get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, data).log
                 if e.get("action") == "edit" and e.get("accepted"))
    result = get_editor("dynamic-rank-one", samples=1, seed=0, layer=first).edit(bundle, data)
    step = next(e for e in result.log if e.get("action") == "refit")
    assert step["layer"] == "head.3" and "accuracy" in step, step  # checked, kept or not
    assert {e["layer"] for e in result.log if e.get("action") in ("edit", "strengthen")} == {first}
    m = evaluate(result.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m
    assert_no_hooks(bundle.model)


def test_the_search_keeps_the_cheapest_loop_held_to_one_layer(resnet, bn_net):
    """Where the loop's result costs check rows (here: any, `search_above=0`), the loop runs again held to each
    layer; the result kept is the cheapest that meets the requirement on the check rows, the same weights as
    the loop held to that layer directly, and the first run's steps are marked undone."""
    bundle, data, m0 = resnet
    kw = dict(samples=5, seed=1)
    first = get_editor("dynamic-rank-one", search=False, **kw).edit(bundle, data)
    result = get_editor("dynamic-rank-one", search_above=0.0, **kw).edit(bundle, data)
    search = next(e for e in result.log if e.get("action") == "search")
    assert len(search["tried"]) >= 3 and all(t["layer"] for t in search["tried"])
    first_drop = first.extras["check_drop"]
    assert result.extras["requirements_met_on_check_split"] and result.extras["check_drop"] <= first_drop
    if search["kept"] != "the first run":
        kept = search["kept"]
        assert result.extras["check_drop"] < first_drop
        assert min(t["accuracy_drop"] for t in search["tried"] if t["met_on_check_rows"]) == result.extras["check_drop"]
        direct = get_editor("dynamic-rank-one", layer=kept, **kw).edit(bundle, data)
        a, b = result.bundle.model.state_dict(), direct.bundle.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        undone = [e for e in result.log if "held_to" not in e and e.get("action") in ("edit", "strengthen")]
        assert undone and not any(e["accepted"] for e in undone)
        after = result.log[result.log.index(search) + 1:]
        assert after[0]["step"] == "note" and f"held to {kept}" in after[0]["message"]
        assert after[1:] and all(e["held_to"] == kept for e in after[1:])
    m = evaluate(result.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m
    assert_no_hooks(bundle.model)

    capped = get_editor("dynamic-rank-one", search_above=0.0, search_layers=2, **kw).edit(bundle, data)
    tried = next(e for e in capped.log if e.get("action") == "search")["tried"]
    assert [t["layer"] for t in tried if "skipped" not in t] == [t["layer"] for t in search["tried"][:2]]
    assert any("skipped" in t for t in tried)  # the rest are named, not run
    with pytest.raises(AuditorError, match="search_layers must be at least 0"):
        get_editor("dynamic-rank-one", search_layers=-1).edit(bundle, data)

    bundle, data, _ = bn_net  # a result that costs nothing: no search
    cheap = get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, data)
    assert cheap.extras["check_drop"] <= 0.005 and not any(e.get("action") == "search" for e in cheap.log)


class WithSpare(nn.Module):
    """A user's model that keeps a layer its forward never calls (a head left over from pre-training)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.spare = nn.Linear(5, 5)

    def forward(self, x):
        return self.net(x)


def test_a_layer_the_forward_never_calls_is_left_out_and_named_when_asked_for(resnet):
    """Ranking, the dynamic loop and its search skip a layer the model never runs; asking to edit it is a
    clear error (was an IndexError deep in the ranking)."""
    from auditor.localize import rank_layers_for

    bundle, data, m0 = resnet
    spare = ModelBundle(WithSpare(bundle.copy().model).eval(), bundle.spec)
    assert "spare" not in rank_layers_for(spare.model, data, 1, 0)["layer"].tolist()
    result = get_editor("dynamic-rank-one", samples=5, seed=1, search_above=0.0).edit(spare, data)
    search = next(e for e in result.log if e.get("action") == "search")
    assert "spare" not in {t["layer"] for t in search["tried"]} and not any("error" in t for t in search["tried"])
    m = evaluate(result.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m
    for editor in ("dynamic-rank-one", "rank-one"):
        with pytest.raises(AuditorError, match="'spare' never runs in the model's forward pass"):
            get_editor(editor, samples=1, layer="spare").edit(spare, data)
    assert_no_hooks(spare.model)


class Tempered(nn.Module):
    """A user's model that divides its logits by a temperature after the last layer."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) / 2.0


def test_a_model_whose_output_is_not_a_linear_layers_is_not_refitted_and_says_so(bn_net):
    bundle, data, _ = bn_net
    tempered = ModelBundle(Tempered(bundle.copy().model).eval(), bundle.spec)
    result = get_editor("dynamic-rank-one", samples=1, seed=0).edit(tempered, data)
    step = next(e for e in result.log if e.get("action") == "refit")
    assert not step["accepted"] and "not a Linear layer's own output" in step["reason"]
    assert "net.head.3" not in result.extras["layers"]


class Twice(nn.Module):
    """A user's model that applies one Linear layer twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.inp = nn.Linear(64, 32)
        self.shared = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.shared(F.relu(self.inp(self.flat(x)))))
        return self.out(F.relu(self.shared(h)))


def test_a_layer_called_twice_is_checked_by_running_it(bn_net):
    """A shared layer's kept output would stand for both of its calls: it keeps none, and a check after
    its edit runs it (and equals the whole model's output)."""
    from auditor.editors.rank_one import _CheckModel

    _, data, _ = bn_net
    torch.manual_seed(0)
    model = Twice().eval()
    checks = _CheckModel(model, [n for n, _ in editable_layers(model)])
    X, (clean, corrupted, _) = data.val.X[:64], data.pairs(3, 0)
    with torch.no_grad():
        checks.at(None)(X)
        checks.start()
        assert "shared" not in checks.outs and "out" in checks.outs
        update = compute_delta(model, "shared", clean, corrupted, data.train.X)
        apply_delta(model, update)
        assert torch.allclose(checks.at("shared", update, 1.0)(X), model(X), atol=1e-5)
        assert checks.stats["low_rank_runs"] == 0
    assert_no_hooks(model)


class NormedMLP(nn.Module):
    """A user's MLP whose hidden layers are weight-normalised (or spectrally normalised): their weights are
    computed by a parametrization from its own tensors (`fc1.parametrizations.weight.original0`, ...)."""

    def __init__(self, norm=torch.nn.utils.parametrizations.weight_norm):
        super().__init__()
        self.fc1, self.fc2, self.out = norm(nn.Linear(64, 64)), norm(nn.Linear(64, 32)), nn.Linear(32, 10)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class SpectralMLP(NormedMLP):
    def __init__(self):
        super().__init__(torch.nn.utils.parametrizations.spectral_norm)


@pytest.mark.parametrize("cls", [NormedMLP, SpectralMLP])
def test_a_weight_a_parametrization_computes_is_edited_through_it_or_left_alone(cls):
    """weight_norm: the edit goes through the parametrization's right inverse into its own tensors (it was added
    to a computed copy that was thrown away, so an edit that 'changed fc1' left the Trojan in place).
    spectral_norm normalises any weight again, so its layers are left out of the edit and said to be."""
    from auditor.editors.rank_one import UneditableWeight, holds_edits

    bundle, data, before = _trojan(cls)
    assert before["attack_success_rate"] > 0.9
    keys = set(bundle.model.state_dict())
    result = get_editor("dynamic-rank-one", samples=5, seed=0).edit(bundle, data, ["attack_success_rate <= 0.02"])
    after = evaluate(result.bundle, data).metrics
    assert set(result.bundle.model.state_dict()) == keys  # the vendor's own tensors, under their names
    if cls is NormedMLP:
        assert holds_edits(bundle.model, "fc1")
        assert after["attack_success_rate"] <= 0.02 and before["accuracy"] - after["accuracy"] <= 0.02
    else:
        assert not holds_edits(bundle.model, "fc1") and holds_edits(bundle.model, "out")
        assert set(result.layers) <= {"out"}
        assert any(set(e.get("not_editable", ())) >= {"fc1", "fc2"} for e in result.log)
        with pytest.raises(UneditableWeight, match="spectral|SpectralNorm"):
            get_editor("rank-one", samples=1, seed=0, layer="fc1").edit(bundle, data)
    from auditor.fixes import parse_fixes  # a codebook sits at a layer with a weight of its own (it replaced fc2
    # by a plain layer with a wrong weight: accuracy 10 %)

    users = bundle.copy()
    users.spec.arch = {"name": "custom"}  # the user's class (--arch-file): a codebook is saved with it
    fixed = get_editor("retrieval").edit(users, data, fixes=parse_fixes(["3=1", "10=2"], data))
    assert fixed.layers == ["out"]
    assert before["accuracy"] - evaluate(fixed.bundle, data).metrics["accuracy"] <= 0.05
    pruned = get_editor("magnitude-pruning", sparsity=0.3).edit(bundle, data)  # prune cannot reach fc1, fc2:
    assert set(pruned.layers) == {"out"} and any("left unpruned" in e.get("message", "") for e in pruned.log)
    for name in ("fc1", "fc2"):  # nothing left half-edited: the model as it was where the edit did not reach
        if name not in result.layers:
            for k in keys:
                if k.startswith(name + "."):
                    assert torch.equal(result.bundle.model.state_dict()[k], bundle.model.state_dict()[k])
