"""The dashboard's own Plotly builders: the numbers drawn are the numbers given, every axis is labelled."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from auditor.charts.dashboard import (
    feature_before_after_chart,
    pixel_before_after_chart,
    pixel_pairs_chart,
    weight_change_heatmap,
    weight_change_overview,
)


def test_weight_change_heatmap_draws_the_absolute_change_and_its_rank():
    before = torch.zeros(3, 4)
    after = torch.outer(torch.tensor([1.0, -2.0, 0.0]), torch.tensor([1.0, 0.0, 0.5, 0.0]))
    fig = weight_change_heatmap("fc", before, after, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    z = np.asarray(fig.data[0].z)
    assert z.shape == (3, 5) and z[1, 0] == 2.0 and z[2, 4] == 1.0 and (z >= 0).all()
    assert "rank 1" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_overview_and_attribution_charts_are_labelled():
    fig = weight_change_overview([{"parameter": "fc1.weight", "relative_norm": 0.25, "rank": 1}])
    assert fig.data[0].x[0] == 25.0 and "%" in fig.layout.xaxis.title.text
    img = torch.rand(2, 1, 8, 8)
    pix = {"clean": torch.randn(2, 1, 8, 8), "corrupted": torch.randn(2, 1, 8, 8),
           "clean_prediction": torch.tensor([7, 3]), "corrupted_prediction": torch.tensor([0, 0])}
    fig = pixel_pairs_chart(img, img, pix, [str(i) for i in range(10)], torch.tensor([7, 3]))
    titles = [a.text for a in fig.layout.annotations]
    assert "clean: predicted 7 (true 7)" in titles and "what pushes the model to 0" in titles
    fig = pixel_before_after_chart(img[:1], pix, {**pix, "corrupted_prediction": torch.tensor([7])},
                                   [str(i) for i in range(10)], label=7)
    assert "after the edit: predicted 7" in [a.text for a in fig.layout.annotations]
    b = pd.DataFrame({"feature": ["age", "sex"], "importance": [0.5, 0.1]})
    a = pd.DataFrame({"feature": ["age", "sex"], "importance": [0.4, 0.0]})
    fig = feature_before_after_chart(b, a)
    assert list(fig.data[1].x) == [0.4, 0.0] and "logit" in fig.layout.xaxis.title.text


def test_colour_images_are_drawn_in_colour_and_grey_ones_in_grey():
    """A user's 3-channel images show their colours (a red trigger stays red); one-channel images stay
    grey; an attribution map sums its channels."""
    from auditor.charts import image_attribution_chart
    from auditor.present import pixel_attribution, shown_image

    img = torch.zeros(2, 3, 8, 8)
    img[:, 0, 6:8, 0:2] = 1.0  # a red 2x2 patch, bottom left
    attr = torch.zeros(2, 3, 8, 8)
    attr[:, :, 6:8, 0:2] = 0.5
    pix = {"clean": attr, "corrupted": attr, "clean_prediction": torch.tensor([1, 2]),
           "corrupted_prediction": torch.tensor([3, 3])}
    fig = pixel_pairs_chart(img, img, pix, [str(i) for i in range(10)])
    drawn = [t for t in fig.data if t.type == "image"]
    assert len(drawn) == 4 and all(np.asarray(t.z).shape == (8, 8, 3) for t in drawn)
    z = np.asarray(drawn[0].z)
    assert list(z[7, 0]) == [255, 0, 0] and list(z[0, 0]) == [0, 0, 0]
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert np.asarray(heat[0].z)[7, 0] == pytest.approx(1.5)  # 3 channels x 0.5
    fig = pixel_before_after_chart(img[:1], pix, pix, [str(i) for i in range(10)])
    assert fig.data[0].type == "image"
    standardized = shown_image((img[0] - 0.5) * 4)  # out of [0, 1]: stretched for display, not clipped
    fig = image_attribution_chart([{"title": "x", "kind": "image", "z": standardized},
                                   {"title": "a", "kind": "attribution", "z": pixel_attribution(attr[0])}])
    z = np.asarray(fig.data[0].z)
    assert list(z[7, 0]) == [255, 0, 0] and list(z[0, 0]) == [0, 0, 0] and fig.data[1].type == "heatmap"
    one = {k: v[:1, :1] if v.dim() > 1 else v[:1] for k, v in pix.items()}
    grey = pixel_pairs_chart(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), one, [str(i) for i in range(10)])
    assert all(t.type == "heatmap" for t in grey.data) and shown_image(torch.rand(1, 8, 8)).shape == (8, 8)
