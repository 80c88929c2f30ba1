"""Step 5: before vs after: requirements, metrics per group, trade-off against baselines, weights, attributions."""
from __future__ import annotations

import streamlit as st

from auditor.charts import group_chart, requirements_chart
from auditor.charts.dashboard import (
    feature_before_after_chart,
    pixel_before_after_chart,
    weight_change_heatmap,
    weight_change_overview,
)
from auditor.present import NOT_RUN, format_value, md_plain, metric_label
from auditor.report.model import merge_requirements
from pages.common import in_frame, need_audit, next_step, progress, show_error

in_frame()

audit = need_audit()
st.title("5 · Compare: before and after the edit")
if not audit.edited:
    st.info("No edit applied yet: *after* equals *before*. Run an editor on the **Edit** page first.")
before, after = audit.evaluate("pristine"), audit.evaluate()

if audit.edited:  # the verdict first: before -> after, with intervals, and what else got worse
    v = audit.verdict()
    banner = st.success if v["status"] == "PASS" else st.warning  # st.error is kept for things that broke
    lines = "\n".join(f"- {line}" for line in v["requirement_lines"])
    banner(f"**Verdict: {v['status']}.** {v['summary']}\n\n{lines}", icon=":material/gavel:")
    if v["side_effect_lines"]:
        st.warning("**Side effects** (not requirements, worse after the edit beyond the noise of a paired 95 % "
                   "bootstrap interval):\n\n" + "\n".join(f"- {line}" for line in v["side_effect_lines"]),
                   icon=":material/warning:")
for w in before.warnings:
    st.caption(f"⚠ {md_plain(w)}")
for w in audit.new_warnings():  # what only the edited model shows
    st.warning(md_plain(w), icon=":material/warning:")

st.subheader("Requirements")
reqs = merge_requirements(before, after)
if reqs:
    fig = requirements_chart(reqs)  # values in percent / pp, verdicts written on the bars' labels
    st.caption("For each requirement: before (top bar) and after (bottom bar) the edit; dashed line: the threshold; "
               "green passes, red fails.")
    st.plotly_chart(fig, key="cmp_requirements")
st.subheader(f"All metrics ({audit.rows_words})")
table = audit.compare_table()
st.dataframe(table, hide_index=True, key="cmp_metrics", height=35 * (len(table) + 1) + 3,
             column_config={"meaning": st.column_config.TextColumn(width="large")})

for attr in after.groups:
    st.subheader(f"Per group: {md_plain(attr)}")
    st.dataframe(audit.group_table(attr), hide_index=True, key=f"cmp_groups_{attr}")
    two = len(audit.data.class_names) == 2  # selection rate: the share predicted positive, of two outcomes
    metric = "selection_rate" if attr in audit.data.protected and two else "accuracy"
    fig = group_chart(before.groups[attr], after.groups[attr], metric=metric, attribute=attr)  # in percent
    if metric == "selection_rate":
        fig.update_layout(yaxis_title="selection rate (share predicted positive, %)")
    st.plotly_chart(fig, key=f"cmp_group_chart_{attr}")

st.subheader("Trade-off against the baselines")
choices = audit.baseline_choices()
if not choices and not audit.edited:
    st.caption("Nothing to compare: no edit yet and no baseline for these requirements.")
else:
    stacked = (f" This audit's {len(audit.edits)} edits, applied one after another, are one row "
               f"({audit.edit_label})." if len(audit.edits) > 1 else "")
    st.caption("Each method runs from the model as loaded, with the same seed and the same clean samples."
               f"{stacked} Up and towards the shaded area is better; the dotted line joins the Pareto front "
               "(methods no other method beats on both axes).")
    if choices:
        slow = {"exponentiated-gradient"}  # retrains from scratch: minutes on a laptop
        cannot = audit.unavailable_alternatives()
        for name, why in cannot.items():
            st.caption(f"{md_plain(name)} is not selected: {md_plain(why)}.")
        picked = st.multiselect("Baselines to run", choices,
                                default=[c for c in choices if c not in slow and c not in cannot],
                                key="cmp_baselines", help="threshold-optimizer and exponentiated-gradient are "
                                "fairlearn's post-processing and retraining; they do not edit the model's weights.")
    else:
        picked = []
        st.caption("No other method targets this requirement: the chart shows the model before and after the edit.")
    if st.button("Run the comparison", type="primary", key="cmp_run"):
        try:
            with progress("Running baselines") as cb:
                audit.run_tradeoff(picked, callback=cb)
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
    if audit.tradeoff is not None:
        if audit.tradeoff_stale:
            st.warning("The model or the requirements changed since this comparison: run it again (the report "
                       "re-runs it with the same baselines).")
        t = audit.tradeoff
        fig = t.figure(highlight=audit.edit_label,
                       title=f"Trade-off: accuracy ({audit.rows_words}) vs {metric_label(t.metric).lower()}")
        higher = "higher is better" if t.higher_is_better else "lower is better"
        fig.update_layout(xaxis_title=f"{metric_label(t.metric)} ({higher})",
                          yaxis_title=f"accuracy ({audit.rows_words})",
                          height=460)  # axes already in percent / pp (auditor.charts.tradeoff_chart)
        st.plotly_chart(fig, key="cmp_tradeoff")
        rows = t.rows.copy()
        rows["value"] = rows["value"].map(lambda v: format_value(t.metric, v))
        rows["accuracy"] = rows["accuracy"].map(lambda v: format_value("accuracy", v))
        rows["seconds"] = rows["seconds"].map(lambda v: "" if v != v else f"{v:.2f} s")
        rows["layers"] = rows["layers"].map(lambda v: ", ".join(v) if isinstance(v, (list, tuple)) else "")
        rows = rows.rename(columns={"value": metric_label(t.metric), "seconds": "seconds (wall time)",
                                    "pareto": "on Pareto front", "passed": "meets all requirements"})
        keep = [c for c in rows.columns if c not in ("model_sha256", "editor") and rows[c].notna().any()]
        st.dataframe(rows[keep], hide_index=True, key="cmp_tradeoff_table")
        where = "all rows" if t.split == "all" else f"the {t.split} split"
        errors = t.rows["error"].dropna().astype(str)
        skipped = int(errors.str.startswith(NOT_RUN).sum())
        st.caption(f"{len(rows)} methods compared on {where} ({len(errors) - skipped} failed"
                   + (f", {skipped} not run here" if skipped else "") + ").")

if audit.edited:
    st.subheader("Where the weights changed")
    delta = audit.weight_change()
    st.plotly_chart(weight_change_overview(delta.changes()), key="cmp_weights")
    for layer in delta.layers:
        w, b = f"{layer}.weight", f"{layer}.bias"
        if w in delta.before:
            st.plotly_chart(weight_change_heatmap(layer, delta.before[w], delta.after[w], delta.before.get(b),
                                                  delta.after.get(b)), key=f"cmp_heat_{layer}")

    st.subheader("Attributions before and after")
    try:
        with st.spinner("Computing attributions"):
            att = audit.attributions_before_after()
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        att = {"kind": None}
    if att["kind"] == "pixels":
        st.caption("A test image with the trigger/cue: what pushes the model's prediction on it. After a good edit "
                   "the prediction is the true digit and the trigger no longer lights up.")
        st.plotly_chart(pixel_before_after_chart(att["corrupted"], att["before"], att["after"],
                                                 audit.data.class_names, int(att["labels"][0])), key="cmp_pixels")
    elif att["kind"] == "features":
        st.plotly_chart(feature_before_after_chart(att["before"], att["after"],
                                                   title="What drives the predictions, before and after"),
                        key="cmp_features")
next_step("report", "Next: 6. Report, export the audit")
