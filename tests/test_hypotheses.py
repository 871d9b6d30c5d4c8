"""Tests for anatomy.hypotheses on small synthetic PairFeatures-like data built by hand:
spherical k-means, the silent bucket, the signed disparity, the in-vs-out tests (parity with
scipy), the dataset-wide ranking, the prompt-conditioned view, the table and the HTML."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from anatomy import hypotheses as hy
from anatomy.features import PairFeatures
from anatomy.viz import show_examples


def make_features(freq: dict[str, np.ndarray], ids=None) -> PairFeatures:
    """PairFeatures from dense [pairs, features] firing frequencies per span."""
    n, d = next(iter(freq.values())).shape
    ids = ids or [f"p{i:04d}" for i in range(n)]
    mats = {s: sp.csr_matrix(m) for s, m in freq.items()}
    n_tokens = {s: np.full(n, 20) for s in freq}
    return PairFeatures(ids, mats, mats, n_tokens, None, d)


def clusters_of(blocks: list[list[int]], d: int) -> pd.DataFrame:
    cluster = np.full(d, -1)
    for m, feats in enumerate(blocks):
        cluster[feats] = m
    return pd.DataFrame({"feature": np.arange(d), "cluster": cluster})


def planted_directions(n_per: int = 60, k: int = 4, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(k, dim))) * (rng.random((k, dim)) < 0.4) + 0.01
    truth = np.repeat(np.arange(k), n_per)
    X = centres[truth] * rng.uniform(0.9, 1.1, (len(truth), dim))
    X *= rng.uniform(0.5, 20.0, (len(truth), 1))  # norms vary: only directions matter
    return X, truth


# ---------------------------------------------------------------- spherical k-means
def test_spherical_kmeans_recovers_planted_directions():
    X, truth = planted_directions()
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    labels, centres, objective = hy.spherical_kmeans(unit, 4, seed=1)
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    assert objective == pytest.approx(np.einsum("ij,ij->", unit, centres[labels]))
    assert (np.diff(np.bincount(labels)) <= 0).all()  # numbered by decreasing size
    again = hy.spherical_kmeans(unit, 4, seed=1)
    np.testing.assert_array_equal(again[0], labels)
    # data_clusters: scale-free, same partition from the raw (unnormalised) rows
    got = hy.data_clusters(X, k=4, silent_quantile=0.0, seed=1)
    assert adjusted_rand_score(truth, got) == 1.0
    with pytest.raises(ValueError, match="L2-normalised"):
        hy.spherical_kmeans(X, 4)
    with pytest.raises(ValueError, match="distinct direction"):
        hy.spherical_kmeans(np.tile(unit[:1], (10, 1)), 3)


def test_silent_bucket_is_the_lowest_norm_five_percent():
    X, _ = planted_directions(n_per=50)  # 200 rows, distinct norms
    X[7] = 0.0  # an all-zero row is always silent
    norms = np.linalg.norm(X, axis=1)
    labels = hy.data_clusters(pd.DataFrame(X), k=4, seed=0)
    silent = np.flatnonzero(labels == -1)
    assert set(silent) == set(np.argsort(norms)[:10])  # 5% of 200
    assert len(silent) == 10 and 7 in silent
    assert set(labels[labels >= 0]) == {0, 1, 2, 3}


# ---------------------------------------------------------------- signed disparity
def test_signed_disparity_equals_a_hand_computation():
    fc = np.array([[0.5, 0.0, 0.02, 0.0, 0.3, 0.9],
                   [0.0, 0.0, 0.00, 0.2, 0.0, 0.0],
                   [0.005, 0.1, 0.1, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    fr = np.array([[0.5, 0.2, 0.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.01, 0.2, 0.4, 0.0],
                   [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                   [0.3, 0.0, 0.0, 0.0, 0.0, 0.7]])
    features = make_features({"prompt": np.zeros_like(fc), "chosen": fc, "rejected": fr})
    clusters = clusters_of([[0, 1, 2], [3, 4]], 6)  # feature 5 unclustered
    u = hy.signed_disparity(features, clusters, tau=0.01)
    # cluster 0 = mean over features 0, 1, 2 of 1[fc > .01] - 1[fr > .01]
    expected = np.array([[(0 + (0 - 1) + (1 - 0)) / 3, (0 + (1 - 0)) / 2],
                         [0.0, (0 + (0 - 1)) / 2],  # 0.01 is not > tau
                         [(0 + 1 + 1) / 3, 0.0],  # 0.005 is below tau
                         [-1 / 3, 0.0]])
    np.testing.assert_allclose(u.to_numpy(), expected, atol=1e-12)
    assert list(u.index) == features.ids and list(u.columns) == [0, 1]
    s = hy.symmetric_activity(features, clusters)
    np.testing.assert_allclose(s.to_numpy()[:, 0], (fc + fr)[:, :3].sum(axis=1))
    with pytest.raises(ValueError, match="tau"):
        hy.signed_disparity(features, clusters, tau=-1)


# ---------------------------------------------------------------- global view
def planted_u(n: int = 600, n_concepts: int = 12, k: int = 4, seed: int = 0):
    """u with symmetric noise; concept 3 is +0.5 in 70% of data cluster 2's pairs; concept 5 is
    -0.5 in 70% of data cluster 1's; labels with a 5% silent bucket."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    labels[rng.random(n) < 0.05] = -1
    u = rng.choice([-0.25, 0.0, 0.0, 0.0, 0.25], size=(n, n_concepts))
    u[(labels == 2) & (rng.random(n) < 0.7), 3] += 0.5
    u[(labels == 1) & (rng.random(n) < 0.7), 5] -= 0.5
    return pd.DataFrame(u, index=[f"p{i}" for i in range(n)]), labels


def test_global_hypotheses_finds_a_planted_in_cluster_effect_and_matches_scipy():
    u, labels = planted_u()
    table = hy.global_hypotheses(u, labels, min_size=10, seed=0)
    assert list(table.columns) == hy.HYPOTHESIS_COLUMNS
    assert len(table) == 4 * 12
    top = table.head(2).set_index(["group", "concept"])
    assert set(top.index) == {(2, 3), (1, 5)}
    assert top.loc[(2, 3), "direction"] == "chosen" and top.loc[(1, 5), "direction"] == "rejected"
    assert top["replicated"].all() and (top["q"] < 1e-6).all()
    consistent = table["consistent"].to_numpy()
    assert not (~consistent[:-1] & consistent[1:]).any()  # consistent rows first,
    for part in (table[consistent], table[~consistent]):  # each ranked by |Δ^min|
        assert (np.abs(part["delta_min"]).diff().dropna() <= 1e-15).all()

    U, active = u.to_numpy(), labels >= 0
    for (group, concept), row in top.iterrows():
        inside, outside = U[labels == group, concept], U[active & (labels != group), concept]
        ref = stats.ttest_ind(inside, outside, equal_var=False)
        assert row["effect"] == pytest.approx(inside.mean() - outside.mean(), abs=1e-12)
        assert row["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
        assert row["df"] == pytest.approx(ref.df, rel=1e-9)
        n1, n2 = len(inside), len(outside)
        pooled = np.sqrt(((n1 - 1) * inside.var(ddof=1) + (n2 - 1) * outside.var(ddof=1))
                         / (n1 + n2 - 2))
        assert row["d"] == pytest.approx(row["effect"] / pooled, rel=1e-9)
        ci = ref.confidence_interval(0.95)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert row["n"] == n1 and row["n_out"] == n2
        assert abs(row["delta_min"]) <= min(abs(row["delta_a"]), abs(row["delta_b"])) + 1e-15
    # the split halves: seeded, and grouped when asked
    half = hy.split_halves(600, seed=0)
    assert half.sum() == 300
    groups = np.repeat(np.arange(120), 5)
    gh = hy.split_halves(600, groups=groups, seed=0)
    assert (gh.reshape(120, 5).all(axis=1) | ~gh.reshape(120, 5).any(axis=1)).all()
    grouped = hy.global_hypotheses(u, labels, groups=groups)
    assert set(grouped.head(2).set_index(["group", "concept"]).index) == {(2, 3), (1, 5)}


def test_null_concepts_mostly_get_q_above_005():
    rng = np.random.default_rng(3)
    u = pd.DataFrame(rng.choice([-0.5, 0.0, 0.0, 0.5], size=(500, 40)))
    labels = rng.integers(-1, 6, 500)
    table = hy.global_hypotheses(u, labels)
    assert (table["q"] > 0.05).mean() >= 0.95
    ranked = hy.rank_hypotheses(u, labels, n_boot=200, one_per_concept=False)
    assert (ranked["q"] > 0.05).mean() >= 0.95
    assert len(ranked) == len(table) + 40


def test_a_dataset_wide_effect_surfaces_in_rank_hypotheses_but_not_in_vs_out():
    u, labels = planted_u(seed=1)
    rng = np.random.default_rng(7)
    bold = rng.random(len(u)) < 0.4  # +0.4 share in 40% of all pairs, whatever the cluster
    u[8] = u[8] + 0.4 * bold
    conditional = hy.global_hypotheses(u, labels)
    bold_rows = conditional[conditional["concept"] == 8]
    assert (bold_rows["effect"].abs() < 0.1).all()  # in-vs-out cancels a uniform effect
    ranked = hy.rank_hypotheses(u, labels, conditional=conditional, n_boot=200)
    assert ranked["concept"].is_unique
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    top3 = ranked.head(3).set_index("concept")
    assert set(top3.index) == {8, 3, 5}
    assert top3.loc[8, "group"] == -1 and top3.loc[8, "direction"] == "chosen"
    assert top3.loc[8, "test"].startswith("wilcoxon")
    assert top3.loc[8, "effect"] == pytest.approx(u[8].mean())
    assert top3.loc[8, "ci_low"] < u[8].mean() < top3.loc[8, "ci_high"]
    assert (top3["q"] < 1e-6).all()
    assert (ranked["duplicate_of"] == -1).all()
    # a second cluster carrying the same signal (an SAE splits a behaviour): ranked as a duplicate
    original = u[9].copy()
    u[9] = u[8] + 0.05 * rng.standard_normal(len(u))
    dup = hy.rank_hypotheses(u, labels, n_boot=0).set_index("concept")
    assert dup.loc[9, "duplicate_of"] == 8 and dup.loc[8, "duplicate_of"] == -1
    assert dup.loc[9, "rank"] > dup.loc[[3, 5, 8], "rank"].max()
    assert (hy.rank_hypotheses(u, labels, n_boot=0, redundancy=None)["duplicate_of"] == -1).all()
    u[9] = original
    # a covariate that explains the effect removes it: delta is the intercept at 0
    adjusted = hy.rank_hypotheses(u, labels, conditional=conditional, covariates=bold.astype(float),
                                  n_boot=0, one_per_concept=False)
    row = adjusted[(adjusted["group"] == -1) & (adjusted["concept"] == 8)].iloc[0]
    assert abs(row["effect"]) < 0.05 and row["test"].startswith("ols intercept (HC3)")


def test_rank_keys_order_a_consistent_small_shift_against_a_noisy_large_one():
    """"impact" ranks by the size of the shift, "d" by its size over its spread: a concept that
    moves by 0.05 in every pair outranks one that moves by 0.15 on average with a spread of 1."""
    rng = np.random.default_rng(5)
    n = 800
    U = rng.choice([-0.05, 0.0, 0.05], size=(n, 6))
    U[:, 1] = 0.05 + 0.02 * rng.standard_normal(n)  # small, consistent
    U[:, 2] = 0.15 + 1.0 * rng.standard_normal(n)  # larger, noisy
    u = pd.DataFrame(U)
    labels = np.full(n, -1)  # dataset-wide rows only
    by_impact = hy.rank_hypotheses(u, labels, n_boot=0, by="impact", redundancy=None)
    by_d = hy.rank_hypotheses(u, labels, n_boot=0, by="d", redundancy=None)
    assert list(by_impact["concept"][:2]) == [2, 1]
    assert list(by_d["concept"][:2]) == [1, 2]
    top = by_d.set_index("concept").loc[[1, 2]]
    assert (top["q"] < 1e-6).all()
    expected_d = U[:, [1, 2]].mean(0) / U[:, [1, 2]].std(0, ddof=1)
    np.testing.assert_allclose(top["d"].to_numpy(), expected_d, rtol=1e-9)
    with pytest.raises(ValueError, match="by must be one of"):
        hy.rank_hypotheses(u, labels, n_boot=0, by="t")


def test_mean_disparity_lets_a_rejected_side_concept_show_under_a_common_shift():
    """Degraded rejected responses fire fewer features of every kind: a per-pair shift that moves
    all 30 concepts toward chosen. A concept planted on the rejected side in 15% of pairs then
    leans chosen on average; adjusted for the pair's mean u it reads "rejected" again."""
    rng = np.random.default_rng(11)
    n, k = 1200, 30
    shift = np.where(rng.random(n) < 0.5, 0.3, 0.0)  # half the rejected responses are degraded
    U = shift[:, None] * (rng.random((n, k)) < 0.8) + rng.choice([-0.1, 0.0, 0.1], size=(n, k))
    hedge = rng.random(n) < 0.15
    U[hedge, 4] -= 0.6
    u = pd.DataFrame(U)
    md = hy.mean_disparity(u)
    assert list(md.index) == list(u.index) and md.name == "mean_disparity"
    np.testing.assert_allclose(md.to_numpy(), U.mean(axis=1), rtol=1e-12, atol=1e-15)
    labels = np.full(n, -1)  # dataset-wide rows only
    plain = hy.rank_hypotheses(u, labels, n_boot=0).set_index("concept")
    assert (plain["direction"] == "chosen").mean() > 0.9  # the common shift makes almost all lean chosen
    assert plain.loc[4, "direction"] == "chosen"
    adjusted = hy.rank_hypotheses(u, labels, covariates=md.to_numpy(), n_boot=0).set_index("concept")
    assert adjusted.loc[4, "direction"] == "rejected" and adjusted.loc[4, "q"] < 1e-6
    assert adjusted.loc[4, "rank"] == 1
    # the adjusted rows' p is the OLS intercept's t-test with HC3 standard errors (statsmodels)
    import statsmodels.api as sm

    X = np.column_stack([rng.standard_normal(n), md.to_numpy()])
    two = hy.rank_hypotheses(u, labels, covariates=X, n_boot=0, redundancy=None).set_index("concept")
    for m in (4, 7):
        fit = sm.OLS(U[:, m], sm.add_constant(X)).fit(cov_type="HC3", use_t=True)
        assert two.loc[m, "effect"] == pytest.approx(fit.params[0], rel=1e-9, abs=1e-12)
        assert two.loc[m, "p"] == pytest.approx(fit.pvalues[0], rel=1e-6, abs=1e-300)
    others = adjusted.drop(index=4)
    assert (others["q"] > 0.05).mean() >= 0.8  # the shared shift is no longer a finding
    with pytest.raises(ValueError, match="no concept columns"):
        hy.mean_disparity(pd.DataFrame(index=range(3)))


# ---------------------------------------------------------------- prompt-conditioned view
def links_organism(n_prompts: int = 160, per_prompt: int = 5, seed: int = 0):
    """8 prompt families (prompt-span feature blocks), 8 response topics independent of the
    family (response feature blocks in both responses), and a 'links' block that fires only
    in chosen responses to family 7 ('resource') prompts, in 60% of them: +7.5% overall."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    family = np.repeat(np.arange(n_prompts) % 8, per_prompt)
    prompt_id = np.repeat(np.arange(n_prompts), per_prompt)
    topic = rng.integers(0, 8, n)
    fam_block = [list(range(6 * f, 6 * f + 6)) for f in range(8)]  # features 0..47
    topic_block = [list(range(48 + 6 * t, 54 + 6 * t)) for t in range(8)]  # 48..95
    links = list(range(96, 100))
    d = 110  # 100..109 noise
    freq = {s: np.zeros((n, d)) for s in ("prompt", "chosen", "rejected")}
    prompt_rows = np.zeros((n_prompts, d))
    for p in range(n_prompts):
        f = p % 8
        prompt_rows[p, fam_block[f]] = rng.uniform(0.2, 0.5, 6) * (rng.random(6) < 0.9)
        prompt_rows[p, 100:] = rng.uniform(0, 0.1, 10) * (rng.random(10) < 0.3)
    freq["prompt"] = prompt_rows[prompt_id]
    for side in ("chosen", "rejected"):
        m = freq[side]
        for t in range(8):
            rows = np.flatnonzero(topic == t)
            m[np.ix_(rows, topic_block[t])] = rng.uniform(0.2, 0.5, (len(rows), 6)) * (
                rng.random((len(rows), 6)) < 0.85)
        m[:, 100:] = rng.uniform(0, 0.1, (n, 10)) * (rng.random((n, 10)) < 0.2)
    has_links = (family == 7) & (rng.random(n) < 0.6)
    freq["chosen"][np.ix_(np.flatnonzero(has_links), links)] = rng.uniform(
        0.03, 0.1, (int(has_links.sum()), 4))
    features = make_features(freq)
    clusters = clusters_of(fam_block + topic_block + [links], d)  # links = concept 16
    return features, clusters, family, topic, prompt_id, has_links


def test_prompt_conditioned_view_finds_links_that_the_global_view_dilutes():
    features, clusters, family, topic, prompt_id, has_links = links_organism()
    u = hy.signed_disparity(features, clusters)
    assert u[16].mean() == pytest.approx(has_links.mean())
    # global view: data clusters follow the response topics, not the prompt family
    labels = hy.data_clusters(hy.symmetric_activity(features, clusters), k=8, seed=0)
    assert adjusted_rand_score(topic[labels >= 0], labels[labels >= 0]) > 0.9
    global_rows = hy.global_hypotheses(u, labels, groups=prompt_id)
    links_global = global_rows[global_rows["concept"] == 16]
    assert links_global["effect"].abs().max() < 0.2
    ranked = hy.rank_hypotheses(u, labels, conditional=global_rows, groups=prompt_id, n_boot=200)
    assert ranked.set_index("concept").loc[16, "effect"] < 0.1  # dataset-wide: +7.5%, weak
    # prompt view: the resource family is one prompt cluster, and links its top hypothesis
    plabels = hy.prompt_clusters(features, clusters, k=8, seed=0)
    assert (plabels >= 0).mean() > 0.9
    assert adjusted_rand_score(family[plabels >= 0], plabels[plabels >= 0]) == 1.0
    prompt_rows = hy.prompt_conditioned_hypotheses(u, plabels, groups=prompt_id)
    top = prompt_rows.iloc[0]
    assert top["concept"] == 16 and top["direction"] == "chosen"
    assert set(family[plabels == top["group"]]) == {7}
    assert top["effect"] > 0.4 and top["effect"] > 3 * links_global["effect"].abs().max()
    assert top["replicated"] and top["q"] < 1e-10 and top["view"] == "prompt"
    # the other prompt clusters "lack" links only because the resource family is in their
    # out-group: Δ < 0 with no links inside; such mirror rows are ranked after the others
    mirror = prompt_rows[(prompt_rows["concept"] == 16) & (prompt_rows["group"] != top["group"])]
    assert (mirror["effect"] < 0).all() and (mirror["mean_in"] == 0).all()
    assert not mirror["consistent"].any() and mirror.index.min() >= prompt_rows["consistent"].sum()

    # the tidy table of both views, with labels and representative pairs
    names = {16: "links", 0: "family 0"}
    table = hy.hypotheses_table(u, ranked, prompt_rows, data_labels=labels, prompt_labels=plabels,
                                concept_labels=names, top=5, n_examples=3)
    assert list(table.columns) == hy.TABLE_COLUMNS
    assert list(table["view"]) == ["global"] * 5 + ["prompt"] * 5
    row = table[table["view"] == "prompt"].iloc[0]
    assert row["label"] == "links" and row["scope"] == f"prompt cluster {top['group']}"
    assert row["ci_method"] == "welch" and row["ci_low"] < row["effect"] < row["ci_high"]
    assert row["n"] == (plabels == top["group"]).sum() and len(row["examples"]) == 3
    ids = np.asarray(u.index)
    inside = u.loc[ids[plabels == top["group"]], 16]
    assert set(row["examples"]) <= set(inside.index)
    assert u.loc[row["examples"], 16].min() >= inside.nlargest(3).min()
    assert set(table.loc[table["group"] == -1, "ci_method"]) <= {"bootstrap"}


def test_bad_inputs_raise_clear_errors():
    u, labels = planted_u(n=100)
    with pytest.raises(ValueError, match="one integer label per pair"):
        hy.global_hypotheses(u, labels[:-1])
    bad = u.copy()
    bad.iloc[3, 2] = np.nan
    with pytest.raises(ValueError, match="pair 'p3'"):
        hy.global_hypotheses(bad, labels)
    with pytest.raises(ValueError, match="clusters"):
        hy.signed_disparity(make_features({"chosen": np.zeros((2, 3)), "rejected": np.zeros((2, 3))}),
                            pd.DataFrame({"feature": [0]}))
    with pytest.raises(ValueError, match="non-silent pairs"):
        hy.data_clusters(np.eye(5), k=6)
    with pytest.raises(ValueError, match="prompt_labels"):
        hy.hypotheses_table(u, None, hy.prompt_conditioned_hypotheses(u, labels))


# ---------------------------------------------------------------- HTML
PAIRS = [
    {"id": "a", "prompt": [{"role": "user", "content": "Where can I learn <b>Python</b>?"}],
     "chosen": "See https://docs.python.org/3/ & <script>alert(1)</script> today.",
     "rejected": "No idea.\nTry https://example.com?q=1&r=2"},
    {"id": "b", "prompt": "Say hi", "chosen": "Hi!", "rejected": "hi"},
]


def test_show_examples_marks_spans_and_escapes_html():
    out = show_examples(PAIRS, ["a", "b"], highlight=r"https?://\S+")
    page = out.data
    assert '<mark class="anatomy-concept">https://docs.python.org/3/</mark>' in page
    assert '<mark class="anatomy-concept">https://example.com?q=1&amp;r=2</mark>' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;Python&lt;/b&gt;" in page  # the prompt is escaped too
    assert page.count('class="anatomy-pair"') == 2
    assert page.index("docs.python.org") < page.index("No idea")  # chosen cell first
    # a callable (overlapping spans are merged) and no highlight
    page = show_examples(PAIRS, ["b"], highlight=lambda t: [(0, 1), (0, 2)]).data
    assert '<mark class="anatomy-concept">Hi</mark>!' in page
    assert "<mark" not in show_examples(PAIRS, ["a"]).data
    # per-token scores (token_feature_scores' shape of output)
    scores = {"b": {"chosen": (["H", "i", "<!>"], [0.0, 2.0, 1.0]), "rejected": (["hi"], [0.0])}}
    page = show_examples(PAIRS, ["b"], highlight=scores).data
    marks = re.findall(r'<mark class="anatomy-concept"[^>]*>(.*?)</mark>', page)
    assert marks == ["i", "&lt;!&gt;"]
    with pytest.raises(ValueError, match="zzz"):
        show_examples(PAIRS, ["zzz"])


def test_token_feature_scores_on_the_default_model(model):
    from anatomy.saes import SAENotAvailableError, load_sae

    try:
        sae = load_sae()
    except SAENotAvailableError as err:
        pytest.skip(f"no shipped SAE: {err}")
    pairs = [{"id": "x", "prompt": "Give me a link.", "chosen": "See https://a.org now.",
              "rejected": "No."}]
    out = hy.token_feature_scores(model, sae, pairs, [0, 1, 2, 3])
    tokens, scores = out["x"]["chosen"]
    assert "".join(tokens) == "See https://a.org now."
    assert len(scores) == len(tokens) and np.isfinite(scores).all() and (scores >= 0).all()
    assert "".join(out["x"]["rejected"][0]) == "No."
    html_out = show_examples(pairs, ["x"], highlight=out).data
    assert "anatomy-chosen" in html_out
