"""Issue 16, items 1 and 2: small files that declare huge allocations are refused before allocating
(memory measured in a subprocess stays under the budget), and text from a model, data or user reaches
charts, reports and the dashboard as plain text (no network request while printing or opening a
report made from hostile text; no Markdown image in the dashboard's error box).
"""
from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from auditor.errors import AuditorError

ROOT = Path(__file__).resolve().parents[1]
BUDGET_KB = 2 * 2**20  # 2 GB, in ru_maxrss units (KB)
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(p.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.stdout.write(p.stderr[-2000:])")


def measured(*cmd: str, env: dict | None = None) -> tuple[int, int, str]:
    """(exit status, peak resident memory in KB of `cmd` and its children, its stderr): measured in a
    wrapper process of its own, so that no earlier child of the test run is counted."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env=env).stdout
    rc, peak, *err = out.split("\n")
    return int(rc), int(peak), "\n".join(err).strip()


def auditor_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from auditor.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def assert_one_line_refusal(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("auditor: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


# --- 1. budgets checked before allocating ------------------------------------------------------------
@pytest.mark.slow
def test_stored_categories_are_budgeted(tmp_path):
    """A hidden-width-1 MLP whose stored preprocessing lists 20 000 extra categories: `evaluate ... adult`
    used to reach 6.6 GB; now a one-line refusal naming the limit, well under 2 GB."""
    from auditor.models import ModelBundle, build_architecture, load_model, save_model

    base = load_model(ROOT / "sample_models" / "adult_mlp.safetensors")
    spec = copy.deepcopy(base.spec)
    col = next(c for c in spec.preprocessing["columns"] if c["type"] == "categorical")
    col["categories"] = list(col["categories"]) + [f"x{i}" for i in range(20_000)]
    width = sum(len(c["categories"]) if c["type"] == "categorical" else 1 for c in spec.preprocessing["columns"])
    spec.arch = {**spec.arch, "in_features": width, "hidden": [1]}
    path = tmp_path / "wide.safetensors"
    save_model(ModelBundle(build_architecture(spec.arch), spec, str(path), "safetensors"), path)
    rc, peak, err = measured(*auditor_cli("evaluate", str(path), "adult"))
    assert_one_line_refusal(rc, err, "AUDITOR_MAX_MATRIX_MB", "stored preprocessing", "20100 inputs")
    assert peak < BUDGET_KB, peak


@pytest.mark.slow
def test_csv_categorical_column_is_budgeted(tmp_path):
    """A 200 000-distinct-value column read as categorical: 200 k rows x 120 k one-hot inputs refused."""
    n = 200_000
    rng = np.random.default_rng(0)
    path = tmp_path / "ids.csv"
    with open(path, "w") as f:
        f.write("id,x,g,y\n")
        for i, (x, g, y) in enumerate(zip(rng.normal(size=n).round(3), rng.integers(0, 2, n), rng.integers(0, 2, n))):
            f.write(f"v{i},{x},{'ab'[g]},{y}\n")
    code = ("import sys\nfrom auditor.data import load_data, TabularSchema\nfrom auditor.errors import AuditorError\n"
            "try:\n    load_data(sys.argv[1], TabularSchema(target='y', protected=['g'], categorical=['id']))\n"
            "except AuditorError as exc:\n    sys.stderr.write(f'auditor: error: {exc}\\n'); sys.exit(2)\n")
    rc, peak, err = measured(sys.executable, "-c", code, str(path))
    assert_one_line_refusal(rc, err, "ids.csv", "categorical", "AUDITOR_MAX_MATRIX_MB")
    assert peak < BUDGET_KB, peak


def test_many_categories_under_a_raised_budget_still_transform_right():
    """The one-hot block is built by lookup (no rows x categories comparison) and means the same."""
    import pandas as pd

    from auditor.data.tabular import transform

    prep = {"version": 1, "columns": [{"name": "c", "type": "categorical", "categories": ["a", "b", "c"]},
                                      {"name": "n", "type": "numeric", "mean": 1.0, "std": 2.0, "log1p": False}]}
    X = transform(pd.DataFrame({"c": ["b", "z", "a"], "n": [1.0, 3.0, 5.0]}), prep)
    assert X.tolist() == [[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 2]]


def _small_case() -> dict:
    rng = np.random.default_rng(0)
    return {"images": rng.random((20, 8, 8)).astype(np.float32), "labels": np.arange(20) % 2,
            "target": np.array(0), "mask": np.ones((8, 8), np.float32), "pattern": np.zeros((8, 8), np.float32)}


def _write_npz(path: Path, arrays: dict, extra: tuple[str, tuple, int] | None = None) -> None:
    """An .npz of `arrays`, plus an `extra` member (name, declared shape, bytes of zeros written), streamed
    so that the test itself never holds it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(arr))
        if extra:
            key, shape, nbytes = extra
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                chunk = bytes(16 * 2**20)
                for _ in range(nbytes // len(chunk)):
                    f.write(chunk)
                f.write(bytes(nbytes % len(chunk)))


@pytest.mark.slow
def test_npz_member_of_zeros_is_never_read(tmp_path):
    """A 1.5 GB member of zeros (compressed to about 1.5 MB): refused from the zip header, not read."""
    for key in ("kind", "unused"):
        path = tmp_path / f"zeros_{key}.npz"
        n = 1_500_000_000 // 4
        _write_npz(path, _small_case(), (key, (n,), n * 4))
        assert path.stat().st_size < 10 * 2**20
        rc, peak, err = measured(*auditor_cli("evaluate", str(ROOT / "sample_models" / "digits_cnn.safetensors"),
                                              str(path)))
        assert_one_line_refusal(rc, err, path.name)
        assert peak < BUDGET_KB, (key, peak)


@pytest.mark.slow
def test_npz_header_declaring_a_trillion_values(tmp_path):
    path = tmp_path / "trillion.npz"
    case = _small_case()
    del case["images"]
    _write_npz(path, case, ("images", (10**6, 10**3, 10**3), 4096))
    assert path.stat().st_size < 64 * 2**10
    rc, peak, err = measured(*auditor_cli("evaluate", str(ROOT / "sample_models" / "digits_cnn.safetensors"),
                                          str(path)))
    assert_one_line_refusal(rc, err, "trillion.npz", "'images'")
    assert peak < BUDGET_KB, peak


def test_npz_within_budget_loads_and_budget_can_be_lowered(tmp_path, monkeypatch):
    from auditor.data import load_data

    path = tmp_path / "ok.npz"
    _write_npz(path, _small_case())
    assert len(load_data(path).test) > 0
    monkeypatch.setenv("AUDITOR_MAX_NPZ_MB", "0.001")
    with pytest.raises(AuditorError, match="AUDITOR_MAX_NPZ_MB"):
        load_data(path)


def _onnx_building(n: int, path: Path, data_dependent: bool = False) -> Path:
    """A 4-input, 2-class ONNX model whose logits add the sum of an n x n constant of zeros, built at run
    time by ConstantOfShape (from a constant shape, or from a shape computed from the input's values)."""
    onnx = pytest.importorskip("onnx")
    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("no onnx2torch")
    from onnx import TensorProto, helper, numpy_helper

    const = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v)))  # noqa: E731
    if data_dependent:  # n = max(input) * 0 + n: shape inference cannot know it
        shape_nodes = [helper.make_node("ReduceMax", ["input"], ["m"], keepdims=0), const("zero", np.float32(0)),
                       const("nn", np.float32(n)), helper.make_node("Mul", ["m", "zero"], ["m0"]),
                       helper.make_node("Add", ["m0", "nn"], ["nf"]),
                       helper.make_node("Cast", ["nf"], ["ni"], to=TensorProto.INT64),
                       const("axes", np.array([0], np.int64)), helper.make_node("Unsqueeze", ["ni", "axes"], ["n1"]),
                       helper.make_node("Concat", ["n1", "n1"], ["shape"], axis=0)]
    else:
        shape_nodes = [const("shape", np.array([n, n], np.int64))]
    nodes = [*shape_nodes,
             helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.array([0.0], np.float32))),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
             helper.make_node("Gemm", ["input", "W", "b"], ["g"], transB=1),
             helper.make_node("Add", ["g", "s"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              [numpy_helper.from_array(np.ones((2, 4), np.float32), "W"),
                               numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = {"format": "auditor-model/1", "arch": {"name": "onnx", "in_features": 4, "num_classes": 2},
            "class_names": ["a", "b"], "input": {"kind": "tabular", "features": ["f0", "f1", "f2", "f3"]}}
    entry = model.metadata_props.add()
    entry.key, entry.value = "auditor.spec", json.dumps(spec)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("data_dependent", [False, True], ids=["static-shape", "data-dependent-shape"])
def test_onnx_graph_building_a_huge_constant(tmp_path, data_dependent):
    """16 000 x 16 000 floats (1 GB) from a 1 KB graph: refused from the inferred shape, or by the probe
    run's subprocess under its memory limit."""
    path = _onnx_building(16_000, tmp_path / "big.onnx", data_dependent)
    code = ("import sys\nfrom auditor.models import load_model\nfrom auditor.errors import AuditorError\n"
            "try:\n    load_model(sys.argv[1])\n"
            "except AuditorError as exc:\n    sys.stderr.write(f'auditor: error: {exc}\\n'); sys.exit(2)\n")
    rc, peak, err = measured(sys.executable, "-c", code, str(path))
    assert_one_line_refusal(rc, err, "big.onnx", "AUDITOR_PROBE_MEMORY_MB")
    assert peak < 1_000_000, peak  # under 1 GB: the constant was never built in full


def test_onnx_graph_with_a_small_constant_loads(tmp_path):
    from auditor.models import load_model

    for dynamic in (False, True):
        bundle = load_model(_onnx_building(100, tmp_path / f"small{dynamic}.onnx", dynamic))
        assert bundle.format == "onnx"



HUNGRY_ARCH = """
import torch
from torch import nn


class Hungry(nn.Module):
    def __init__(self, in_features=4, num_classes=2):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.scratch = torch.ones(2 ** 30)  # 4 GB built by the constructor


class Small(nn.Module):
    def __init__(self, in_features=4, num_classes=2):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.mark.slow
def test_custom_class_that_allocates_without_bound_is_refused_in_a_child(tmp_path):
    """Trusted code still runs first in a child under the probe budget: a constructor that builds 4 GB
    is a one-line refusal, and this process never holds it; a normal class loads."""
    import json

    import torch
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(HUNGRY_ARCH)
    save_file({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    spec = {"arch": {"name": "custom", "in_features": 4, "num_classes": 2},
            "input": {"kind": "tabular", "shape": [4]}, "class_names": ["a", "b"]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = ("import sys\nfrom auditor.models import load_model\nfrom auditor.errors import AuditorError\n"
            "try:\n    load_model(sys.argv[1], spec=sys.argv[2], arch_file=sys.argv[3], arch_class=sys.argv[4], "
            "trust_code=True)\n"
            "except AuditorError as exc:\n    sys.stderr.write(f'auditor: error: {exc}\\n'); sys.exit(2)\n")
    args = [str(tmp_path / "w.safetensors"), str(tmp_path / "spec.json"), str(tmp_path / "net.py")]
    rc, peak, err = measured(sys.executable, "-c", code, *args, "Hungry")
    assert_one_line_refusal(rc, err, "net.py", "AUDITOR_PROBE_MEMORY_MB")
    assert peak < 1_500_000, peak  # the 4 GB tensor was never built
    rc, _, err = measured(sys.executable, "-c", code, *args, "Small")
    assert rc == 0, err


# --- 2. inert text ------------------------------------------------------------------------------------
def test_plotly_text_is_escaped_in_every_chart():
    from auditor.charts import group_chart, metrics_chart, tradeoff_chart
    from auditor.present import plain

    bad = '<a href="http://x/">PASS</a> & <span style="cursor:url(http://x/)">'
    assert plain(bad) == '&lt;a href="http://x/"&gt;PASS&lt;/a&gt; &amp; &lt;span style="cursor:url(http://x/)"&gt;'
    figs = [group_chart({bad: {"selection_rate": 0.5}, "b": {"selection_rate": 0.4}}, attribute=bad),
            metrics_chart({"accuracy": 0.9}, title=bad),
            tradeoff_chart([{"method": bad, "value": 0.1, "accuracy": 0.8}], "demographic_parity")]
    for fig in figs:
        text = fig.to_json()
        assert "<a " not in text and "<span" not in text, text[:500]


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    _Counter.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Counter.hits
    server.shutdown()


@pytest.mark.browser
@pytest.mark.slow
def test_hostile_group_names_make_no_network_request(tmp_path, listener):
    """A CSV's `race` column holding markup that loads a URL: the audit's PDF is printed and its HTML
    report opened in Chromium, and the local listener counts zero requests."""
    from auditor.models import save_model
    from auditor.report.render import find_chromium
    from tests.fixtures import tiny_mlp_bundle

    try:
        chromium = find_chromium()
    except AuditorError:
        pytest.skip("no Chromium")
    port, hits = listener
    url = f"http://127.0.0.1:{port}"
    races = [f'<span style="cursor:url({url}/x)">A</span>', f'<a href="{url}/a">Report tampered: click</a>',
             f'<img src="{url}/i.png">', "plain"]
    rng = np.random.default_rng(0)
    quoted = ['"' + r.replace('"', '""') + '"' for r in races]
    rows = ["x0,x1,x2,y,race"] + [f"{a:.3f},{b:.3f},{c:.3f},{int(a > 0)},{quoted[i % 4]}"
                                  for i, (a, b, c) in enumerate(rng.normal(size=(120, 3)))]
    (tmp_path / "hostile.csv").write_text("\n".join(rows) + "\n")
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_mlp_bundle(), model)
    html, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    proc = subprocess.run(auditor_cli("audit", str(model), str(tmp_path / "hostile.csv"), "--target", "y",
                                      "--protected", "race", "--require", "demographic_parity <= 0.9",
                                      "--no-localize", "--baselines", "none", "--no-log", "--report", str(html),
                                      "--pdf", str(pdf)), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert pdf.exists() and html.exists()
    text = html.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert hits == [], hits  # printing the PDF
    with pytest.MonkeyPatch.context():  # opening the "offline" HTML in a browser with network on
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/p",
                        "--virtual-time-budget=8000", "--dump-dom", html.as_uri()], capture_output=True, timeout=120)
    assert hits == [], hits


def test_dashboard_error_box_shows_markdown_as_text():
    from streamlit.testing.v1 import AppTest

    def page():
        import sys as _sys

        _sys.path.insert(0, ".")
        from auditor.errors import AuditorError as _E
        from pages.common import show_error

        show_error(_E("column 'c' holds '![b](http://127.0.0.1:9/beacon.png) [click here](http://127.0.0.1:9/)'"))

    at = AppTest.from_function(page, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (box,) = at.error
    body = box.value
    # every Markdown character is escaped: no image, no link, the text as written once unescaped
    assert not re.search(r"(?<!\\)!(?<!\\)\[", body) and not re.search(r"(?<!\\)\]\(", body), body
    assert re.sub(r"\\(.)", r"\1", body) == ("column 'c' holds '![b](http://127.0.0.1:9/beacon.png) "
                                             "[click here](http://127.0.0.1:9/)'")
