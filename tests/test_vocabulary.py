"""One vocabulary for every table: paired_stats, preference_regression, the hypotheses tables
and predict name the effect ``effect``, the main q-value ``q`` and the pairs in scope ``n``;
the same mistake (a non-DataFrame input, a missing span) raises ValueError in every module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from anatomy import contrast, features, hypotheses, predict
from anatomy.features import PairFeatures

LEGACY = {"mean_gap", "delta", "shift", "q_wilcoxon", "q_heldout", "n_in", "d_z", "p_wilcoxon",
          "coef_heldout", "p_heldout"}


def tiny_features(n: int = 40, d: int = 6, seed: int = 0) -> PairFeatures:
    rng = np.random.default_rng(seed)
    freq = {s: sp.csr_matrix(rng.random((n, d)) * (rng.random((n, d)) < 0.5)) for s in ("chosen", "rejected")}
    return PairFeatures([f"p{i}" for i in range(n)], freq, freq, {s: np.full(n, 20) for s in freq}, None, d)


def tables():
    rng = np.random.default_rng(0)
    n = 80
    chosen = pd.DataFrame({"a": rng.normal(1, 1, n), "b": rng.normal(0, 1, n), "length": rng.normal(0, 1, n)})
    rejected = pd.DataFrame({"a": rng.normal(0, 1, n), "b": rng.normal(0, 1, n), "length": rng.normal(0, 1, n)})
    u = pd.DataFrame(rng.normal(0, 0.3, (n, 3)), index=[f"p{i}" for i in range(n)], columns=[0, 1, 2])
    labels = np.repeat([0, 1], n // 2)
    glob = hypotheses.global_hypotheses(u, labels, min_size=5)
    ranked = hypotheses.rank_hypotheses(u, labels, n_boot=50, min_size=5)
    rollouts = pd.DataFrame({"prompt_id": np.repeat(np.arange(10), 2), "a": rng.random(20), "b": rng.random(20)})
    return {
        "paired_stats": contrast.paired_stats(chosen, rejected, n_boot=50),
        "preference_regression": contrast.preference_regression(chosen, rejected, progress=False),
        "global_hypotheses": glob,
        "prompt_conditioned_hypotheses": hypotheses.prompt_conditioned_hypotheses(u, labels, min_size=5),
        "rank_hypotheses": ranked,
        "hypotheses_table": hypotheses.hypotheses_table(u, ranked, data_labels=labels),
        "observed_shift": predict.observed_shift(rollouts, rollouts.assign(a=rollouts.a + 0.2), stat="mean",
                                                 n_boot=20),
    }


def test_every_table_speaks_one_vocabulary():
    for name, table in tables().items():
        cols = set(table.columns)
        assert "effect" in cols and "ci_low" in cols and "ci_high" in cols, name
        assert not cols & LEGACY, (name, cols & LEGACY)
        if name != "observed_shift":
            assert {"concept", "p", "q"} <= cols, name
        if name not in ("observed_shift", "preference_regression"):
            assert "n" in cols and "d" in cols and "direction" in cols, name
    # the renamed columns keep their numbers: effect is still the mean gap, q its BH over p
    t = tables()["paired_stats"]
    assert t.loc[0, "effect"] > 0.5 and t["q"].between(0, 1).all()


def test_a_non_dataframe_raises_valueerror_everywhere():
    u = np.zeros((10, 2))
    calls = [
        lambda: contrast.paired_stats(u, u),
        lambda: contrast.preference_regression(u, u),
        lambda: hypotheses.global_hypotheses(u, np.zeros(10)),
        lambda: hypotheses.rank_hypotheses(u, np.zeros(10)),
        lambda: predict.predict_shift(u, u),
        lambda: predict.compare(np.zeros(3), pd.Series(np.zeros(3))),
        lambda: predict.compare(pd.Series(np.arange(3.0)), np.zeros(3)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="pandas"):
            call()


def test_a_missing_span_raises_valueerror_everywhere():
    feats = tiny_features()
    clusters = pd.DataFrame({"feature": np.arange(6), "cluster": [0, 0, 1, 1, 2, 2]})
    with pytest.raises(ValueError, match="span 'prompt'"):
        hypotheses.prompt_clusters(feats, clusters, k=2)
    with pytest.raises(ValueError, match="span 'prompt'"):
        features.firing_matrix(feats, span="prompt")
    with pytest.raises(ValueError, match="span 'prompt'"):
        features.cluster_scores(feats, clusters, span="prompt")
    with pytest.raises(ValueError, match="reference spans"):
        features.gate_weak_firing(feats, 0.5, reference=("prompt",))
    with pytest.raises(ValueError, match="span 'chosen'"):
        predict.predict_shift_from_features(PairFeatures(feats.ids, {}, {}, {}, None, 6), clusters)
