"""The helpers written once and called everywhere: AUROC, Benjamini–Hochberg, the cluster
membership matrix, seeded sampling of pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from anatomy.contrast import bh_qvalues
from anatomy.data import sample_pairs
from anatomy.features import membership_matrix
from anatomy.probes import auroc, heldout_auroc


def test_auroc_equals_sklearn_column_by_column_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (60, 5)).astype(float)  # many ties
    labels = rng.random((60, 3)) < 0.3
    got = auroc(scores, labels)
    assert got.shape == (5, 3)
    for j in range(5):
        for c in range(3):
            assert got[j, c] == pytest.approx(roc_auc_score(labels[:, c], scores[:, j]), abs=1e-12)
    assert auroc(scores[:, 0], labels[:, 0]) == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 0]))
    assert auroc(scores, labels[:, 0]).shape == (5,)
    assert np.isnan(auroc(scores, np.zeros(60))).all()  # no positive: undefined
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    assert heldout_auroc(pos, neg) == pytest.approx(roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[pos, neg]))
    with pytest.raises(ValueError, match="differ in length"):
        auroc(scores, labels[:10])


def test_bh_matches_statsmodels_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    q = bh_qvalues(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1])
    assert np.isnan(q[2])


def test_membership_matrix():
    clusters = pd.DataFrame({"feature": [0, 1, 2, 4], "cluster": [1, 1, -1, 0]})
    M, sizes = membership_matrix(clusters, 5)
    assert M.shape == (5, 2) and sizes.tolist() == [1, 2]
    assert M.toarray()[:, 1].tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="outside the SAE"):
        membership_matrix(clusters, 4)
    with pytest.raises(ValueError, match="pandas DataFrame"):
        membership_matrix({"feature": [0]}, 4)


def test_sample_pairs_is_seeded_in_file_order_and_shares_a_generator():
    pairs = [{"id": f"p{i}"} for i in range(50)]
    a = sample_pairs(pairs, 10, seed=3)
    assert a == sample_pairs(pairs, 10, seed=3) and a != sample_pairs(pairs, 10, seed=4)
    ids = [int(p["id"][1:]) for p in a]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert sample_pairs(pairs) == pairs and sample_pairs(pairs, 80, seed=0) == pairs
    rng = np.random.default_rng(7)  # two draws from one generator, as a notebook makes them
    first, second = sample_pairs(pairs, 5, seed=rng), sample_pairs(pairs, 5, seed=rng)
    ref = np.random.default_rng(7)
    assert [p["id"] for p in first] == [f"p{i}" for i in sorted(ref.permutation(50)[:5])]
    assert [p["id"] for p in second] == [f"p{i}" for i in sorted(ref.permutation(50)[:5])]
    with pytest.raises(ValueError, match="n must be"):
        sample_pairs(pairs, -1)
