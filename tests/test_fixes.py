"""Fixes: ROW=LABEL parsing and equivalent inputs (shifted/noised images, nudged tabular rows)."""
from __future__ import annotations

import pytest
import torch

from auditor.errors import AuditorError
from auditor.fixes import equivalents, make_fixes, numeric_columns, parse_fixes, shift_images


def test_parse_fixes_images(digits):
    fx = parse_fixes(["12=3", "train:40=7", "5 = 0"], digits)
    assert torch.equal(fx.y, torch.tensor([3, 7, 0]))
    assert torch.equal(fx.X[0], digits.test.X[12]) and torch.equal(fx.X[1], digits.train.X[40])
    assert fx.X_equiv.shape == (3 * 8, 1, 8, 8)  # four half-pixel shifts and four noised copies each
    assert torch.equal(fx.y_equiv, fx.y.repeat(8))
    assert 0.0 <= float(fx.X_equiv.min()) and float(fx.X_equiv.max()) <= 1.0
    assert parse_fixes(["3=1"], digits, split="val").X[0].equal(digits.val.X[3])


def test_parse_fixes_labels_by_name(adult):
    fx = parse_fixes(["0=>50K", "1=<=50K", "2=1"], adult)
    assert fx.y.tolist() == [1, 0, 1]


@pytest.mark.parametrize("spec, message", [
    ("12", "ROW=LABEL"), ("x=3", "not an integer"), ("100000=3", "outside"), ("-1=3", "outside"),
    ("3=eleven", "unknown label"), ("3=10", "unknown label"), ("bogus:3=1", "unknown split")])
def test_parse_fixes_errors_name_the_problem(digits, spec, message):
    with pytest.raises(AuditorError, match=message):
        parse_fixes([spec], digits)


def test_no_fixes_is_an_error(digits):
    with pytest.raises(AuditorError, match="at least one"):
        parse_fixes([], digits)


def test_shift_images_moves_pixels_and_fills_zero():
    X = torch.arange(16.0).reshape(1, 1, 4, 4)
    right = shift_images(X, 0, 1)
    assert torch.equal(right[0, 0, :, 1:], X[0, 0, :, :3]) and right[0, 0, :, 0].eq(0).all()
    up = shift_images(X, -1, 0)
    assert torch.equal(up[0, 0, :3], X[0, 0, 1:]) and up[0, 0, 3].eq(0).all()


def test_image_equivalents_are_half_pixel_shifts_and_noise(digits):
    X = digits.test.X[:2]
    X_eq, src = equivalents(digits, X, n_noise=2, noise=0.05)
    assert src.tolist() == [0, 1] * 6
    assert torch.allclose(X_eq[0], 0.5 * X[0] + 0.5 * shift_images(X[:1], 0, 1)[0])
    noise = X_eq[8:] - X[src[8:]]
    assert 0 < float(noise.abs().mean()) < 0.1
    with pytest.raises(AuditorError, match="shift"):
        equivalents(digits, X, shift=2)


def test_tabular_equivalents_move_only_numeric_inputs(adult):
    cols = numeric_columns(adult)
    assert [adult.feature_names[i] for i in cols] == ["age", "education-num", "capital-gain", "capital-loss",
                                                      "hours-per-week"]
    X = adult.test.X[:5]
    fx = make_fixes(adult, X, adult.test.y[:5])
    diff = (fx.X_equiv - X.repeat(8, 1)).abs()
    other = [i for i in range(X.shape[1]) if i not in cols]
    assert float(diff[:, other].max()) == 0.0
    assert 0.01 < float(diff[:, cols].mean()) < 0.2  # about 0.1 of each feature's spread


def test_make_fixes_checks_labels(digits):
    with pytest.raises(AuditorError, match="class indices"):
        make_fixes(digits, digits.test.X[:1], [10])
    with pytest.raises(AuditorError, match="requested labels"):
        make_fixes(digits, digits.test.X[:2], [1])
