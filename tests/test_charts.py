"""The dashboard's own Plotly builders: the numbers drawn are the numbers given, every axis is labelled."""
from __future__ import annotations

import numpy as np
import pandas as pd
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
