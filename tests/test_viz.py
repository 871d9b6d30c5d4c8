"""Figures open offline (plotly.js embedded, no CDN; a headless-Chromium screenshot with the
network cut off shows the plot), token highlighting, example pairs and the feature browser."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp

from anatomy import viz
from anatomy.viz import feature_browser, figure_html, highlight_tokens, save_figure

from headless import PLOTLY_MARK, colour_share, external_references, outside_plotlyjs, screenshot

BAR = "#1f77b4"


class FakeFeatures:  # the two attributes the browser reads from PairFeatures
    def __init__(self):
        rng = np.random.default_rng(0)
        self.max = {s: sp.csr_matrix(rng.random((20, 6)) * (rng.random((20, 6)) > 0.5)) for s in ("chosen", "rejected")}
        self.freq = self.max


def _labels():
    snip = lambda pid, act: {"pair_id": pid, "span": "chosen", "max": act, "argmax": 1,
                             "tokens": ["a", "**", "b"], "acts": [0.0, act, 0.1]}
    return pd.DataFrame({"feature": [1, 4], "label": ["bold markers", "emoji"],
                         "snippets": [[snip("p1", 2.0)], [snip("p7", 5.0)]]})


def bar_figure():
    return go.Figure(go.Bar(x=["a", "b", "c"], y=[3, 1, 2], marker_color=BAR)).update_layout(
        template="plotly_white", width=800, height=500)


def test_browser_updates_label_snippets_and_histogram():
    feats = FakeFeatures()
    app = feature_browser(feats, _labels())
    select, info, hist = app.children
    assert "bold markers" in info.value and "p1" in info.value
    np.testing.assert_allclose(hist.data[0].x, feats.max["chosen"][:, [1]].toarray().ravel())
    select.value = 4
    assert "emoji" in info.value and "p7" in info.value and "bold markers" not in info.value
    np.testing.assert_allclose(hist.data[1].x, feats.max["rejected"][:, [4]].toarray().ravel())


def test_browser_sums_cluster_members():
    feats = FakeFeatures()
    labels = _labels().rename(columns={"feature": "cluster"}).assign(features=[[0, 2], [3, 5]])
    app = feature_browser(feats, labels)
    np.testing.assert_allclose(app.children[2].data[0].x, np.asarray(feats.max["chosen"][:, [0, 2]].sum(1)).ravel())


def test_highlight_escapes_html_and_marks_positive_scores_only():
    page = highlight_tokens(["<b>", "x", "y"], [1.0, 0.0, 0.5])
    assert "&lt;b&gt;" in page and "rgba(255,140,0,1.00)" in page
    assert page.count('<mark class="anatomy-concept"') == 2 and page.endswith("</mark>")
    assert "rgba(255,140,0,0.57)" in page  # 0.15 + 0.85 * 0.5 / 1.0


def test_saved_figure_embeds_plotlyjs_and_references_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_FIGURES", str(tmp_path))
    page = save_figure(bar_figure(), "bars").read_text()
    assert PLOTLY_MARK in page and len(page) > 3_000_000  # the bundle itself, not a link to it
    assert external_references(page) == []
    rest = outside_plotlyjs(page)
    assert PLOTLY_MARK not in rest and "http://" not in rest and "https://" not in rest
    fragment = figure_html(bar_figure())
    assert PLOTLY_MARK not in fragment and external_references(fragment) == []
    assert PLOTLY_MARK in figure_html(bar_figure(), include_plotlyjs=True)


def test_saved_figure_renders_offline_in_headless_chromium(tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_FIGURES", str(tmp_path))
    path = save_figure(bar_figure(), "bars")
    pixels = screenshot(path, viz.figures_dir() / "bars.png", size=(800, 500))
    # three bars of about 20% of the 800 x 500 window; a blank (CDN-less) page has none
    # (tests/test_report.py shows the same page without plotly.js stays blank)
    assert colour_share(pixels, (0x1F, 0x77, 0xB4)) > 0.05
