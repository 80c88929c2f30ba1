"""Train a MEND gradient editor for one model on sampled edits of its training data.

The edit distribution is the one the editor meets: each step edits one row (a share `single_share`
of the steps) or a batch of `max_batch` rows, each a real mistake (a misclassified training row
with its true label, for a share `misclassified_share` when there are any) or a row with a random
wrong label. It computes their fine-tuning gradient factors, applies the editor's edit to the
edited layers with each row's step scaled as at edit time (just enough for the row to win by
`margin`, see `row_scales`), and minimises `c_edit * CE(edited model on the edits and their
equivalents) + c_loc * KL(before || after on unrelated training rows)` (MEND's edit and locality
losses). So the editor learns directions: edits that, once they fix the example, also fix its
equivalents and leave other inputs alone. The edited layers come after a fixed trunk, so the
trunk's features are computed once and the edited head runs functionally
(`torch.func.functional_call`). The checkpoint with the best validation score (edit success +
generality - 10 x changed predictions, single edits and batches, on the validation split) is kept;
step 0 is the untrained (identity) editor, so training never ships anything worse than it on that score.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ...backend import Callback, seeded_global_rng
from ...data.base import AuditData
from ...fixes import equivalents
from ...models.files import ModelBundle
from .hooks import capture_factors, margin_loss, resolve_layers, split_head
from .net import GradientEditor, apply_editor, row_scales


@dataclass
class MendConfig:
    layers: list[str] | None = None  # default: the last two Linear layers
    steps: int = 3000
    max_batch: int = 10  # a batched edit fixes this many rows at once
    single_share: float = 0.5  # share of training steps that edit one row (the others: max_batch rows)
    rank: int = 32
    n_blocks: int = 2
    ridge: float = 1e-2  # whitening: C + ridge * mean eigenvalue
    lr: float = 1e-3
    c_edit: float = 1.0
    c_loc: float = 10.0
    n_loc: int = 256
    n_noise: int = 4  # noised equivalents per edit (plus four shifts for images)
    misclassified_share: float = 0.5  # share of edits that fix a real training mistake (when there are any)
    margin: float = 0.5  # edit time: scale the step until the requested label wins by this log-prob margin
    search: int = 3  # edit time: per-row step multipliers up to 2^search (a larger one rarely fixes, often wrecks)
    rounds: int = 4  # edit time: rounds for rows still short, from the edited weights (validation uses the same)
    val_every: int = 250
    n_val: int = 60
    seed: int = 0


class _Sampler:
    """Edits of one split: (rows, requested labels)."""

    def __init__(self, pred: np.ndarray, y: np.ndarray, n_classes: int, share: float, rng: np.random.Generator):
        self.pred, self.y, self.k, self.share, self.rng = pred, y, n_classes, share, rng
        self.wrong = np.flatnonzero(pred != y)

    def __call__(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        rows = self.rng.choice(len(self.y), size=n, replace=False)
        target = (self.pred[rows] + self.rng.integers(1, self.k, size=n)) % self.k  # a random wrong label
        if len(self.wrong):
            real = self.rng.random(n) < self.share
            n_real = int(real.sum())
            if n_real:
                pick = self.rng.choice(self.wrong, size=min(n_real, len(self.wrong)), replace=False)
                idx = np.flatnonzero(real)[:len(pick)]
                rows[idx], target[idx] = pick, self.y[pick]
        rows, keep = np.unique(rows, return_index=True)
        return rows, torch.as_tensor(target[keep], dtype=torch.int64)


def _edited_params(head, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = dict(head.named_parameters())
    for name, d in deltas.items():
        params[f"{name}.weight"] = params[f"{name}.weight"] + d
    return params


def _kl(pre_logits: torch.Tensor, post_logits: torch.Tensor) -> torch.Tensor:
    return F.kl_div(post_logits.log_softmax(-1), pre_logits.log_softmax(-1), log_target=True,
                    reduction="batchmean")


def _fmt(v: dict) -> str:
    return " ".join(f"{t}: ES {v[t + '_edit_success']:.3f} gen {v[t + '_generality']:.3f} "
                    f"changed {v[t + '_changed']:.4f}" for t in ("single", "batch"))


def train_mend(bundle: ModelBundle, data: AuditData, config: MendConfig | None = None,
               callback: Callback | None = None) -> tuple[GradientEditor, dict]:
    """A trained `GradientEditor` for `bundle` and a dict of its training record and validation figures."""
    config = config or MendConfig()
    callback = callback or (lambda f, m: None)
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    model = copy.deepcopy(bundle.model).cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = resolve_layers(model, config.layers)
    trunk, head = split_head(model, layers[0])
    modules = dict(model.named_modules())
    with seeded_global_rng(config.seed):  # its initialisation, the same whatever other threads do
        editor = GradientEditor([(n, modules[n].in_features, modules[n].out_features) for n in layers],
                                config.rank, config.n_blocks, ridge=config.ridge)
    n_classes = len(data.class_names)

    with torch.no_grad():
        feats = {s: trunk(data.split(s).X) for s in ("train", "val")}
        pre = {s: head(f) for s, f in feats.items()}
    pred = {s: pre[s].argmax(1).numpy() for s in pre}
    train_y = data.train.y.numpy()
    sample = _Sampler(pred["train"], train_y, n_classes, config.misclassified_share, rng)

    def edit_batch(split: str, rows, target, n_eq_seed: int):
        X = data.split(split).X[rows]
        X_eq, src = equivalents(data, X, n_noise=config.n_noise, seed=n_eq_seed)
        with torch.no_grad():
            f_eq = trunk(X_eq)
        return feats[split][rows], target, f_eq, target[src]

    def losses(split, rows, target, f_eq, y_eq, loc_rows, scaled: bool = True):
        factors, _ = capture_factors(head, layers, feats[split][rows], target)
        scales = None
        if scaled and config.search > 0:  # the steps the edit will take: just enough to win by the margin
            with torch.no_grad():
                kv = editor.keys_values(factors)
                scales = row_scales(lambda sc: margin_loss(functional_call(
                    head, _edited_params(head, editor.changes(kv, sc)), (feats[split][rows],)),
                    target, config.margin), len(target), config.search)
        params = _edited_params(head, editor(factors, scales))
        post = functional_call(head, params, (torch.cat([feats[split][rows], f_eq]),))
        l_edit = F.cross_entropy(post, torch.cat([target, y_eq]))
        post_loc = functional_call(head, params, (feats[split][loc_rows],))
        return l_edit, _kl(pre[split][loc_rows], post_loc), post, post_loc

    def loc_rows_for(split: str, rows, n: int):
        pool = np.setdiff1d(np.arange(len(feats[split])), rows)
        return torch.as_tensor(rng.choice(pool, size=min(n, len(pool)), replace=False))

    # standardisation statistics from single sampled edits
    rows, target = sample(min(4096, len(train_y)))
    factors, _ = capture_factors(head, layers, feats["train"][rows], target)
    editor.set_stats(factors)

    # initial step size: the best of a coarse grid for the identity editor
    warm = [sample(int(rng.integers(1, config.max_batch + 1))) for _ in range(16)]
    warm = [(r, t, *edit_batch("train", r, t, i)[2:], loc_rows_for("train", r, config.n_loc))
            for i, (r, t) in enumerate(warm)]
    best = None
    for log_lr in np.linspace(-10, 4, 29):
        editor.log_lr.data.fill_(float(log_lr))
        with torch.no_grad():
            total = sum(config.c_edit * le + config.c_loc * ll
                        for le, ll, _, _ in (losses("train", *w, scaled=False) for w in warm))
        if best is None or total < best[0]:
            best = (float(total), float(log_lr))
    editor.log_lr.data.fill_(best[1])

    # fixed validation edits on the validation split: singles and batches of up to max_batch
    val_rng = np.random.default_rng(config.seed + 1)
    val_sample = _Sampler(pred["val"], data.val.y.numpy(), n_classes, config.misclassified_share, val_rng)
    val_edits = []
    for i in range(config.n_val):
        r, t = val_sample(1 if i % 2 == 0 else min(config.max_batch, len(pred["val"]) // 4))
        _, _, f_eq, y_eq = edit_batch("val", r, t, 10_000 + i)
        val_edits.append((r, t, f_eq, y_eq, torch.as_tensor(np.setdiff1d(np.arange(len(pred["val"])), r))))

    def validate() -> dict:
        """Edit-time procedure on the validation edits: metrics of single edits and of batches."""
        out = {}
        editor.eval()
        for tag, part in (("single", val_edits[0::2]), ("batch", val_edits[1::2])):
            es = gen = changed = 0.0
            for r, t, f_eq, y_eq, loc in part:
                edited = copy.deepcopy(head)
                apply_editor(edited, editor, feats["val"][r], t, config.margin, config.search, config.rounds)
                with torch.no_grad():
                    es += float((edited(feats["val"][r]).argmax(1) == t).float().mean())
                    gen += float((edited(f_eq).argmax(1) == y_eq).float().mean())
                    changed += float((edited(feats["val"][loc]).argmax(1) != pre["val"][loc].argmax(1))
                                     .float().mean())
            n = max(len(part), 1)
            out.update({f"{tag}_edit_success": es / n, f"{tag}_generality": gen / n,
                        f"{tag}_changed": changed / n})
        editor.train()
        out["score"] = sum(out[f"{t}_edit_success"] + out[f"{t}_generality"] - 10 * out[f"{t}_changed"]
                           for t in ("single", "batch"))
        return out

    opt = torch.optim.Adam(editor.parameters(), lr=config.lr)
    history = [{"step": 0, **validate()}]
    callback(0.0, f"identity editor: {_fmt(history[0])}")
    best_state, best_score = copy.deepcopy(editor.state_dict()), history[0]["score"]
    run_edit = run_loc = 0.0
    for step in range(1, config.steps + 1):
        rows, target = sample(1 if rng.random() < config.single_share else config.max_batch)
        _, _, f_eq, y_eq = edit_batch("train", rows, target, step)
        l_edit, l_loc, _, _ = losses("train", rows, target, f_eq, y_eq, loc_rows_for("train", rows, config.n_loc))
        loss = config.c_edit * l_edit + config.c_loc * l_loc
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), 10.0)
        opt.step()
        run_edit = 0.98 * run_edit + 0.02 * float(l_edit.detach())
        run_loc = 0.98 * run_loc + 0.02 * float(l_loc.detach())
        if step % config.val_every == 0 or step == config.steps:
            v = validate()
            history.append({"step": step, "edit_loss": run_edit, "loc_loss": run_loc, **v})
            if v["score"] > best_score:
                best_score, best_state = v["score"], copy.deepcopy(editor.state_dict())
            callback(step / config.steps, f"step {step}/{config.steps}: loss {run_edit:.3f}/{run_loc:.4f} {_fmt(v)}")
    editor.load_state_dict(best_state)
    editor.eval()
    for p in editor.parameters():
        p.requires_grad_(False)
    best_val = max(history, key=lambda h: h["score"])
    info = {"model_sha256": bundle.sha256, "model_name": bundle.spec.provenance.get("name", bundle.name),
            "arch": bundle.spec.arch, "data": data.name, "training": asdict(config),
            "initial_log_lr": best[1], "learned_lr": {n: float(editor.log_lr[i].exp())
                                                      for i, n in enumerate(editor.layer_names)},
            "validation": best_val, "history": history, "seconds": time.perf_counter() - start}
    return editor, info
