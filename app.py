"""Dashboard home: the shipped sample models and their metrics."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from auditor import evaluate, load_data, load_model

SAMPLES = Path(__file__).parent / "sample_models"

st.set_page_config(page_title="Model auditor", layout="wide")
st.title("Model auditor")
st.caption("Audit PyTorch models against requirements and repair them with edits.")


@st.cache_data(show_spinner="Evaluating sample models...")
def sample_table() -> pd.DataFrame:
    rows = []
    for path in sorted(SAMPLES.glob("*.safetensors")):
        bundle = load_model(path)
        if bundle.spec.data is None:
            continue
        ev = evaluate(bundle, load_data(bundle.spec.data, spec=bundle.spec))
        rows.append({"model": path.stem, "data": bundle.spec.data, "parameters": bundle.n_parameters,
                     **{k: round(v, 4) for k, v in ev.metrics.items() if "[" not in k}})
    return pd.DataFrame(rows)


st.subheader("Sample models")
st.dataframe(sample_table(), hide_index=True, use_container_width=True)
