"""Train the shipped mistake-fixing editors: MEND editors and editable-trained (ENN) base models.

    python sample_models/build_mend.py                    # everything below (a few minutes on 2 CPU cores)
    python sample_models/build_mend.py mend_digits_cnn    # one artefact
    python sample_models/build_mend.py --cards            # rewrite the MEND editors' cards only
    python sample_models/build_mend.py --model my.safetensors --data digits --out mend_my.safetensors
    python sample_models/build_mend.py --model my.pt --spec my.spec.json --data my_case.npz

Artefacts (the weights are deterministic for a given torch build and thread count):
- `auditor/editors/weights/mend_digits_cnn.safetensors`, `.../mend_adult_mlp.safetensors`: MEND
  gradient editors for the sample models, shipped as package data with a card each (found by the
  `mend` editor through the model's sha256 or name on the editor search path).
- `sample_models/digits_cnn_editable.safetensors`, `.../adult_mlp_editable.safetensors`: the sample
  models fine-tuned with editable training, models to audit with the `enn` editor; each has a card.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from auditor.data import load_data
from auditor.editors.baselines.enn import EditableConfig, editable_training, feature_overlap
from auditor.editors.mend import MendConfig, save_gradient_editor, train_mend
from auditor.evaluate import evaluate
from auditor.models import ModelSpec, load_model, save_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WEIGHTS = ROOT / "auditor" / "editors" / "weights"  # shipped learned editors (package data)
BENCHMARK = ROOT / "benchmarks" / "results" / "fix_mistakes.json"

MEND = {
    "mend_digits_cnn": ("digits_cnn", "digits", MendConfig(layers=["fc1", "out"], steps=2000, margin=1.5, lr=1e-3,
                                                          search=2, misclassified_share=0.3, rank=64)),
    "mend_adult_mlp": ("adult_mlp", "adult", MendConfig(layers=["fc1", "fc2", "out"], steps=1000, margin=0.2,
                                                        lr=1e-3, ridge=1e-3, misclassified_share=0.8, c_loc=50.0)),
}
# editable training as in the paper (stop-at-success editor of at most 10 steps in the graph, paper margin 0),
# with an SGD editor whose step is learned and coefficients raised for a 40-epoch fine-tune of a trained model
# (the paper trains from scratch to convergence with c_stab = c_edit = 0.01); see the enn module and the cards
EDITABLE = {
    "digits_cnn_editable": ("digits_cnn", "digits", EditableConfig(
        layers=["fc1", "out"], optimiser="sgd", edit_lr=0.01, learn_edit_lr=True, epochs=40, batch_size=64,
        c_stab=1.0, c_edit=0.1)),
    "adult_mlp_editable": ("adult_mlp", "adult", EditableConfig(
        layers=["fc1", "fc2", "out"], optimiser="sgd", edit_lr=0.01, learn_edit_lr=True, epochs=2, batch_size=256,
        c_stab=1.0, c_edit=0.1)),
}


def _progress(name: str):
    start = time.perf_counter()

    def callback(fraction: float, message: str) -> None:
        print(f"[{name} {time.perf_counter() - start:6.1f}s] {message[:160]}", file=sys.stderr, flush=True)
    return callback


def build_mend(name: str, model_path: Path, data_name: str, config: MendConfig, out: Path,
               spec: ModelSpec | None = None, schema=None, **code) -> dict:
    """`code`: `arch_file`, `arch_class`, `trust_code` for a model of the user's own class; `schema`: a
    CSV's `TabularSchema` (target, positive label, protected, categorical columns)."""
    bundle = load_model(model_path, spec=spec, **code)
    data = load_data(data_name, schema=schema, spec=bundle.spec)
    editor, info = train_mend(bundle, data, config, callback=_progress(name))
    save_gradient_editor(editor, out, info)
    out.with_suffix(".md").write_text(mend_card(out))
    return {"file": out.name, "seconds": round(info["seconds"], 1), "validation": info["validation"]}


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def mend_card(path: Path, benchmark: Path = BENCHMARK) -> str:
    """The card of a MEND editor file: what it edits, how it was trained (from the file's metadata), its
    validation figures, and the `mend` rows of benchmarks/results/fix_mistakes.json when that run covers it."""
    from auditor.editors.mend.net import read_editor_info

    info = read_editor_info(path)
    name, model = path.stem, info["model_name"]
    layers = ", ".join(f"{n} ({i}->{o})" for n, i, o in info["layers"])
    lines = [f"# {name}", "",
             f"MEND gradient editor for the sample model `{model}` (`sample_models/{model}.safetensors`, data "
             f"`{info['data']}`), used by the `mend` editor to fix given mistakes (`--fix ROW=LABEL`) in one step. "
             "A small MLP, the identity at initialisation, maps each edited Linear layer's input u and "
             "back-propagated delta to a better pair (u is PCA-whitened, with a learned gain per principal direction); "
             "the edit is their outer product times a learned step per layer.", "",
             f"- For: `{model}`, weights sha256 `{info['model_sha256']}` (an edited copy of the same name and "
             f"architecture also matches); architecture `{json.dumps(info['arch'])}`",
             f"- Edits: {layers}; rank {info['rank']}, {info['n_blocks']} blocks, ridge {info['ridge']}",
             f"- Learned step per layer: `{json.dumps({k: round(v, 4) for k, v in info['learned_lr'].items()})}`",
             f"- Training: `{json.dumps(info['training'])}`, {info['seconds']:.1f} s on CPU, by "
             "`sample_models/build_mend.py` (`train_mend`): edits sampled from the training split (random wrong "
             "labels, and real mistakes for a share `misclassified_share`; one row for a share `single_share` of the "
             "steps, else `max_batch` rows at once) with an "
             "edit loss on the example and its noised (images: also shifted) copies plus a KL locality loss on "
             "unrelated rows",
             "", f"## Validation ({info['training'].get('n_val', '?')} sampled edits on the validation split, at "
             "the best step)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in info["validation"].items()]
    bench = json.loads(benchmark.read_text()) if benchmark.exists() else {}
    run = bench.get("models", {}).get(model)
    if run:
        env = bench.get("environment", {})
        keys = ["edits", "edit_success", "generality", "drawdown_pt", "changed_pct", "cpu_ms_median"]
        lines += ["", f"## Benchmark (`{bench.get('command', '').strip()}`, {env.get('device', '?')}, torch "
                  f"{env.get('torch', '?')}; {benchmark.with_suffix('.md').relative_to(ROOT)})", "",
                  "| requests | editor | mode | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
        for label, rows in run["sets"].items():
            for method, row in rows.items():
                if method.startswith("mend |") or method.startswith("mend, untrained"):
                    who, mode = (part.strip() for part in method.split("|", 1))
                    lines.append(f"| {label} | {who} | {mode} | " + " | ".join(_fmt(row.get(k, "–")) for k in keys)
                                 + " |")
        lines += ["", f"Targets: `{json.dumps(bench.get('targets', {}))}`. Test accuracy of the base model "
                  f"{run['accuracy']['base']:.4f}."]
    lines += ["", f"Rebuild: `python sample_models/build_mend.py {name}` (card only: "
              "`python sample_models/build_mend.py --cards`)", ""]
    return "\n".join(lines)


def build_editable(name: str, model_path: Path, data_name: str, config: EditableConfig, out: Path) -> dict:
    bundle = load_model(model_path)
    data = load_data(data_name, spec=bundle.spec)
    edited, info = editable_training(bundle, data, config, callback=_progress(name))
    edited.source = str(out)
    save_model(edited, out)
    before, after = evaluate(bundle, data), evaluate(edited, data)
    card = [f"# {name}", "", f"`{model_path.stem}` fine-tuned with editable training (Sinitsin et al. 2020) for the "
            "`enn` editor: task loss + c_stab * cross-entropy between the predictions before and after an edit "
            "(on the batch) + c_edit * the edit's contrastive loss when the editor stops; the edit (a random "
            "training image with a random wrong label) runs in the graph: up to "
            f"{info['record']['max_steps']} {info['record']['optimiser']} steps on layers "
            f"{', '.join(info['record']['layers'])} (step {info['record']['lr']:.4g}), stopping once the label "
            f"wins by {info['record']['margin']}.", "",
            f"- Base model: `{model_path.name}` (sha256 `{bundle.sha256}`)",
            f"- Training: `{json.dumps(info['record']['config'])}`, {info['seconds']:.1f} s on CPU",
            f"- Weights sha256: `{edited.sha256}`", "", "## Test metrics", "",
            "| metric | base model | editable |", "|---|---|---|"]
    card += [f"| {k} | {before.metrics[k]:.4f} | {v:.4f} |" for k, v in after.metrics.items() if k in before.metrics]
    layers = info["record"]["layers"]
    overlap = {k: feature_overlap(b.model, layers, data.test.X) for k, b in (("base", bundle), ("editable", edited))}
    card += ["", "Feature overlap (`feature_overlap`: mean cosine between the inputs of each edited layer for two "
             "different test rows; a gradient step that fixes one row moves the others in proportion): "
             + "; ".join(f"{n}: base {overlap['base'][n]:.3f}, editable {overlap['editable'][n]:.3f}" for n in layers)
             + ". Editable training makes the features less alike, which is what makes its edits more local."]
    card += ["", f"Rebuild: `python sample_models/build_mend.py {name}`", ""]
    out.with_suffix(".md").write_text("\n".join(card))
    return {"file": out.name, "seconds": round(info["seconds"], 1), "accuracy_before": before.metrics["accuracy"],
            "accuracy_after": after.metrics["accuracy"], "edit_lr": info["record"]["lr"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *MEND, *EDITABLE], default=[])
    parser.add_argument("--model", help="train a MEND editor for this model file instead")
    parser.add_argument("--data", help="its data (with --model): a built-in name, an .npz case or a CSV (then "
                                       "--target, and --positive/--protected/--categorical as for auditor edit)")
    parser.add_argument("--target", help="a CSV's target column (with --data FILE.csv)")
    parser.add_argument("--positive", help="a CSV's positive label (leave out for a multi-class target)")
    parser.add_argument("--protected", default="", help="a CSV's protected columns, comma-separated")
    parser.add_argument("--categorical", default="", help="a CSV's categorical columns, comma-separated")
    parser.add_argument("--spec", help="the model's spec JSON (with --model, when the file carries none)")
    parser.add_argument("--arch-file", help="your own nn.Module class's Python file (with --model; runs its code: "
                                            "needs --trust-code)")
    parser.add_argument("--arch-class", help="the nn.Module class in --arch-file")
    parser.add_argument("--trust-code", action="store_true", help="allow running the code in --arch-file")
    parser.add_argument("--out", help="editor file to write (with --model)")
    parser.add_argument("--steps", type=int, help="training steps (with --model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for these small models)")
    parser.add_argument("--cards", action="store_true", help="only rewrite the shipped MEND editors' cards")
    parser.add_argument("--benchmark", help="with --cards: the fix_mistakes JSON whose mend rows the cards quote")
    args = parser.parse_args(argv)
    if args.cards:
        for name in MEND:
            bench = Path(args.benchmark).resolve() if args.benchmark else BENCHMARK
            (WEIGHTS / f"{name}.md").write_text(mend_card(WEIGHTS / f"{name}.safetensors", bench))
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.model:
        if not args.data:
            parser.error("--model needs --data")
        model = Path(args.model)
        out = Path(args.out) if args.out else model.with_name(f"mend_{model.stem}.safetensors")
        config = MendConfig(**({"steps": args.steps} if args.steps else {}))
        spec = ModelSpec.from_json(Path(args.spec).read_text()) if args.spec else None
        code = {"arch_file": args.arch_file, "arch_class": args.arch_class, "trust_code": args.trust_code}
        schema = None
        if args.target:
            from auditor import TabularSchema

            split = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
            schema = TabularSchema(target=args.target, positive=args.positive, protected=split(args.protected),
                                   categorical=split(args.categorical))
        print(json.dumps(build_mend(out.stem, model, args.data, config, out, spec, schema, **code), indent=1))
        return 0
    for name in args.names or [*EDITABLE, *MEND]:
        if name in MEND:
            model, data, config = MEND[name]
            summary = build_mend(name, HERE / f"{model}.safetensors", data, config, WEIGHTS / f"{name}.safetensors")
        else:
            model, data, config = EDITABLE[name]
            summary = build_editable(name, HERE / f"{model}.safetensors", data, config, HERE / f"{name}.safetensors")
        print(f"{name}: {json.dumps(summary)}", file=sys.stderr, flush=True)
    print(f"total {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
