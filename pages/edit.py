"""Step 4: pick an editor from the registry, set it up (defaults work), run it, undo edits, download."""
from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from auditor.backend import describe_device
from auditor.errors import AuditorError
from auditor.fixes import fixes_table_specs, parse_fixes_text
from auditor.present import editor_notes, format_value, md_plain, metric_label, setting_fields
from pages.common import in_frame, need_audit, next_step, progress, show_error, stop

in_frame()

audit = need_audit()
st.title("4 · Edit: repair the model")
st.caption("An edit changes a copy of the model's weights. Every edit can be undone exactly (bit for bit).")

gpu = torch.cuda.is_available()
if gpu:
    st.success(f"Runs on the **GPU**: `{describe_device('cuda')}`", icon=":material/memory:")
    device = st.radio("Device", ["cuda", "cpu"], horizontal=True, key="edit_device")
else:
    st.info("Runs on the **CPU** (no CUDA GPU found). Every editor works on the CPU; a GPU only makes it faster.",
            icon=":material/memory:")
    device = "cpu"



def show_unavailable() -> None:
    """Editors that cannot edit this model on this data, greyed out, each with why and what works instead."""
    missing = audit.unavailable_editors()
    if not missing:
        return
    st.subheader(f"Not available for this model ({len(missing)})")
    st.caption("Registered editors that cannot edit this model on this data: why not, and what works instead.")
    for name, reason in missing:
        c1, c2 = st.columns([1, 4], vertical_alignment="center")
        c1.button(name, disabled=True, key=f"edit_unavailable_{name}", help=reason, width="stretch")
        c2.caption(reason)


def mistakes_to_fix() -> None:
    """Many mistakes at once: pasted `ROW=LABEL` items or a `row,label` table, or an uploaded CSV of rows of the
    audited data with their correct labels; each edit keeps the mistakes it was asked to fix in its provenance."""
    with st.expander(f"Mistakes to fix ({len(audit.fix_specs)} set)", expanded=bool(audit.fix_specs)):
        st.caption("Editors that fix mistakes (mend, retrieval, finetune-fix, enn) need rows with their correct "
                   f"label: row indices into the audited data ({audit.rows_words}) and a label (class name or "
                   "index). Paste `ROW=LABEL` items (one a line) or a table with a `row,label` header, or upload "
                   "a CSV with those columns. Set new mistakes and run again to fix them on top of the last edit; "
                   "every edit keeps the rows it fixed.")
        if audit.fix_specs:
            st.markdown("Now: " + md_plain(", ".join(audit.fix_specs[:20]))
                        + (f" … ({len(audit.fix_specs)} in all)" if len(audit.fix_specs) > 20 else ""))
        text = st.text_area("Paste mistakes to fix", key="edit_fixes_text", placeholder="12=3\n40=7",
                            help="ROW=LABEL items, or CSV text with a row,label header")
        upload = st.file_uploader("or upload a CSV (columns row, label)", type=["csv"], key="edit_fixes_csv")
        c1, c2 = st.columns(2)
        if c1.button("Use these mistakes", key="edit_fixes_set", type="primary"):
            try:
                specs = parse_fixes_text(text, audit.data, audit.split)
                if upload is not None:
                    frame = pd.read_csv(upload, skipinitialspace=True)
                    table = fixes_table_specs(frame.rename(columns=lambda c: str(c).strip()), audit.data, audit.split)
                    if table is None:
                        raise AuditorError("the uploaded CSV needs a 'row' column (row indices into the audited "
                                           "data) and a 'label' column; input rows with their label go through the "
                                           "command line: auditor edit --fixes FILE.csv")
                    specs += table
                if not specs:
                    raise AuditorError("no mistakes given: paste ROW=LABEL items or upload a CSV")
                audit.set_fixes(list(dict.fromkeys(specs)))
                st.rerun()
            except Exception as exc:  # noqa: BLE001
                show_error(exc)
        if audit.fix_specs and c2.button("Clear the mistakes", key="edit_fixes_clear"):
            audit.set_fixes([])
            st.rerun()


mistakes_to_fix()
editors = audit.editors()
if not editors:
    st.warning("No registered editor can edit this model on this data; see below why, and what works instead.")
    show_unavailable()
    stop()
names = [c.name for c in editors]
by_name = {c.name: c for c in editors}
kinds = {"rank-one": "closed-form rank-one edit", "learned": "learned editor", "baseline": "baseline"}
explain = {"rank-one": "changes one layer's weight matrix in closed form so that the layer treats a corrupted "
                       "input like its clean twin: by default (rank \"auto\") a rank-one update from one clean "
                       "sample and the joint fit of every changed key from several (rank up to the number of "
                       "keys); set rank to 1, \"samples\" (one direction each) or \"joint\" to choose; the "
                       "result states the rank and the size of the change.",
           "learned": "a network trained on many models of this family outputs the weight change in one pass.",
           "baseline": "what practitioners would otherwise do (fine-tuning, pruning, ...), run here for comparison."}
name = st.selectbox("Editor (best suited to the failing requirements first)", names, key="edit_editor",
                    format_func=lambda n: f"{n} ({kinds.get(by_name[n].kind, by_name[n].kind)})")
kind = by_name[name].kind
st.caption(f"**{name}**: {by_name[name].description}. {kinds.get(kind, kind).capitalize()}: {explain.get(kind, '')}")
settings = {}
with st.expander("Settings (the defaults work)", expanded=False):
    for s in setting_fields(by_name[name], audit.current, audit.data):
        key, label = f"hp_{name}_{s.name}", s.name.replace("_", " ")
        if s.kind == "choice":
            opts = (["auto"] if s.optional else []) + list(s.choices)
            default = audit.chosen_layer if s.name == "layer" and audit.chosen_layer else s.default
            pick = st.selectbox(label, opts, index=opts.index(default) if default in opts else 0, key=key, help=s.help)
            settings[s.name] = None if pick == "auto" else pick
        elif s.kind == "bool":
            settings[s.name] = st.checkbox(label, value=bool(s.default), key=key, help=s.help)
        elif s.optional and s.default is None:
            if st.checkbox(f"set {label} (otherwise automatic)", key=key + "_on", help=s.help):
                settings[s.name] = (st.number_input(label, value=1, step=1, key=key) if s.kind == "int" else
                                    st.number_input(label, value=0.5, format="%g", key=key) if s.kind == "float" else
                                    st.text_input(label, key=key))
        elif s.kind == "int":
            settings[s.name] = int(st.number_input(label, value=int(s.default), step=1, key=key, help=s.help))
        elif s.kind == "float":
            settings[s.name] = float(st.number_input(label, value=float(s.default), format="%g", key=key, help=s.help))
        else:
            settings[s.name] = st.text_input(label, value=str(s.default), key=key, help=s.help)

if st.button(f"Run {name}", type="primary", key="edit_run"):
    try:
        with progress(f"Running {name}") as cb:
            record = audit.run_edit(name, settings, device=device, callback=cb)
        st.session_state["edit_last"] = len(audit.edits)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)

earlier = len(audit.earlier_edits)
if earlier:
    st.caption(f"The loaded model file already carries {earlier} earlier edit(s) "
               f"({md_plain(', '.join(e.get('editor') or '?' for e in audit.earlier_edits))}); the edits below are "
               "added after them in the downloaded file's provenance.")
if audit.edits:
    st.subheader("Edits applied")
    pristine = audit.evaluate("pristine").metrics
    for w in audit.new_warnings():  # e.g. a backdoor sent to another class: attack success cannot see it
        st.warning(md_plain(w), icon=":material/warning:")
    for i, rec in enumerate(audit.edits):
        r = rec.result
        before = audit.edits[i - 1].metrics_after if i else pristine  # each edit against the model it was applied to
        changes = "; ".join(f"{metric_label(metric_key)}: {format_value(metric_key, before.get(metric_key))} → "
                            f"{format_value(metric_key, rec.metrics_after.get(metric_key))}"
                            for metric_key in dict.fromkeys(q.split(" ")[0] for q in rec.requirements))
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        verdict = ":green[all requirements hold]" if rec.passed_after else ":red[some requirements still fail]"
        fixed = (f"  \nfixes {rec.fixes['count']} mistake(s): {md_plain(', '.join(rec.fixes['rows'][:10]))}"
                 f"{' …' if len(rec.fixes['rows']) > 10 else ''} (sha256 `{rec.fixes['sha256'][:12]}…`)"
                 if rec.fixes else "")
        if rec.sha_after == rec.sha_before:  # nothing changed: say why, not "an edit"
            why = (r.extras or {}).get("no_edit_reason") or next(
                (e.get("message") or e.get("reason") for e in reversed(r.log) if e.get("message") or e.get("reason")),
                "the editor left every weight as it was")
            c1.warning(f"**Edit {earlier + i + 1}: {r.editor} changed nothing**, {r.seconds:.2f} s: {md_plain(why)}. "
                       "The model is as it was (sha256 unchanged); requirements as before.")
        else:
            layers = md_plain(', '.join(r.layers) or 'none')
            c1.markdown(f"**Edit {earlier + i + 1}: {r.editor}** on layer(s) {layers}, {r.seconds:.2f} s on "
                        f"`{r.device}`: {verdict}  \n{changes}{fixed}  \n"
                        f"model sha256 `{rec.sha_after[:12]}…` (was `{rec.sha_before[:12]}…`)")
        for kind, message in editor_notes(r.log):  # what the editor itself wants said (features dropped, ...)
            c1.caption(f"{kind}: {md_plain(message)}")
        if c2.button("Undo", key=f"edit_undo_{i}", help="Restore the weights exactly as before this edit "
                                                         "(later edits are undone too)."):
            audit.revert(i)
            st.rerun()
        if r.log:
            with st.expander(f"What edit {earlier + i + 1} did, step by step"):
                cols = ["step", "action", "layer", "accepted", "accuracy", "reason", "keys", "scale", "norm",
                        "examples", "fixed", "entries", "radius", "held_to", "found"]
                steps = [e for e in r.log if not (isinstance(e, dict) and e.get("step") in ("note", "warning")
                                                  and e.get("message"))]  # the notes are said above
                shown = [k for k in cols if any(k in e for e in steps)]
                log = pd.DataFrame([{k: e.get(k) for k in shown} for e in steps])  # a missing value is None, not NaN
                for c in log.columns:  # mixed columns (step 1, 2, ..., "end") as text: Arrow takes one type
                    if log[c].map(type).nunique() > 1:
                        log[c] = log[c].map(lambda v: "" if v is None or (isinstance(v, float) and v != v)
                                            else str(v))
                st.dataframe(log, hide_index=True)
    # The file is written once per model state and offered as plain bytes. A deferred download (a callable
    # as data) is fetched in a separate request that fails ("Request timed out") when a rerun or a busy
    # server gets in its way; the bytes of the one current model are kept instead.
    state = (len(audit.edits), audit.edits[-1].sha_after, audit.edited_filename)  # no re-hashing per rerun
    if audit.edits[-1].sha_after == audit.pristine_sha256:  # every edit changed nothing: no edited model to offer
        st.caption("The model is as loaded (the edits changed nothing), so there is no edited model to download.")
    else:
        held = st.session_state.get("edit_model_bytes")
        if held is None or held[0] != state:
            held = st.session_state["edit_model_bytes"] = (state, audit.model_bytes())
        st.download_button(f"Download the edited model ({audit.download_suffix})", data=held[1],
                           file_name=audit.edited_filename, mime="application/octet-stream", key="edit_download",
                           icon=":material/download:")
else:
    st.caption("No edit applied yet.")
show_unavailable()
next_step("compare", "Next: 5. Compare before and after")
