"""Retrieval editor (GRACE, Hartvigsen et al. 2023): fix given mistakes with a codebook at one layer.

Each fixed input becomes an entry of a codebook at a Linear layer (`auditor.models.adapters`): its
key is the layer's input for that row, its value the layer output that makes the requested label win
by `margin`, its radius how far around the key the value applies. At inference an input whose
nearest key is within that key's radius gets the stored value; every other input goes through the
layer unchanged. So earlier fixes stay (a later edit adds entries and never moves an old key) and
inputs far from every key keep their predictions: the editor for long sequences of fixes.

Radii. The default radius is calibrated once per model and stored in the spec's adapter: the
`coverage` quantile of the distance (at the layer) between training rows and their equivalents (the
shifted or nudged copies that generality is measured on, drawn afresh here). An entry whose ball would
turn more than `budget` (0.1 %) of a fixed sample of training rows wrong (rows whose true label and
current prediction both differ from the requested label) gets `conflict` (half) the distance to the
nearest such row as its radius instead (defaults chosen on the validation split). Entries with different labels
never overlap: where two would, both radii shrink to half their distance (GRACE's split). A new fix of
an input that already has an entry replaces it.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> from auditor.fixes import parse_fixes
    >>> bundle = load_model("sample_models/digits_cnn.safetensors")
    >>> data = load_data("digits", spec=bundle.spec)
    >>> result = get_editor("retrieval").edit(bundle, data, fixes=parse_fixes(["5=3"], data))
    >>> int(result.bundle.model(data.test.X[5:6]).argmax(1)[0])
    3
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AuditorError
from ..fixes import equivalents
from ..models.adapters import CodebookLinear, attach_codebook
from ..models.architectures import computed_weight
from ..models.files import check_saveable
from .base import Editor
from .registry import register_editor

SAME = 1e-6  # keys closer than this are the same input
FLOOR = 1e-3  # no radius is under this fraction of the default one (rounding between batch sizes)


@dataclass
class RetrievalHyper:
    layer: str | None = field(default=None, metadata={
        "help": "Linear layer the codebook sits at (None: the one a codebook already sits at, else the "
                "last Linear layer's predecessor, whose input is the network's features)", "choices": "layer"})
    radius: float | None = field(default=None, metadata={
        "help": "radius of a new entry at the layer (None: the one stored with the codebook, else calibrated "
                "on training rows and their equivalents)"})
    coverage: float = field(default=0.9, metadata={
        "help": "calibration: the share of training rows' equivalents the default radius reaches"})
    conflict: float = field(default=0.5, metadata={
        "help": "an entry whose ball would turn more than `budget` of the reference training rows wrong gets at "
                "most this times the distance to the nearest such row as its radius (0: no cap)"})
    budget: float = field(default=0.001, metadata={
        "help": "the share of reference training rows an entry's full ball may turn wrong before its radius is cut"})
    margin: float = field(default=1.0, metadata={
        "help": "the stored value makes the requested label win by this log-probability margin"})
    steps: int = field(default=200, metadata={
        "help": "at most this many Adam steps to learn values at a layer below the output"})
    reference_rows: int = field(default=2000, metadata={
        "help": "training rows (a fixed sample) the radii are checked against"})


@torch.no_grad()
def row_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The Linear layers the forward pass of `x` calls with one input vector per example (not per token or
    position), in the order it calls them, whose weight is their own (no parametrization computes it): the
    layers a codebook keyed by examples can sit at."""
    seen: dict[str, bool] = {}
    handles = []
    for name, mod in model.named_modules():
        # a weight a parametrization computes (weight_norm) has no plain weight for the codebook layer to take
        if isinstance(mod, nn.Linear) and not computed_weight(mod):
            def hook(_m, inp, _out, _n=name):
                seen.setdefault(_n, inp[0].dim() == 2 and inp[0].shape[0] == len(x))
            handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [n for n, per_row in seen.items() if per_row]


def default_layer(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """Where a codebook goes: the layer one already sits at, else the last Linear layer's predecessor (among the
    layers `x`'s forward pass calls with one vector per example, when `x` is given)."""
    modules = list(model.named_modules())
    existing = [n for n, m in modules if isinstance(m, CodebookLinear)]
    if existing:
        return existing[0]
    linear = row_layers(model, x) if x is not None else [n for n, m in modules if isinstance(m, nn.Linear)]
    if not linear:
        raise AuditorError("the model has no Linear layer that reads one vector per example for a codebook")
    return linear[-2] if len(linear) > 1 else linear[-1]


@contextlib.contextmanager
def _capture(layer: nn.Module):
    """Records the layer's input and output of the next forward pass (the hook is removed after)."""
    seen: dict = {}

    def hook(mod, inp, out):
        seen["input"] = inp[0].detach().reshape(-1, inp[0].shape[-1])
        seen["output"] = out

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _tail(model: nn.Module, layer: nn.Module) -> nn.Sequential | None:
    """The layers after `layer` when it is a direct child of an `nn.Sequential` model (with the model's
    reading of one logit as two, for a single-logit model), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    children = list(model.children())
    at = next((i for i, m in enumerate(children) if m is layer), None)
    if at is None:
        return None
    from ..models.custom import read_like

    return read_like(model, nn.Sequential(*children[at + 1:]))


_CACHE: OrderedDict = OrderedDict()  # layer inputs of reference rows and calibrated radii, per weights
_LOCK = threading.Lock()


def _weights_key(model: nn.Module) -> str:
    """sha256 of every tensor but the codebooks' (which do not change a codebook layer's inputs)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if name.rpartition(".")[2] in CodebookLinear.adapter_tensors:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is layer)


def _cached(key: tuple, value=None):
    """The cached value for `key` (None if absent); with `value`, store it and return it."""
    with _LOCK:
        if value is None:
            return _CACHE.get(key)
        _CACHE[key] = value
        while len(_CACHE) > 16:
            _CACHE.popitem(last=False)
        return value


def _reference_rows(data, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = len(data.train)
    return torch.arange(m) if n >= m else torch.randperm(m, generator=g)[:n].sort().values


@register_editor
class Retrieval(Editor):
    """Fix given mistakes with a key-value codebook at one layer (GRACE); earlier fixes are kept."""

    name = "retrieval"
    description = ("Retrieval codebook (GRACE): each fix is a key at one layer whose stored output applies only "
                   "near that input; for long sequences of fixes (--fix ROW=LABEL or --fixes FILE.csv)")
    kind = "baseline"
    targets = ("edit_success", "generality")
    Hyper = RetrievalHyper
    adds_adapter = True  # the edit changes inference: only a .safetensors file can hold it

    def supports(self, bundle, data) -> str | None:
        if bundle is None:
            return None
        if not any(isinstance(m, nn.Linear) for m in bundle.model.modules()):
            return "the model has no Linear layer for a codebook"
        try:  # the codebook lives only in a .safetensors file, rebuilt from the spec (or the user's class)
            check_saveable(bundle, "model.safetensors")
        except AuditorError:
            return ("its codebook is kept only in a .safetensors file, and this model cannot be written as one "
                    "that loads again (an ONNX or torch.export graph, or an architecture the spec does not "
                    "rebuild); editors that fix mistakes in the weights can")
        if self.hparams.layer is not None:
            mod = dict(bundle.model.named_modules()).get(self.hparams.layer)
            if not isinstance(mod, nn.Linear):
                linear = [n for n, m in bundle.model.named_modules() if isinstance(m, nn.Linear)]
                return f"layer {self.hparams.layer!r} is not a Linear layer of this model; Linear layers: {linear}"
        return None

    # -- the edit -----------------------------------------------------------------------------------
    def _edit(self, model, data, requirements, device, callback, *, log, fixes=None, bundle=None):
        if fixes is None or len(fixes.y) == 0:
            raise AuditorError("the retrieval editor fixes given mistakes: pass fixes (CLI: --fix ROW=LABEL or "
                               "--fixes FILE.csv)")
        hp = self.hparams
        model.eval()
        probe = fixes.X[:2].to(device)
        layer = hp.layer or default_layer(model, probe)
        if hp.layer and not isinstance(dict(model.named_modules()).get(layer), CodebookLinear):
            rows = row_layers(model, probe)
            if layer not in rows:
                raise AuditorError(f"layer {layer!r} does not read one vector per example (it is called per token "
                                   f"or position, or not at all) or its weight is computed by a parametrization "
                                   f"(weight_norm), so a codebook keyed by examples cannot sit there; layers it can: "
                                   f"{rows}")
        book = attach_codebook(model, layer)
        adapters = [a for a in (bundle.spec.adapters if bundle is not None else []) if a.get("layer") != layer]
        stored = next((a for a in (bundle.spec.adapters if bundle is not None else [])
                       if a.get("layer") == layer), {})
        X, y = fixes.X.to(device), fixes.y.to(device)
        if len(X) > 1:
            self._check_consistent(book, model, X, y)
        callback(0.1, f"{len(y)} fix(es) into the codebook at {layer}")
        radius = hp.radius if hp.radius is not None else stored.get("radius")
        calibrated = radius is None
        if calibrated:
            radius = self._calibrate(model, book, data, device)
        with torch.no_grad(), _capture(book) as seen:
            model(X)
        keys, base_out = seen["input"], seen["output"].detach()
        radii = torch.full((len(y),), float(radius), device=device)
        ref = _reference_rows(data, hp.reference_rows)
        if hp.conflict > 0:
            h_ref, pred = self._reference(model, book, data, ref, device)
            y_ref = data.train.y[ref].to(device)
            dist = torch.cdist(keys, h_ref, compute_mode="donot_use_mm_for_euclid_dist")
            wrong = (y_ref[None, :] != y[:, None]) & (pred[None, :] != y[:, None]) & (dist > SAME)  # not itself
            nearest = dist.masked_fill(~wrong, float("inf")).min(1).values
            inside = (wrong & (dist <= radii[:, None])).sum(1)
            cut = inside > hp.budget * len(ref)
            radii = torch.where(cut, torch.minimum(radii, hp.conflict * nearest), radii)
        radii = radii.clamp_min(FLOOR * float(radius))  # the fixed input itself always hits
        values, steps = self._values(model, book, X, y, keys, base_out)
        old = (book.codebook_keys, book.codebook_values, book.codebook_radii, book.codebook_labels)
        keep, old_radii, replaced = self._merge(old, keys, y, radii)
        book.set_entries(torch.cat([old[0][keep], keys]), torch.cat([old[1][keep], values]),
                         torch.cat([old_radii[keep], radii]), torch.cat([old[3][keep], y]))
        entry = {"type": "codebook", "layer": layer, "radius": float(radius)}
        if bundle is not None:
            bundle.spec.adapters = [*adapters, entry]
        with torch.no_grad():
            fixed = int((model(X).argmax(1) == y).sum())
        log.append({"step": "retrieval", "layer": layer, "examples": len(y), "entries": book.entries,
                    "replaced": replaced, "radius": round(float(radius), 5), "calibrated": calibrated,
                    "radii": [round(float(r), 5) for r in radii], "value_steps": steps, "fixed": fixed})
        return {"layer": layer, "entries": book.entries, "added": len(y), "replaced": replaced,
                "radius": float(radius), "fixed": fixed, "examples": len(y)}

    def _check_consistent(self, book: CodebookLinear, model, X, y) -> None:
        """A batch that asks for two labels for the same input is refused."""
        with torch.no_grad(), _capture(book) as seen:
            model(X)
        d = torch.cdist(seen["input"], seen["input"])
        clash = (d <= SAME) & (y[:, None] != y[None, :])
        if bool(clash.any()):
            i, j = (int(v) for v in torch.nonzero(clash)[0])
            raise AuditorError(f"fixes {i + 1} and {j + 1} are the same input but ask for different labels "
                               f"({int(y[i])} and {int(y[j])}); keep one of them")

    def _reference(self, model, book: CodebookLinear, data, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer inputs of training rows `rows` (cached per weights: they do not depend on the codebook)
        and the current model's predictions for them (through the codebook)."""
        key = ("reference", _weights_key(model), _layer_name(model, book), data.sha256, len(rows), str(device))
        h = _cached(key)
        tail = _tail(model, book)
        with torch.no_grad():
            if h is None or tail is None:
                with _capture(book) as seen:
                    pred = model(data.train.X[rows].to(device)).argmax(1)
                h = _cached(key, seen["input"])
            else:
                pred = tail(book(h)).argmax(1)
        return h, pred

    def _calibrate(self, model, book: CodebookLinear, data, device) -> float:
        """The `coverage` quantile of the distance at the layer between training rows and their equivalents."""
        key = ("radius", _weights_key(model), _layer_name(model, book), data.sha256, self.hparams.coverage,
               str(device))
        if _cached(key) is not None:
            return _cached(key)
        return _cached(key, self._measure_radius(model, book, data, device))

    def _measure_radius(self, model, book: CodebookLinear, data, device) -> float:
        rows = _reference_rows(data, 256)
        X = data.train.X[rows].to(device)
        X_eq, src = equivalents(data, X.cpu(), seed=1)
        with torch.no_grad():
            with _capture(book) as seen:
                model(X)
            h = seen["input"]
            with _capture(book) as seen:
                model(X_eq.to(device))
            h_eq = seen["input"]
        dist = (h_eq - h[src.to(device)]).norm(dim=1)
        return float(torch.quantile(dist.double(), self.hparams.coverage))

    def _values(self, model, book: CodebookLinear, X, y, keys, base_out) -> tuple[torch.Tensor, int]:
        """Layer outputs that make each requested label win by the margin: set on the logits in closed form
        when the layer gives the model's output, else learned by Adam through the layers above."""
        margin = self.hparams.margin
        with torch.no_grad():
            logits = model(X)
        if base_out.shape == logits.shape and torch.equal(base_out, logits):  # the layer is the output
            v = base_out.clone()
            other = v.masked_fill(F.one_hot(y, v.shape[1]).bool(), float("-inf")).max(1).values
            v[torch.arange(len(y)), y] = torch.maximum(v.gather(1, y[:, None]).squeeze(1), other + margin)
            return v, 0
        from .mend.hooks import margin_loss

        value = base_out.reshape(len(y), -1).clone().requires_grad_(True)
        tail = _tail(model, book)
        old = (book.codebook_keys, book.codebook_values, book.codebook_radii, book.codebook_labels)
        opt = torch.optim.Adam([value], lr=0.1 * max(float(base_out.abs().mean()), 1e-3))
        steps = 0
        try:
            if tail is None:  # through the whole model, the new entries switched in
                book.codebook_keys, book.codebook_labels = keys, y
                book.codebook_radii = torch.full((len(y),), 1e-3, device=keys.device)
            for steps in range(self.hparams.steps + 1):
                if tail is None:
                    book.codebook_values = value
                    out = model(X)
                else:
                    out = tail(value)
                loss = margin_loss(out, y, margin + 0.1)
                if bool((loss <= 0).all()) or steps == self.hparams.steps:
                    break
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
        finally:
            book.codebook_keys, book.codebook_values, book.codebook_radii, book.codebook_labels = old
        return value.detach(), steps

    @staticmethod
    def _merge(old, keys, y, radii) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Which old entries stay (an entry for the same input is replaced), the old radii after GRACE's
        split against the new entries, and how many were replaced. `radii` (new) shrink in place."""
        old_keys, _, old_radii, old_labels = old
        old_radii = old_radii.clone()
        keep = torch.ones(len(old_keys), dtype=torch.bool, device=keys.device)
        replaced = 0
        if len(old_keys):
            d = torch.cdist(keys, old_keys)
            same = d <= SAME
            replaced = int(same.any(0).sum())
            keep &= ~same.any(0)
            clash = (old_labels[None, :] != y[:, None]) & keep[None, :] & (d < radii[:, None] + old_radii[None, :])
            for i, j in torch.nonzero(clash).tolist():
                half = float(d[i, j]) / 2
                radii[i] = min(float(radii[i]), half)
                old_radii[j] = min(float(old_radii[j]), half)
        if len(keys) > 1:  # new entries among themselves
            d = torch.cdist(keys, keys)
            clash = (y[:, None] != y[None, :]) & (d < radii[:, None] + radii[None, :])
            for i, j in torch.nonzero(clash).tolist():
                radii[i] = min(float(radii[i]), float(d[i, j]) / 2)
        return keep, old_radii, replaced
