"""Stage 3b, hypotheses: which concepts separate chosen from rejected, globally and conditioned on the prompt.

Takes the SAE lens's per-span summaries (`anatomy.features.PairFeatures`: per pair and span,
each feature's firing frequency, ``csr_matrix[n_pairs, d_sae]``) and its concept clusters
(`anatomy.features.cluster_features`: a DataFrame with columns ``feature``, ``cluster``, -1 =
unclustered); returns pandas DataFrames of tested hypotheses (examples are drawn by `anatomy.viz`).
METHOD.md §3.4 (global view) and §3.5 (prompt-conditioned view) are the spec.

Global (feature-conditioned) view, METHOD §3.4:
- `symmetric_activity(features, clusters)` — s [pair, cluster] = Σ_{g∈T_m} (freq_chosen + freq_rejected).
- `data_clusters(s, k=...)` — a silent bucket (-1: ||s_i|| at or below the 5th percentile),
  then spherical k-means of the normalised rows: data clusters B_k.
- `signed_disparity(features, clusters, tau=0.01)` — u [pair, cluster] =
  mean_{g∈T_m} (1[freq_chosen > τ] − 1[freq_rejected > τ]).
- `global_hypotheses(u, labels)` — per (B_k, T_m): Δ = mean u in B_k − mean u over the rest
  of the active pool, Welch test, Cohen's d, split-half replication, Δ^min, BH q.
- `rank_hypotheses(u, labels)` — those rows together with one dataset-wide paired test of u
  per concept (`anatomy.contrast.paired_stats`), in one ranking.
Prompt-conditioned view, METHOD §3.5:
- `prompt_clusters(features, clusters, k=...)` — A_k: spherical k-means on prompt-span activity.
- `prompt_conditioned_hypotheses(u, prompt_labels)` — A_k ⇝ R_m, the same in-vs-out test.
Output:
- `hypotheses_table(u, global_rows, prompt_rows)` — one tidy table: labels, direction,
  effect with CI, p, q, replication, n, representative pair ids.
- `token_feature_scores(model, sae, pairs, feature_ids)` — per-token concept activity, for
  `anatomy.viz.show_examples(pairs, ids, highlight=scores)`.
Helpers: `spherical_kmeans`, `split_halves`, `length_gap`, `mean_disparity` (covariates).

Decisions (documented where they are made):
- Spherical k-means is implemented here (cosine assignment, renormalised centroids, k-means++
  seeding in the cosine distance, ``n_init`` restarts), not sklearn's KMeans on unit rows:
  KMeans's centroids are not renormalised, so its assignments weigh a centroid's norm.
- Split halves are a seeded random split of the pairs, or of groups of pairs (``groups=``,
  e.g. the prompt id: pairs of one prompt are coupled, so they go to the same half), not
  the paper's row parity, which ties replication to the order of the file.
- The response-delta clusters R_m of §3.5 are the concept clusters scored by u; the delta
  vectors are not clustered again.
- Tests treat pairs as independent; pairs that share a prompt are not, so z is inflated
  (as the paper notes): read the split-half replication (grouped by prompt) as the check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .contrast import bh_qvalues, paired_stats
from .features import PairFeatures, cluster_scores, membership_matrix

__all__ = [
    "data_clusters",
    "global_hypotheses",
    "hypotheses_table",
    "length_gap",
    "mean_disparity",
    "prompt_clusters",
    "prompt_conditioned_hypotheses",
    "rank_hypotheses",
    "signed_disparity",
    "spherical_kmeans",
    "split_halves",
    "symmetric_activity",
    "token_feature_scores",
]

HYPOTHESIS_COLUMNS = ["view", "group", "n", "n_out", "concept", "effect", "ci_low", "ci_high",
                      "statistic", "df", "p", "d", "mean_in", "mean_out", "consistent", "delta_a",
                      "delta_b", "delta_min", "replicated", "q", "direction", "test"]
TABLE_COLUMNS = ["view", "rank", "scope", "group", "concept", "label", "direction", "effect",
                 "ci_low", "ci_high", "ci_method", "test", "p", "q", "d", "delta_min",
                 "replicated", "n", "examples"]
_CI = 0.95


# ---------------------------------------------------------------- inputs
def _features_spans(features: PairFeatures, spans: Sequence[str]) -> int:
    """Check the spans exist and share the pair count; return d_sae."""
    shapes = set()
    for s in spans:
        if s not in features.freq:
            raise ValueError(f"span {s!r} is not in the features (spans: {tuple(features.freq)})")
        shapes.add(features.freq[s].shape)
    if len(shapes) != 1:
        raise ValueError(f"the spans' freq matrices differ in shape: {sorted(shapes)}")
    n, d = shapes.pop()
    if n != len(features.ids):
        raise ValueError(f"freq matrices have {n} rows but there are {len(features.ids)} pair ids")
    return d


def _table(u: pd.DataFrame, name: str = "u") -> np.ndarray:
    if not isinstance(u, pd.DataFrame):
        raise ValueError(f"`{name}` must be a pandas DataFrame (pairs x concept clusters), "
                         f"got {type(u).__name__}")
    U = u.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(U)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"`{name}` has a NaN or infinite value at pair {u.index[i]!r}, "
                         f"column {u.columns[j]!r}")
    return U


def _labels(labels, n: int, name: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ValueError(f"`{name}` must hold one integer label per pair ({n}), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError(f"`{name}` must be integer cluster labels (-1 = silent)")
        lab = lab.astype(np.int64)
    return lab.astype(np.int64, copy=False)


# ---------------------------------------------------------------- global view: scores
def symmetric_activity(features: PairFeatures, clusters: pd.DataFrame) -> pd.DataFrame:
    """METHOD §3.4's symmetric activity ``s_im = Σ_{g∈T_m} (freq_chosen_g + freq_rejected_g)``.

    Returns a DataFrame [n_pairs, n_clusters], index the pair ids, columns the cluster ids
    (`anatomy.features.cluster_scores` with stat="freq" over both response spans). Symmetric in
    chosen and rejected, so clustering pairs on it cannot favour either side.
    """
    _features_spans(features, ("chosen", "rejected"))
    return cluster_scores(features, clusters, stat="freq", span=("chosen", "rejected"))


def signed_disparity(features: PairFeatures, clusters: pd.DataFrame, *,
                     tau: float = 0.01) -> pd.DataFrame:
    """METHOD §3.4's signed disparity ``u_im = mean_{g∈T_m} (1[fc_g > τ] − 1[fr_g > τ])``.

    fc, fr: a feature's firing frequency in the chosen / rejected response. u is in [-1, 1]:
    the share of the cluster's features that fire (above τ) in the chosen response only,
    minus the share that fire in the rejected one only. Computed on the sparse matrices
    (thresholded non-zeros times a membership matrix scaled by 1 / cluster size).

    Returns a DataFrame [n_pairs, n_clusters] like `symmetric_activity` (a cluster id with
    no member feature gets a column of zeros). Raises ValueError for tau < 0.
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0 (a firing-frequency threshold), got {tau}")
    d_sae = _features_spans(features, ("chosen", "rejected"))
    M, sizes = membership_matrix(clusters, d_sae)
    M = M @ sp.diags(np.divide(1.0, sizes, out=np.zeros_like(sizes), where=sizes > 0))
    fired = []
    for span in ("chosen", "rejected"):
        b = features.freq[span].tocsr().astype(np.float64, copy=True)  # never edit the input
        b.data = (b.data > tau).astype(np.float64)
        b.eliminate_zeros()
        fired.append(b)
    u = (fired[0] - fired[1]) @ M
    return pd.DataFrame(np.asarray(u.todense()), index=pd.Index(features.ids, name="id"),
                        columns=pd.RangeIndex(M.shape[1], name="cluster"))


def length_gap(features: PairFeatures) -> pd.Series:
    """Per pair, ``log((n_tokens_chosen + 1) / (n_tokens_rejected + 1))``: a covariate for
    `rank_hypotheses` (longer responses fire more features, so u leans to the longer side)."""
    n_c = np.asarray(features.n_tokens["chosen"], dtype=np.float64)
    n_r = np.asarray(features.n_tokens["rejected"], dtype=np.float64)
    return pd.Series(np.log1p(n_c) - np.log1p(n_r), index=pd.Index(features.ids, name="id"),
                     name="length_gap")


def mean_disparity(u: pd.DataFrame) -> pd.Series:
    """Per pair, the mean of u over all concept clusters: how much more of the SAE's concepts
    the chosen response fires than the rejected one, overall. A covariate for `rank_hypotheses`
    beside `length_gap`.

    Why: when one side of most pairs is richer (a degraded rejected response, truncated or
    repetitive, fires fewer features of every kind), nearly every concept's u leans to that
    side, and the dataset-wide tests against 0 rank concepts by how much they share that
    common shift. Adjusting u for this per-pair mean reads each concept "beyond the pair's
    overall shift", as METHOD §3.4's in-vs-out Δ does for the data clusters. The concept's own
    cluster is one of the averaged columns (1 / n_clusters of the mean). A concept that adds
    a whole sentence (praise, a link) fires many clusters' features and so raises the mean
    itself: the covariate then partly mediates it, and the adjustment can absorb most of its
    effect (on the organism, flattery's mean u of +0.073 becomes +0.004 adjusted).

    u: `signed_disparity` [n_pairs, n_clusters]. Returns a Series [n_pairs] named
    "mean_disparity", index u's index. Raises ValueError for a u with no columns.
    """
    U = _table(u)
    if U.shape[1] == 0:
        raise ValueError("u has no concept columns: nothing to average")
    return pd.Series(U.mean(axis=1), index=u.index, name="mean_disparity")


# ---------------------------------------------------------------- spherical k-means
def _kmeanspp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on unit rows: ||x - c||^2 = 2 (1 - cos), so each next centre is drawn
    with probability proportional to 1 - (its best cosine to the centres so far)."""
    n = len(X)
    centres = np.empty((k, X.shape[1]))
    centres[0] = X[rng.integers(n)]
    dist = np.clip(1.0 - X @ centres[0], 0.0, None)
    for j in range(1, k):
        total = dist.sum()
        if total <= 1e-12:
            raise ValueError(f"the rows point in only {j} distinct direction(s); cannot form "
                             f"k={k} clusters")
        centres[j] = X[rng.choice(n, p=dist / total)]
        np.minimum(dist, np.clip(1.0 - X @ centres[j], 0.0, None), out=dist)
    return centres


def _assign(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine assignment; an empty cluster takes the worst-fitting point of a larger one."""
    sims = X @ centres.T
    labels = sims.argmax(axis=1)
    k = len(centres)
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        fit = sims[np.arange(len(X)), labels]
        candidates = iter(np.argsort(fit, kind="stable"))
        for j in empty:
            i = next(i for i in candidates if counts[labels[i]] > 1)
            counts[labels[i]] -= 1
            labels[i], counts[j] = j, 1
    return labels, sims


def _centroids(X: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray) -> np.ndarray:
    onehot = sp.csr_matrix((np.ones(len(X)), (labels, np.arange(len(X)))), shape=(k, len(X)))
    sums = np.asarray(onehot @ X)
    norms = np.linalg.norm(sums, axis=1)
    out = previous.copy()  # a cluster whose members cancel out keeps its centre
    ok = norms > 0
    out[ok] = sums[ok] / norms[ok, None]
    return out


def spherical_kmeans(X: np.ndarray, k: int, *, n_init: int = 4, max_iter: int = 100,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Spherical k-means of unit-norm rows X [n, dim].

    Each point goes to the centroid of highest cosine; each centroid is the renormalised
    sum of its members; seeding is k-means++ in the cosine distance; an empty cluster takes
    the worst-fitting point. ``n_init`` seeded restarts (``np.random.default_rng(seed)``),
    each run to convergence (no label changes) or ``max_iter``; the run with the largest
    objective Σ_i cos(x_i, c_label(i)) is kept. Clusters are numbered by decreasing size.

    Returns ``(labels [n], centroids [k, dim], objective)``. Raises ValueError when rows are
    not unit-norm, k is not in 1..n, or the rows span fewer than k distinct directions.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (points x dims), got shape {X.shape}")
    n = len(X)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of rows), got {k}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    norms = np.linalg.norm(X, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-6):
        i = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"rows must be L2-normalised; row {i} has norm {norms[i]:.6g}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        centres = _kmeanspp(X, k, rng)
        labels, _ = _assign(X, centres)
        for _ in range(max_iter):
            centres = _centroids(X, labels, k, centres)
            new, _ = _assign(X, centres)
            if np.array_equal(new, labels):
                break
            labels = new
        objective = float(np.einsum("ij,ij->", X, centres[labels]))
        if best is None or objective > best[2] + 1e-12:
            best = (labels, centres, objective)
    labels, centres, objective = best
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels], centres[order], objective


def data_clusters(s: pd.DataFrame | np.ndarray, *, k: int, silent_quantile: float = 0.05,
                  seed: int = 0, n_init: int = 4, max_iter: int = 100) -> np.ndarray:
    """Data clusters B_k (METHOD §3.4): a silent bucket, then spherical k-means.

    s: [n_pairs, n_clusters] non-negative activity (`symmetric_activity`, or prompt-span
        activity for `prompt_clusters`).
    Pairs with ||s_i|| at or below the ``silent_quantile`` quantile of the norms (and any
    all-zero row) form the silent bucket, label -1; the remaining rows are L2-normalised
    and clustered by `spherical_kmeans` (``k``, ``seed``, ``n_init``, ``max_iter``).

    Returns an int64 array [n_pairs] of labels 0..k-1 (by decreasing size) or -1.
    """
    X = s.to_numpy(dtype=np.float64) if isinstance(s, pd.DataFrame) else np.asarray(s, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError("`s` must be a finite 2-D table (pairs x concept clusters)")
    if not 0 <= silent_quantile < 1:
        raise ValueError(f"silent_quantile must be in [0, 1), got {silent_quantile}")
    norms = np.linalg.norm(X, axis=1)
    silent = norms <= (np.quantile(norms, silent_quantile) if silent_quantile > 0 else 0.0)
    silent |= norms == 0
    active = np.flatnonzero(~silent)
    if len(active) < k:
        raise ValueError(f"only {len(active)} non-silent pairs for k={k} clusters")
    labels = np.full(len(X), -1, dtype=np.int64)
    labels[active], _, _ = spherical_kmeans(X[active] / norms[active, None], k, n_init=n_init,
                                            max_iter=max_iter, seed=seed)
    return labels


def prompt_clusters(features: PairFeatures, clusters: pd.DataFrame, *, k: int, seed: int = 0,
                    silent_quantile: float = 0.05, n_init: int = 4,
                    max_iter: int = 100) -> np.ndarray:
    """Prompt-feature clusters A_k (METHOD §3.5): `data_clusters` on the prompt span's
    cluster activity ``Σ_{g∈T_m} freq_prompt_g``.

    ``clusters`` may be the response concept clusters or ones built on the prompt span
    (``cluster_features(features, span="prompt")``). Pairs that share a prompt have the
    same prompt activity, hence the same label. Returns int64 labels [n_pairs], -1 = silent.
    """
    _features_spans(features, ("prompt",))
    s = cluster_scores(features, clusters, stat="freq", span="prompt")
    return data_clusters(s, k=k, silent_quantile=silent_quantile, seed=seed, n_init=n_init,
                         max_iter=max_iter)


# ---------------------------------------------------------------- tests
def split_halves(n: int, *, groups: Sequence | np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """A seeded random split in two halves: bool [n], True = half A.

    Without ``groups``: a random permutation of the pairs, its first n // 2 in half A. With
    ``groups`` (one key per pair, e.g. the prompt id): the groups are split the same way and
    every pair follows its group, so coupled pairs never sit on both sides of a replication.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        half = np.zeros(n, dtype=bool)
        half[rng.permutation(n)[:n // 2]] = True
        return half
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=False)
    if len(codes) != n:
        raise ValueError(f"`groups` must hold one key per pair ({n}), got {len(codes)}")
    in_a = np.zeros(len(uniques), dtype=bool)
    in_a[rng.permutation(len(uniques))[:len(uniques) // 2]] = True
    return in_a[codes]


def _group_moments(U: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                   groups: np.ndarray) -> dict[str, np.ndarray]:
    """In-vs-out moments for every group (rows of the result) and column of U, in ``pool``.

    Sums per group come from a sparse one-hot product. Squared deviations are taken about
    the pool mean, then shifted to each side's own mean (exact up to rounding; u is bounded).
    """
    idx = np.flatnonzero(pool)
    Up, lab = U[idx], labels[idx]
    N = len(idx)
    K = len(groups)
    code = np.searchsorted(groups, lab)
    member = (code < K) & (groups[np.minimum(code, K - 1)] == lab) if K else np.zeros(N, bool)
    onehot = sp.csr_matrix((np.ones(int(member.sum())), (code[member], np.flatnonzero(member))),
                           shape=(K, N))
    n_in = np.asarray(onehot.sum(axis=1)).ravel()
    n_out = N - n_in
    mu = Up.mean(axis=0) if N else np.zeros(U.shape[1])
    dev2 = (Up - mu) ** 2
    s1 = np.asarray(onehot @ Up)
    c2 = np.asarray(onehot @ dev2)
    c2_all = dev2.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = s1 / n_in[:, None]
        mean_out = (mu * N - s1) / n_out[:, None]
        ss_in = np.clip(c2 - n_in[:, None] * (mean_in - mu) ** 2, 0.0, None)
        ss_out = np.clip((c2_all - c2) - n_out[:, None] * (mean_out - mu) ** 2, 0.0, None)
    return {"n_in": n_in, "n_out": n_out, "mean_in": mean_in, "mean_out": mean_out,
            "ss_in": ss_in, "ss_out": ss_out}


def _welch(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Welch's t (= scipy.stats.ttest_ind(equal_var=False)), its df, two-sided p, the Welch CI
    of the difference, and Cohen's d with the pooled sd. Zero variance on both sides: t = 0,
    p = 1 when the means agree, else t = ±inf, p = 0 (and d likewise)."""
    n1, n2 = m["n_in"][:, None].astype(np.float64), m["n_out"][:, None].astype(np.float64)
    delta = m["mean_in"] - m["mean_out"]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = m["ss_in"] / (n1 - 1) / n1
        b = m["ss_out"] / (n2 - 1) / n2
        se = np.sqrt(a + b)
        t = delta / se
        df = (a + b) ** 2 / (a ** 2 / (n1 - 1) + b ** 2 / (n2 - 1))
        sd_pooled = np.sqrt((m["ss_in"] + m["ss_out"]) / (n1 + n2 - 2))
        d = delta / sd_pooled
    degenerate = se == 0
    signed_inf = np.where(delta > 0, np.inf, np.where(delta < 0, -np.inf, 0.0))
    t = np.where(degenerate, signed_inf, t)
    d = np.where(sd_pooled == 0, signed_inf, d)
    df = np.where(degenerate, n1 + n2 - 2, df)
    p = 2.0 * stats.t.sf(np.abs(t), df)
    half_width = stats.t.ppf(0.5 + _CI / 2, df) * np.where(degenerate, 0.0, se)
    return {"delta": delta, "statistic": t, "df": df, "p": p, "d": d,
            "ci_low": delta - half_width, "ci_high": delta + half_width}


def _replication(delta_a: np.ndarray, delta_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same non-zero sign in both halves; Δ^min = that sign x min(|Δ^A|, |Δ^B|), else 0."""
    sa, sb = np.sign(delta_a), np.sign(delta_b)
    replicated = (sa == sb) & (sa != 0) & np.isfinite(delta_a) & np.isfinite(delta_b)
    delta_min = np.where(replicated, sa * np.fmin(np.abs(delta_a), np.abs(delta_b)), 0.0)
    return replicated, delta_min


def _direction(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, "chosen", np.where(x < 0, "rejected", "none"))


def _in_vs_out(u: pd.DataFrame, labels, *, view: str, min_size: int, groups, seed: int,
               name: str) -> pd.DataFrame:
    """The shared test of `global_hypotheses` and `prompt_conditioned_hypotheses`."""
    U = _table(u)
    n, n_concepts = U.shape
    lab = _labels(labels, n, name)
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2 (a variance needs two pairs), got {min_size}")
    active = lab >= 0
    ids, sizes = np.unique(lab[active], return_counts=True)
    keep = (sizes >= min_size) & (active.sum() - sizes >= 2)
    grp = ids[keep]
    if not len(grp) or not n_concepts:
        return pd.DataFrame(columns=HYPOTHESIS_COLUMNS)
    half = split_halves(n, groups=groups, seed=seed)
    full = _group_moments(U, lab, active, grp)
    res = _welch(full)
    halves = []
    for side in (half, ~half):
        m = _group_moments(U, lab, active & side, grp)
        with np.errstate(invalid="ignore"):
            halves.append(m["mean_in"] - m["mean_out"])
    replicated, delta_min = _replication(*halves)
    K = len(grp)
    table = pd.DataFrame({
        "view": view,
        "group": np.repeat(grp, n_concepts),
        "n": np.repeat(full["n_in"], n_concepts).astype(np.int64),
        "n_out": np.repeat(full["n_out"], n_concepts).astype(np.int64),
        "concept": np.tile(np.asarray(u.columns), K),
        "effect": res["delta"].ravel(),
        **{c: res[c].ravel() for c in ("ci_low", "ci_high", "statistic", "df", "p", "d")},
        "mean_in": full["mean_in"].ravel(),
        "mean_out": full["mean_out"].ravel(),
        "consistent": ((np.sign(full["mean_in"]) == np.sign(res["delta"]))
                       & (res["delta"] != 0)).ravel(),
        "delta_a": halves[0].ravel(),
        "delta_b": halves[1].ravel(),
        "delta_min": delta_min.ravel(),
        "replicated": replicated.ravel(),
    })
    table["q"] = bh_qvalues(table["p"].to_numpy())
    table["direction"] = _direction(table["effect"].to_numpy())
    table["test"] = "welch: in vs out"
    order = np.lexsort((-np.abs(table["statistic"].to_numpy()),
                        -np.abs(table["delta_min"].to_numpy()), ~table["consistent"].to_numpy()))
    out = table.iloc[order].reset_index(drop=True)
    out.attrs.update({"split": "grouped random halves" if groups is not None else "random halves",
                      "seed": seed, "min_size": min_size})
    return out[HYPOTHESIS_COLUMNS]


def global_hypotheses(u: pd.DataFrame, labels, *, min_size: int = 10,
                      groups: Sequence | np.ndarray | None = None, seed: int = 0) -> pd.DataFrame:
    """METHOD §3.4's tests: for each data cluster B_k and concept cluster T_m, is u different
    inside B_k than in the rest of the active (non-silent) pool?

    u: `signed_disparity` [pairs, concept clusters]. labels: `data_clusters` [pairs] (-1 silent).
    min_size: data clusters with fewer pairs are not tested.
    groups, seed: the split halves (`split_halves`); pass the prompt id as ``groups``.

    Per (k, m): effect = Δ_km = mean u in B_k − mean u over the other active pairs (so a
    dataset-wide baseline such as "chosen is longer" cancels); statistic = Welch's t (the
    paper's z; equals scipy.stats.ttest_ind(in, out, equal_var=False)), df (Welch–
    Satterthwaite), p (two-sided t), ci_low / ci_high (95% Welch CI of Δ), d (Cohen's d,
    pooled sd); mean_in / mean_out: the two means; consistent: mean_in has Δ's (non-zero)
    sign; delta_a / delta_b: Δ in each split half (in and out both taken in that half);
    replicated: same non-zero sign in both; delta_min: that sign x min(|Δ^A|, |Δ^B|), 0 when
    not replicated; q: Benjamini–Hochberg over every row of the table; n (pairs in B_k), n_out;
    direction ("chosen" if Δ > 0, "rejected" if < 0); view = "global".

    Returns the rows ranked by |delta_min| (then |statistic|) descending — the paper's rule —
    except that inconsistent rows come after the consistent ones: when B_k's own mean u is
    0 or on the other side, Δ only mirrors an effect elsewhere in the pool (every cluster
    but one "lacks" a concept planted in that one), not a lesson of B_k's pairs. Columns:
    HYPOTHESIS_COLUMNS. Note: a concept planted uniformly in every pair has Δ ≈ 0 in every
    B_k — it is found by the dataset-wide rows of `rank_hypotheses`, not here.
    """
    return _in_vs_out(u, labels, view="global", min_size=min_size, groups=groups, seed=seed,
                      name="labels")


def prompt_conditioned_hypotheses(u: pd.DataFrame, prompt_labels, *, min_size: int = 10,
                                  groups: Sequence | np.ndarray | None = None,
                                  seed: int = 0) -> pd.DataFrame:
    """METHOD §3.5's A_k ⇝ R_m: "when prompts express A_k, the data moves responses along R_m".

    u: `signed_disparity` (the response-delta clusters R_m are the concept clusters scored by
    u; the delta vectors are not clustered again). prompt_labels: `prompt_clusters` (-1 silent).
    The test and the columns are those of `global_hypotheses`, with groups = prompt clusters:
    Δ = mean u for prompts in A_k − mean u for the other non-silent prompts; view = "prompt".
    A concept that the data rewards only after one kind of prompt (links after resource
    requests) has a large Δ here and a diluted one in the global view.
    """
    return _in_vs_out(u, prompt_labels, view="prompt", min_size=min_size, groups=groups,
                      seed=seed, name="prompt_labels")


def _adjust(U: np.ndarray, covariates) -> tuple[np.ndarray, np.ndarray]:
    """u minus its per-concept OLS slope on the (uncentred) covariates: the mean of the result
    is the OLS intercept, the expected u at a zero covariate (e.g. equal lengths). Also returns
    the intercept's two-sided p (t on n - 1 - n_covariates df, HC3 standard errors, one OLS
    per concept column, vectorised: = statsmodels OLS(u_m, [1, X]).fit(cov_type="HC3"))."""
    X = np.asarray(covariates, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X
    n = len(U)
    if X.shape[0] != n or not np.isfinite(X).all():
        raise ValueError(f"`covariates` must be finite with one row per pair ({n}), "
                         f"got shape {X.shape}")
    design = np.column_stack([np.ones(n), X])
    pinv = np.linalg.pinv(design)  # [1 + p, n]; row 0 maps u to the intercept
    coef = pinv @ U  # [1 + p, k]: the least-squares fit of every concept at once
    resid = U - design @ coef
    leverage = np.einsum("ij,ji->i", design, pinv)
    weight = (pinv[0] / (1.0 - np.minimum(leverage, 1 - 1e-12))) ** 2
    se = np.sqrt(weight @ resid ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, coef[0] / se, 0.0)
    df = max(n - design.shape[1], 1)
    p = np.where(se > 0, 2 * stats.t.sf(np.abs(t), df), 1.0)
    return U - X @ coef[1:], p


RANK_KEYS = ("impact", "delta_min", "d")  # rank_hypotheses' ordering keys


def rank_hypotheses(u: pd.DataFrame, labels, *, conditional: pd.DataFrame | None = None,
                    covariates=None, min_size: int = 10,
                    groups: Sequence | np.ndarray | None = None, seed: int = 0,
                    n_boot: int = 1000, alpha: float = 0.05, by: str = "impact",
                    one_per_concept: bool = True, redundancy: float | None = 0.8) -> pd.DataFrame:
    """One ranking of the global view: dataset-wide tests and data-cluster-conditional Δ.

    Why both: Δ in-vs-out cancels dataset-wide baselines, so a concept planted in 40% of all
    pairs, uniformly, has Δ ≈ 0 in every data cluster; the dataset-wide rows find it.

    (a) dataset-wide rows (group -1, n = all pairs, test "wilcoxon: all pairs", or
        "ols intercept (HC3): ..." with covariates):
        per concept, `anatomy.contrast.paired_stats` on u against 0 (u is itself a paired
        chosen − rejected difference): effect = mean u, ci = percentile bootstrap
        (``n_boot``), p = Wilcoxon signed-rank, d = d_z. With ``covariates`` (e.g.
        `length_gap`, `mean_disparity`, or both as columns), u is first adjusted by its
        per-concept OLS slope, so effect is the OLS intercept, the expected u at a zero
        covariate ("beyond length", "beyond the pair's overall shift"), and p is that
        intercept's t-test with HC3 standard errors (test "ols intercept (HC3)"): the
        residuals of a concept present in few pairs are skewed, so a signed-rank test on them
        would test their pseudo-median, not the mean that effect reports. The bootstrap CI
        and d_z are of the adjusted u and ignore the slopes' own uncertainty. Split halves
        as for (b).
    (b) conditional rows: ``conditional`` (a `global_hypotheses` table) or computed here.

    q is recomputed by Benjamini–Hochberg over all rows of (a) and (b) together. Ranking,
    same units on both sides (u is a share of a cluster's features): rows that replicate,
    are consistent (see `global_hypotheses`) and have q <= alpha first, then by ``by``:
      "impact" (default): |delta_min| x n / n_pairs — the shift the hypothesis accounts
          for, averaged over the whole dataset, so a small data cluster with a large Δ does
          not outrank a dataset-wide effect, nor a dataset-wide nudge a strong subgroup;
      "delta_min": |delta_min| (the paper's rule, blind to coverage);
      "d": |d| x sqrt(n / n_pairs) — the standardized effect (for the dataset-wide rows
          d_z = t / sqrt(n)), weighted by coverage as "impact" is: a concept whose u is
          consistent but small (a large cluster of which few features move) is not outranked
          by a larger but noisier shift. On five development organisms it raised recall at top
          20 from 0.60 to 0.71 (flattery) and lowered precision from 0.70 to 0.61 (steady small
          shifts of the whole chosen response): "impact" stays the default
          (``benchmarks/dev_protocol.md``, stop 17).
    one_per_concept: keep each concept's best row (the top-N then names N concepts).
    redundancy: a concept whose u correlates (|Pearson r| over all pairs) at or above this
        with the u of a concept ranked before it carries the same signal (an SAE often splits
        one behaviour, e.g. links, into several clusters): it gets ``duplicate_of`` = that
        concept and moves after the non-duplicates of its tier. None: no such step. Lower cuts
        were tried (``benchmarks/dev_protocol.md``, stop 16): 0.5 won on three development
        organisms and lost on two held-out ones (it marks header's cluster a duplicate), so 0.8 stays.
    Returns HYPOTHESIS_COLUMNS + ["impact", "duplicate_of", "rank"], best first
    (duplicate_of is -1 for none).
    """
    if by not in RANK_KEYS:
        raise ValueError(f"by must be one of {RANK_KEYS}, got {by!r}")
    U = _table(u)
    n = len(U)
    if conditional is None:
        conditional = global_hypotheses(u, labels, min_size=min_size, groups=groups, seed=seed)
    Ua, p_adjusted = _adjust(U, covariates) if covariates is not None else (U, None)
    ua = pd.DataFrame(Ua, index=u.index, columns=u.columns)
    wide = paired_stats(ua, pd.DataFrame(0.0, index=u.index, columns=u.columns), n_boot=n_boot,
                        seed=seed)
    half = split_halves(n, groups=groups, seed=seed)
    delta_a, delta_b = Ua[half].mean(axis=0), Ua[~half].mean(axis=0)
    replicated, delta_min = _replication(delta_a, delta_b)
    dataset = pd.DataFrame({
        "view": "global", "group": -1, "n": n, "n_out": 0, "concept": np.asarray(u.columns),
        "effect": wide["effect"].to_numpy(), "ci_low": wide["ci_low"].to_numpy(),
        "ci_high": wide["ci_high"].to_numpy(), "statistic": np.nan, "df": np.nan,
        "p": wide["p"].to_numpy() if p_adjusted is None else p_adjusted,
        "d": wide["d"].to_numpy(),
        "mean_in": wide["effect"].to_numpy(), "mean_out": np.nan,
        "consistent": wide["effect"].to_numpy() != 0,
        "delta_a": delta_a, "delta_b": delta_b, "delta_min": delta_min,
        "replicated": replicated, "q": np.nan, "direction": wide["direction"].to_numpy(),
        "test": "wilcoxon: all pairs" if covariates is None
                else "ols intercept (HC3): all pairs, covariate-adjusted",
    })
    parts = [t for t in (dataset, conditional[HYPOTHESIS_COLUMNS]) if len(t)]
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].copy()
    table["q"] = bh_qvalues(table["p"].to_numpy(dtype=np.float64))
    table["impact"] = np.abs(table["delta_min"].to_numpy(dtype=np.float64)) * table["n"] / n
    passes = (table["replicated"].astype(bool) & table["consistent"].astype(bool)
              & (table["q"] <= alpha))
    key = {"impact": table["impact"], "delta_min": table["delta_min"].abs(),
           "d": table["d"].abs().fillna(0.0) * np.sqrt(table["n"] / n)}[by]
    order = np.lexsort((-np.abs(table["d"].to_numpy(dtype=np.float64)), -key.to_numpy(),
                        ~passes.to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    passes = passes.to_numpy()[order]
    if one_per_concept:
        first = ~table["concept"].duplicated(keep="first").to_numpy()
        table, passes = table[first].reset_index(drop=True), passes[first]
    table["duplicate_of"] = -1 if redundancy is None else _duplicates(U, u.columns, table, redundancy)
    is_dup = (table["duplicate_of"] != -1).to_numpy()
    table = table.iloc[np.lexsort((np.arange(len(table)), is_dup, ~passes))].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def _duplicates(U: np.ndarray, columns: pd.Index, table: pd.DataFrame,
                threshold: float) -> np.ndarray:
    """Greedy over the concepts in order of first appearance in ``table``: a concept whose u
    correlates >= threshold (absolute Pearson r over all pairs) with an earlier kept concept
    is a duplicate of the most correlated one; every row of it gets that concept id, else -1."""
    col = {c: j for j, c in enumerate(columns)}
    rows = np.array([col[c] for c in table["concept"]], dtype=np.int64)
    order = pd.unique(rows)  # distinct concepts, first appearance first
    Z = U[:, order] - U[:, order].mean(axis=0)
    norms = np.linalg.norm(Z, axis=0)
    Z = np.divide(Z, norms, out=np.zeros_like(Z), where=norms > 0)
    corr = np.abs(Z.T @ Z)  # (concepts in table order) squared
    dup_of = np.full(len(order), -1, dtype=np.int64)
    kept: list[int] = []
    for i in range(len(order)):
        if kept:
            c = corr[i, kept]
            best = int(np.argmax(c))
            if c[best] >= threshold:
                dup_of[i] = kept[best]
                continue
        kept.append(i)
    ids = np.asarray(columns)
    of = {order[i]: (ids[order[d]] if d >= 0 else -1) for i, d in enumerate(dup_of)}
    out = np.empty(len(rows), dtype=object)
    out[:] = [of[j] for j in rows]
    return out


# ---------------------------------------------------------------- output
def _label_of(concept_labels) -> Callable[[object], str]:
    if concept_labels is None:
        return lambda c: ""
    if isinstance(concept_labels, pd.DataFrame):
        if not {"cluster", "label"} <= set(concept_labels.columns):
            raise ValueError("a `concept_labels` DataFrame needs columns 'cluster' and 'label'")
        concept_labels = dict(zip(concept_labels["cluster"], concept_labels["label"]))
    return lambda c: str(concept_labels.get(c, ""))


def _examples(values: np.ndarray, ids: np.ndarray, direction: str, n: int) -> list:
    """The ids of up to n pairs with the largest u (direction chosen) or the most negative u
    (rejected), among pairs whose u has that sign; ties broken by row order."""
    if direction == "chosen":
        order = np.argsort(-values, kind="stable")
        order = order[values[order] > 0]
    elif direction == "rejected":
        order = np.argsort(values, kind="stable")
        order = order[values[order] < 0]
    else:
        return []
    return [ids[i] for i in order[:n]]


def hypotheses_table(u: pd.DataFrame, global_rows: pd.DataFrame | None = None,
                     prompt_rows: pd.DataFrame | None = None, *, data_labels=None,
                     prompt_labels=None, concept_labels: Mapping | pd.DataFrame | None = None,
                     top: int | None = 20, n_examples: int = 5) -> pd.DataFrame:
    """The tidy hypotheses table of both views, with labels and representative pairs.

    u: `signed_disparity` (for the examples). global_rows: `rank_hypotheses` or
    `global_hypotheses`; prompt_rows: `prompt_conditioned_hypotheses` (each already ranked;
    the first ``top`` rows of each are kept, all with top=None). data_labels / prompt_labels:
    the group labels the rows were computed with (needed for rows whose group is not -1).
    concept_labels: cluster id -> label, as a mapping or a DataFrame with columns cluster,
    label (`anatomy.features.label_clusters`); labels are for reading only.

    Columns (TABLE_COLUMNS): view ("global" / "prompt"), rank (within the view), scope
    ("all pairs", "data cluster k", "prompt cluster k"), group (-1 = all pairs), concept,
    label, direction ("chosen" / "rejected": the side the concept is found more in), effect
    (Δ in-vs-out, or mean u for all pairs), ci_low / ci_high and ci_method ("welch" t
    interval for in-vs-out rows, "bootstrap" percentile interval for all-pairs rows), test,
    p, q, d, delta_min, replicated, n (pairs in the group), examples (up to ``n_examples``
    pair ids in the group with the largest u towards ``direction``).
    """
    U = _table(u)
    ids = np.asarray(u.index)
    label_of = _label_of(concept_labels)
    col_of = {c: j for j, c in enumerate(u.columns)}
    groups_of = {"global": data_labels, "prompt": prompt_labels}
    frames = []
    for rows in (global_rows, prompt_rows):
        if rows is None or not len(rows):
            continue
        rows = rows.head(top) if top is not None else rows
        out = []
        for rank, r in enumerate(rows.itertuples(index=False), start=1):
            group = int(r.group)
            if group == -1:
                members = np.arange(len(U))
                scope = "all pairs"
            else:
                lab = groups_of[r.view]
                if lab is None:
                    raise ValueError(f"{r.view} rows name group {group}: pass "
                                     f"{'data_labels' if r.view == 'global' else 'prompt_labels'}")
                members = np.flatnonzero(_labels(lab, len(U), f"{r.view} labels") == group)
                scope = f"{'data' if r.view == 'global' else 'prompt'} cluster {group}"
            if r.concept not in col_of:
                raise ValueError(f"concept {r.concept!r} is not a column of `u`")
            values = U[members, col_of[r.concept]]
            out.append({
                "view": r.view, "rank": rank, "scope": scope, "group": group,
                "concept": r.concept, "label": label_of(r.concept), "direction": r.direction,
                "effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high,
                "ci_method": "welch" if r.test.startswith("welch") else "bootstrap",
                "test": r.test, "p": r.p, "q": r.q, "d": r.d, "delta_min": r.delta_min,
                "replicated": bool(r.replicated), "n": int(r.n),
                "examples": _examples(values, ids[members], r.direction, n_examples),
            })
        frames.append(pd.DataFrame(out, columns=TABLE_COLUMNS))
    if not frames:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- examples, highlighted
def token_feature_scores(model, sae, pairs, feature_ids: Sequence[int], *, hook: str | None = None,
                         batch_tokens: int = 4096) -> dict[str, dict[str, tuple[list[str], np.ndarray]]]:
    """Per response token, the summed SAE activation of ``feature_ids`` (a concept's features).

    model: a hooked model (`anatomy.models.load_model`); sae: its SAE (`anatomy.saes.load_sae`);
    pairs: dicts with id, prompt, chosen, rejected. Each prompt + response is tokenised
    with the chat template (`anatomy.models.format_pair`), run once through the model up to
    the SAE's hook (``sae.cfg.metadata.hook_name`` unless ``hook``), encoded by ``sae.encode``.

    Returns ``{pair_id: {"chosen": (tokens, scores), "rejected": (tokens, scores)}}`` over the
    response span (tokens decoded one by one, scores a float array), ready for
    ``anatomy.viz.show_examples(..., highlight=scores)``.
    """
    import torch

    from .cache import _forward_sequences, tokenize_pairs
    from .saes import sae_hook

    hook = hook or sae_hook(sae)
    fids = torch.as_tensor(np.asarray(feature_ids, dtype=np.int64))
    encoded = tokenize_pairs(model, list(pairs))
    seqs, meta = [], []
    for item in encoded:
        for side in ("chosen", "rejected"):
            seqs.append(list(item[side]["input_ids"]))
            meta.append((item["id"], side, np.asarray(item[side]["response_mask"], dtype=bool)))
    param = next(sae.parameters())
    out: dict[str, dict[str, tuple[list[str], np.ndarray]]] = {}
    with torch.no_grad():
        for i, acts in _forward_sequences(model, seqs, [hook], batch_tokens, "right"):
            pid, side, mask = meta[i]
            x = acts[hook][torch.as_tensor(mask)]
            z = sae.encode(x.to(device=param.device, dtype=param.dtype))
            scores = z[:, fids].float().sum(dim=1).cpu().numpy()
            ids = np.asarray(seqs[i])[mask]
            tokens = [model.tokenizer.decode([int(t)]) for t in ids]
            out.setdefault(pid, {})[side] = (tokens, scores)
    return out
