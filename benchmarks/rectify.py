"""Rectifying Trojans and spurious cues from n clean samples: rank-one editors vs fine-tuning.

    python benchmarks/rectify.py                 # both cases, n in {1, 5, 20}, 5 sample choices
    python benchmarks/rectify.py --seeds 10      # more sample choices

On `digits_cnn_trojan` (attack success rate) and `digits_cnn_spurious` (cue gap), for every n and
every sample choice (seed), each method edits a copy of the model from the same n (clean,
corrupted) pairs of the training split; test-split metrics and edit wall time are recorded side
by side in one run. Rank-one times are cold (the keys' second moments are recomputed for every
edit) and warm (cached, as after the Localize step). Writes `benchmarks/results/rectify.json`
and `rectify.md` and prints the ratios the targets are stated in.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor import load_data, load_model  # noqa: E402
from auditor.backend import describe_device, pick_device  # noqa: E402
from auditor.editors import get_editor  # noqa: E402
from auditor.editors.rank_one import clear_check_cache  # noqa: E402
from auditor.evaluate import evaluate  # noqa: E402
from auditor.layers import clear_moment_cache  # noqa: E402
from auditor.localize import clear_ranking_cache, rank_layers_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CASES = {
    "trojan": {"model": "digits_cnn_trojan", "data": "digits-trojan", "metric": "attack_success_rate",
               "require": "attack_success_rate <= 0.02"},
    "spurious": {"model": "digits_cnn_spurious", "data": "digits-spurious", "metric": "cue_gap",
                 "require": "cue_gap <= 0.05"},
}
# (label, editor, settings); "top"/"lowest" pick the layer from the ranking of the same pairs
METHODS = [
    ("dynamic rank-one", "dynamic-rank-one", {}),
    ("rank-one, top-ranked layer", "rank-one", {}),
    ("rank-one, lowest-ranked layer", "rank-one", {"layer": "lowest"}),
    ("static rank-one, last layer", "static-rank-one-last", {}),
    ("fine-tune whole model (lr 1e-3)", "finetune", {}),
    ("fine-tune whole model (lr 1e-4)", "finetune", {"lr": 1e-4}),
    ("fine-tune last layer", "finetune-last-layer", {}),
]
RANK_ONE = {"dynamic-rank-one", "rank-one", "static-rank-one-last"}
# fine-tuning settings swept at n = 20, to compare at equal accuracy rather than at one setting
SWEEP = {"editor": ["finetune", "finetune-last-layer"], "lr": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], "steps": [10, 30, 100]}


def run_case(name: str, case: dict, ns: list[int], seeds: list[int], device) -> dict:
    bundle = load_model(ROOT / "sample_models" / f"{case['model']}.safetensors")
    data = load_data(case["data"])
    base = evaluate(bundle, data).metrics
    metric = case["metric"]
    runs = []
    for n in ns:
        for seed in seeds:
            ranking = rank_layers_for(bundle.model, data, n, seed)
            lowest = str(ranking["layer"].iloc[-1])
            for label, editor, settings in METHODS:
                settings = dict(settings, samples=n, seed=seed)
                if settings.get("layer") == "lowest":
                    settings["layer"] = lowest
                clear_moment_cache()
                clear_ranking_cache()
                clear_check_cache()
                result = get_editor(editor, **settings).edit(bundle, data, [case["require"]], device=device)
                warm = None
                if editor in RANK_ONE:  # again with the keys' second moments cached (as after Localize), but
                    clear_ranking_cache()  # not the rankings of the edit's own pairs nor the loop's checks
                    clear_check_cache()
                    warm = get_editor(editor, **settings).edit(bundle, data, [case["require"]], device=device).seconds
                m = evaluate(result.bundle, data).metrics
                runs.append({"case": name, "method": label, "editor": editor, "n": n, "seed": seed,
                             "layers": result.layers, "accuracy": m["accuracy"], metric: m[metric],
                             "accuracy_drop_points": 100 * (base["accuracy"] - m["accuracy"]),
                             "seconds": result.seconds, "seconds_warm": warm,
                             "hyperparameters": result.hyperparameters,
                             "steps": [{k: e.get(k) for k in ("step", "action", "layer", "accepted", "scale")}
                                       for e in result.log] if editor == "dynamic-rank-one" else None})
            print(f"  {name} n={n} seed={seed} done", file=sys.stderr)
    sweep = []
    if 20 in ns:
        for editor in SWEEP["editor"]:
            for lr in SWEEP["lr"]:
                for steps in SWEEP["steps"]:
                    accs, vals, secs = [], [], []
                    for seed in seeds:
                        result = get_editor(editor, samples=20, seed=seed, lr=lr, steps=steps).edit(
                            bundle, data, device=device)
                        m = evaluate(result.bundle, data).metrics
                        accs.append(m["accuracy"])
                        vals.append(m[metric])
                        secs.append(result.seconds)
                    sweep.append({"editor": editor, "lr": lr, "steps": steps, "n": 20,
                                  "accuracy": float(np.mean(accs)), metric: float(np.mean(vals)),
                                  f"abs_{metric}": float(np.mean(np.abs(vals))), "seconds": float(np.median(secs))})
        print(f"  {name} fine-tuning sweep done", file=sys.stderr)
    return {"sweep": sweep, "model": case["model"], "data": case["data"], "metric": metric,
            "requirement": case["require"],
            "before": {"accuracy": base["accuracy"], metric: base[metric]}, "runs": runs}


def summarise(result: dict) -> list[dict]:
    metric = result["metric"]
    rows = []
    for label, _, _ in METHODS:
        for n in sorted({r["n"] for r in result["runs"]}):
            rs = [r for r in result["runs"] if r["method"] == label and r["n"] == n]
            if not rs:
                continue
            vals = np.array([r[metric] for r in rs])
            warm = [r["seconds_warm"] for r in rs if r["seconds_warm"] is not None]
            rows.append({"method": label, "n": n, "seeds": len(rs),
                         "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                         "accuracy_drop_points": float(np.mean([r["accuracy_drop_points"] for r in rs])),
                         metric: float(vals.mean()), f"{metric}_min": float(vals.min()),
                         f"{metric}_max": float(vals.max()),
                         f"abs_{metric}": float(np.abs(vals).mean()),
                         "seconds": float(np.median([r["seconds"] for r in rs])),
                         "seconds_warm": float(np.median(warm)) if warm else None,
                         "layers": sorted({layer for r in rs for layer in r["layers"]})})
    return rows


def _get(rows, method, n):
    return next(r for r in rows if r["method"] == method and r["n"] == n)


def ratios(results: dict, ns: list[int]) -> dict:
    out = {}
    tro, spu = results["trojan"], results["spurious"]
    tr, sr = tro["summary"], spu["summary"]
    dyn1 = _get(tr, "dynamic rank-one", 1)
    out["trojan_dynamic_n1"] = {"attack_success_rate": dyn1["attack_success_rate"],
                                "accuracy_drop_points": dyn1["accuracy_drop_points"],
                                "target": "ASR <= 0.02 and drop <= 0.5 points",
                                "met": dyn1["attack_success_rate"] <= 0.02 and dyn1["accuracy_drop_points"] <= 0.5}
    if tro["sweep"]:
        # fine-tuning with 20 samples at equal or better accuracy (within 0.5 points of ours)
        close = [f for f in tro["sweep"] if f["accuracy"] >= dyn1["accuracy"] - 0.005]
        best = min(close, key=lambda f: f["attack_success_rate"]) if close else None
        lowest = min(tro["sweep"], key=lambda f: (f["attack_success_rate"], -f["accuracy"]))
        out["trojan_dynamic_n1_vs_finetune_n20"] = {
            "dynamic_n1": {"attack_success_rate": dyn1["attack_success_rate"], "accuracy": dyn1["accuracy"]},
            "finetune_n20_at_equal_accuracy": best, "finetune_n20_lowest_asr": lowest,
            "settings_swept": len(tro["sweep"]),
            "met": best is None or dyn1["attack_success_rate"] < best["attack_success_rate"]}
    sd1 = _get(sr, "dynamic rank-one", 1)
    before = spu["before"]["cue_gap"]
    shrink = 1 - sd1["abs_cue_gap"] / before
    out["spurious_dynamic_n1"] = {"cue_gap_before": before, "abs_cue_gap_after": sd1["abs_cue_gap"],
                                  "shrink": shrink, "accuracy_drop_points": sd1["accuracy_drop_points"],
                                  "target": "gap shrinks >= 80%, accuracy within 0.5 points",
                                  "met": shrink >= 0.8 and abs(sd1["accuracy_drop_points"]) <= 0.5}
    times = {}
    for case, rows in (("trojan", tr), ("spurious", sr)):
        for n in ns:
            ft = _get(rows, "fine-tune whole model (lr 1e-3)", n)["seconds"]
            for m in ("rank-one, top-ranked layer", "dynamic rank-one", "static rank-one, last layer"):
                r = _get(rows, m, n)
                times[f"{case} n={n} fine-tune / {m}"] = {"cold": ft / r["seconds"],
                                                          "warm": ft / r["seconds_warm"] if r["seconds_warm"] else None}
    out["time_ratio_finetune_over_rank_one"] = times
    out["time_target_met_rank_one_cold"] = all(v["cold"] >= 10 for k, v in times.items() if "top-ranked" in k)
    out["time_target_met_rank_one_warm"] = all(v["warm"] >= 10 for k, v in times.items() if "top-ranked" in k)
    top = _get(tr, "rank-one, top-ranked layer", 1)
    low = _get(tr, "rank-one, lowest-ranked layer", 1)
    out["trojan_top_vs_lowest_layer_n1"] = {
        "top": {"layers": top["layers"], "attack_success_rate": top["attack_success_rate"],
                "accuracy": top["accuracy"]},
        "lowest": {"layers": low["layers"], "attack_success_rate": low["attack_success_rate"],
                   "accuracy": low["accuracy"]},
        "error_top": top["attack_success_rate"] + max(0.0, top["accuracy_drop_points"] / 100),
        "error_lowest": low["attack_success_rate"] + max(0.0, low["accuracy_drop_points"] / 100)}
    out["trojan_top_vs_lowest_layer_n1"]["met"] = (out["trojan_top_vs_lowest_layer_n1"]["error_top"]
                                                   < out["trojan_top_vs_lowest_layer_n1"]["error_lowest"])
    return out


def markdown(results: dict, rat: dict, meta: dict) -> str:
    lines = ["# Rectifying Trojans and spurious cues from n clean samples", "",
             f"Run: `{meta['command']}` on {meta['device']} ({meta['cpu_threads']} torch thread(s)), "
             f"torch {meta['torch']}, {meta['date']}, {meta['wall_seconds']:.0f} s in all. "
             f"Means over {meta['seeds']} sample choices (seeds); test split. Edit time: median, cold "
             "(keys' second moments recomputed) and warm (cached, as after Localize).", ""]
    for name, res in results.items():
        metric = res["metric"]
        short = "ASR" if metric == "attack_success_rate" else "cue gap"
        b = res["before"]
        lines += [f"## {name}: `{res['model']}` on `{res['data']}`", "",
                  f"Before: accuracy {b['accuracy']:.4f}, {short} {b[metric]:.4f}. "
                  f"Requirement given to the dynamic editor: `{res['requirement']}` (checked on the val split).", "",
                  f"| method | n | accuracy | drop (pts) | {short} mean | {short} min-max | edit s (cold) | "
                  "edit s (warm) | layers |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["summary"]:
            warm = f"{r['seconds_warm']:.4f}" if r["seconds_warm"] is not None else "-"
            lines.append(f"| {r['method']} | {r['n']} | {r['accuracy']:.4f} | {r['accuracy_drop_points']:+.2f} | "
                         f"{r[metric]:.4f} | {r[metric + '_min']:.4f} - {r[metric + '_max']:.4f} | "
                         f"{r['seconds']:.4f} | {warm} | {', '.join(r['layers'])} |")
        lines.append("")
    for name, res in results.items():
        if not res["sweep"]:
            continue
        metric = res["metric"]
        short = "ASR" if metric == "attack_success_rate" else "cue gap"
        lines += [f"### {name}: fine-tuning settings swept with 20 samples (means over the same seeds)", "",
                  f"| editor | lr | steps | accuracy | {short} | edit s |", "|---|---|---|---|---|---|"]
        lines += [f"| {f['editor']} | {f['lr']:g} | {f['steps']} | {f['accuracy']:.4f} | {f[metric]:.4f} | "
                  f"{f['seconds']:.4f} |" for f in res["sweep"]]
        lines.append("")
    t = rat["trojan_dynamic_n1"]
    lines += ["## Targets", "",
              f"- Dynamic rank-one, one sample, Trojan: ASR {t['attack_success_rate']:.4f}, accuracy drop "
              f"{t['accuracy_drop_points']:+.2f} points: **{'met' if t['met'] else 'missed'}** "
              "(ASR <= 0.02, drop <= 0.5)."]
    if "trojan_dynamic_n1_vs_finetune_n20" in rat:
        v = rat["trojan_dynamic_n1_vs_finetune_n20"]
        d = v["dynamic_n1"]
        b, lo = v["finetune_n20_at_equal_accuracy"], v["finetune_n20_lowest_asr"]
        eq = (f"the best of {v['settings_swept']} fine-tuning settings with 20 samples that keeps accuracy within "
              f"0.5 points ({b['editor']}, lr {b['lr']:g}, {b['steps']} steps) leaves ASR "
              f"{b['attack_success_rate']:.4f} at accuracy {b['accuracy']:.4f}" if b else
              f"none of {v['settings_swept']} fine-tuning settings with 20 samples keeps accuracy within 0.5 points")
        lines.append(f"- Dynamic rank-one with 1 sample (ASR {d['attack_success_rate']:.4f}, accuracy "
                     f"{d['accuracy']:.4f}) against fine-tuning with 20: {eq}; the lowest fine-tuning ASR, "
                     f"{lo['attack_success_rate']:.4f}, costs accuracy {lo['accuracy']:.4f} ({lo['editor']}, lr "
                     f"{lo['lr']:g}, {lo['steps']} steps): **{'met' if v['met'] else 'missed'}**.")
    s = rat["spurious_dynamic_n1"]
    lines.append(f"- Spurious cue, one sample: |cue gap| {s['cue_gap_before']:.4f} -> {s['abs_cue_gap_after']:.4f} "
                 f"({100 * s['shrink']:.1f}% smaller), accuracy drop {s['accuracy_drop_points']:+.2f} points: "
                 f"**{'met' if s['met'] else 'missed'}** (>= 80%, within 0.5 points).")
    tl = rat["trojan_top_vs_lowest_layer_n1"]
    lines.append(f"- Ranking matters (Trojan, n=1): top-ranked {tl['top']['layers']} ASR "
                 f"{tl['top']['attack_success_rate']:.4f} at accuracy {tl['top']['accuracy']:.4f}; lowest-ranked "
                 f"{tl['lowest']['layers']} ASR {tl['lowest']['attack_success_rate']:.4f} at accuracy "
                 f"{tl['lowest']['accuracy']:.4f} (error = ASR + accuracy lost: {tl['error_top']:.4f} vs "
                 f"{tl['error_lowest']:.4f}): **{'met' if tl['met'] else 'missed'}**.")
    lines += ["", "Edit time, fine-tuning the whole model (same n) divided by the rank-one editor's:", "",
              "| comparison | cold | warm |", "|---|---|---|"]
    for k, v in rat["time_ratio_finetune_over_rank_one"].items():
        warm = f"{v['warm']:.1f}x" if v["warm"] else "-"
        lines.append(f"| {k} | {v['cold']:.1f}x | {warm} |")
    lines += ["", f"Rank-one (top-ranked layer) at least 10x faster than fine-tuning at every n: cold "
              f"**{'met' if rat['time_target_met_rank_one_cold'] else 'missed'}**, warm "
              f"**{'met' if rat['time_target_met_rank_one_warm'] else 'missed'}**.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="sample choices per n (at least 5 for the targets)")
    parser.add_argument("--samples", default="1,5,20", help="comma-separated n")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS), help="folder for rectify.json and rectify.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = [int(x) for x in args.samples.split(",")]
    seeds = list(range(args.seeds))
    device = pick_device(args.device)
    start = time.perf_counter()
    get_editor("rank-one").edit(load_model(ROOT / "sample_models" / "digits_cnn_trojan.safetensors"),
                                load_data("digits-trojan"), device=device)  # warm-up (imports, first calls)
    results = {}
    for name, case in CASES.items():
        res = run_case(name, case, ns, seeds, device)
        res["summary"] = summarise(res)
        results[name] = res
    rat = ratios(results, ns)
    meta = {"command": "python benchmarks/rectify.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
            "device": describe_device(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "seeds": len(seeds), "samples": ns,
            "date": time.strftime("%Y-%m-%d %H:%M"), "wall_seconds": time.perf_counter() - start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rectify.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": rat}, indent=1,
                                                 default=float))
    (out / "rectify.md").write_text(markdown(results, rat, meta))
    for name, res in results.items():
        metric = res["metric"]
        print(f"\n{name} ({res['model']}): before acc {res['before']['accuracy']:.4f}, {metric} "
              f"{res['before'][metric]:.4f}")
        for r in res["summary"]:
            print(f"  {r['method']:34s} n={r['n']:2d} acc {r['accuracy']:.4f} ({r['accuracy_drop_points']:+.2f} pts) "
                  f"{metric} {r[metric]:.4f}  {r['seconds']:.4f} s")
    print("\nratios and targets:")
    print(json.dumps(rat, indent=1, default=float))
    print(f"\nwrote {out / 'rectify.json'} and {out / 'rectify.md'} ({meta['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
