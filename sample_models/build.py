"""Rebuild the shipped sample models deterministically (about a minute on 2 CPU cores).

    python sample_models/build.py            # all models
    python sample_models/build.py adult_mlp  # one model

Each model is one `.safetensors` file (spec and provenance in its metadata) with a model card
(`NAME.md`) holding its data, training and metrics. The provenance records what the file was built
with (`built_with`: torch version, CPU, threads): the rebuild is bit-exact on one machine, but
floating-point results differ across CPUs and torch builds, so another machine may get slightly
different weights (tests/test_sample_models.py compares those by their metrics).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from auditor.data import (
    AuditData,
    Split,
    add_cue,
    load_adult,
    load_compas,
    load_digits_data,
    load_digits_spurious,
    load_digits_trojan,
    poison,
)
from auditor.evaluate import evaluate
from auditor.models import ModelBundle, ModelSpec, build_architecture, save_model
from auditor.training import TrainConfig, train_classifier

HERE = Path(__file__).parent
SEED = 0
THREADS = 2


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def built_with() -> dict:
    """What the weights depend on beyond the seed: torch version, CPU, threads."""
    return {"torch": torch.__version__, "cpu": cpu_name(), "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def tabular_spec(data: AuditData, hidden: list[int], name: str, config: TrainConfig) -> ModelSpec:
    return ModelSpec(
        arch={"name": "mlp", "in_features": data.n_inputs, "hidden": hidden, "num_classes": 2},
        input={"kind": "tabular", "features": data.feature_names, "feature_groups": data.feature_groups,
               "shape": [data.n_inputs], "raw_features": list(data.feature_groups)},
        class_names=data.class_names, preprocessing=data.preprocessing, data=data.name,
        provenance={"name": name, "trained_by": "sample_models/build.py", "data": data.name,
                    "training": vars(config), "protected_attributes_seen": False})


def image_spec(data: AuditData, name: str, config: TrainConfig, note: str) -> ModelSpec:
    return ModelSpec(
        arch={"name": "cnn", "in_channels": 1, "image_size": 8, "channels": [8, 16], "hidden": 32,
              "num_classes": 10},
        input={"kind": "image", "shape": data.input_shape, "features": data.feature_names,
               "value_range": [0.0, 1.0]},
        class_names=data.class_names, data=data.name,
        provenance={"name": name, "trained_by": "sample_models/build.py", "data": data.name,
                    "training": vars(config), "note": note})


def _fit(spec: ModelSpec, train: Split, config: TrainConfig) -> ModelBundle:
    torch.manual_seed(config.seed)
    model = build_architecture(spec.arch)
    train_classifier(model, train.X, train.y, config)
    return ModelBundle(model, spec)


def build_adult():
    data = load_adult()
    cfg = TrainConfig(epochs=10, batch_size=256, lr=1e-3, weight_decay=1e-4, seed=SEED)
    return _fit(tabular_spec(data, [64, 32], "adult_mlp", cfg), data.train, cfg), data, \
        "MLP 100-64-32-2 on UCI Adult (sex and race are not inputs)."


def build_compas():
    data = load_compas()
    cfg = TrainConfig(epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-4, seed=SEED)
    return _fit(tabular_spec(data, [32, 16], "compas_mlp", cfg), data.train, cfg), data, \
        "MLP 7-32-16-2 on ProPublica COMPAS (race and sex are not inputs)."


def build_digits():
    data = load_digits_data()
    cfg = TrainConfig(epochs=40, batch_size=64, lr=3e-3, seed=SEED)
    return _fit(image_spec(data, "digits_cnn", cfg, "clean training data"), data.train, cfg), data, \
        "Small CNN on scikit-learn digits, clean training data."


def build_trojan():
    data = load_digits_trojan()
    cfg = TrainConfig(epochs=40, batch_size=64, lr=3e-3, seed=SEED)
    fraction = 0.1
    train = poison(data.train, data.trigger, fraction, seed=SEED)
    note = (f"Trojan: {fraction:.0%} of training images stamped with a 3x3 checkerboard in the bottom-right "
            f"corner and relabelled {data.trigger.target}")
    return _fit(image_spec(data, "digits_cnn_trojan", cfg, note), train, cfg), data, note


def build_spurious():
    data = load_digits_spurious()
    cfg = TrainConfig(epochs=40, batch_size=64, lr=3e-3, seed=SEED)
    train = add_cue(data.train, data.cue, 1.0, seed=SEED)
    note = (f"Spurious cue: every training image of class {data.cue.target} carries a bright mark in the "
            "top-left corner; no other image does. Labels are correct.")
    return _fit(image_spec(data, "digits_cnn_spurious", cfg, note), train, cfg), data, note


BUILDERS = {"adult_mlp": build_adult, "compas_mlp": build_compas, "digits_cnn": build_digits,
            "digits_cnn_trojan": build_trojan, "digits_cnn_spurious": build_spurious}


def model_card(name: str, bundle: ModelBundle, data: AuditData, summary: str, seconds: float) -> str:
    ev = evaluate(bundle, data)
    lines = [f"# {name}", "", summary, "",
             f"- Data: `{data.name}` ({data.description or data.source}); rows train/val/test "
             f"{len(data.train)}/{len(data.val)}/{len(data.test)}",
             f"- Architecture: `{json.dumps(bundle.spec.arch)}`, {bundle.n_parameters:,} parameters",
             f"- Training: `{json.dumps(bundle.spec.provenance['training'])}`, {seconds:.1f} s on CPU",
             f"- Weights sha256: `{bundle.sha256}`", "", "## Test metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ev.metrics.items()]
    for attr, groups in ev.groups.items():
        cols = list(next(iter(groups.values())))
        lines += ["", f"## By {attr}", "", "| group | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for g, vals in groups.items():
            lines.append(f"| {g} | " + " | ".join(f"{vals[c]:.4g}" for c in cols) + " |")
    bw = bundle.spec.provenance.get("built_with")
    if bw:
        lines += ["", f"Built with torch {bw['torch']} on {bw['cpu']} ({bw['machine']}, {bw['threads']} threads); "
                  "another CPU or torch build may give slightly different weights and metrics."]
    lines += ["", "Rebuild: `python sample_models/build.py " + name + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *BUILDERS], default=[])
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    for name in args.names or list(BUILDERS):
        start = time.perf_counter()
        bundle, data, summary = BUILDERS[name]()
        seconds = time.perf_counter() - start
        bundle.spec.provenance["built_with"] = built_with()
        bundle.source = str(HERE / f"{name}.safetensors")
        save_model(bundle, HERE / f"{name}.safetensors")
        (HERE / f"{name}.md").write_text(model_card(name, bundle, data, summary, seconds))
        print(f"{name}: {seconds:.1f} s, sha256 {bundle.sha256[:12]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
