"""Hostile and broken model files: each gives a one-line reason (AuditorError; CLI exit 2), no code
from the file runs, and the dashboard keeps working.

Named cases back the rows of the README's reliability table; property-based cases (hypothesis)
flip every kind of bit and cut files at every length.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from auditor import AuditorError, UnsafeModelError, load_data, load_model, save_model
from auditor.cli import main
from auditor.evaluate import check_compatible
from tests.conftest import ROOT, SAMPLES
from tests.fixtures import shown, tiny_mlp_bundle

FUZZ = int(os.environ.get("AUDITOR_FUZZ_EXAMPLES", "0"))
FLIPS = settings(max_examples=FUZZ or 150, deadline=None, derandomize=not FUZZ, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _one_line_error(path, match: str | None = None, **kwargs) -> AuditorError:
    with pytest.raises(AuditorError) as err:
        load_model(path, **kwargs)
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    if match:
        assert match in msg, msg
    return err.value


def _cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def _cli_refuses(path, data: str = "adult", *extra: str, match: str = "") -> None:
    code, err = _cli(["evaluate", str(path), data, *extra])
    assert code == 2, err
    assert err.startswith("auditor: error: ") and err.count("\n") == 1 and match in err, err


# --- files that would run code ----------------------------------------------------------------
class _CreatesAFile:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickles(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    evil = {"fc1.weight": _CreatesAFile(marker)}
    buf = io.BytesIO()
    torch.save(evil, buf)  # torch's zip format with the object inside
    raw = pickle.dumps(evil)
    return {"raw.pt": raw, "raw.pth": raw, "raw.bin": raw, "raw.ckpt": raw, "zip.pt": buf.getvalue(),
            "disguised.safetensors": raw, "disguised.onnx": raw}


def test_pickles_that_would_run_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    spec = tiny_mlp_bundle().spec
    for name, content in _pickles(tmp_path, marker).items():
        path = tmp_path / name
        path.write_bytes(content)
        err = _one_line_error(path, spec=spec)
        if name.endswith((".pt", ".pth", ".bin", ".ckpt")):
            assert isinstance(err, UnsafeModelError) and "could run code" in str(err)
        _cli_refuses(path, "adult", "--spec", _spec_file(tmp_path, spec))
        assert not marker.exists(), f"{name}: code in the file ran"


def test_pickled_arrays_in_an_npz_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "case.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.float32), labels=np.array([_CreatesAFile(marker)] * 4, dtype=object),
             target=np.array(0))
    with pytest.raises(AuditorError, match="pickled objects"):
        load_data(path)
    assert not marker.exists()


def _spec_file(tmp_path: Path, spec) -> str:
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    return str(path)


ARCH_CODE = '''
import pathlib
import torch
from torch import nn
pathlib.Path({marker!r}).touch()  # importing this file has a side effect

class TwoLayer(nn.Module):
    def __init__(self, in_features=4, hidden=3, num_classes=2):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(torch.sigmoid(self.fc1(x)))
'''


def test_custom_code_runs_only_with_the_trust_flag(tmp_path, adult):
    marker = tmp_path / "imported"
    arch = tmp_path / "my_arch.py"
    arch.write_text(ARCH_CODE.format(marker=str(marker)))
    b = tiny_mlp_bundle(4, (3,))
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    spec = json.loads(b.spec.to_json())
    spec["arch"] = {"name": "custom", "hidden": 3}  # in_features: the class's default (4)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    kw = dict(arch_file=arch, arch_class="TwoLayer", spec=tmp_path / "spec.json")
    err = _one_line_error(tmp_path / "w.safetensors", "--trust-code", **kw)
    assert isinstance(err, UnsafeModelError)
    _cli_refuses(tmp_path / "w.safetensors", "adult", "--arch-file", str(arch), "--arch-class", "TwoLayer",
                 "--spec", str(tmp_path / "spec.json"), match="--trust-code")
    assert not marker.exists(), "the architecture file ran without --trust-code"
    bundle = load_model(tmp_path / "w.safetensors", trust_code=True, **kw)
    assert marker.exists() and bundle.format == "custom+safetensors"
    assert bundle.spec.arch["class"] == "TwoLayer" and len(bundle.spec.arch["code_sha256"]) == 64
    x = torch.randn(5, 4)
    assert torch.equal(bundle.model(x), b.model.out(torch.sigmoid(b.model.fc1(x))))
    # saved, it keeps saying it needs the code; given the code again it loads the same weights
    saved = save_model(bundle, tmp_path / "custom.safetensors")
    _one_line_error(saved, "--trust-code --arch-file")
    again = load_model(saved, arch_file=arch, arch_class="TwoLayer", trust_code=True)
    assert again.sha256 == bundle.sha256
    # input size against the data: the probe run says so in one line
    with pytest.raises(AuditorError, match="cannot run on data 'adult'"):
        check_compatible(bundle, adult)
    # a state dict through weights_only, and the CLI with the flag (4 inputs: its own CSV)
    torch.save(b.model.state_dict(), tmp_path / "w.pt")
    assert load_model(tmp_path / "w.pt", trust_code=True, **kw).sha256 == b.sha256
    csv = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    rows = [f"{i % 2},{','.join(f'{v:.3f}' for v in rng.normal(size=4))}" for i in range(60)]
    csv.write_text("y,x0,x1,x2,x3\n" + "\n".join(rows) + "\n")
    code, err = _cli(["evaluate", str(tmp_path / "w.pt"), str(csv), "--target", "y", "--arch-file", str(arch),
                      "--arch-class", "TwoLayer", "--trust-code", "--spec", str(tmp_path / "spec.json")])
    assert code in (0, 1), err


@pytest.mark.parametrize("code, cls, match", [
    ("raise SystemExit(3)", "X", "running bad.py failed: SystemExit"),
    ("import not_a_module_anywhere", "X", "running bad.py failed: ModuleNotFoundError"),
    ("def broken(:\n    pass", "X", "running bad.py failed: SyntaxError"),
    ("from torch import nn\nclass X(nn.Module):\n    pass", "Y", "has no nn.Module class 'Y'; its classes: X"),
    ("class X:\n    pass", "X", "has no nn.Module class 'X'"),
    ("from torch import nn\nclass X(nn.Module):\n    def __init__(self):\n        raise ValueError('no')", "X",
     "X() failed: ValueError: no"),
    ("from torch import nn\nclass X(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.fc1 = nn.Linear(4, 5)", "X", "weights do not match"),
])
def test_broken_custom_code_gives_one_line(tmp_path, code, cls, match):
    arch = tmp_path / "bad.py"
    arch.write_text(code)
    b = tiny_mlp_bundle(4, (3,))
    path = save_model(b, tmp_path / "w.safetensors")
    spec = json.loads(b.spec.to_json())
    spec["arch"] = {"name": "custom"}
    _one_line_error(path, match, arch_file=arch, arch_class=cls, trust_code=True, spec=spec)


# --- broken safetensors ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> bytes:
    return save_model(tiny_mlp_bundle(4, (3,)), tmp_path_factory.mktemp("g") / "m.safetensors").read_bytes()


def _try_bytes(content: bytes, suffix: str, **kwargs):
    """Load `content` as a file: the bundle, or the AuditorError (any other exception fails the test)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m{suffix}"
        path.write_bytes(content)
        try:
            return load_model(path, **kwargs)
        except AuditorError as exc:
            assert str(exc) and "\n" not in str(exc)
            return exc


@FLIPS
@given(data=st.data())
def test_every_truncation_of_a_safetensors_file_is_refused(good_file, data):
    cut = data.draw(st.integers(0, len(good_file) - 1))
    assert isinstance(_try_bytes(good_file[:cut], ".safetensors"), AuditorError)


@FLIPS
@given(data=st.data())
def test_every_bit_flip_in_a_saved_safetensors_file_is_refused(good_file, data):
    """A checksum over weights and metadata (two markers, so flipping a key name cannot hide it)."""
    byte = data.draw(st.integers(0, len(good_file) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(good_file)
    flipped[byte] ^= 1 << bit
    assert isinstance(_try_bytes(bytes(flipped), ".safetensors"), AuditorError), (byte, bit)


def test_every_bit_flip_in_the_safetensors_header_is_refused(good_file):
    """Exhaustive over the header (length, JSON, metadata, checksum): the hypothesis test above
    samples the whole file."""
    (n,) = struct.unpack("<Q", good_file[:8])
    for byte in range(0, 8 + n, 3):
        flipped = bytearray(good_file)
        flipped[byte] ^= 1 << (byte % 8)
        assert isinstance(_try_bytes(bytes(flipped), ".safetensors"), AuditorError), byte


def _header_file(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@pytest.mark.parametrize("content, match", [
    (struct.pack("<Q", 2**63) + b"{}", "header claims"),
    (_header_file({"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 2**64 - 1]}}), "claims bytes"),
    (_header_file({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 16]}}, b"\0" * 16),
     "not a readable safetensors file"),
    (_header_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "__metadata__": {"auditor.spec": "[" * 100000}}, b"\0" * 8), "nested too deeply"),
    (_header_file([1, 2]), "not an object"),
    (b"\xff" * 64, "header claims"),
])
def test_headers_that_lie_are_refused_before_allocating(tmp_path, content, match):
    path = tmp_path / "liar.safetensors"
    path.write_bytes(content)
    _one_line_error(path, match)
    _cli_refuses(path, match=match)


def test_a_spec_claiming_a_huge_architecture_allocates_nothing(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    path = save_model(b, tmp_path / "m.safetensors")
    spec = json.loads(b.spec.to_json())
    spec["arch"]["hidden"] = [10**9]  # 400 GB of weights if it were built for real
    _one_line_error(path, "fc1.weight has shape (3, 4), the architecture expects (1000000000, 4)", spec=spec)
    spec["arch"]["hidden"] = [1] * 20000
    _one_line_error(path, "architecture description is over", spec=spec)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt", [".safetensors", ".pt", ".onnx"])
def test_nan_and_infinite_weights_are_refused(tmp_path, value, fmt):
    if fmt == ".onnx":
        pytest.importorskip("onnx")
    b = tiny_mlp_bundle(4, (3,))
    with torch.no_grad():
        b.model.fc1.weight[1, 2] = value
    if fmt == ".safetensors":
        path = save_model(b, tmp_path / "m.safetensors")
    elif fmt == ".pt":
        path = tmp_path / "m.pt"
        torch.save(b.model.state_dict(), path)
    else:
        from auditor.models.onnx_format import export_onnx
        path = export_onnx(b, tmp_path / "m.onnx", verify=False)
    _one_line_error(path, "NaN or infinite", spec=b.spec if fmt == ".pt" else None)


@pytest.mark.parametrize("fmt", [".safetensors", ".pt"])
def test_weights_that_only_overflow_when_cast_or_are_integers_are_refused(tmp_path, fmt):
    """float64 weights of 1e300 passed the finiteness check and became infinite in the float32 model (NaN logits,
    accuracy 48 % with no warning); integer weights were cast silently."""
    b = tiny_mlp_bundle(4, (3,))
    state = {k: v.double() for k, v in b.model.state_dict().items()}
    state["fc1.weight"][0, 0] = 1e300
    path = tmp_path / f"huge{fmt}"
    if fmt == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path), metadata={"auditor.spec": b.spec.to_json()})
    else:
        torch.save(state, path)
    spec = b.spec if fmt == ".pt" else None
    _one_line_error(path, "holds values too large for the model's float32 weights", spec=spec)
    ints = {k: v.round().long() for k, v in b.model.state_dict().items()}
    path = tmp_path / f"ints{fmt}"
    if fmt == ".safetensors":
        from safetensors.torch import save_file
        save_file(ints, str(path), metadata={"auditor.spec": b.spec.to_json()})
    else:
        torch.save(ints, path)
    _one_line_error(path, "holds int64 values where the model has float32 weights", spec=spec)


@pytest.mark.parametrize("change, match", [
    (lambda s: s["arch"].update(in_features=5), "fc1.weight has shape (3, 4), the architecture expects (3, 5)"),
    (lambda s: s["arch"].update(hidden=[3, 3]), "missing ['fc2.bias', 'fc2.weight']"),
    (lambda s: s["arch"].update(name="transformer"), "unknown architecture 'transformer'"),
    (lambda s: s["arch"].update(hidden="abc"), "bad parameters for architecture 'mlp'"),
    (lambda s: s["arch"].update(num_classes=-1), "bad parameters for architecture 'mlp'"),
    (lambda s: s.update(input="tabular"), "'input' must be an object"),
    (lambda s: s.update(class_names=[1, 2]), "'class_names' must be a list of strings"),
    (lambda s: s.update(colour="red"), "unknown keys ['colour']"),
    (lambda s: s.pop("arch"), "`auditor spec init MODEL DATA` drafts a spec"),
    (lambda s: s["arch"].update(name="custom"), "--trust-code --arch-file"),
])
def test_specs_that_do_not_match_the_weights(tmp_path, change, match):
    b = tiny_mlp_bundle(4, (3,))
    path = save_model(b, tmp_path / "m.safetensors")
    spec = json.loads(b.spec.to_json())
    change(spec)
    _one_line_error(path, match, spec=spec)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _cli_refuses(path, "adult", "--spec", str(tmp_path / "spec.json"), match=match)


def test_spec_file_that_is_not_json_or_not_text(tmp_path):
    path = save_model(tiny_mlp_bundle(4, (3,)), tmp_path / "m.safetensors")
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00")
    _one_line_error(path, "not valid JSON", spec=tmp_path / "a.json")
    _one_line_error(path, "not UTF-8", spec=tmp_path / "b.json")
    _one_line_error(path, "spec file not found", spec=tmp_path / "missing.json")


@pytest.mark.parametrize("model, data, match", [
    ("adult_mlp", "compas", "input column(s) ['workclass', 'education'"),
    ("digits_cnn", "adult", "model takes image inputs but data 'adult' is tabular"),
    ("compas_mlp", "digits", "model takes tabular inputs but data 'digits' is image"),
])
def test_model_input_size_does_not_match_the_data(model, data, match):
    _cli_refuses(SAMPLES / f"{model}.safetensors", data, match=match)


def test_model_input_count_does_not_match_a_csv(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    b.spec.input = {"kind": "tabular"}  # no column list: the CSV's columns are all inputs
    path = save_model(b, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    rows = [f"{i % 2},{','.join(f'{v:.3f}' for v in rng.normal(size=5))}" for i in range(40)]
    (tmp_path / "d.csv").write_text("y,a,b,c,d,e\n" + "\n".join(rows) + "\n")
    _cli_refuses(path, str(tmp_path / "d.csv"), "--target", "y", match="model expects 4 inputs but data 'd' gives 5")


def test_file_over_the_size_limit(tmp_path):
    path = SAMPLES / "adult_mlp.safetensors"
    _one_line_error(path, "over the limit", max_bytes=1000)
    _cli_refuses(path, "adult", "--max-model-mb", "0.001", match="over the limit")


def test_things_that_are_not_model_files(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    _one_line_error(tmp_path / "dir.safetensors", "not a file")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    _one_line_error(fifo, "not a file")  # and does not block reading it
    _one_line_error(tmp_path / "absent.safetensors", "not found")
    (tmp_path / "m.h5").write_bytes(b"x")
    _one_line_error(tmp_path / "m.h5", "unknown model format")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _one_line_error(tmp_path / "empty.safetensors", "truncated")


# --- broken PyTorch files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_pt(tmp_path_factory):
    b = tiny_mlp_bundle(4, (3,))
    path = tmp_path_factory.mktemp("pt") / "w.pt"
    torch.save(b.model.state_dict(), path)
    return path.read_bytes(), b


@FLIPS
@given(data=st.data())
def test_bit_flips_in_a_torch_file_are_refused_or_change_nothing(good_pt, data):
    """torch.save's zip records carry CRC-32s; PyTorch reads only the CRC-verified copy. Flips in
    zip bookkeeping that no reader uses load the identical weights."""
    content, b = good_pt
    byte, bit = data.draw(st.integers(0, len(content) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[byte] ^= 1 << bit
    got = _try_bytes(bytes(flipped), ".pt", spec=b.spec)
    assert isinstance(got, AuditorError) or got.sha256 == b.sha256, (byte, bit)


@FLIPS
@given(data=st.data())
def test_every_truncation_of_a_torch_file_is_refused(good_pt, data):
    content, b = good_pt
    cut = data.draw(st.integers(0, len(content) - 1))
    assert isinstance(_try_bytes(content[:cut], ".pt", spec=b.spec), AuditorError)


def test_compressed_zip_in_a_torch_file_is_refused(tmp_path, good_pt):
    """torch.save never compresses: a deflated record (a possible zip bomb) is refused unread."""
    content, b = good_pt
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as z, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as w:
        for info in z.infolist():
            w.writestr(info.filename, z.read(info))
    (tmp_path / "bomb.pt").write_bytes(out.getvalue())
    _one_line_error(tmp_path / "bomb.pt", "compressed records", spec=b.spec)


def test_a_torch_file_holding_something_else(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _one_line_error(tmp_path / "list.pt", "does not hold a state dict", spec=b.spec)
    torch.save({"fc1.weight": "not a tensor"}, tmp_path / "str.pt")
    _one_line_error(tmp_path / "str.pt", "does not hold a state dict", spec=b.spec)


# --- broken torch.export archives --------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory):
    """A vendor's archive (no checksum inside: the zip's CRC-32s alone guard it) and the auditor's own."""
    b = tiny_mlp_bundle(4, (3,))
    folder = tmp_path_factory.mktemp("pt2")
    program = torch.export.export(b.model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "vendor.pt2"))
    spec = {**json.loads(b.spec.to_json()), "arch": {"name": "pt2"}}
    vendor = load_model(folder / "vendor.pt2", spec=spec)
    save_model(vendor, folder / "ours.pt2")
    return {"vendor": (folder / "vendor.pt2").read_bytes(), "ours": (folder / "ours.pt2").read_bytes(),
            "spec": spec, "sha256": vendor.sha256}


@FLIPS
@given(data=st.data())
def test_bit_flips_in_a_pt2_archive_are_refused_or_change_nothing(good_pt2, data):
    which = data.draw(st.sampled_from(["vendor", "ours"]))
    content = good_pt2[which]
    byte, bit = data.draw(st.integers(0, len(content) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[byte] ^= 1 << bit
    got = _try_bytes(bytes(flipped), ".pt2", spec=good_pt2["spec"] if which == "vendor" else None)
    assert isinstance(got, AuditorError) or got.sha256 == good_pt2["sha256"], (which, byte, bit)


@FLIPS
@given(data=st.data())
def test_every_truncation_of_a_pt2_archive_is_refused(good_pt2, data):
    content = good_pt2["ours"]
    cut = data.draw(st.integers(0, len(content) - 1))
    assert isinstance(_try_bytes(content[:cut], ".pt2"), AuditorError)


# --- broken ONNX files --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory):
    pytest.importorskip("onnx")
    from auditor.models.onnx_format import _onnx2torch
    try:
        _onnx2torch()
    except AuditorError as exc:
        pytest.skip(str(exc))
    b = tiny_mlp_bundle(4, (3,))
    return save_model(b, tmp_path_factory.mktemp("o") / "m.onnx").read_bytes(), b


@FLIPS
@given(data=st.data())
def test_bit_flips_in_an_exported_onnx_file_are_refused_or_change_nothing(good_onnx, data):
    """The export's checksum covers graph, weights, attributes, opsets and metadata."""
    content, b = good_onnx
    byte, bit = data.draw(st.integers(0, len(content) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[byte] ^= 1 << bit
    got = _try_bytes(bytes(flipped), ".onnx")
    if not isinstance(got, AuditorError):  # e.g. the producer's name: nothing the model computes
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        assert got.spec == b.spec and torch.equal(got.model(x), b.model(x)), (byte, bit)


@FLIPS
@given(data=st.data())
def test_every_truncation_of_an_onnx_file_is_refused(good_onnx, data):
    content, _ = good_onnx
    cut = data.draw(st.integers(0, len(content) - 1))
    assert isinstance(_try_bytes(content[:cut], ".onnx"), AuditorError)


def _onnx_model(nodes, inits, inputs, outputs, **meta):
    from onnx import helper
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def _vi(name, dims):
    from onnx import TensorProto, helper
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def test_onnx_files_that_are_broken_or_out_of_scope(tmp_path, good_onnx):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    spec = json.dumps({"arch": {"name": "onnx", "num_classes": 2}, "input": {"kind": "tabular"},
                       "class_names": ["0", "1"]})
    w = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    cases = {
        "garbage": (b"\x08\x07garbage" * 10, "not a readable ONNX file"),
        "custom-op": (_onnx_model([helper.make_node("Evil", ["x"], ["y"], domain="com.vendor")], [],
                                  [_vi("x", ["n", 4])], [_vi("y", ["n", 2])], **{"auditor.spec": spec}),
                      "not a valid ONNX model"),
        "two-inputs": (_onnx_model([helper.make_node("Add", ["x", "z"], ["y"])], [],
                                   [_vi("x", ["n", 2]), _vi("z", ["n", 2])], [_vi("y", ["n", 2])],
                                   **{"auditor.spec": spec}), "has 2 inputs"),
        "wrong-input-size": (_onnx_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [w],
                                         [_vi("x", ["n", 4])], [_vi("y", ["n", 2])],
                                         **{"auditor.spec": spec.replace('"num_classes": 2',
                                                                         '"num_classes": 2, "in_features": 9')}),
                             "takes inputs of shape [4] but the spec says [9]"),
    }
    ext = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    ext.data_location = TensorProto.EXTERNAL
    ext.ClearField("raw_data")
    ext.external_data.add(key="location", value="/etc/passwd")
    cases["external-data"] = (_onnx_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [ext],
                                          [_vi("x", ["n", 4])], [_vi("y", ["n", 2])], **{"auditor.spec": spec}),
                              "not a file in the model's own folder")
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        _one_line_error(path, match)
        _cli_refuses(path, match=match)
    # the good file still loads, and loading never writes to it
    path = tmp_path / "good.onnx"
    path.write_bytes(good_onnx[0])
    assert load_model(path).sha256 == good_onnx[1].sha256 and path.read_bytes() == good_onnx[0]
    assert onnx.load(str(path)) is not None


# --- the dashboard keeps working -------------------------------------------------------------------
def test_dashboard_shows_one_message_per_hostile_upload_and_keeps_working(tmp_path, good_file, navigation_mode):
    """Streamlit's AppTest drives the Load page: each hostile upload gives an error on the page
    (no exception, no code run), then a sample model still loads."""
    from streamlit.testing.v1 import AppTest
    marker = tmp_path / "pwned"
    spec = tiny_mlp_bundle(4, (3,)).spec.to_json().encode()
    flipped = bytearray(good_file)
    flipped[len(flipped) // 2] ^= 4
    uploads = [("evil.pt", pickle.dumps({"w": _CreatesAFile(marker)}), spec),
               ("flipped.safetensors", bytes(flipped), None),
               ("cut.safetensors", good_file[:100], None),
               ("huge.safetensors", struct.pack("<Q", 2**62) + b"{}", None),
               ("garbage.onnx", b"\x08\x07garbage", None)]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.radio(key="load_source").set_value("Upload my own").run()
    for name, content, spec_bytes in uploads:
        at.file_uploader(key="up_model").set_value((name, content, "application/octet-stream"))
        if spec_bytes:
            at.file_uploader(key="up_spec").set_value(("spec.json", spec_bytes, "application/json"))
        else:
            at.file_uploader(key="up_spec").set_value(None)
        at.run()
        at.button(key="up_go").click().run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [shown(e.value) for e in at.error]
        assert len(errors) == 1 and name in errors[0] and "\n" not in errors[0], (name, errors)
        assert not marker.exists()
    at.radio(key="load_source").set_value("Sample model").run()
    at.selectbox(key="load_sample").set_value("compas_mlp").run()
    at.button(key="load_go").click().run()
    assert not at.exception and not at.error
    assert at.session_state["audit"].pristine.sha256 == load_model(SAMPLES / "compas_mlp.safetensors").sha256


def test_a_checking_child_imports_nothing_from_the_folder_it_starts_in(tmp_path):
    """The ONNX probe ran `python -c ...` in the user's folder, whose first module path entry is that folder: an
    `onnx.py` shipped beside a vendor's model ran when the model was audited from there."""
    import subprocess

    from auditor.child import child_env, python_command

    marker = tmp_path / "ran"
    (tmp_path / "onnx.py").write_text(f"open({str(marker)!r}, 'w').write('planted code ran')\n")
    done = subprocess.run(python_command("import onnx, auditor; print(onnx.__file__)"), cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not marker.exists() and str(tmp_path) not in done.stdout
    plain = subprocess.run([sys.executable, "-c", "import onnx"], cwd=tmp_path, capture_output=True, timeout=120)
    assert plain.returncode == 0 and marker.exists()  # what the old command did
