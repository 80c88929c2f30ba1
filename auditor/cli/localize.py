"""`auditor localize MODEL DATA [--samples N --seed S] [--json PATH]`: where a misbehaviour lives.

With a Trojan trigger, a spurious cue or corrupted twins: the ranked-layer table (Captum layer
attributions with the corrupted input as baseline, projected on the rank-one edit direction).
For tabular data: attributions per raw feature and, with protected attributes, the layers that
carry the gap between groups.
"""
from __future__ import annotations

from ..audit.localization import DEFAULT_ROWS
from . import COMMANDS
from .common import add_model_data_args, format_table, load_model_and_data, refuse_overwriting_inputs, write_json


def register(sub) -> None:
    p = sub.add_parser("localize", help=COMMANDS["localize"],
                       description="Rank the model's Linear/Conv2d layers by how much of the gap between "
                                   "corrupted inputs and their clean twins a rank-one edit there can move "
                                   "(Captum layer integrated gradients). Tabular data: attributions per raw "
                                   "feature and the layers that carry the gap between groups. Exit 0, or 2 on "
                                   "bad input.")
    add_model_data_args(p)
    p.add_argument("--samples", type=int, default=1, help="clean samples (with their corrupted twins) to use")
    p.add_argument("--seed", type=int, default=0, help="which samples")
    p.add_argument("--pairs-split", default="train", choices=["train", "val", "test"],
                   help="split the (clean, corrupted) pairs come from")
    p.add_argument("--method", default="integrated_gradients", choices=["integrated_gradients", "conductance"],
                   help="Captum layer method")
    p.add_argument("--steps", type=int, default=32, help="integration steps")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                   help="tabular: rows explained, drawn at random from --split with --seed")
    p.add_argument("--require", action="append", default=[], metavar="EXPR",
                   help="requirements of the audit: a fairness one names the attribute whose gap is localized")
    p.add_argument("--json", metavar="PATH", help="also write the tables as JSON")
    p.set_defaults(func=run)


def _table(df, cols) -> str:
    rows = [[(f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in df[cols].itertuples(index=False)]
    return format_table(rows, cols)


def run(args) -> int:
    refuse_overwriting_inputs(args, outputs=("json",))
    from ..audit.localization import localize

    bundle, data = load_model_and_data(args)
    loc = localize(bundle, data, args.require, samples=args.samples, seed=args.seed, method=args.method,
                   n_steps=args.steps, rows=args.rows, split=args.split, pairs_split=args.pairs_split, show_pairs=0)
    d = loc.to_dict()
    ranking = "fairness_layers" if loc.kind == "fairness" else "layers"
    payload: dict = {"model": {"path": args.model, "sha256": bundle.sha256},
                     "data": {"name": data.name, "sha256": data.sha256}, "kind": loc.kind, "method": args.method,
                     "samples": args.samples, "seed": args.seed, "settings": d["settings"],
                     "layer_method": d["method"], ranking: d["ranking"], "features": d["features"]}
    if loc.kind in ("trigger", "cue", "twins"):
        print(f"layers ranked by editability for {data.name}: {loc.method_text}; edit the top one")
        picked = loc.settings.get("pairs") or {}
        if picked.get("note"):
            print(f"note: {picked['note']}")
        elif picked.get("rows") is not None:
            print(f"pairs: rows {', '.join(map(str, picked['rows']))} of {args.pairs_split}")
        print(_table(loc.ranking, ["rank", "layer", "type", "score", "share", "attribution", "keys"]))
    if loc.features is not None:
        s = loc.settings
        print(f"\nraw features by mean |attribution| ({s['rows']} {s['split']} rows drawn with seed {args.seed}, "
              "baseline: their mean)")
        print(_table(loc.features, ["rank", "feature", "importance", "attribution", "share", "inputs"]))
    if loc.kind == "fairness":
        print(f"\nlayers carrying the score gap between {loc.settings['attribute']} groups "
              f"({loc.ranking['high_group'].iloc[0]} vs {loc.ranking['low_group'].iloc[0]})")
        print(_table(loc.ranking, ["rank", "layer", "type", "score", "gap", "concentration"]))
    if args.json:
        write_json(args.json, payload)
    return 0
