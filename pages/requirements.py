"""Step 3: add, remove and set requirements (metric, direction, threshold) with a live pass/fail table."""
from __future__ import annotations

import streamlit as st

from auditor import METRICS
from auditor.present import CATEGORIES, base_metric, format_value, md_plain, metric_help, metric_label
from pages.common import in_frame, need_audit, next_step, requirement_sentence, show_error

in_frame()

audit = need_audit()
st.title("3 · Requirements: what must the model satisfy?")
st.markdown("A requirement is a metric, a direction and a threshold, e.g. *attack success rate at most 2 %*. "
            "Rates are shown in percent; gaps between groups in percentage points (pp). "
            f"Values are measured on {'every row' if audit.split == 'all' else 'the ' + audit.rows_words}.")


def is_count(key: str) -> bool:
    return METRICS[base_metric(key)].unit == "count"


def unit(key: str) -> str:
    """The unit of a threshold field: percent, percentage points for gaps, none for counts."""
    shown = format_value(key, 0.0)
    return " (pp)" if shown.endswith("pp") else " (%)" if shown.endswith("%") else ""


for i, req in enumerate(list(audit.requirements)):
    c1, c2, c3, c4 = st.columns([4, 2, 2, 1], vertical_alignment="center")
    scale = 1.0 if is_count(req.key) else 100.0
    value = c2.number_input(f"threshold{unit(req.key)}", value=float(req.threshold * scale),
                            step=1.0 if scale == 1 else 0.5, format="%.2f", key=f"req_thr_{req.key}_{req.op}")
    if abs(value / scale - req.threshold) > 1e-12:
        audit.set_threshold(i, value / scale)
        req = audit.requirements[i]
    c1.markdown(f"**{md_plain(requirement_sentence(req.key, req.op, req.threshold))}**  \n"
                f"{md_plain(req.expr)}: {metric_help(req.key)}")
    res = audit.evaluate().requirements[i]
    c3.markdown(f"now **{format_value(req.key, res.value)}**  \n"
                + {"pass": ":green[✔ passes]", "inconclusive": ":orange[? inconclusive]"}.get(
                    res.verdict, ":green[✔ passes]" if res.passed else ":red[✘ fails]"))
    if c4.button("Remove", key=f"req_rm_{req.key}_{req.op}"):
        audit.remove_requirement(i)
        st.rerun()
if not audit.requirements:
    st.info("No requirements yet: add one below.")

st.subheader("Add a requirement")
metrics = audit.available_metrics()
taken = {r.key for r in audit.requirements}
options = [m for m in metrics if m not in taken]
if options:
    a1, a2, a3, a4 = st.columns([4, 1, 2, 1], vertical_alignment="bottom")
    key = a1.selectbox("Metric", options, key="req_add_metric", format_func=lambda m: (
        f"{metric_label(m)} ({CATEGORIES.get(base_metric(m), 'other')}): {metric_help(m)}"))
    info = METRICS[base_metric(key)]
    op = a2.selectbox("must be", ["<=", ">="], index=1 if info.higher_is_better else 0, key=f"req_add_op_{key}",
                      format_func=lambda o: "at most" if o == "<=" else "at least")
    scale = 1.0 if is_count(key) else 100.0
    current = audit.evaluate().metrics[key]
    thr = a3.number_input(f"threshold{unit(key)}", value=round(float(current * scale), 2),
                          step=1.0 if scale == 1 else 0.5, format="%.2f", key=f"req_add_thr_{key}",
                          help=f"Now: {format_value(key, current)}")
    if a4.button("Add", type="primary", key="req_add"):
        try:
            audit.add_requirement(f"{key} {op} {thr / scale:.6g}")
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
if st.button("Reset to the defaults for this data set", key="req_reset"):
    audit.reset_requirements()
    for k in [k for k in st.session_state if str(k).startswith("req_")]:
        del st.session_state[k]
    st.rerun()

with st.expander("Mistakes to fix (optional): test rows the model gets wrong", expanded=bool(audit.fix_specs)):
    st.caption("Editors such as MEND fix given mistakes (*this input should get that label*). Each chosen row asks "
               "for its true label; shifted and noised copies of it measure whether the fix generalises "
               "(*generality*); *edit success* is the share of chosen rows the model then gets right.")
    wrong = audit.mistakes()
    shown = {f"{r.row}={r.true}": f"row {r.row}: true {r.true}, predicted {r.predicted}" for r in wrong.itertuples()}
    options = list(dict.fromkeys([*audit.fix_specs, *shown]))
    picked = st.multiselect(f"Rows to fix ({len(wrong)} wrong test rows shown)", options, default=audit.fix_specs,
                            format_func=lambda o: shown.get(o, o), key="req_fixes")
    if picked != audit.fix_specs:
        try:
            audit.set_fixes(picked)
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            show_error(exc)

st.subheader("Status of the current model")
table = audit.requirement_table()
table["passes"] = table["passes"].map({True: "✔ pass", False: "✘ fail"})
st.dataframe(table, hide_index=True, key="req_table")
if audit.requirements:
    ok = audit.passed
    (st.success if ok else st.warning)("All requirements hold." if ok else
                                       "Some requirements fail: the Edit step repairs the model.")
next_step("edit", "Next: 4. Edit, repair the model")
