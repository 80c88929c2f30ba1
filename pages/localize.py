"""Step 2: Captum attributions: which layer carries the misbehaviour, which features or pixels drive it."""
from __future__ import annotations

import streamlit as st

from auditor.charts import feature_attribution_chart, layer_ranking_chart
from auditor.charts.dashboard import ATTRIBUTION_UNIT, pixel_pairs_chart
from auditor.localize import METHODS
from auditor.present import md_plain, setting_fields, stamp_label
from pages.common import in_frame, need_audit, next_step, progress, show_error, stop

in_frame()

audit = need_audit()
data = audit.data
st.title("2 · Localize: where in the network does the problem live?")
has_pairs = data.stamp is not None or data.train.corrupted is not None
if has_pairs:
    what = {"trigger": "a Trojan trigger (a stamp that flips predictions to one class)",
            "cue": "a spurious cue (a mark the model learned to rely on instead of what it should read)"}.get(
        data.stamp.kind if data.stamp is not None else "", "a corruption (inputs paired with clean twins)")
    label = stamp_label(data)
    st.markdown(f"This data set has **{what}**{': ' + md_plain(label) if label else ''}. Attribution "
                "(integrated gradients, Captum) compares each clean "
                "image with its corrupted twin and scores every layer by how much of the difference in the "
                "model's output a small (rank-one) change of that layer could undo. The top layer is the one to edit.")
elif data.kind != "tabular":
    st.info(f"Data set **{md_plain(data.name)}** shows no misbehaviour to localize: it has no trigger, cue, "
            "corrupted twins or protected groups. Try the digits-trojan or digits-spurious samples, or go on to set "
            "requirements.")
    next_step("requirements", "Next: 3. Requirements, what the model must satisfy")
    stop()
else:
    st.markdown("Attribution (integrated gradients, Captum) shows which input features drive the predictions"
                + (f", and which layers carry the gap in scores between the groups of **{data.primary_protected}**."
                   if data.protected and len(data.class_names) == 2 else "."))

c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
samples = (c1.number_input("Clean samples", 1, 64, 1, key="loc_samples",
                           help="Clean examples, each with its corrupted twin. One is enough for a Trojan.")
           if has_pairs else 1)
method = c2.selectbox("Attribution method", METHODS, key="loc_method", format_func=lambda m: m.replace("_", " "),
                      help="Integrated gradients (default) or conductance, both from Captum.")
run = c3.button("Run localization again" if audit.localization else "Run localization", key="loc_run")
if run or audit.localization is None:
    try:
        with progress("Localizing") as cb:
            cb(0.3, "attributions")
            audit.localize(samples=int(samples), method=method)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        stop()

loc = audit.localization
if loc.model_sha256 != audit.current.sha256:
    st.warning("These results were computed on an earlier version of the model; press **Run localization again**.")
picked = loc.settings.get("pairs") or {}
if picked.get("note"):
    st.warning(picked["note"])
if loc.ranking is not None:
    ranking = loc.ranking.copy()
    ranking["percent"] = 100 * ranking["score"] / ranking["score"].sum()
    fair = loc.kind == "fairness"
    title = (f"Layers carrying the score gap between {ranking.iloc[0]['high_group']} and "
             f"{ranking.iloc[0]['low_group']}" if fair else "Layers ranked: where an edit removes the misbehaviour")
    fig = layer_ranking_chart(ranking, score="percent", title=title)
    fig.update_layout(xaxis_title="share of the attribution score (%); the top layer (gold) is the best to edit",
                      yaxis_title="layer", height=max(260, 90 + 40 * len(ranking)))
    st.plotly_chart(fig, key="loc_layers")
    if fair:
        st.caption(f"Integrated gradients from {md_plain(ranking.iloc[0]['low_group'])} rows to "
                   f"{md_plain(ranking.iloc[0]['high_group'])} "
                   "rows: how much of the gap in the positive score flows consistently through each layer's units.")
    st.caption(f"Top-ranked layer: **{md_plain(loc.top_layer)}** ({ranking.iloc[0]['percent']:.1f} % of the score).")
if loc.pixels is not None:
    st.subheader("Pixels: clean vs corrupted, side by side")
    st.caption("Right: integrated gradients of the prediction on the corrupted image, from its clean twin. Red "
               "pixels push the model towards the class it predicts, blue ones away: the push sits on the trigger "
               "or cue, not on the digit.")
    st.plotly_chart(pixel_pairs_chart(loc.clean, loc.corrupted, loc.pixels, data.class_names, loc.labels),
                    key="loc_pixels")
if loc.features is not None:
    st.subheader("Features: what drives the predictions")
    fig = feature_attribution_chart(loc.features, top=15, title="Raw features by importance (one-hot inputs summed)")
    fig.update_layout(xaxis_title=f"mean |attribution| ({ATTRIBUTION_UNIT})", yaxis_title="raw feature")
    st.plotly_chart(fig, key="loc_features")

layered = [c for c in audit.editors() if any(s.name == "layer" for s in setting_fields(c, audit.current))]
if loc.ranking is not None and layered:
    st.subheader("Layer to edit")
    auto = f"Accept the top-ranked layer ({loc.top_layer}), recommended"
    options = [auto] + [str(x) for x in loc.ranking["layer"]]
    current = audit.chosen_layer if audit.chosen_layer in options else auto
    choice = st.radio("Editors that edit one layer will use:", options, index=options.index(current), key="loc_layer")
    audit.chosen_layer = None if choice == auto else choice
    if audit.chosen_layer:
        st.caption(f"The editors will edit **{md_plain(audit.chosen_layer)}** instead of re-ranking the layers "
                   "themselves.")
next_step("requirements", "Next: 3. Requirements, what the model must satisfy")
