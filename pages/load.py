"""Step 1: pick a sample model and its data, or upload a model file and a CSV with its schema."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import streamlit as st

from auditor import TabularSchema, load_data, load_model
from auditor.audit.uploads import (
    DRAFTED_SPEC_NAME,
    EVERY_VALUE_A_CLASS,
    csv_columns,
    csv_values,
    data_for_stamp_choice,
    discard_upload,
    is_text_column,
    load_with_drafted_spec,
    read_upload,
    stamp_question,
    upload_folder,
)
from auditor.data import BUILTIN, FOLDER_DOC
from auditor.models import ModelSpec
from auditor.models.custom import TRUST_HELP
from auditor.models.files import loadable_suffixes
from auditor.models.sklearn_format import unnamed_columns
from auditor.present import format_group_value, format_value, md_plain
from pages.common import (
    builtin_data,
    get_audit,
    in_frame,
    new_audit,
    next_step,
    progress,
    sample_catalogue,
    sample_model,
    set_audit,
    show_error,
    stop,
)

IMAGE_CASE = "Image case (.npz or .zip)"

in_frame()

st.title("1 · Load a model and its data")
st.markdown("An audit in six steps (left): **load** a model, **localize** where a misbehaviour lives, set the "
            "**requirements** it must meet, **edit** it to repair it, **compare** before and after, export the "
            "**report**. With the Trojan sample it takes about a minute: press the buttons, then the *Next* link.")
st.caption("The audit works on your own copy of the model: the file and the loaded original are never changed.")

st.text_input("Your name (recorded with every step of this audit in the audit log)", key="user_name",
              placeholder="e.g. Ada Lovelace")
source = st.radio("Model source", ["Sample model", "Upload my own"], horizontal=True, key="load_source")
if source == "Sample model":
    catalogue = sample_catalogue()
    names = list(catalogue)
    name = st.selectbox("Sample model", names, index=names.index("digits_cnn_trojan") if "digits_cnn_trojan" in names
                        else 0, format_func=lambda n: f"{n}: {catalogue[n]['description']}", key="load_sample")
    default_data = catalogue[name]["data"] or "digits"
    data_names = list(BUILTIN)
    data_name = st.selectbox("Data set", data_names, index=data_names.index(default_data), key=f"load_data_{name}",
                             help="Defaults to the data set the model was trained on (from its spec).")
    if stamp_question(sample_model(name), data_name) is not None:  # e.g. the clean digits_cnn on digits-trojan
        st.caption(f"Built-in {data_name!r} stamps the {'trigger' if data_name.endswith('trojan') else 'cue'} of "
                   f"another sample; the audit tests exactly that one, and says so.")
    if st.button("Load model and data", type="primary", key="load_go"):
        try:
            with progress("Loading") as cb:
                cb(0.2, f"model {name}")
                bundle = sample_model(name)
                cb(0.5, f"data {data_name}")
                data = builtin_data(data_name, bundle.spec.to_json())
                cb(0.8, "evaluating")
                set_audit(new_audit(bundle, data, model_label=name, data_label=data_name,
                                    model_path=f"sample_models/{name}.safetensors"))
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
else:
    st.markdown("A `.safetensors` file written by this tool carries its spec. A state dict (`.pt`), `torch.export` "
                "archive (`.pt2`) or `.onnx` file needs one (JSON: architecture, input, class names); a scikit-learn "
                "`.skops` file (LogisticRegression, MLPClassifier) needs none.")
    model_file = st.file_uploader("Model file", type=[s.lstrip(".") for s in loadable_suffixes()], key="up_model")
    spec_file = st.file_uploader("Model spec (JSON, only when the file has none)", type=["json"], key="up_spec")
    draft_spec_box = st.checkbox(
        "No spec? Draft one from the data", key="up_draft", disabled=spec_file is not None,
        help="As `auditor spec init` does: input shape and reading, class names and their order guessed from the "
             "model and the data by probe runs; shown after loading, with what to confirm, and offered for "
             "download. Only for a file that carries no spec.")
    with st.expander("My own architecture (a Python file with the nn.Module class)"):
        arch_file = st.file_uploader("Architecture file (.py)", type=["py"], key="up_arch")
        arch_class = st.text_input("Class name in that file", key="up_arch_class")
        trust = st.checkbox("I trust this code: run it to build the model", key="up_trust", help=TRUST_HELP)
        st.caption(TRUST_HELP + " Weights are still read without running code.")
    data_kind = st.radio("Data", ["Built-in data set", "CSV file", IMAGE_CASE], horizontal=True,
                         key="up_data_kind", help="An image case is an .npz of your images and labels, or a .zip of "
                                                  "image files in class folders (train/, val/, test/ optional), "
                                                  "with your model's own "
                                                  "trigger or cue (target and mask + pattern, or corrupted twins).")
    schema, csv, case, ready = None, None, None, True
    train_csv = val_csv = None  # the user's own partition, as files
    if data_kind == "Built-in data set":
        data_name = st.selectbox("Data set", list(BUILTIN), key="up_builtin")
        question = stamp_question(None, data_name)
        if question is not None:  # never pair the sample's trigger with an uploaded model silently
            opts = question["options"]
            choice = st.radio(question["question"], list(opts), index=None, format_func=opts.get,
                              key="up_stamp", help=question["help"])
            if choice == "case":
                case = st.file_uploader("Your image case (.npz: images, labels, target, mask and pattern; or .zip of "
                                        "image files in class folders with a trigger.json)", type=["npz", "zip"],
                                        key="up_stamp_case")
            ready = choice is not None and (choice != "case" or case is not None)
            if choice is None:
                st.caption("Answer the question above to load.")
            elif ready:
                data_name = data_for_stamp_choice(data_name, choice)
    elif data_kind == IMAGE_CASE:
        case = st.file_uploader("Image case (.npz: images and labels; for a trigger or cue also target, and mask + "
                                "pattern or corrupted twins. Or a .zip of image files in class folders, with a "
                                "trigger.json naming the target and the mask and pattern files)",
                                type=["npz", "zip"], key="up_npz")
        st.caption(f"Image files are read as the model's input (its spec's shape, value_range, normalize and resize); "
                   f"see {FOLDER_DOC}.")
        ready = case is not None
    else:
        csv = st.file_uploader("CSV file (one row per example, a header row)", type=["csv"], key="up_csv")
        ready = csv is not None  # a page revisited keeps the choice, not the file: ask for it again
        if csv is None:
            st.caption("Upload the CSV to load (a file chosen before leaving this page is not kept).")
        else:
            try:
                head = csv_columns(csv.getvalue())
                cols = list(head.columns)
                target = st.selectbox("Target column (what the model predicts)", cols, index=len(cols) - 1,
                                      key="up_target")
                values = csv_values(csv.getvalue(), target)
                choices = values + ([EVERY_VALUE_A_CLASS] if len(values) > 2 else [])
                positive = st.selectbox("Positive label (the favourable outcome)", choices, index=len(values) - 1,
                                        key="up_positive")
                positive = None if positive == EVERY_VALUE_A_CLASS else positive
                others = [c for c in cols if c != target]
                protected = st.multiselect("Protected attributes (grouped by in fairness metrics, not model inputs)",
                                           others, key="up_protected")
                NO_SPLIT = "(none: the auditor splits the rows)"
                split_col = st.selectbox(
                    "Split column (train / val / test per row)", [NO_SPLIT] + [c for c in others if c not in protected],
                    key="up_split_column",
                    help="A column of your own that says which rows the model was trained on (values train, val, "
                         "test). Without one, metrics are taken on every row, and editors draw training and "
                         "validation rows from a stratified 60/20/20 split of the file.")
                split_col = None if split_col == NO_SPLIT else split_col
                if split_col is None:
                    train_csv = st.file_uploader(
                        "Or your own partition: the training rows (CSV with the same columns; the file above then "
                        "holds the test rows)", type=["csv"], key="up_train_csv",
                        help="The rows the model was trained on: editors draw clean samples and check rows from "
                             "them, and the preprocessing is fitted on them when the model has none stored.")
                    if train_csv is not None:
                        val_csv = st.file_uploader("Validation rows (CSV, optional: else 20 % of the training rows "
                                                   "are held out)", type=["csv"], key="up_val_csv")
                        st.caption(f"Metrics on **{csv.name}** (test rows); training rows from **{train_csv.name}**"
                                   + (f", validation rows from **{val_csv.name}**." if val_csv is not None else
                                      ", 20 % of them held out for validation."))
                    else:
                        st.caption("No split column: the audit reads **every row**, the model's own training rows "
                                   "included, and editors use a seeded 60/20/20 split. Pick your column, or give "
                                   "your training rows as a file, if you have them.")
                readable = [c for c in others if c not in protected and c != split_col]
                text_cols = [c for c in readable if is_text_column(head[c])]
                categorical = st.multiselect("Categorical columns (one-hot encoded)", readable,
                                             default=text_cols, key="up_categorical")
                inputs = st.multiselect("Model input columns, in the model's order", readable, default=readable,
                                        key="up_inputs",
                                        help="The columns the model reads (every column but the target, the "
                                             "protected attributes and the split column, by default); leave out "
                                             "columns it never saw, such as an ID.")
                schema = TabularSchema(target=target, positive=positive, protected=protected, categorical=categorical,
                                       split_column=split_col, inputs=None if inputs == readable else inputs)
            except Exception as exc:  # noqa: BLE001
                ready = False
                show_error(exc)
    if st.button("Load uploaded model", type="primary", disabled=model_file is None or not ready, key="up_go"):
        folder = upload_folder()
        try:
            with progress("Loading") as cb:
                path = read_upload(model_file.getvalue(), model_file.name, folder)
                spec = ModelSpec.from_json(spec_file.getvalue().decode()) if spec_file is not None else None
                custom = {}
                if arch_file is not None:
                    custom = {"arch_file": read_upload(arch_file.getvalue(), arch_file.name, folder),
                              "arch_class": arch_class or None, "trust_code": trust}
                own = {part: read_upload(f.getvalue(), f.name, folder)
                       for part, f in (("train", train_csv), ("val", val_csv)) if f is not None}
                csv_path = read_upload(csv.getvalue(), csv.name, folder) if csv is not None else None
                case_path = read_upload(case.getvalue(), case.name, folder) if case is not None else None

                def read_data(model_spec):
                    """The chosen data, read as a model of `model_spec` sees it (None: as it is)."""
                    if csv_path is not None:
                        sch = schema
                        if model_spec is not None and model_spec.preprocessing and categorical == text_cols:
                            sch = dataclasses.replace(sch, categorical=[])  # the model's spec says, not the guess
                        if model_spec is not None and sch.inputs is None and unnamed_columns(model_spec):
                            sch = dataclasses.replace(sch, inputs=inputs)  # fitted on an unnamed array: this list
                        return load_data(csv_path, schema=sch, spec=model_spec, **own)
                    if case_path is not None:
                        return load_data(case_path, spec=model_spec)
                    return builtin_data(data_name, model_spec.to_json() if model_spec is not None else None)

                drafted = None
                if spec is None and draft_spec_box:
                    bundle, data, drafted = load_with_drafted_spec(path, read_data, **custom)
                else:
                    bundle = load_model(path, spec=spec, **custom)
                    cb(0.5, "data")
                    data = read_data(bundle.spec)
                uploaded = csv if csv is not None else case
                audit = new_audit(bundle, data, model_label=model_file.name.rsplit(".", 1)[0],
                                  data_label=uploaded.name if uploaded is not None else data_name,
                                  model_path=model_file.name)
                audit.spec_path = spec_file.name if spec_file is not None else None
                if drafted is not None:
                    audit.spec_path, audit.spec_draft = DRAFTED_SPEC_NAME, drafted
                set_audit(audit)
        except Exception as exc:  # noqa: BLE001
            discard_upload(folder)
            show_error(exc)
            if spec_file is None and not draft_spec_box and "spec" in str(exc):
                st.info("No spec at hand? Tick **No spec? Draft one from the data** above and load again: the page "
                        "drafts one as `auditor spec init` does and shows what to confirm.")

audit = get_audit()
if audit is None:
    st.info("Choose a model and press **Load**." + (" New here? Keep the Trojan sample and press the button."
                                                     if source == "Sample model" else ""))
    stop()
st.success(f"Loaded **{md_plain(audit.model_label)}** with data **{md_plain(audit.data_label)}**.")
drafted = getattr(audit, "spec_draft", None)
if drafted is not None:
    st.warning("**The model's spec was drafted from the data; confirm it before you rely on these numbers:**\n\n"
               + "\n".join(f"- {md_plain(c)}" for c in drafted.confirm), icon=":material/edit_note:")
    with st.expander("What the draft guessed (probe runs)"):
        st.markdown("\n".join(f"- {md_plain(g.strip())}" for g in drafted.guessed))
    st.download_button("Download the drafted spec (JSON)", json.dumps(drafted.spec, indent=2) + "\n",
                       file_name=DRAFTED_SPEC_NAME, mime="application/json", key="up_draft_download")
tested = audit.status()["stamp"]
if tested:
    st.info(f"**Tested with {md_plain(tested)}.** Attack success and cue metrics below measure this "
            f"{audit.data.stamp.kind if audit.data.stamp is not None else 'trigger'}, no other.",
            icon=":material/target:")
ev = audit.evaluate("pristine")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Parameters", f"{audit.pristine.n_parameters:,}")
c2.metric("Test accuracy" if audit.split == "test" else f"Accuracy ({audit.rows_words})",
          format_value("accuracy", ev.metrics["accuracy"]))
c3.metric("Rows audited", f"{ev.rows:,}", help=audit.data.describe_split(audit.split))
c4.metric("Requirements met", f"{sum(r.passed for r in ev.requirements)} of {len(ev.requirements)}")
st.markdown(f"Weights sha256 (identifies this exact model): `{audit.pristine_sha256}`")
if ev.warnings:  # how the data was read (blanks filled, unseen categories, identifiers), small groups, ...
    st.warning("**Read before you rely on these numbers:**\n\n" + "\n".join(f"- {md_plain(w)}" for w in ev.warnings),
               icon=":material/warning:")
st.subheader(f"Metrics of the model as loaded ({audit.rows_words})")
metrics = audit.metrics_table("pristine")
st.dataframe(metrics, hide_index=True, height=35 * (len(metrics) + 1) + 3,
             column_config={"meaning": st.column_config.TextColumn(width="large")})
for attr in ev.groups:
    st.subheader(f"Per group: {md_plain(attr)}")
    rows = [{attr: g, **{k.replace("_", " "): format_group_value(k, v) for k, v in vals.items()}}
            for g, vals in ev.groups[attr].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
st.subheader("Layers")
st.caption("Linear and Conv2d layers are the ones Localize ranks and the rank-one and learned editors change; "
           "fine-tuning baselines change every parameter, normalisation layers included (their records list each).")
st.dataframe(audit.layers(), hide_index=True)
next_step("localize", "Next: 2. Localize, where in the network the problem lives")
