"""`auditor localize MODEL DATA [--samples N --seed S] [--json PATH]`: where a misbehaviour lives.

With a Trojan trigger, a spurious cue or corrupted twins: the ranked-layer table (Captum layer
attributions with the corrupted input as baseline, projected on the rank-one edit direction).
For tabular data: attributions per raw feature and, with protected attributes, the layers that
carry the gap between groups.
"""
from __future__ import annotations

from .common import add_model_data_args, format_table, load_model_and_data, write_json


def register(sub) -> None:
    p = sub.add_parser("localize", help="rank layers (and features) by where a misbehaviour lives",
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
    p.add_argument("--rows", type=int, default=256, help="tabular: rows explained (from --split)")
    p.add_argument("--json", metavar="PATH", help="also write the tables as JSON")
    p.set_defaults(func=run)


def _table(df, cols) -> str:
    rows = [[(f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in df[cols].itertuples(index=False)]
    return format_table(rows, cols)


def run(args) -> int:
    from ..errors import AuditorError
    from ..localize import fairness_layers, feature_attributions, rank_layers_for

    if args.samples < 1 or args.steps < 1 or args.rows < 1:
        raise AuditorError("--samples, --steps and --rows must be at least 1")
    bundle, data = load_model_and_data(args)
    model = bundle.model
    payload: dict = {"model": {"path": args.model, "sha256": bundle.sha256},
                     "data": {"name": data.name, "sha256": data.sha256}, "method": args.method,
                     "samples": args.samples, "seed": args.seed}
    has_pairs = data.stamp is not None or data.train.corrupted is not None
    printed = False
    if has_pairs:
        table = rank_layers_for(model, data, args.samples, args.seed, split=args.pairs_split, method=args.method,
                                n_steps=args.steps)
        print(f"layers ranked by editability for {data.name} ({args.samples} pair(s) from {args.pairs_split}, "
              f"seed {args.seed}, {args.method}); edit the top one")
        print(_table(table, ["rank", "layer", "type", "score", "share", "attribution", "keys"]))
        payload["layers"] = table.to_dict("records")
        printed = True
    if data.kind == "tabular":
        sp = data.split(args.split)
        X = sp.X[:args.rows]
        feats = feature_attributions(model, X, data.feature_groups, n_steps=args.steps)
        print(f"\nraw features by mean |attribution| ({len(X)} {args.split} rows, baseline: their mean)")
        print(_table(feats, ["rank", "feature", "importance", "attribution", "share", "inputs"]))
        payload["features"] = feats.to_dict("records")
        printed = True
        if data.protected and len(data.class_names) == 2:
            attr = data.primary_protected
            fl = fairness_layers(model, X, sp.groups[attr].iloc[:args.rows], n_steps=args.steps, seed=args.seed,
                                 method=args.method)
            print(f"\nlayers carrying the score gap between {attr} groups "
                  f"({fl['high_group'].iloc[0]} vs {fl['low_group'].iloc[0]})")
            print(_table(fl, ["rank", "layer", "type", "score", "gap", "concentration"]))
            payload["fairness_layers"] = fl.to_dict("records")
    if not printed:
        raise AuditorError(f"nothing to localize in {data.name!r}: it has no trigger, cue or corrupted twins "
                           "(give an .npz case or a Trojan/cue data set), and it is not tabular")
    if args.json:
        write_json(args.json, payload)
    return 0
