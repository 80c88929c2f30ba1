"""How long a rank-one repair takes, beside fine-tuning, and how long until a repair meets both requirements.

    python benchmarks/rank_one_speed.py --label before     # run on the code before a change
    python benchmarks/rank_one_speed.py --label after      # ... and after: the table shows both

One torch thread, n = 1 clean sample (seed 0), median of `--repeats` (21) edits (`--big-repeats`, 11,
on the 4.9 M model) of the editor's own time (`EditResult.seconds`, without copying the model). Two models:
`digits_cnn_trojan` (the shipped 9.8 k-parameter CNN) and a 4.9 M-parameter MLP Trojan-trained
here on the same digits data (a few seconds). Per model: the dynamic rank-one edit (cold: the
keys' second moments, the layer rankings and the loop's kept checks forgotten before every edit;
warm: after Localize, which the dashboard runs first: rankings and checks forgotten, then Localize
(untimed) ranks the layers and prepares the dynamic edit, `DynamicRankOneEditor.prepare`; repeat:
the same model edited again, as with another setting in a demo, nothing forgotten), the
plain rank-one edit (cold and warm), a 100-step whole-model fine-tune on 20 samples, and the
"time to a repair that meets both requirements" (attack success <= 2 % and clean accuracy drop
<= 1 pt on the test split): the edit time of the fastest setting that meets both, or "never"
(fine-tuning is swept over steps {10, 30, 100} x lr {1e-4, 1e-3} x n {1, 20}).
Writes `benchmarks/results/rank_one_speed.json` and `.md` (runs under other labels are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor import load_data, load_model  # noqa: E402
from auditor.data import poison  # noqa: E402
from auditor.editors import get_editor  # noqa: E402
from auditor.editors.rank_one import clear_check_cache  # noqa: E402
from auditor.evaluate import evaluate  # noqa: E402
from auditor.layers import clear_moment_cache  # noqa: E402
from auditor.localize import clear_ranking_cache, rank_layers_for  # noqa: E402
from auditor.models import ModelBundle, ModelSpec, build_architecture  # noqa: E402
from auditor.training import TrainConfig, train_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REQUIRE = "attack_success_rate <= 0.02"
MAX_DROP = 0.01
FT_SWEEP = [(n, steps, lr) for n in (1, 20) for steps in (10, 30, 100) for lr in (1e-4, 1e-3)]


def big_mlp(data) -> ModelBundle:
    """A 4.9 M-parameter MLP (64 -> 2048 -> 2304 -> 10) Trojan-trained on the digits (10 % poisoned);
    the trained weights are kept in the system's temp folder, so a second run (before/after) reuses them."""
    from safetensors.torch import load_file, save_file

    arch = {"name": "mlp", "in_features": 64, "hidden": [2048, 2304], "num_classes": 10, "flatten": True}
    torch.manual_seed(0)
    model = build_architecture(arch)
    cache = Path(tempfile.gettempdir()) / "auditor_rank_one_speed_mlp_4.9M_e12_s0.safetensors"
    if cache.exists():
        model.load_state_dict(load_file(str(cache)))
    else:
        train = poison(data.train, data.stamp, 0.1, seed=0)
        train_classifier(model, train.X, train.y, TrainConfig(epochs=12, batch_size=64, lr=3e-4, seed=0))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache))
    spec = ModelSpec(arch=arch, input={"kind": "image", "shape": [1, 8, 8]}, class_names=[str(i) for i in range(10)])
    return ModelBundle(model.eval(), spec)


COLD = (clear_moment_cache, clear_ranking_cache, clear_check_cache)  # a model never seen
CPU = {}  # label -> median CPU seconds of the same edits (one thread: the work, whatever else runs on the machine)


def timed(fn, repeats: int, before: tuple = (), label: str = "") -> tuple[float, object]:
    """Median of the editor's own wall time (`EditResult.seconds`: the edit, without copying the model),
    each of `before` called (untimed) before every edit; the median process CPU time of the whole call
    goes to CPU[label]."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        for step in before:
            step()
        c = time.process_time()
        out = fn()
        cpu.append(time.process_time() - c)
        times.append(out.seconds)
    if label:
        CPU[label] = statistics.median(cpu)
    return statistics.median(times), out


def meets(bundle, data, result, base) -> tuple[bool, dict]:
    m = evaluate(result.bundle, data).metrics
    ok = m["attack_success_rate"] <= 0.02 and base["accuracy"] - m["accuracy"] <= MAX_DROP
    return ok, {"attack_success_rate": m["attack_success_rate"], "accuracy_drop": base["accuracy"] - m["accuracy"]}


def run_model(label: str, bundle, data, repeats: int) -> dict:
    """Timings and quality of one model; `repeats` edits per median."""
    base = evaluate(bundle, data).metrics
    params = sum(p.numel() for p in bundle.model.parameters())
    row: dict = {"model": label, "parameters": params, "accuracy": base["accuracy"],
                 "attack_success_rate": base["attack_success_rate"]}
    dyn = lambda: get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, data, [REQUIRE])  # noqa: E731
    plain = lambda: get_editor("rank-one", samples=1, seed=0).edit(bundle, data)  # noqa: E731

    def localize():  # what the dashboard's Localize does (`AuditSession.localize`): rank, and prepare the edit
        rank_layers_for(bundle.model, data, 1, 0)
        get_editor("dynamic-rank-one", samples=1, seed=0).prepare(bundle, data, [REQUIRE])

    WARM = (clear_ranking_cache, clear_check_cache, localize)  # moments kept: edit after Localize
    CPU.clear()
    row["dynamic_cold_s"], res = timed(dyn, repeats, COLD, label="dynamic_cold_s")
    ok, q = meets(bundle, data, res, base)
    row["dynamic_meets"], row["dynamic_quality"] = ok, q
    row["dynamic_log"] = [{k: e.get(k) for k in ("step", "action", "layer", "accepted", "rank", "relative_norm")}
                          for e in res.log]
    row["dynamic_warm_s"], _ = timed(dyn, repeats, WARM, label="dynamic_warm_s")
    row["dynamic_repeat_s"], _ = timed(dyn, repeats, label="dynamic_repeat_s")
    row["plain_cold_s"], res = timed(plain, repeats, COLD, label="plain_cold_s")
    row["plain_meets"], row["plain_quality"] = meets(bundle, data, res, base)
    row["plain_warm_s"], _ = timed(plain, repeats, WARM, label="plain_warm_s")
    ft = lambda: get_editor("finetune", samples=20, steps=100, lr=1e-3, seed=0).edit(bundle, data)  # noqa: E731
    row["finetune_100_s"], _ = timed(ft, max(3, repeats // 4), label="finetune_100_s")
    row["cpu_s"] = dict(CPU)
    sweep = []
    for n, steps, lr in FT_SWEEP:
        res = get_editor("finetune", samples=n, steps=steps, lr=lr, seed=0).edit(bundle, data)
        ok, q = meets(bundle, data, res, base)
        sweep.append({"n": n, "steps": steps, "lr": lr, "seconds": res.seconds, "meets": ok, **q})
    row["finetune_sweep"] = sweep
    hits = [s["seconds"] for s in sweep if s["meets"]]
    row["finetune_time_to_repair_s"] = min(hits) if hits else None
    row["dynamic_time_to_repair_s"] = row["dynamic_cold_s"] if row["dynamic_meets"] else None
    row["ratio_finetune_over_dynamic_cold"] = row["finetune_100_s"] / row["dynamic_cold_s"]
    return row


def _s(v) -> str:
    return "never" if v is None else f"{1000 * v:.1f} ms"


def markdown(doc: dict) -> str:
    out = ["# Rank-one repair speed (one thread, n = 1, median)", "",
           "Cold: nothing cached (a model never seen). Warm: the edit after Localize, which the dashboard runs "
           "first (it ranks the layers and, since this version, prepares the dynamic edit: the loop's checks on "
           "the unedited model, its pick of samples and their ranking, `DynamicRankOneEditor.prepare`); earlier "
           "runs' warm kept only the keys' second moments. Repeat: the same model edited again (another setting "
           "in a demo).", ""]
    for label, run in doc["runs"].items():
        meta = run["meta"]
        out += [f"## {label}", "", f"Run: `{meta['command']}` on {meta['device']}, torch {meta['torch']}, "
                f"{meta['date']}, {meta['repeats']} repeats ({meta.get('big_repeats')} on the 4.9 M model), "
                f"{meta['seconds']:.0f} s in all, load average {meta.get('load_average')}.", "",
                "| model | parameters | dynamic cold | dynamic warm | dynamic repeat | rank-one cold | rank-one warm "
                "| fine-tune 100 steps | fine-tune / dynamic cold "
                "| time to a repair meeting both: dynamic | fine-tune (best of sweep) |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["models"]:
            out.append(f"| {r['model']} | {r['parameters']:,} | {_s(r['dynamic_cold_s'])} | "
                       f"{_s(r['dynamic_warm_s'])} | {_s(r['dynamic_repeat_s']) if 'dynamic_repeat_s' in r else '-'} | "
                       f"{_s(r['plain_cold_s'])} | {_s(r['plain_warm_s'])} | {_s(r['finetune_100_s'])} | "
                       f"{r['ratio_finetune_over_dynamic_cold']:.1f}x | {_s(r['dynamic_time_to_repair_s'])} | "
                       f"{_s(r['finetune_time_to_repair_s'])} |")
        out += ["", "CPU time of the same calls (process CPU seconds of the whole `edit` call, model copy included; "
                "one thread, so it counts the work whatever else the machine runs):", "",
                "| model | dynamic cold | dynamic warm | dynamic repeat | rank-one cold | rank-one warm "
                "| fine-tune 100 steps |",
                "|---|---|---|---|---|---|---|"]
        for r in run["models"]:
            c = r.get("cpu_s", {})
            out.append(f"| {r['model']} | " + " | ".join(_s(c.get(k)) if k in c else "-" for k in (
                "dynamic_cold_s", "dynamic_warm_s", "dynamic_repeat_s", "plain_cold_s", "plain_warm_s",
                "finetune_100_s")) + " |")
        out += ["", "Quality of the timed edits (test split): "
                + "; ".join(f"{r['model']}: dynamic ASR {r['dynamic_quality']['attack_success_rate']:.4f}, drop "
                            f"{100 * r['dynamic_quality']['accuracy_drop']:+.2f} pt; rank-one ASR "
                            f"{r['plain_quality']['attack_success_rate']:.4f}, drop "
                            f"{100 * r['plain_quality']['accuracy_drop']:+.2f} pt" for r in run["models"]), ""]
        for r in run["models"]:
            best = sorted(r["finetune_sweep"], key=lambda s: (s["attack_success_rate"] > 0.02, s["accuracy_drop"]))[:3]
            out.append(f"Fine-tune sweep on {r['model']} (closest to both requirements): "
                       + "; ".join(f"n {s['n']}, {s['steps']} steps, lr {s['lr']:g}: "
                                   f"ASR {s['attack_success_rate']:.3f}, drop {100 * s['accuracy_drop']:+.1f} pt"
                                   for s in best))
        out.append("")
    labels = list(doc["runs"])
    if "before" in labels and "after" in labels:
        out += ["## after vs before (speed-up)", "",
                "| model | dynamic cold | dynamic warm | rank-one cold | rank-one warm |", "|---|---|---|---|---|"]
        keys = ("dynamic_cold_s", "dynamic_warm_s", "plain_cold_s", "plain_warm_s")
        for a, b in zip(doc["runs"]["after"]["models"], doc["runs"]["before"]["models"]):
            out.append(f"| {a['model']} (editor wall time) | " + " | ".join(f"{b[k] / a[k]:.1f}x" for k in keys) + " |")
            if a.get("cpu_s") and b.get("cpu_s"):
                out.append(f"| {a['model']} (CPU time) | "
                           + " | ".join(f"{b['cpu_s'][k] / a['cpu_s'][k]:.1f}x" for k in keys) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--big-repeats", type=int, default=11, help="repeats on the 4.9 M model (a cold edit there "
                    "takes seconds on a shared machine)")
    ap.add_argument("--skip-big", action="store_true", help="only digits_cnn_trojan")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_data("digits-trojan")
    models = [("digits_cnn_trojan", load_model(ROOT / "sample_models" / "digits_cnn_trojan.safetensors"))]
    if not args.skip_big:
        t = time.perf_counter()
        models.append(("mlp 4.9M (trained here)", big_mlp(data)))
        print(f"trained the 4.9 M MLP in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for label, bundle in models:
        rows.append(run_model(label, bundle, data, args.repeats if label == "digits_cnn_trojan" else args.big_repeats))
        print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, list)}, default=str), flush=True)
    meta = {"command": "python benchmarks/rank_one_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": args.repeats,
            "big_repeats": args.big_repeats, "load_average": list(os.getloadavg()),
            "seconds": time.perf_counter() - start}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "rank_one_speed.json"
    doc = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    doc["runs"][args.label] = {"meta": meta, "models": rows}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (RESULTS / "rank_one_speed.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
