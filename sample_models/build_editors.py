"""Rebuild the shipped learned editors for UCI Adult or COMPAS (about 10-15 minutes on 2 CPU cores).

    python sample_models/build_editors.py                 # population + all four editors
    python sample_models/build_editors.py --task compas   # the same for COMPAS
    python sample_models/build_editors.py pruning dp      # some editors
    python sample_models/build_editors.py --nproc 1       # without torchrun

Steps: build (or reuse) the Adult population (`auditor zoo build`, 320 MLPs, cached under
$AUDITOR_ZOO_DIR), then train each editor with `torchrun --nproc_per_node NPROC -m auditor.cli
editor train` (DistributedDataParallel, gloo on CPU) into
`auditor/editors/weights/metanet_adult_<kind>.safetensors` (shipped as package data), with a card
`metanet_adult_<kind>.md` beside it holding its training settings and validation figures.
The population's test members are never read here.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WEIGHTS = ROOT / "auditor" / "editors" / "weights"  # shipped learned editors (package data)
TASK = "adult"
# per editor: requirement and the settings that differ from TrainSettings' defaults
# (models_per_step is per process: with 2 processes every step sees twice as many models)
EDITORS: dict[str, tuple[str, dict]] = {
    "dp": ("demographic_parity", {"steps": 240, "models_per_step": 4, "label_weight": 1.0, "fairness_weight": 6.0}),
    "eo": ("equalized_odds", {"steps": 240, "models_per_step": 4, "label_weight": 1.0, "fairness_weight": 6.0}),
    "minimisation": ("features_used", {"steps": 120, "models_per_step": 4, "lr": 1e-3, "mask_weight": 0.01,
                                       "eval_every": 20}),
    "pruning": ("sparsity", {"steps": 120, "models_per_step": 4, "lr": 1e-3, "mask_weight": 0.01, "eval_every": 20}),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(kind: str, nproc: int) -> dict:
    requirement, settings = EDITORS[kind]
    out = WEIGHTS / f"metanet_{TASK}_{kind}.safetensors"
    summary = WEIGHTS / f".metanet_{TASK}_{kind}.json"
    args = ["-m", "auditor.cli", "editor", "train", "--task", TASK, "--requirement", requirement,
            "--out", str(out), "--json", str(summary)]
    for k, v in settings.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_port()), *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    info = json.loads(summary.read_text())
    summary.unlink()
    return info


def card(kind: str, info: dict) -> str:
    tr = info["training"]
    settings = {k: v for k, v in tr.items() if k not in ("seconds", "device", "world_size")}
    fam = info["family"]
    lines = [f"# metanet_{TASK}_{kind}", "",
             f"Graph metanetwork editor for `{info['requirement']}` on {TASK} MLPs "
             f"({fam['n_inputs']} inputs, {fam['depths']} Linear layers, hidden widths up to {fam['max_width']}).",
             f"Strength: {info['condition']}.", "",
             f"- Trained on {fam['n_members']} population members (`auditor zoo build --task {TASK}`), "
             f"{tr['steps']} steps, {tr['world_size']} process(es) on {tr['device']}, {tr['seconds']} s",
             f"- Settings: `{json.dumps(settings)}`",
             f"- Network: `{json.dumps(info['net'])}`", "",
             "## Validation (held-out validation members, validation rows)", ""]
    rows = info.get("validation") or []
    if rows:
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
        lines += ["| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
                  for r in rows]
    task = "" if TASK == "adult" else f" --task {TASK}"
    lines += ["", f"Rebuild: `python sample_models/build_editors.py {kind}{task}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", choices=[[], *EDITORS], default=[])
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes per editor (1: no torchrun)")
    parser.add_argument("--task", default="adult", choices=["adult", "compas"],
                        help="population the editors learn from")
    args = parser.parse_args(argv)
    global TASK
    TASK = args.task
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "auditor.cli", "zoo", "build", "--task", TASK, "--workers",
                    str(max(1, args.nproc))], cwd=ROOT, env=env, check=True)
    print(f"population ready after {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for kind in args.kinds or list(EDITORS):
        t0 = time.perf_counter()
        info = _train(kind, args.nproc)
        (WEIGHTS / f"metanet_{TASK}_{kind}.md").write_text(card(kind, info))
        print(f"metanet_{TASK}_{kind}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"all done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
