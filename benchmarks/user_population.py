"""Bring your own model and CSV: build a population like the user's MLP from the user's rows, train a
fairness editor on it with the default budget, and edit the held-out members to
`demographic_parity <= 0.05`, against the attribute-blind fairness fine-tuning on the same members.

    python benchmarks/user_population.py [--work DIR] [--workers 2]

The case is the one the tests use (`tests/test_user_population.py`): 6000 real Adult rows renamed as a
credit CSV (target `approved`, `sex` protected and not a model input) and the user's [32, 16] MLP.
Writes `benchmarks/results/user_population.{json,md}`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from auditor import evaluate, zoo  # noqa: E402
from auditor.backend import describe_device  # noqa: E402
from auditor.editors import get_editor  # noqa: E402
from tests.test_user_population import BUILD, load_case, write_credit_case  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.05


def _cli(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "auditor.cli", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return time.perf_counter() - start, out.stdout


def _edit(editor: str, bundle, data, **settings) -> dict:
    before = evaluate(bundle, data, split="test").metrics
    start = time.perf_counter()
    result = get_editor(editor, **settings).edit(bundle, data, [f"demographic_parity <= {TARGET}"])
    seconds = time.perf_counter() - start
    after = evaluate(result.bundle, data, split="test").metrics
    return {"dp_before": before["demographic_parity"], "dp_after": after["demographic_parity"],
            "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "drop_pts": 100 * (before["accuracy"] - after["accuracy"]), "seconds": seconds}


def _summary(rows: list[dict]) -> dict:
    dp = np.array([r["dp_after"] for r in rows])
    drop = np.array([r["drop_pts"] for r in rows])
    return {"n": len(rows), "meets_dp": int((dp <= TARGET).sum()), "dp_mean": float(dp.mean()),
            "dp_max": float(dp.max()), "drop_mean_pts": float(drop.mean()), "drop_max_pts": float(drop.max()),
            "meets_both": int(((dp <= TARGET) & (drop <= 2.0)).sum()),
            "seconds_median": float(np.median([r["seconds"] for r in rows]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/auditor-user-population", help="folder for the case, zoo and editor")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    env = {**os.environ, "AUDITOR_ZOO_DIR": str(work / "zoo"), "AUDITOR_EDITOR_DIR": str(work / "editors"),
           "PYTHONPATH": str(ROOT)}
    os.environ.update({k: env[k] for k in ("AUDITOR_ZOO_DIR", "AUDITOR_EDITOR_DIR")})
    case = write_credit_case(work / "case")
    build_s, out = _cli(["zoo", "build", "--data", str(case.csv), *BUILD, "--like", str(case.model),
                         "--workers", str(args.workers)], env)
    task = next(w for w in out.split() if w.startswith("user-"))
    train_s, _ = _cli(["editor", "train", "--zoo", task, "--requirement", "demographic_parity"], env)
    bundle, data = load_case(case)
    members = zoo.load_population(task, "test")
    learned = [{"model": m.spec.provenance.get("name"), **_edit("metanet-fairness", m, data)} for m in members]
    finetune = [{"model": m.spec.provenance.get("name"), **_edit("finetune-fairness", m, data)} for m in members]
    own = {"learned": _edit("metanet-fairness", bundle, data), "finetune": _edit("finetune-fairness", bundle, data)}
    payload = {"device": describe_device(torch.device("cpu")), "torch": torch.__version__, "task": task,
               "build_seconds": build_s, "train_seconds": train_s, "target": TARGET,
               "learned": _summary(learned), "finetune": _summary(finetune), "users_model": own,
               "rows": {"learned": learned, "finetune": finetune}}
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "user_population.json").write_text(json.dumps(payload, indent=1))
    lines = ["# A learned fairness editor for the user's own model and CSV", "",
             f"Run: `python benchmarks/user_population.py --workers {args.workers}` on {payload['device']}, torch "
             f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Population `{task}` built "
             f"in {build_s / 60:.1f} min, editor trained (default budget) in {train_s / 60:.1f} min: "
             f"{(build_s + train_s) / 60:.1f} min in all (target <= 15).", "",
             f"Held-out population members edited to `demographic_parity <= {TARGET}` (test split):", "",
             "| method | members | meet DP | DP after (mean / max) | accuracy drop pt (mean / max) | "
             "meet DP and drop <= 2 pt | edit s (median) |", "|---|---|---|---|---|---|---|"]
    for name, key in (("metanet-fairness (learned, attribute-blind)", "learned"),
                      ("finetune-fairness (attribute-blind)", "finetune")):
        s = payload[key]
        lines.append(f"| {name} | {s['n']} | {s['meets_dp']} | {s['dp_mean']:.4f} / {s['dp_max']:.4f} | "
                     f"{s['drop_mean_pts']:.2f} / {s['drop_max_pts']:.2f} | {s['meets_both']} | "
                     f"{s['seconds_median']:.3f} |")
    lines += ["", "The user's own model: " + "; ".join(
        f"{k}: DP {v['dp_before']:.4f} -> {v['dp_after']:.4f}, accuracy {v['accuracy_before']:.4f} -> "
        f"{v['accuracy_after']:.4f}" for k, v in own.items()), ""]
    (outdir / "user_population.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
