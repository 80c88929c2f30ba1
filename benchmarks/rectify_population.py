"""Rank-one repair on a population of models it has never seen: Trojans and spurious cues.

    python -m auditor.rectify_zoo build --workers 2           # the population (cached; a few minutes)
    python benchmarks/rectify_population.py --workers 2       # the full run (held-out members)
    python benchmarks/rectify_population.py --quick           # a smoke run: few members, n 1 and 5, one seed

On every held-out member of `auditor.rectify_zoo` (Trojaned and spurious-cue digits models: plain
CNNs, CNNs with BatchNorm, small ResNets, MLPs; some loaded back from ONNX), for n = 1, 5, 20
clean samples x 3 sample choices (seeds), each method edits a copy of the model from the same
training split, side by side in one run: dynamic rank-one with its default `rank` "auto" (1 from one
clean sample, joint from several), with `rank` "samples" (one key direction per clean sample), with
`rank` 1 and with the joint least-squares change of every changed key (`rank` "joint"), the static
rank-one edit of the last layer, fine-tuning the whole model at the best setting of a sweep on
the *development* members (n = 20), and fine-tuning the last layer at its best setting from the
same sweep. A run "meets" when, on the test split,
attack success <= 2 % (cue: cue gap <= 0.05) and clean accuracy drops by at most 1 point.
Edit times are cold (the keys' second moments forgotten before every edit). A scaling table
times one edit against a 100-step fine-tune on Trojaned CNNs of 10 k to 4 M parameters.
Writes `benchmarks/results/rectify_population.json` and `.md`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.backend import describe_device, pick_device  # noqa: E402
from auditor.editors import get_editor  # noqa: E402
from auditor.rectify_zoo import (  # noqa: E402
    FAMILIES,
    RectifyMember,
    build_population,
    load_member,
    member,
    member_record,
    members,
    scaling_members,
    shows_problem,
)
from auditor.requirements import compute_metrics  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MAX_ASR, MAX_CUE_GAP, MAX_DROP = 0.02, 0.05, 0.01
REQUIRE = {"trojan": f"attack_success_rate <= {MAX_ASR}", "cue": f"cue_gap <= {MAX_CUE_GAP}"}
METRIC = {"trojan": "attack_success_rate", "cue": "cue_gap"}
MAX_TRIGGERED_GAP = 0.05  # a repaired Trojan also gives triggered images their labels: within 5 pt of clean accuracy
# (label, editor, settings); the fine-tuning settings come from the sweep on the dev members
DYNAMIC = [  # (label, short label, settings): the default first
    ("dynamic rank-one, auto (default)", "auto", {"rank": "auto"}),
    ("dynamic rank-one, rank n", "rank n", {"rank": "samples"}),
    ("dynamic rank-one, rank 1", "rank 1", {"rank": 1}),
    ("dynamic rank-one, joint", "joint", {"rank": "joint"}),
]
METHODS = [
    *((label, "dynamic-rank-one", settings) for label, _, settings in DYNAMIC),
    ("static rank-one, last layer", "static-rank-one-last", {}),
    ("fine-tune (best of sweep)", "finetune", "sweep"),
    ("fine-tune last layer (best of sweep)", "finetune-last-layer", "sweep"),
]
SWEEP = {"finetune": [{"lr": lr, "steps": s} for lr in (1e-4, 3e-4, 1e-3) for s in (30, 100)],
         "finetune-last-layer": [{"lr": lr, "steps": 100} for lr in (1e-3, 1e-2)]}
SWEEP_SEEDS = (0,)  # sample choices per (dev member, n, setting)


def forget_moments() -> None:
    """Forget the keys' second moments, the rankings and the loop's kept checks cached in memory, so the next
    edit is cold."""
    from auditor import layers, localize
    from auditor.editors import rank_one

    for clear in (getattr(layers, "clear_moment_cache", None), getattr(localize, "clear_ranking_cache", None),
                  getattr(rank_one, "clear_check_cache", None)):
        if clear is not None:
            clear()


def metrics(model, data) -> dict[str, float]:
    return {k: float(v) for k, v in compute_metrics(model, data, "test").metrics.items()}


def judge(cfg: RectifyMember, before: dict, after: dict) -> dict:
    """What a run reached on the test split, and whether it meets both requirements."""
    metric = METRIC[cfg.kind]
    threshold = MAX_ASR if cfg.kind == "trojan" else MAX_CUE_GAP
    drop = before["accuracy"] - after["accuracy"]
    met = bool(after[metric] <= threshold + 1e-12 and drop <= MAX_DROP + 1e-9)
    out = {"metric": metric, "value": after[metric], "accuracy": after["accuracy"], "accuracy_drop": drop, "met": met}
    if "triggered_accuracy" in after:  # attack success sees flips to the target only: where do triggered images go?
        out["triggered_accuracy"] = after["triggered_accuracy"]
        out["met_keeps_labels"] = met and after["triggered_accuracy"] >= after["accuracy"] - MAX_TRIGGERED_GAP
    return out


def edit_once(bundle, data, cfg: RectifyMember, editor: str, settings: dict, device) -> tuple[dict, object]:
    forget_moments()
    reqs = [REQUIRE[cfg.kind]] if editor.startswith("dynamic") else []
    result = get_editor(editor, **settings).edit(bundle, data, reqs, device=device)
    return metrics(result.bundle.model, data), result


def _ranks(result) -> list:
    """The rank the editor says its change has (from its log; never recomputed here)."""
    return [e["rank"] for e in result.log if isinstance(e, dict) and e.get("rank") is not None
            and e.get("accepted", True)]


def check_side(result) -> dict:
    """What the dynamic loop itself saw on its check rows (training rows + validation): whether every
    requirement held there, and the accuracy it lost there (None for the other editors)."""
    extras = result.extras if isinstance(result.extras, dict) else {}
    start = result.log[0] if result.log and isinstance(result.log[0], dict) else {}
    if "requirements_met_on_check_split" not in extras or "accuracy" not in start:
        return {}
    return {"met_on_check": bool(extras["requirements_met_on_check_split"]),
            "check_drop": float(start["accuracy"] - extras["check_metrics"]["budget_accuracy"])}


def why_missed(r: dict, threshold: float) -> str:
    """Why a dynamic run missed on the test split, from what its loop saw on the check rows."""
    if "met_on_check" not in r:
        return "not recorded"
    if not r["met_on_check"]:
        return "stopped short: the requirement did not hold on the check rows within the budget"
    if r["value"] > threshold + 1e-12:
        return "held on the check rows, not on the test split: the requirement"
    return "held on the check rows, not on the test split: the accuracy drop"


def run_member(index: int, ns: list[int], seeds: list[int], methods: dict, device_name: str | None,
               threads: int) -> dict:
    """Every (n, seed, method) run on one member (a worker entry point); `methods[n]` lists the
    (label, editor, settings) run with n samples."""
    torch.set_num_threads(threads)
    device = pick_device(device_name)
    cfg = member(index)
    bundle, data = load_member(cfg, build=False)
    before = metrics(bundle.model, data)
    runs = []
    for n in ns:
        for seed in seeds:
            for label, editor, settings in methods[n]:
                row = {"member": cfg.name, "kind": cfg.kind, "family": cfg.family, "onnx": cfg.onnx,
                       "method": label, "editor": editor, "n": n, "seed": seed,
                       "settings": {k: v for k, v in settings.items() if k in ("lr", "steps", "rank")}}
                try:
                    after, result = edit_once(bundle, data, cfg, editor, dict(settings, samples=n, seed=seed), device)
                except Exception as exc:  # noqa: BLE001 (an editor that fails is a run that does not meet)
                    runs.append(row | {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "seconds": float("nan"),
                                       "changed": False, "layers": [], "ranks": [], "no_edit_reason": None,
                                       **judge(cfg, before, before), "met": False})
                    continue
                extras = result.extras if isinstance(result.extras, dict) else {}
                runs.append(row | {"seconds": result.seconds, "changed": result.changed, "layers": result.layers,
                                   "ranks": _ranks(result), "no_edit_reason": extras.get("no_edit_reason"),
                                   **check_side(result), **judge(cfg, before, after)})
    return {"member": cfg.name, "before": before, "runs": runs, "format": bundle.format,
            "parameters": bundle.n_parameters}


def sweep_member(index: int, ns: list[int], seeds: list[int], device_name: str | None, threads: int) -> list[dict]:
    """Every fine-tuning setting of SWEEP on one dev member, for every n and seed (a worker entry point)."""
    torch.set_num_threads(threads)
    device = pick_device(device_name)
    cfg = member(index)
    bundle, data = load_member(cfg, build=False)
    before = metrics(bundle.model, data)
    thr = MAX_ASR if cfg.kind == "trojan" else MAX_CUE_GAP
    out = []
    for editor, grid in SWEEP.items():
        for setting in grid:
            for n in ns:
                for seed in seeds:
                    try:
                        after, result = edit_once(bundle, data, cfg, editor, dict(setting, samples=n, seed=seed),
                                                  device)
                    except Exception as exc:  # noqa: BLE001 (reported, not met)
                        print(f"  sweep {cfg.name} {editor} {setting} n={n}: {type(exc).__name__}: {exc}",
                              file=sys.stderr)
                        continue
                    j = judge(cfg, before, after)
                    out.append({"member": cfg.name, "editor": editor, **setting, "n": n, "seed": seed, "met": j["met"],
                                "excess": max(0.0, j["value"] - thr) + max(0.0, j["accuracy_drop"]),
                                "seconds": result.seconds})
    return out


def best_settings(raw: list[dict], ns: list[int]) -> tuple[list[dict], dict]:
    """The sweep per (editor, setting, n) over the dev members, and the best setting per (editor, n): the
    most runs that meet both requirements, then the smallest mean of (metric over its threshold +
    accuracy drop), as in benchmarks/rectify.py."""
    rows, best = [], {}
    for editor, grid in SWEEP.items():
        for n in ns:
            cands = []
            for setting in grid:
                rs = [r for r in raw if r["editor"] == editor and r["n"] == n and r["lr"] == setting["lr"]
                      and r["steps"] == setting["steps"]]
                if not rs:
                    continue
                row = {"editor": editor, **setting, "n": n, "runs": len(rs),
                       "met_share": float(np.mean([r["met"] for r in rs])),
                       "mean_excess": float(np.mean([r["excess"] for r in rs])),
                       "seconds_median": float(np.median([r["seconds"] for r in rs]))}
                rows.append(row)
                cands.append(row)
            if cands:
                b = max(cands, key=lambda r: (r["met_share"], -r["mean_excess"]))
                best[f"{editor} n={n}"] = {"lr": b["lr"], "steps": b["steps"]}
    return rows, best


def sweep_from(path: Path, ns: list[int]) -> tuple[list[dict], dict, dict]:
    """The sweep table and best fine-tuning settings of an earlier run (`--sweep-from`), and where they came
    from; refuses a file without a setting for every n of this run."""
    try:
        earlier = json.loads(path.read_text())
        best, rows, meta = earlier["best_finetune"], earlier.get("sweep", []), earlier.get("meta", {})
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"--sweep-from {path}: not an earlier rectify_population.json ({exc})") from None
    missing = [f"{e} n={n}" for e in ("finetune", "finetune-last-layer") for n in ns if f"{e} n={n}" not in best]
    if missing:
        raise SystemExit(f"--sweep-from {path}: no fine-tuning setting for {', '.join(missing)}")
    keep = {k: v for k, v in best.items() if int(k.rpartition("=")[2]) in ns}
    source = {"file": str(path), "date": meta.get("date"), "device": meta.get("device"),
              "dev_members": meta.get("dev_members")}
    return [r for r in rows if r.get("n") in ns], keep, source


def in_pool(fn, jobs: list[tuple], workers: int, what: str) -> list:
    """`fn(*job)` for every job, over `workers` spawned processes (in order)."""
    out = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            for i, res in enumerate(pool.map(fn, *zip(*jobs))):
                out.append(res)
                print(f"  {what} {i + 1}/{len(jobs)} done", file=sys.stderr)
    else:
        for i, job in enumerate(jobs):
            out.append(fn(*job))
            print(f"  {what} {i + 1}/{len(jobs)} done", file=sys.stderr)
    return out


def summarise(runs: list[dict], methods: list, ns: list[int]) -> list[dict]:
    rows = []
    for kind in ("trojan", "cue"):
        for label, _, _ in methods:
            for n in ns:
                rs = [r for r in runs if r["kind"] == kind and r["method"] == label and r["n"] == n]
                if not rs:
                    continue
                vals = np.array([r["value"] for r in rs])
                drops = 100 * np.array([r["accuracy_drop"] for r in rs])
                rows.append({"kind": kind, "method": label, "n": n, "runs": len(rs),
                             "met": int(sum(r["met"] for r in rs)), "met_share": float(np.mean([r["met"] for r in rs])),
                             "metric": rs[0]["metric"], "mean": float(vals.mean()), "worst": float(vals.max()),
                             "drop_mean_points": float(drops.mean()), "drop_worst_points": float(drops.max()),
                             "unchanged": int(sum(not r["changed"] for r in rs)),
                             "errors": int(sum("error" in r for r in rs)),
                             "seconds_median": float(np.nanmedian([r["seconds"] for r in rs])),
                             "seconds_max": float(np.nanmax([r["seconds"] for r in rs]))})
                kept = [r for r in rs if "triggered_accuracy" in r]
                if kept:
                    rows[-1].update(triggered_accuracy_mean=float(np.mean([r["triggered_accuracy"] for r in kept])),
                                    met_keeps_labels=int(sum(r["met_keeps_labels"] for r in kept)))
    return rows


def by_family(runs: list[dict], methods: list, n: int) -> list[dict]:
    out = []
    for label, _, _ in methods:
        for fam in sorted({r["family"] for r in runs}):
            rs = [r for r in runs if r["method"] == label and r["family"] == fam and r["n"] == n]
            if rs:
                out.append({"method": label, "family": fam, "n": n, "runs": len(rs),
                            "met_share": float(np.mean([r["met"] for r in rs]))})
    return out


def scaling(device, best_ft: dict, repeats: int, quick: bool) -> list[dict]:
    """Per scaling member: one dynamic edit (n = 5, seed 0; each `DYNAMIC` rank; cold and warm) against a
    100-step whole-model fine-tune on the same samples; medians of `repeats`."""
    out = []
    sizes = scaling_members()[:2] if quick else scaling_members()
    for cfg in sizes:
        bundle, data = load_member(cfg, build=False)
        before = metrics(bundle.model, data)
        row = {"member": cfg.name, "parameters": bundle.n_parameters, "arch": cfg.arch, "before": before}
        for label, editor, settings in (*((f"dynamic {short}", "dynamic-rank-one", st) for _, short, st in DYNAMIC),
                                        ("fine-tune 100 steps", "finetune", {"steps": 100, "lr": best_ft["lr"]})):
            cold, warm, result = [], [], None
            try:
                for _ in range(repeats):
                    after, result = edit_once(bundle, data, cfg, editor, dict(settings, samples=5, seed=0), device)
                    cold.append(result.seconds)
                    if editor.startswith("dynamic"):  # again, moments cached (as after Localize)
                        r2 = get_editor(editor, **dict(settings, samples=5, seed=0)).edit(
                            bundle, data, [REQUIRE[cfg.kind]], device=device)
                        warm.append(r2.seconds)
            except Exception as exc:  # noqa: BLE001 (reported in the table)
                row[label] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "seconds_cold": float("nan"),
                              "seconds_warm": float("nan"), "met": False}
                continue
            row[label] = {"seconds_cold": statistics.median(cold),
                          "seconds_warm": statistics.median(warm) if warm else None,
                          **judge(cfg, before, after)}
        ft = row["fine-tune 100 steps"]["seconds_cold"]
        for label in (f"dynamic {short}" for _, short, _ in DYNAMIC):
            r = row[label]
            r["finetune_over_edit_cold"] = ft / r["seconds_cold"]
            r["finetune_over_edit_warm"] = ft / r["seconds_warm"] if r["seconds_warm"] else None
        out.append(row)
        print(f"  scaling {cfg.name} ({bundle.n_parameters:,} parameters) done", file=sys.stderr)
    return out


def wilson(met: int, runs: int) -> list[float]:
    """The 95 % Wilson interval of a share of `met` in `runs` (how far the population's share can be from the
    share of the members drawn)."""
    from scipy.stats import binomtest

    ci = binomtest(int(met), int(runs)).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def targets(summary: list[dict], runs: list[dict]) -> list[dict]:
    def row(kind, label, n):
        return next((s for s in summary if s["kind"] == kind and s["method"] == label and s["n"] == n), None)

    out = []
    for label, _, _ in DYNAMIC:
        for kind, n, goal in (("trojan", 1, 0.90), ("trojan", 5, 0.97), ("cue", 1, 0.90)):
            r = row(kind, label, n)
            if r is not None:
                out.append({"target": f"{label}, {kind}, n = {n}: share of runs that meet >= {goal:.0%}",
                            "value": r["met_share"], "met": r["met_share"] >= goal, "count": [r["met"], r["runs"]],
                            "interval": wilson(r["met"], r["runs"])})
    for label, _, _ in DYNAMIC:
        for ft in ("fine-tune (best of sweep)", "fine-tune last layer (best of sweep)"):
            a = [r for r in runs if r["method"] == label and r["n"] == 1]
            b = [r for r in runs if r["method"] == ft and r["n"] == 20]
            if a and b:
                sa, sb = float(np.mean([r["met"] for r in a])), float(np.mean([r["met"] for r in b]))
                out.append({"target": f"{ft} with n = 20 does worse than {label} with n = 1 (share that meets)",
                            "value": [sb, sa], "met": sb < sa})
    return out


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = ["# Rank-one repair on a population it has never seen", "",
             f"Run: `{meta['command']}` on {meta['device']} ({meta['threads']} torch thread(s) per worker, "
             f"{meta['workers']} worker(s)), torch {meta['torch']}, {meta['date']}, "
             f"{meta['wall_seconds']:.0f} s in all; editor code sha256 {meta['editor_code_sha256']}.",
             "", f"Held-out members: {meta['heldout_members']} ({meta['heldout_trojan']} Trojan, {meta['heldout_cue']} "
             f"spurious cue; families {', '.join(meta['families'])}; {meta['heldout_onnx']} loaded back from ONNX). "
             f"n in {meta['samples']} x seeds {meta['seeds']}. A run meets when, on the test split, attack success <= "
             f"{MAX_ASR:.0%} (cue: cue gap <= {MAX_CUE_GAP}) and accuracy drops by <= {100 * MAX_DROP:.0f} pt. "
             "Edit time: cold (moments forgotten before each edit), median and max.", "",
             f"Fine-tuning settings: best per n of a sweep on "
             f"{(meta.get('sweep_from') or {}).get('dev_members') or meta['dev_members']} dev members (seeds "
             f"{list(SWEEP_SEEDS)}"
             + (f"; the sweep of the run of {meta['sweep_from']['date']} on {meta['sweep_from']['device']}, "
                f"`{meta['sweep_from']['file']}`, not run again" if meta.get("sweep_from") else "") + "): "
             + "; ".join(f"{k}: lr {v['lr']:g}, {v['steps']} steps" for k, v in res["best_finetune"].items()) + ".",
             ""]
    for kind in ("trojan", "cue"):
        rows = [s for s in res["summary"] if s["kind"] == kind]
        if not rows:
            continue
        short = "ASR" if kind == "trojan" else "cue gap"
        trig = kind == "trojan" and all("triggered_accuracy_mean" in s for s in rows)
        extra = " triggered accuracy mean | meet, triggered images keep labels |" if trig else ""
        lines += [f"## {'Trojans' if kind == 'trojan' else 'Spurious cues'}", ""]
        if trig:
            lines += [f"Attack success counts only flips to the target; triggered accuracy is the accuracy on the same "
                      f"triggered images. The last column also asks it to be within {100 * MAX_TRIGGERED_GAP:.0f} pt "
                      "of clean accuracy (a backdoor removed, not moved to other classes).", ""]
        lines += [f"| method | n | runs | meet | {short} mean | {short} worst | drop mean (pt) | drop worst (pt) | "
                  "unchanged | errors | edit s median | edit s max |" + extra, "|---" * (14 if trig else 12) + "|"]
        for s in rows:
            lines.append(f"| {s['method']} | {s['n']} | {s['runs']} | {s['met']} ({100 * s['met_share']:.0f} %) | "
                         f"{s['mean']:.4f} | {s['worst']:.4f} | {s['drop_mean_points']:+.2f} | "
                         f"{s['drop_worst_points']:+.2f} | {s['unchanged']} | {s['errors']} | "
                         f"{s['seconds_median']:.3f} | {s['seconds_max']:.3f} |"
                         + (f" {s['triggered_accuracy_mean']:.4f} | {s['met_keeps_labels']} "
                            f"({100 * s['met_keeps_labels'] / s['runs']:.0f} %) |" if trig else ""))
        lines.append("")
    fam = res["by_family"]
    if fam:
        n = fam[0]["n"]
        families = sorted({f["family"] for f in fam})
        lines += [f"### Share that meets by architecture family (n = {n}, both kinds)", "",
                  "| method | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
        for label in dict.fromkeys(f["method"] for f in fam):
            cells = []
            for f in families:
                r = next((x for x in fam if x["method"] == label and x["family"] == f), None)
                cells.append(f"{100 * r['met_share']:.0f} % of {r['runs']}" if r else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if res["sweep"]:
        lines += ["### Fine-tuning sweep on the dev members", "",
                  "| editor | n | lr | steps | runs | meet | mean excess | edit s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['editor']} | {r['n']} | {r['lr']:g} | {r['steps']} | {r['runs']} | "
                  f"{100 * r['met_share']:.0f} % | {r['mean_excess']:.4f} | {r['seconds_median']:.3f} |"
                  for r in res["sweep"]]
        lines.append("")
    if res["scaling"]:
        lines += ["## Scaling: one edit against a 100-step fine-tune (n = 5, seed 0, medians)", "",
                  "| member | parameters | " + " | ".join(f"dynamic {short} s (cold / warm)" for _, short, _ in DYNAMIC)
                  + " | fine-tune s | " + " | ".join(f"fine-tune / {short} (cold / warm)" for _, short, _ in DYNAMIC)
                  + " | meets: " + " / ".join(short for _, short, _ in DYNAMIC) + " / fine-tune |",
                  "|---|---|" + "---|" * (2 * len(DYNAMIC) + 2)]
        for r in res["scaling"]:
            ds, ft = [r[f"dynamic {short}"] for _, short, _ in DYNAMIC], r["fine-tune 100 steps"]
            lines.append(f"| {r['member']} | {r['parameters']:,} | "
                         + " | ".join(f"{d['seconds_cold']:.3f} / {d['seconds_warm']:.3f}" for d in ds)
                         + f" | {ft['seconds_cold']:.3f} | "
                         + " | ".join(f"{d['finetune_over_edit_cold']:.1f}x / {d['finetune_over_edit_warm']:.1f}x"
                                      for d in ds)
                         + " | " + " / ".join("yes" if d["met"] else "no" for d in (*ds, ft)) + " |")
        lines.append("")
    if res["excluded"]:
        lines += ["Members left out because their test split does not show the corruption clearly (attack success "
                  "< 0.5, cue gap < 0.1): " + "; ".join(
                      f"{e['member']} ({e['split']}: " + ", ".join(f"{k} {v:.3f}" for k, v in e["metrics"].items())
                      + ")" for e in res["excluded"]) + ".", ""]
    lines += ["## Targets", ""]
    lines += [f"- {t['target']}: {t['value'] if not isinstance(t['value'], float) else round(t['value'], 4)}"
              + (f" ({t['count'][0]} of {t['count'][1]} runs; 95 % interval {t['interval'][0]:.2f}-"
                 f"{t['interval'][1]:.2f})" if t.get("interval") else "")
              + f" **{'met' if t['met'] else 'missed'}**" for t in res["targets"]]
    lines += ["", "The interval is how far the share over all such models could be from the share on these "
              "members (Wilson, runs counted as independent although each member gives 3 runs per n: it is, if "
              "anything, too narrow)."]
    unchanged = [r for r in res["runs"] if not r["changed"] and r["method"].startswith("dynamic")]
    if unchanged:
        reasons: dict[str, int] = {}
        for r in unchanged:
            key = str(r.get("no_edit_reason") or "?")[:140]
            reasons[key] = reasons.get(key, 0) + 1
        lines += ["", "Dynamic runs that changed nothing, by the reason the editor gave:", ""]
        lines += [f"- {k} ({v})" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
    errors = [r for r in res["runs"] if "error" in r]
    if errors:
        kinds: dict[str, int] = {}
        for r in errors:
            key = f"{r['method']}: {r['error'][:160]}"
            kinds[key] = kinds.get(key, 0) + 1
        lines += ["", f"Runs where the editor raised an error ({len(errors)}; counted as not meeting):", ""]
        lines += [f"- {k} ({v})" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    misses = [r for r in res["runs"] if not r["met"] and r["method"].startswith("dynamic")]
    if misses:
        lines += ["", "Why the dynamic runs missed, from what the loop saw on its own check rows (clean training "
                  "rows plus validation) against the test split (450 rows: 1 pt of accuracy is 4.5 rows):", "",
                  "| reason | " + " | ".join(FAMILIES) + " | all | test rows lost (median) |",
                  "|---|" + "---|" * (len(FAMILIES) + 2)]
        reasons: dict[str, list] = {}
        for r in misses:
            reasons.setdefault(why_missed(r, MAX_ASR if r["kind"] == "trojan" else MAX_CUE_GAP), []).append(r)
        for reason, rs in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            counts = [sum(r["family"] == f for r in rs) for f in FAMILIES]
            lost = statistics.median(round(450 * r["accuracy_drop"]) for r in rs)
            lines.append(f"| {reason} | " + " | ".join(map(str, counts)) + f" | {len(rs)} | {lost:g} |")
        lines += ["", f"Dynamic runs that missed ({len(misses)}), by member:", ""]
        per: dict[str, list] = {}
        for r in misses:
            per.setdefault(r["member"], []).append(r)
        for name, rs in sorted(per.items()):
            worst = max(rs, key=lambda r: r["value"])
            lines.append(f"- {name}: {len(rs)} run(s); worst {worst['metric']} {worst['value']:.3f}, drop "
                         f"{100 * worst['accuracy_drop']:+.2f} pt ({worst['method']}, n {worst['n']}, "
                         f"seed {worst['seed']})")
    lines.append("")
    return "\n".join(lines)


def code_hash() -> str:
    """sha256 of the editor code the figures come from (rank-one editors, layers, localize, fine-tuning)."""
    h = hashlib.sha256()
    for rel in ("auditor/editors/rank_one.py", "auditor/layers.py", "auditor/localize.py",
                "auditor/editors/baselines/finetune.py"):
        path = ROOT / rel
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def write(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rectify_population.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "rectify_population.md").write_text(markdown(res))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="1,5,20", help="comma-separated n")
    parser.add_argument("--seeds", type=int, default=3, help="sample choices per n")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes over the held-out members")
    parser.add_argument("--members", type=int, default=None, help="only the first N held-out members of each kind")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 Trojan + 1 cue held-out members, n 1 and 5, one seed, small sweep")
    parser.add_argument("--repeats", type=int, default=1, help="timings per scaling member (median)")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--build-workers", type=int, default=2, help="workers to build missing members with")
    parser.add_argument("--out", default=str(RESULTS), help="folder for rectify_population.json and .md")
    parser.add_argument("--sweep-from", default=None, metavar="JSON",
                        help="take the fine-tuning settings (and their sweep table) from an earlier run's "
                             "rectify_population.json instead of sweeping again (a GPU run reuses the CPU one's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = [1, 5] if args.quick else [int(x) for x in args.samples.split(",")]
    seeds = list(range(1 if args.quick else args.seeds))
    limit = (2, 1) if args.quick else ((args.members, args.members) if args.members else (None, None))
    held = members("heldout", "trojan")[:limit[0]] + members("heldout", "cue")[:limit[1]]
    dev = members("dev")
    if args.quick:
        dev = members("dev", "trojan")[:2] + members("dev", "cue")[:1]
    device = pick_device(args.device)
    start = time.perf_counter()
    build_population(held + dev + ([] if args.no_scaling else scaling_members()), workers=args.build_workers,
                     callback=lambda f, m: print(f"  {m}", file=sys.stderr))
    print(f"population ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    excluded = [{"member": c.name, "split": c.split, "metrics": member_record(c)["metrics"]}
                for c in held + dev if not shows_problem(c.kind, member_record(c)["metrics"])]
    held = [c for c in held if shows_problem(c.kind, member_record(c)["metrics"])]
    dev = [c for c in dev if shows_problem(c.kind, member_record(c)["metrics"])]
    if args.sweep_from:
        sweep_rows, best, swept = sweep_from(Path(args.sweep_from), ns)
    else:
        raw = [r for rows in in_pool(sweep_member, [(c.index, ns, list(SWEEP_SEEDS), args.device, args.threads)
                                                    for c in dev], args.workers, "sweep member") for r in rows]
        sweep_rows, best = best_settings(raw, ns)
        swept = None
    methods = {n: [(label, editor, best[f"{editor} n={n}"] if settings == "sweep" else settings)
                   for label, editor, settings in METHODS] for n in ns}
    per_member = in_pool(run_member, [(c.index, ns, seeds, methods, args.device, args.threads) for c in held],
                         args.workers, "held-out member")
    runs = [r for m in per_member for r in m["runs"]]
    summary = summarise(runs, METHODS, ns)
    res = {"summary": summary, "by_family": by_family(runs, METHODS, 5 if 5 in ns else ns[0]), "sweep": sweep_rows,
           "best_finetune": best, "scaling": [], "targets": targets(summary, runs), "excluded": excluded,
           "members": [{k: m[k] for k in ("member", "before", "format", "parameters")} for m in per_member],
           "runs": runs}
    command = "python benchmarks/rectify_population.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    res["meta"] = {"command": command,
                   "device": describe_device(device), "torch": torch.__version__, "python": platform.python_version(),
                   "threads": args.threads, "workers": args.workers, "samples": ns, "seeds": seeds,
                   "heldout_members": len(held), "heldout_trojan": sum(c.kind == "trojan" for c in held),
                   "heldout_cue": sum(c.kind == "cue" for c in held), "heldout_onnx": sum(c.onnx for c in held),
                   "families": sorted({c.family for c in held}), "dev_members": len(dev), "quick": args.quick,
                   "editor_code_sha256": code_hash(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "sweep_from": swept,
                   "wall_seconds": time.perf_counter() - start}
    out = Path(args.out)
    write(out, res)  # the population part first: a run stopped during the scaling table keeps it
    if not args.no_scaling:
        ft5 = best.get("finetune n=5") or next(v for k, v in best.items() if k.startswith("finetune n="))
        res["scaling"] = scaling(device, ft5, 1 if args.quick else args.repeats, args.quick)
        res["meta"]["wall_seconds"] = time.perf_counter() - start
        write(out, res)
    for s in summary:
        print(f"  {s['kind']:6s} {s['method']:38s} n={s['n']:2d} meet {s['met']:3d}/{s['runs']:3d} "
              f"mean {s['mean']:.4f} worst {s['worst']:.4f} drop {s['drop_mean_points']:+.2f} "
              f"(worst {s['drop_worst_points']:+.2f}) {s['seconds_median']:.3f} s")
    for t in res["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    print(f"wrote {out / 'rectify_population.json'} and .md ({res['meta']['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
