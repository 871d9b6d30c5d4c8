"""The feature browser builds headless and updates when a feature is selected."""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from anatomy.viz import feature_browser, highlight_tokens


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


def test_highlight_escapes_html():
    html = highlight_tokens(["<b>", "x"], [1.0, 0.0])
    assert "&lt;b&gt;" in html and "rgba(255,140,0,1.00)" in html
