"""features: summaries are exact, labels give snippets, clustering recovers planted groups."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from anatomy.features import (
    PairFeatures,
    cluster_features,
    cluster_scores,
    feature_summaries,
    label_features,
    nmi_matrix,
    span_summary,
)


def _pairs():
    texts = [
        ("What is 2+2?", "It is 4.", "Five, clearly, and here is a much longer wrong answer."),
        ("Name a colour.", "**Blue** is a lovely colour!", "\nRed"),
        ("Give me two tips for sleep.", "- Keep a schedule\n- Avoid screens late", "Sleep is good."),
        ("Capital of France?", "Paris. See https://en.wikipedia.org/wiki/Paris", "I cannot help with that."),
    ]
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
            for i, (q, c, r) in enumerate(texts)]


# ----------------------------------------------------------------------------- summaries


@torch.no_grad()
def _direct_summaries(model, sae, pairs):
    """Per sequence, one unbatched run_with_cache; encode; max / share of tokens per span (no first token)."""
    from anatomy.models import format_pair

    hook = sae.cfg.metadata.hook_name
    out = {}
    for pair in pairs:
        for side in ("chosen", "rejected"):
            enc = format_pair(model.tokenizer, pair["prompt"], pair[side])
            layer = int(hook.split(".")[1])
            _, cache = model.run_with_cache(torch.tensor([enc["input_ids"]]), names_filter=lambda n: n == hook,
                                            stop_at_layer=layer + 1)
            acts = cache[hook][0]
            spans = [(side, enc["response_mask"])] + ([("prompt", enc["prompt_mask"])] if side == "chosen" else [])
            for span, mask in spans:
                keep = torch.tensor(mask)
                if span == "prompt":
                    assert keep[0]
                    keep[0] = False  # the first token, an attention sink (norm ~200x), is the one token left out
                z = sae.encode(acts[keep])
                out[(pair["id"], span)] = (z.max(0).values.clamp(min=0), (z > 0).float().mean(0), len(z))
    return out


@pytest.fixture(scope="module")
def feats4(model, sae):
    # batch_tokens=1: every sequence is its own batch, as in the reference -> exact equality
    return feature_summaries(model, sae, _pairs(), batch_tokens=1, progress=False)


def test_feature_summaries_equal_direct_computation(model, sae, feats4, tmp_path):
    pairs = _pairs()
    ref = _direct_summaries(model, sae, pairs)
    feats = feats4
    assert feats.ids == [p["id"] for p in pairs]
    for span in ("prompt", "chosen", "rejected"):
        assert feats.max[span].shape == (4, sae.cfg.d_sae)
        for i, p in enumerate(pairs):
            vmax, vfreq, n = ref[(p["id"], span)]
            assert feats.n_tokens[span][i] == n
            assert np.array_equal(feats.max[span][i].toarray().ravel(), vmax.numpy())
            np.testing.assert_allclose(feats.freq[span][i].toarray().ravel(), vfreq.numpy(), rtol=1e-6, atol=0)
    # batched with padding: same up to float noise
    batched = feature_summaries(model, sae, pairs, progress=False)
    for span in ("prompt", "chosen", "rejected"):
        np.testing.assert_allclose(batched.max[span].toarray(), feats.max[span].toarray(), atol=2e-3)
    # save / load round trip
    feats.save(tmp_path / "f")
    again = PairFeatures.load(tmp_path / "f")
    assert again.ids == feats.ids and again.hook == feats.hook
    for span in ("prompt", "chosen", "rejected"):
        assert (again.max[span] != feats.max[span]).nnz == 0
        assert (again.freq[span] != feats.freq[span]).nnz == 0
        assert np.array_equal(again.n_tokens[span], feats.n_tokens[span])


def test_span_summary_of_empty_span():
    idx, vmax, vfreq = span_summary(torch.zeros(0, 8))
    assert len(idx) == len(vmax) == len(vfreq) == 0


def test_label_features_returns_snippets(model, sae, feats4):
    pairs = _pairs()[:2]
    top = np.asarray(feats4.freq["chosen"][:2].sum(0)).ravel().argsort()[::-1][:3]
    df = label_features(model, sae, pairs, top, top_k=2, window=2, progress=False)
    assert list(df["feature"]) == [int(f) for f in top]
    assert all(isinstance(x, str) and x for x in df["label"])
    sn = df["snippets"].iloc[0][0]
    assert len(sn["tokens"]) == len(sn["acts"]) and sn["acts"][sn["argmax"]] == pytest.approx(sn["max"], abs=1e-3)
    seen = []
    df2 = label_features(model, sae, pairs, top[:1], top_k=2, labeler=lambda p: seen.append(p) or "my label",
                         progress=False)
    assert df2["label"].iloc[0] == "my label" and "[[" in seen[0]


# ----------------------------------------------------------------------------- clusters


def _planted(n_pairs=400, d_sae=64, groups=((0, 1, 2, 3, 4), (10, 11, 12, 13), (20, 21, 22, 23, 24, 25)), seed=0):
    """Synthetic PairFeatures: each group fires together (on a random 20% of pair-spans, each member
    with prob 0.9 then), other features fire independently at random."""
    rng = np.random.default_rng(seed)
    mats = {}
    for span in ("prompt", "chosen", "rejected"):
        f = (rng.random((n_pairs, d_sae)) < 0.1) * rng.random((n_pairs, d_sae))
        for g in groups:
            on = rng.random(n_pairs) < 0.2
            for j in g:
                f[:, j] = np.where(on & (rng.random(n_pairs) < 0.9), rng.random(n_pairs) * 0.5 + 0.1, 0.0)
        mats[span] = sp.csr_matrix(f)
    ids = [f"p{i}" for i in range(n_pairs)]
    n = {s: np.full(n_pairs, 10) for s in mats}
    return PairFeatures(ids, {s: m.copy() for s, m in mats.items()}, mats, n, None, d_sae), groups


def test_knn_edges_keep_each_rows_nearest_neighbours_symmetrised():
    from anatomy.features import _knn_edges

    rng = np.random.default_rng(0)
    a = rng.random((30, 30))
    sim = (a + a.T) / 2
    sim[0, 1:] = sim[1:, 0] = 0.0  # feature 0 shares no information: no edge of its own
    i, j, w = _knn_edges(sim, 3)
    assert np.all(i < j) and len(set(zip(i, j))) == len(i)
    np.testing.assert_allclose(w, sim[i, j])
    edges = set(zip(i.tolist(), j.tolist()))
    assert not any(0 in e for e in edges)
    for r in range(1, 30):
        row = sim[r].copy()
        row[[0, r]] = -np.inf
        for c in np.argsort(-row)[:3]:  # each row's 3 nearest are kept (ties are measure-zero here)
            assert (min(r, c), max(r, c)) in edges
    assert len(edges) <= 29 * 3
    for block in (1, 7, 64):  # rows are taken a block at a time: the edges cannot depend on the block
        for got, want in zip(_knn_edges(sim, 3, block=block), (i, j, w)):
            np.testing.assert_array_equal(got, want)


def test_cluster_features_knn_graph_keeps_planted_groups_apart():
    feats, groups = _planted()
    df = cluster_features(feats, graph="knn", n_neighbors=3, min_size=4, min_fires=5, seed=0)
    assert df.attrs["graph"] == "knn" and df.attrs["n_edges"] > 0
    for g in groups:  # each planted group lands in one cluster, and no cluster holds two groups
        labels = set(df.loc[df.feature.isin(g), "cluster"])
        assert len(labels) == 1 and labels != {-1}
    assert len({df.loc[df.feature == g[0], "cluster"].item() for g in groups}) == len(groups)
    with pytest.raises(ValueError, match="graph"):
        cluster_features(feats, graph="mutual")


def test_cluster_features_sweep_equals_one_call_per_resolution():
    from anatomy.features import cluster_features_sweep

    feats, _ = _planted()
    sweep = cluster_features_sweep(feats, [0.5, 1.0, 4.0], graph="knn", n_neighbors=3, seed=0)
    assert list(sweep) == [0.5, 1.0, 4.0]
    for r, df in sweep.items():
        pd.testing.assert_frame_equal(df, cluster_features(feats, resolution=r, graph="knn", n_neighbors=3, seed=0))
    assert not sweep[4.0].cluster.equals(sweep[0.5].cluster)  # each resolution partitions the graph anew


def test_cluster_features_recovers_planted_groups():
    feats, groups = _planted()
    df = cluster_features(feats, top_percentile=98.5, min_size=4, min_fires=5, seed=0)
    assert len(df) == 64 and set(df.columns) >= {"feature", "cluster", "n_fires", "cluster_size"}
    # 31 planted edges of 64 * 63 / 2 = 2016 feature pairs: the top 1.5% are the planted ones
    found = [set(df.loc[df.cluster == c, "feature"]) for c in sorted(set(df.cluster) - {-1})]
    assert sorted(map(sorted, found)) == sorted(map(sorted, [set(g) for g in groups]))
    again = cluster_features(feats, top_percentile=98.5, min_size=4, min_fires=5, seed=0)
    pd.testing.assert_frame_equal(df, again)
    scores = cluster_scores(feats, df, stat="freq")
    assert scores.shape == (400, len(found))
    c0 = df.loc[df.feature == groups[0][0], "cluster"].item()
    expected = sum(feats.freq[s][:, list(groups[0])].toarray().sum(1) for s in ("chosen", "rejected"))
    np.testing.assert_allclose(scores[c0].to_numpy(), expected, rtol=1e-5)
    one = cluster_scores(feats, df, span="prompt")
    np.testing.assert_allclose(one[c0].to_numpy(), feats.freq["prompt"][:, list(groups[0])].toarray().sum(1),
                               rtol=1e-5)


def test_nmi_matrix_equals_sklearn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(1)
    B = (rng.random((300, 6)) < [0.05, 0.3, 0.5, 0.5, 0.9, 0.2]).astype(float)
    B[:, 3] = np.where(rng.random(300) < 0.8, B[:, 2], 1 - B[:, 2])  # correlated with column 2
    nmi = nmi_matrix(sp.csr_matrix(B))
    for i in range(6):
        for j in range(6):
            if i != j:
                assert nmi[i, j] == pytest.approx(normalized_mutual_info_score(B[:, i], B[:, j]), abs=1e-5)
    assert nmi[2, 3] > 0.1


def test_gate_weak_firing_keeps_only_clear_firings():
    from anatomy import gate_weak_firing

    feats, _ = _planted(n_pairs=50)
    before = {s: (feats.max[s].copy(), feats.freq[s].copy()) for s in feats.spans}
    gated = gate_weak_firing(feats, 0.5)
    top = np.maximum(feats.max["chosen"].toarray().max(0), feats.max["rejected"].toarray().max(0))
    for s in feats.spans:  # the prompt span too, against the response spans' largest max
        m, f = feats.max[s].toarray(), feats.freq[s].toarray()
        keep = m >= 0.5 * top
        np.testing.assert_array_equal(gated.max[s].toarray(), np.where(keep, m, 0.0))
        np.testing.assert_array_equal(gated.freq[s].toarray(), np.where(keep, f, 0.0))
        assert (feats.max[s] != before[s][0]).nnz == 0 and (feats.freq[s] != before[s][1]).nnz == 0  # input kept
        assert 0 < gated.max[s].nnz < feats.max[s].nnz
    assert gated.ids == feats.ids and gated.meta["gate_rho"] == 0.5 and "gate_rho" not in feats.meta
    assert gate_weak_firing(feats, 0.0) is feats
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rho must be in"):
            gate_weak_firing(feats, bad)
    with pytest.raises(ValueError, match="reference spans"):
        gate_weak_firing(feats, 0.5, reference=("response",))


def test_cluster_features_isolates_are_concepts_of_one_feature():
    feats, groups = _planted()
    planted = set().union(*groups)
    for graph in ("knn", "threshold"):
        df = cluster_features(feats, graph=graph, n_neighbors=3, top_percentile=98.5, min_size=4, min_fires=5,
                              isolates=True, seed=0)
        # the 31 planted pairs are the top 1.5% by NMI, so every other feature has no partner above the cut
        alone = df[~df.feature.isin(planted) & (df.n_fires >= 5)]
        assert df.attrs["n_isolates"] == len(alone) > 0
        assert (alone.cluster_size == 1).all() and alone.cluster.is_unique and (alone.cluster >= 0).all()
        found = [set(df.loc[df.cluster == c, "feature"]) for c in set(df.cluster) - {-1} if (df.cluster == c).sum() > 1]
        assert sorted(map(sorted, found)) == sorted(map(sorted, [set(g) for g in groups]))
        assert df.loc[df.feature.isin(planted), "cluster"].max() < alone.cluster.min()  # communities first
    noise, _ = _planted(groups=())  # a cut at the largest NMI: every candidate is an isolate, no graph is left
    alone = cluster_features(noise, graph="knn", n_neighbors=3, top_percentile=100, isolates=True, seed=0)
    assert alone.attrs["n_isolates"] == (alone.n_fires >= 5).sum() and (alone.cluster_size <= 1).all()
    without = cluster_features(feats, graph="knn", n_neighbors=3, top_percentile=98.5, seed=0)
    assert without.attrs["n_isolates"] == 0 and (without.cluster_size != 1).all()
