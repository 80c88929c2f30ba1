"""A user's images as files: a folder (or .zip) of class folders with a trigger.json, read as the
model's input, audited and repaired like an .npz case; bad folders get one clear error."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor import load_data
from auditor.editors import get_editor
from auditor.errors import AuditorError
from auditor.evaluate import evaluate
from auditor.models import ModelSpec, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn_trojan.safetensors"


def _png(x: np.ndarray, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    arr = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(file)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """The digits Trojan case as a user would have it: PNG files in train/ and test/ class folders, the
    trigger as two PNGs and a trigger.json."""
    d = load_data("digits-trojan")
    root = tmp_path_factory.mktemp("case") / "digits_png"
    for split in ("train", "test"):
        s = d.split(split)
        for i, (x, y) in enumerate(zip(s.X.numpy(), s.y.numpy())):
            _png(x, root / split / str(int(y)) / f"{i:04d}.png")
    _png(d.stamp.mask.numpy().reshape(1, 8, 8), root / "mask.png")
    _png(d.stamp.pattern.numpy().reshape(1, 8, 8), root / "trigger.png")
    (root / "trigger.json").write_text(json.dumps({"target": str(d.stamp.target), "mask": "mask.png",
                                                   "pattern": "trigger.png"}))
    return root


def _zip(folder: Path, into: Path) -> Path:
    out = into / f"{folder.name}.zip"
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
    return out


def test_a_png_folder_audits_like_the_arrays_it_came_from(digits_folder):
    bundle = load_model(SAMPLE)
    data = load_data(digits_folder, spec=bundle.spec)
    ref = load_data("digits-trojan")
    assert len(data.test.y) == len(ref.test.y) and data.stamp.target == ref.stamp.target
    for c in range(10):  # the same images of each class (in folder order), up to 8-bit PNG rounding
        a, b = data.test.X[data.test.y == c], ref.test.X[ref.test.y == c]
        assert len(a) == len(b) and torch.allclose(a.sum(0), b.sum(0), atol=len(a) * 0.5 / 255 + 1e-4)
    m, m_ref = evaluate(bundle, data).metrics, evaluate(bundle, ref).metrics
    assert abs(m["accuracy"] - m_ref["accuracy"]) <= 0.005
    assert m["attack_success_rate"] > 0.95
    assert data.partition["test"] == f"test/ of {digits_folder.name}"
    assert "train/" in data.partition["train"] and data.class_names == [str(i) for i in range(10)]


def test_the_zip_of_it_is_repaired_by_the_dynamic_editor(digits_folder, tmp_path):
    bundle = load_model(SAMPLE)
    data = load_data(_zip(digits_folder, tmp_path), spec=bundle.spec)
    m0 = evaluate(bundle, data).metrics
    result = get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, data)
    m = evaluate(result.bundle, data).metrics
    assert m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01, m


def _rgb_case(root: Path, names=("cat", "dog"), size=(6, 5)) -> Path:
    rng = np.random.default_rng(0)
    for c in names:
        for i in range(6):
            _png(rng.random((3, size[1], size[0])), root / c / f"{c}{i}.png")
    return root


def test_class_folders_follow_the_spec_names_else_sorted_order_with_a_note(tmp_path):
    root = _rgb_case(tmp_path / "pets")
    plain = load_data(root)
    assert plain.class_names == ["cat", "dog"] and any("sorted order" in n for n in plain.notes)
    assert plain.test.X.shape[1:] == (3, 5, 6) and plain.default_split == "all"
    spec = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 6]}, class_names=["dog", "cat"])
    named = load_data(root, spec=spec)
    assert named.class_names == ["dog", "cat"] and not any("sorted order" in n for n in named.notes)
    assert set(named.split("all").y.tolist()) == {0, 1}
    other = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 6]},
                      class_names=["bird", "dog"])
    with pytest.raises(AuditorError, match="'cat' are not among the model's classes"):
        load_data(root, spec=other)
    numbered = _rgb_case(tmp_path / "numbered", names=("0", "1"))  # folders by index, a spec with names
    data = load_data(numbered, spec=spec)
    assert data.class_names == ["dog", "cat"] and any("folder i holds the model's class i" in n for n in data.notes)


def test_pixels_are_read_onto_value_range_then_normalised(tmp_path):
    root = _rgb_case(tmp_path / "pets")
    raw = np.asarray(Image.open(root / "cat" / "cat0.png"), dtype=np.float32).transpose(2, 0, 1)
    spec = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 6], "value_range": [0, 255]},
                     class_names=["cat", "dog"])
    data = load_data(root, spec=spec)
    X = data.split("all").X
    assert float(X.max()) > 1.5 and any(np.allclose(x.numpy(), raw) for x in X)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    spec.input = {"kind": "image", "shape": [3, 5, 6], "normalize": {"mean": mean, "std": std}}
    X = load_data(root, spec=spec).split("all").X
    want = (raw / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    assert any(np.allclose(x.numpy(), want, atol=1e-5) for x in X)
    grey = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [1, 5, 6]}, class_names=["cat", "dog"])
    assert load_data(root, spec=grey).split("all").X.shape[1] == 1  # read as the model reads them


def test_corrupted_twin_folder(tmp_path):
    root = _rgb_case(tmp_path / "pets")
    for f in list(root.rglob("*.png")):
        x = np.asarray(Image.open(f), dtype=np.float32).transpose(2, 0, 1) / 255
        x[:, :2, :2] = 1.0
        _png(x, root / "stamped" / f.relative_to(root))
    (root / "trigger.json").write_text(json.dumps({"target": "dog", "corrupted": "stamped", "kind": "cue"}))
    data = load_data(root)
    assert data.class_names == ["cat", "dog"] and data.stamp.target == 1 and data.stamp.kind == "cue"
    assert data.split("all").corrupted is not None
    next((root / "stamped" / "cat").glob("*.png")).unlink()
    with pytest.raises(AuditorError, match="no corrupted twin of cat/"):
        load_data(root)


@pytest.mark.parametrize("breakage, message", [
    ("loose", "image files outside class folders"),
    ("mixed", "mixes split folders"),
    ("size", r"is 7x5 pixels; the first image, .*, reads 6x5: resize"),
    ("broken", "cannot be read as an image"),
    ("key", "unknown key\\(s\\) 'trigger'"),
    ("target", "'target' is 'cow', not a class folder"),
    ("mask", "'mask' names 'nope.png', which is not a file inside the folder"),
])
def test_bad_folders_are_refused_with_what_to_fix(tmp_path, breakage, message):
    root = _rgb_case(tmp_path / "pets")
    if breakage == "loose":
        _png(np.zeros((3, 5, 6)), root / "stray.png")
    elif breakage == "mixed":
        _rgb_case(root / "test")
    elif breakage == "size":
        _png(np.zeros((3, 5, 7)), root / "dog" / "wide.png")
    elif breakage == "broken":
        (root / "dog" / "broken.png").write_bytes(b"not a png")
    else:
        case = {"target": "dog", "mask": "m.png", "pattern": "m.png"}
        _png(np.ones((1, 5, 6)), root / "m.png")
        case.update({"key": {"trigger": 1}, "target": {"target": "cow"}, "mask": {"mask": "nope.png"}}[breakage])
        (root / "trigger.json").write_text(json.dumps(case))
    with pytest.raises(AuditorError, match=message):
        load_data(root)


def test_a_zip_entry_outside_the_archive_is_refused(tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../outside.png", b"x")
    with pytest.raises(AuditorError, match="points outside the archive"):
        load_data(bad)
    assert not (tmp_path.parent / "outside.png").exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(AuditorError, match="not a readable .zip"):
        load_data(tmp_path / "junk.zip")


def test_the_range_caution_reads_normalize_and_names_arrays(tmp_path):
    """Normalised images from files are what the model reads (no caution); 0..255 arrays for a [0, 1] model
    get one, saying arrays are taken as they are."""
    from auditor.cautions import range_notes
    from auditor.models import ModelBundle

    root = _rgb_case(tmp_path / "pets")
    inp = {"kind": "image", "shape": [3, 5, 6], "value_range": [0, 1],
           "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    spec = ModelSpec(arch={"name": "custom"}, input=inp, class_names=["cat", "dog"])
    bundle = ModelBundle(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(90, 2)), spec)
    data = load_data(root, spec=spec)
    assert float(data.split("all").X.min()) < -1.5 and range_notes(bundle, data) == []
    spec.input = {k: v for k, v in inp.items() if k != "normalize"}
    assert range_notes(bundle, data)  # the same values, for a spec without normalize: far outside [0, 1]
    raw = np.load(_npz_of(data, tmp_path / "raw.npz"))
    assert float(raw["images"].max()) > 100
    warned = range_notes(bundle, load_data(tmp_path / "raw.npz"))
    assert warned and "arrays are taken as they are" in warned[0]


def _npz_of(data, out: Path) -> Path:
    s = data.split("all")
    np.savez(out, images=np.round(s.X.numpy() * 60 + 120).astype(np.float32), labels=s.y.numpy())
    return out


def test_a_folder_named_like_the_sample_data_is_called_the_cases_own(digits_folder, tmp_path):
    """A user's folder named digits-trojan is their own trigger, never passed off as the sample's."""
    import shutil

    from auditor.present import stamp_label

    own = tmp_path / "digits-trojan"
    shutil.copytree(digits_folder, own)
    label = stamp_label(load_data(own))
    assert label.startswith("the case's own trigger (digits-trojan: 9-pixel patch (3×3) in the bottom-right corner")


def test_spec_init_finds_how_the_model_reads_image_files(digits_folder, tmp_path):
    """`auditor spec init` on image files tries the usual pixel readings and keeps the most accurate: a
    model trained on [0, 1] pixels, and the same model behind a (x + 1) / 2 that takes [-1, 1] ones."""
    from auditor.models.draft import draft_spec
    from auditor.models.onnx_format import export_onnx

    base = load_model(SAMPLE)

    class FromSigned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base.model

        def forward(self, x):
            return self.base((x + 1) / 2)

    data = load_data(digits_folder)
    for name, model, want in (("plain", base.model, None), ("signed", FromSigned(), {"mean": [0.5], "std": [0.5]})):
        path = tmp_path / f"{name}.onnx"
        export_onnx(type(base)(model.eval(), base.spec), path)
        draft = draft_spec(path, data)
        assert draft.spec["input"].get("normalize") == want and draft.spec["input"]["value_range"] == [0.0, 1.0]
        assert draft.accuracy > 0.95 and sum("probe: accuracy" in g for g in draft.guessed) == 3  # RGB's left out


def test_spec_init_orders_word_named_class_folders_by_the_models_predictions(digits_folder, tmp_path):
    """Folders named by words sort into another order than the model's outputs (eight, five, four, ...): every
    pixel reading would look like chance. The probe matches classes to outputs by the predictions and drafts
    class_names in the model's order; loaded with that spec, the folders audit as the numbered ones do."""
    import shutil

    from auditor.models.draft import draft_spec
    from auditor.models.onnx_format import export_onnx

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = tmp_path / "digits_words"
    shutil.copytree(digits_folder, root)
    for split in ("train", "test"):
        for i, w in enumerate(words):
            (root / split / str(i)).rename(root / split / w)
    (root / "trigger.json").write_text(json.dumps({"target": "zero", "mask": "mask.png", "pattern": "trigger.png"}))
    base = load_model(SAMPLE)
    export_onnx(base, tmp_path / "m.onnx")
    data = load_data(root)
    assert data.class_names == sorted(words)
    draft = draft_spec(tmp_path / "m.onnx", data)
    assert draft.spec["class_names"] == words and draft.accuracy > 0.95
    assert any("matched to the outputs" in g for g in draft.guessed)
    spec = ModelSpec.from_dict(draft.spec)
    ev = evaluate(load_model(tmp_path / "m.onnx", spec=spec), load_data(root, spec=spec))
    assert ev.metrics["accuracy"] > 0.95 and ev.metrics["attack_success_rate"] > 0.95
    assert any("drafted by auditor spec init" in w for w in ev.warnings)  # said until the user confirms it


def test_photos_of_any_size_are_resized_and_centre_cropped_as_the_spec_says(tmp_path):
    """input.resize: torchvision's Resize then CenterCrop. An image twice the model's size, scaled by its
    shorter side, gives back the centre of the half-size image; without input.resize it is refused, naming
    the key."""
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for c in ("cat", "dog"):
        for i, (w, h) in enumerate([(12, 10), (20, 10), (10, 16)] * 2):
            x = rng.random((3, h, w))
            _png(x, root / c / f"{c}{i}.png")
    spec = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 5], "resize": 5},
                     class_names=["cat", "dog"])
    data = load_data(root, spec=spec)
    X = data.split("all").X
    assert X.shape == (12, 3, 5, 5)
    # cat1 is 20x10: the shorter side 10 -> 5 makes it 10x5, whose centre 5x5 is columns 2..7 (left = 2.5 -> 2)
    from PIL import Image as PILImage

    png = PILImage.open(root / "cat" / "cat1.png").convert("RGB").resize((10, 5), PILImage.BILINEAR)
    want = torch.from_numpy(np.asarray(png, dtype=np.float32).transpose(2, 0, 1)[:, :, 2:7] / 255)
    assert min(float((row - want).abs().max()) for row in X) < 1e-6  # one row is exactly it
    exact = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 5], "resize": [8, 8]},
                      class_names=["cat", "dog"])
    assert load_data(root, spec=exact).split("all").X.shape == (12, 3, 5, 5)
    plain = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 5, 5]}, class_names=["cat", "dog"])
    with pytest.raises(AuditorError, match="give the spec input.shape and input.resize"):
        load_data(root, spec=plain)
    tiny = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": [3, 9, 9], "resize": [4, 4]},
                     class_names=["cat", "dog"])
    with pytest.raises(AuditorError, match="smaller than the model's 9x9"):
        load_data(root, spec=tiny)


def test_a_folder_larger_than_the_image_budget_is_refused_before_it_is_read(digits_folder, monkeypatch):
    from auditor.budgets import BudgetError

    monkeypatch.setenv("AUDITOR_MAX_IMAGES_MB", "1")  # the digits case is ~1,800 images of 1x8x8 (0.5 MB)
    assert load_data(digits_folder, spec=load_model(SAMPLE).spec).test.X.shape[1:] == (1, 8, 8)
    monkeypatch.setenv("AUDITOR_MAX_IMAGES_MB", "0.1")
    with pytest.raises(BudgetError, match=r"images of 1x8x8 pixels as float32 would need .*AUDITOR_MAX_IMAGES_MB"):
        load_data(digits_folder, spec=load_model(SAMPLE).spec)


def test_spec_init_reads_photos_of_several_sizes_as_the_given_spec_resizes_them(tmp_path, capsys):
    """A vendor's state dict and square digits photos of 16, 24 and 32 pixels: refused without input.resize,
    drafted with `--spec base.json` (shape [1, 8, 8], resize 8), which the drafted spec keeps."""
    from auditor.cli import main

    bundle = load_model(SAMPLE)
    torch.save(bundle.model.state_dict(), tmp_path / "cnn.pt")
    d = load_data("digits")
    for i, (x, y) in enumerate(zip(d.test.X.numpy()[:200], d.test.y.numpy()[:200])):
        size = (16, 24, 32)[i % 3]
        img = Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        (tmp_path / "photos" / str(int(y))).mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "photos" / str(int(y)) / f"{i:04d}.png")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"arch": {"name": "sequential"},
                                "input": {"kind": "image", "shape": [1, 8, 8], "resize": 8}}))
    args = ["spec", "init", str(tmp_path / "cnn.pt"), str(tmp_path / "photos"), "--out", str(tmp_path / "s.json")]
    assert main(args) == 2 and "input.resize" in capsys.readouterr().err
    assert main([*args, "--spec", str(base)]) == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "s.json").read_text())
    assert spec["input"]["resize"] == 8 and spec["input"]["shape"] == [1, 8, 8]
    data = load_data(tmp_path / "photos", spec=ModelSpec.from_json(json.dumps(spec)))
    assert evaluate(load_model(tmp_path / "cnn.pt", spec=spec), data, split="all").metrics["accuracy"] > 0.9


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_spec_init_reads_photos_of_several_sizes_at_the_input_size_the_model_file_gives(suffix, tmp_path, capsys):
    """An ONNX graph or a torch.export archive says its input size (1x8x8): photos of several sizes are read at it
    (the shorter side to 8, then the centre), with no base spec, and the draft says it is a guess to confirm."""
    import warnings

    from auditor.cli import main
    from auditor.models import save_model

    bundle = load_model(SAMPLE)
    model_file = tmp_path / f"cnn{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_model(bundle, model_file)
    d = load_data("digits")
    for i, (x, y) in enumerate(zip(d.test.X.numpy()[:120], d.test.y.numpy()[:120])):
        w, h = ((16, 16), (24, 24), (32, 40))[i % 3]
        img = Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).resize((w, w), Image.NEAREST)
        canvas = Image.new("L", (w, h))  # the tall ones: the digit in the middle, blank above and below
        canvas.paste(img, (0, (h - w) // 2))
        (tmp_path / "photos" / str(int(y))).mkdir(parents=True, exist_ok=True)
        canvas.save(tmp_path / "photos" / str(int(y)) / f"{i:04d}.png")
    assert main(["spec", "init", str(model_file), str(tmp_path / "photos"), "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "the model file's input size (1x8x8)" in out and "the images have several sizes" in out
    spec = json.loads((tmp_path / "s.json").read_text())
    assert spec["input"]["resize"] == 8 and spec["input"]["shape"] == [1, 8, 8]
    data = load_data(tmp_path / "photos", spec=ModelSpec.from_json(json.dumps(spec)))
    assert evaluate(load_model(model_file, spec=spec), data, split="all").metrics["accuracy"] > 0.9
    from auditor.audit.uploads import load_with_drafted_spec  # the dashboard's draft reads them alike

    drafted, data, draft = load_with_drafted_spec(model_file, lambda s: load_data(tmp_path / "photos", spec=s))
    assert drafted.spec.input["resize"] == 8 and any("several sizes" in c for c in draft.confirm)
