"""Stage 3, contrast statistics: which concepts separate chosen from rejected, as tested hypotheses.

Every function takes two pandas DataFrames of concept scores, ``chosen`` and ``rejected``:
one row per preference pair (same index, same order), one float column per concept
(annotator counts, probe projections, SAE cluster activity, ...). They return DataFrames
with one row per concept, or plotly figures of those tables.

- `paired_stats(chosen, rejected)` — per concept, the paired gap ``d = chosen - rejected``:
  mean with a percentile-bootstrap CI, sign counts, the exact sign test, the Wilcoxon
  signed-rank test, Cohen's d_z, the probability of superiority, and Benjamini–Hochberg
  q-values across concepts. Vectorised over concepts (10,000 pairs x 4,096 concepts in
  seconds); the per-concept numbers equal scipy's and statsmodels' to 1e-8.
- `preference_regression(chosen, rejected, covariates=("length",))` — Bradley–Terry as a
  logistic regression on gaps, fitted on a discovery half and, separately, on a held-out
  half: "bold is preferred beyond length" becomes a statement with a held-out p-value.
- `plot_volcano(stats)` and `plot_hypotheses(stats)` — plotly figures of those tables.

Multiple testing (METHOD.md §3): the q-values are Benjamini–Hochberg over the concepts in
the table. BH assumes independent or positively dependent tests; correlated concepts are
common here, so treat q as a screening number and the held-out replication of
`preference_regression` as the confirmation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats
from statsmodels.discrete.discrete_model import Logit
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import (ConvergenceWarning, PerfectSeparationError,
                                             PerfectSeparationWarning)
from tqdm.auto import tqdm

__all__ = ["paired_stats", "plot_hypotheses", "plot_volcano", "preference_regression"]

_CHUNK_ELEMS = 1 << 22  # ~32 MB of float64 per bootstrap chunk (resamples x pairs, concepts x pairs)
_SPARSE_SHARE = 0.25  # below this share of non-zero gaps, mean and sd come from those alone
_BLOCK_ELEMS = 1 << 18  # 2 MB of float64 per test block (concepts x pairs), and a bool mask
_L1_ALPHA = 1.0  # penalty weight of the fallback fit under (quasi-)separation

# The shared table vocabulary (also `anatomy.hypotheses`, `anatomy.predict`): the effect is
# always ``effect``, its interval ``ci_low`` / ``ci_high``, the main test's p and q ``p`` / ``q``
# (secondary tests keep a suffix: ``p_sign``, ``q_sign``), the standardized effect ``d``, the
# pairs in scope ``n``.
STATS_COLUMNS = ["concept", "n", "effect", "ci_low", "ci_high", "n_pos", "n_neg", "n_zero",
                 "p", "p_sign", "d", "p_superiority", "q", "q_sign", "direction"]
REGRESSION_COLUMNS = ["concept", "n_discovery", "n_heldout", "coef_discovery", "p_discovery",
                      "effect", "p", "ci_low", "ci_high", "replicated", "q", "note"]


# ---------------------------------------------------------------- input checks
def _pair_matrices(chosen: pd.DataFrame, rejected: pd.DataFrame, *,
                   check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate the two tables; return them as (concept, pair) float64 arrays.

    The concept order is ``chosen``'s (``rejected``'s columns may come in another order).
    Raises ValueError when they are not DataFrames, have no rows, differ in shape, index or
    columns, hold a non-numeric column, or (with ``check_finite``; `paired_stats` checks
    chunk by chunk instead) a NaN / infinite value (the column, the table and the first
    offending pair are named).
    """
    for name, frame in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"`{name}` must be a pandas DataFrame (pairs x concepts), "
                             f"got {type(frame).__name__}")
    if chosen.shape != rejected.shape:
        raise ValueError(f"`chosen` and `rejected` differ in shape: {chosen.shape} vs "
                         f"{rejected.shape} (rows = pairs, columns = concepts)")
    if len(chosen) == 0 or chosen.shape[1] == 0:
        raise ValueError(f"need at least one pair and one concept, got shape {chosen.shape}")
    if not chosen.columns.is_unique:
        dup = chosen.columns[chosen.columns.duplicated()].tolist()
        raise ValueError(f"duplicate concept columns: {dup}")
    if not chosen.columns.equals(rejected.columns):
        if set(chosen.columns) != set(rejected.columns):
            only_c = [c for c in chosen.columns if c not in set(rejected.columns)]
            only_r = [c for c in rejected.columns if c not in set(chosen.columns)]
            raise ValueError(f"`chosen` and `rejected` have different columns: only in chosen "
                             f"{only_c}, only in rejected {only_r}")
        rejected = rejected[list(chosen.columns)]
    if not chosen.index.equals(rejected.index):
        raise ValueError("`chosen` and `rejected` have different indexes: row i of both must "
                         "be the same pair (e.g. reset_index(drop=True) on both)")
    out = []
    for name, frame in (("chosen", chosen), ("rejected", rejected)):
        for dtype in set(frame.dtypes):
            if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
                col = frame.columns[(frame.dtypes == dtype).to_numpy()][0]
                raise ValueError(f"column {col!r} of `{name}` is not numeric (dtype {dtype})")
        out.append(frame.to_numpy(dtype=np.float64, na_value=np.nan).T)  # a view for one float block
    if check_finite:
        _check_finite(chosen, rejected, out[0], out[1])
    return out[0], out[1]


def _check_finite(chosen: pd.DataFrame, rejected: pd.DataFrame, c_mat: np.ndarray,
                  r_mat: np.ndarray, rows: slice | np.ndarray = slice(None)) -> None:
    """Raise ValueError naming the first column (in ``rows`` of the (concept, pair) matrices)
    that holds a NaN or infinite value, with its table and its first offending pair."""
    concepts = np.arange(c_mat.shape[0])[rows]
    for name, frame, matrix in (("chosen", chosen, c_mat), ("rejected", rejected, r_mat)):
        bad = ~np.isfinite(matrix[concepts])
        if bad.any():
            j = int(bad.any(axis=1).argmax())
            raise ValueError(f"column {chosen.columns[concepts[j]]!r} of `{name}` has "
                             f"{int(bad[j].sum())} NaN or infinite value(s), first at pair "
                             f"{frame.index[int(bad[j].argmax())]!r}")


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (statsmodels ``fdr_bh``); NaN p-values stay NaN, excluded."""
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


# ---------------------------------------------------------------- vectorised tests
def _sign_test(n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial sign test, ties already dropped; 1 when there is no non-tie.

    Equals ``scipy.stats.binomtest(n_pos, n_pos + n_neg).pvalue`` (for p = 1/2 the two tails
    are mirror images: P(X <= m) + P(X >= n - m) with m = min(n_pos, n_neg)).
    """
    n = n_pos + n_neg
    m = np.minimum(n_pos, n_neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = stats.binom.cdf(m, n, 0.5) + stats.binom.sf(n - m - 1, n, 0.5)
    p = np.minimum(p, 1.0)
    p[(2 * n_pos == n) | (n == 0)] = 1.0
    return p


def _block_tests(c: np.ndarray, r: np.ndarray, work: np.ndarray,
                 mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per-concept tests on a block of concepts: c, r are (concept, pair) float64 rows.

    ``work`` (float64) and ``mask`` (bool) are scratch memory of shape (>= len(c), n): blocks
    are kept small so that the passes over them run in cache. Returns mean_gap, d_z, n_pos,
    n_neg and p_wilcoxon per row.

    Only the non-zero gaps are ranked: one pass finds them (``d != 0``; -0.0 is a zero, NaN
    is not), one gathers them, row after row, into a short array ``dz``; everything else
    works on ``dz``. Mean and sd are two-pass (deviations from the mean, as np.std); when
    fewer than _SPARSE_SHARE of the gaps are non-zero they are summed over the non-zero gaps
    only, plus n_zero * mean^2 for the zeros, else over the dense block.

    Wilcoxon: zero_method="wilcox" (zero gaps dropped), average ranks of |d| for ties, normal
    approximation with the tie correction of the variance, no continuity correction; equals
    ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False, method="approx")``.
    A row with no non-zero gap gets p = 1 (scipy returns NaN there).

    Ranking without argsort: rotating the 64 bits of a float64 left by one,
    ``key = bits(d) << 1 | bits(d) >> 63``, gives integers ordered like |d| (the exponent and
    mantissa of a non-negative float are ordered like the number) with the sign in the
    lowest bit, so sorting each row's keys in place (np.sort on integers is SIMD-fast;
    argsort is ~20x slower) ranks |d| and carries the signs along. A run of equal |d| at
    0-based positions first..first+t-1 among a row's non-zero gaps has the average rank
    first + (t + 1) / 2; per run we add its positives' ranks to R+ and t^3 - t to the tie
    correction.
    """
    k, n = c.shape
    d, nonzero = work[:k], mask[:k]
    np.subtract(c, r, out=d)
    np.not_equal(d, 0.0, out=nonzero)
    pos = np.flatnonzero(nonzero)  # row-major: row i's non-zero gaps are dz[seg[i]:ends[i]]
    dz = d.ravel().take(pos)
    bounds = np.searchsorted(pos, np.arange(k + 1) * n)
    seg, ends = bounds[:-1], bounds[1:]
    count = ends - seg  # non-zero gaps per row
    total = len(pos)
    if total < _SPARSE_SHARE * k * n:  # mostly zero gaps: moments from the non-zero ones
        # (reduceat over the starts of the non-empty rows only: each sums exactly its row's
        # segment, since the rows in between are empty, and every start is in range)
        has = count > 0
        mean, ss = np.zeros(k), np.zeros(k)
        if total:
            mean[has] = np.add.reduceat(dz, seg[has])
        mean /= n
        dev = dz - np.repeat(mean, count)
        dev *= dev
        if total:
            ss[has] = np.add.reduceat(dev, seg[has])
        ss += (n - count) * mean ** 2  # the zeros contribute (0 - mean)^2 each
    else:
        mean = d.mean(axis=1)
        d -= mean[:, None]
        ss = np.einsum("ij,ij->i", d, d)
    if n > 1:  # two-pass variance (deviations from the mean), as np.std
        sd = np.sqrt(ss / (n - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            # a gap that is the same in every pair (sd 0, up to rounding) is infinitely consistent
            const = sd <= 1e-12 * np.abs(mean)
            d_z = np.where(const, np.copysign(np.inf, mean), mean / sd)
            d_z = np.where((mean == 0) & (sd == 0), 0.0, d_z)
    else:
        d_z = np.zeros(k)

    bits = dz.view(np.uint64)
    kz = bits << np.uint64(1)
    kz |= bits >> np.uint64(63)
    for a, b in zip(seg.tolist(), ends.tolist()):  # numpy has no segmented sort
        if b - a > 1:
            kz[a:b].sort()
    mag = kz >> np.uint64(1)
    new = np.empty(total, dtype=bool)  # a run of equal |d| starts here
    new[:1] = True
    np.not_equal(mag[1:], mag[:-1], out=new[1:])
    new[seg[(count > 0) & (seg < total)]] = True  # and at every row's first gap
    starts = np.flatnonzero(new)
    run_row = np.searchsorted(ends, starts, side="right")
    t = np.diff(np.append(starts, total)).astype(np.float64)
    first = (starts - seg[run_row]).astype(np.float64)
    negatives = (np.add.reduceat(kz & np.uint64(1), starts).astype(np.float64) if total
                 else t)
    n_neg = np.bincount(run_row, weights=negatives, minlength=k).astype(np.int64)
    n_pos = count - n_neg
    r_plus = np.bincount(run_row, weights=(first + (t + 1.0) / 2.0) * (t - negatives),
                         minlength=k)
    tie = np.bincount(run_row, weights=t * t * t - t, minlength=k)
    cnt = count.astype(np.float64)
    mn = cnt * (cnt + 1.0) * 0.25
    se = np.sqrt((cnt * (cnt + 1.0) * (2.0 * cnt + 1.0) - tie / 2.0) / 24.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (r_plus - mn) / se
    p_wilcoxon = 2.0 * special.ndtr(-np.abs(z))
    p_wilcoxon[count == 0] = 1.0
    return {"mean_gap": mean, "d_z": d_z, "n_pos": n_pos, "n_neg": n_neg,
            "p_wilcoxon": p_wilcoxon}


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) times each pair is drawn in each bootstrap resample (one shared index matrix).

    Row b is ``bincount(rng.integers(0, n, n))`` of resample b, drawn in chunks of rows from
    ``np.random.default_rng(seed)``; stored as small unsigned integers to bound memory.
    """
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if n < np.iinfo(np.uint16).max else np.uint32
    counts = np.empty((n_boot, n), dtype=dtype)
    step = max(1, _CHUNK_ELEMS // n)
    for b0 in range(0, n_boot, step):
        b = min(step, n_boot - b0)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts[b0:b0 + b] = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
    return counts


def _bootstrap_ci(c_mat: np.ndarray, r_mat: np.ndarray, *, n_boot: int, ci: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of the mean gap per concept (rows of the (concept, pair) arrays).

    One resampling matrix for all concepts (`_resample_counts`). The resampled means of a
    chunk of concepts are ``mean + counts @ (d - mean).T / n``: one matrix product, in float32
    (the counts are exact integers; centring first keeps the float32 rounding, ~1e-7 of the
    gap's sd, far below the Monte Carlo error of the percentiles). Chunks of resamples and of
    concepts hold about 32 MB each. n_boot = 0 returns NaNs.
    """
    k, n = c_mat.shape
    if n_boot == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    counts = _resample_counts(n, n_boot, seed)
    quantiles = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    step = max(1, 2 * _CHUNK_ELEMS // n)  # float32: twice the elements in the same memory
    low, high = np.empty(k), np.empty(k)
    boot = np.empty((n_boot, min(k, step)), dtype=np.float32)
    for c0 in range(0, k, step):
        sl = slice(c0, min(k, c0 + step))
        d = np.subtract(c_mat[sl], r_mat[sl], order="C")
        mean = d.mean(axis=1)
        dev = (d - mean[:, None]).astype(np.float32)
        del d
        means = boot[:, :dev.shape[0]]
        for b0 in range(0, n_boot, step):
            w = counts[b0:b0 + step].astype(np.float32)
            means[b0:b0 + len(w)] = w @ dev.T
        q = np.quantile(means.astype(np.float64), quantiles, axis=0) / n
        low[sl], high[sl] = mean + q[0], mean + q[1]
    return low, high


def paired_stats(chosen: pd.DataFrame, rejected: pd.DataFrame, *, n_boot: int = 2000,
                 ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Paired contrast statistics per concept, for the gap ``d = chosen - rejected``.

    chosen, rejected: DataFrames (pair x concept) of floats, same shape, index and columns
        (column order may differ; ``chosen``'s order is used). Row i of both is pair i.
    n_boot: bootstrap resamples of the pairs for the CI of ``effect``; 0 skips the
        bootstrap and leaves ``ci_low`` / ``ci_high`` NaN.
    ci: confidence level of the percentile-bootstrap interval.
    seed: seeds the resampling; same inputs and seed, same output.

    Returns one row per concept (in column order) with columns
      concept; n (pairs); effect (mean of d);
      ci_low, ci_high — percentile bootstrap over pairs. One resampling matrix is shared by
        all concepts (the same resampled pairs for every concept), applied as a matrix
        product in chunks;
      n_pos, n_neg, n_zero — pairs with d > 0, d < 0, d == 0;
      p — Wilcoxon signed-rank, zero_method="wilcox", normal approximation with tie
        correction, no continuity correction, = ``scipy.stats.wilcoxon(d, zero_method=
        "wilcox", correction=False, method="approx").pvalue``; 1 if all d are 0 (scipy: NaN);
      p_sign — two-sided exact binomial sign test of n_pos out of n_pos + n_neg (ties
        dropped), = ``scipy.stats.binomtest(n_pos, n_pos + n_neg).pvalue``; 1 if all d are 0;
      d — Cohen's d_z = mean(d) / sd(d, ddof=1); +-inf when every pair has the same
        nonzero gap (sd 0), 0 when every gap is 0 or sd is undefined (n = 1);
      p_superiority — P(chosen > rejected) + 0.5 P(tie) = (n_pos + n_zero / 2) / n;
      q, q_sign — Benjamini–Hochberg over the concepts of p and p_sign (statsmodels
        ``multipletests(method="fdr_bh")``);
      direction — "chosen" if effect > 0, "rejected" if < 0, else "none".

    Raises ValueError for mismatched shapes, columns or index, non-numeric columns, and
    NaN / infinite values (naming the column), and for n_boot < 0 or ci outside (0, 1).
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    c_mat, r_mat = _pair_matrices(chosen, rejected, check_finite=False)
    concepts = chosen.columns  # an Index: no per-name Python loop (4,096 names: ~8 ms)
    k, n = c_mat.shape

    out = {name: np.empty(k) for name in ("mean_gap", "d_z", "p_wilcoxon")}
    out["n_pos"], out["n_neg"] = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)
    block = max(1, min(k, _BLOCK_ELEMS // n))
    work, mask = np.empty((block, n)), np.empty((block, n), dtype=bool)
    for c0 in range(0, k, block):
        sl = slice(c0, min(k, c0 + block))
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: raised below
            res = _block_tests(c_mat[sl], r_mat[sl], work, mask)
        if not np.isfinite(res["mean_gap"]).all():  # a NaN or inf in either table reaches it
            _check_finite(chosen, rejected, c_mat, r_mat, sl)
        for name, values in res.items():
            out[name][sl] = values
    del work, mask
    out["ci_low"], out["ci_high"] = _bootstrap_ci(c_mat, r_mat, n_boot=n_boot, ci=ci, seed=seed)
    n_pos_all, n_neg_all = out["n_pos"], out["n_neg"]
    out["p_sign"] = _sign_test(n_pos_all, n_neg_all)
    out["p_superiority"] = (n_pos_all + 0.5 * (n - n_pos_all - n_neg_all)) / n

    mean = out["mean_gap"]
    return pd.DataFrame({
        "concept": concepts,
        "n": n,
        "effect": mean,
        "ci_low": out["ci_low"],
        "ci_high": out["ci_high"],
        "n_pos": n_pos_all,
        "n_neg": n_neg_all,
        "n_zero": n - n_pos_all - n_neg_all,
        "p": out["p_wilcoxon"],
        "p_sign": out["p_sign"],
        "d": out["d_z"],
        "p_superiority": out["p_superiority"],
        "q": bh_qvalues(out["p_wilcoxon"]),
        "q_sign": bh_qvalues(out["p_sign"]),
        "direction": np.where(mean > 0, "chosen", np.where(mean < 0, "rejected", "none")),
    }, columns=STATS_COLUMNS)


# ---------------------------------------------------------------- Bradley–Terry regression
def _fit_logit(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Logit of y on x (no intercept): coefficients, p-values, 95% CI rows, and a note.

    Falls back to an L1-regularised fit (statsmodels ``fit_regularized``, alpha=_L1_ALPHA)
    when the maximum-likelihood fit reports perfect / quasi separation, fails to converge, or
    hits a singular Hessian; its p-values and CIs come from the penalised fit's Hessian
    (approximate, shrunk towards 0) and the note says so.
    """
    model = Logit(y, x)
    problem = ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = model.fit(disp=0, maxiter=100)
        kinds = {type(w.message) for w in caught}
        if PerfectSeparationWarning in kinds:
            problem = "perfect separation"
        elif ConvergenceWarning in kinds or not res.mle_retvals.get("converged", True):
            problem = "no convergence"
        elif not np.all(np.isfinite(res.bse)):
            problem = "singular information matrix"
    except PerfectSeparationError:
        problem = "perfect separation"
    except np.linalg.LinAlgError:
        problem = "singular information matrix"
    if not problem:
        return np.asarray(res.params), np.asarray(res.pvalues), np.asarray(res.conf_int()), ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit_regularized(method="l1", alpha=_L1_ALPHA, disp=0)
        params, pvalues, ci = np.asarray(res.params), np.asarray(res.pvalues), np.asarray(res.conf_int())
    return params, pvalues, ci, f"{problem}: L1-regularised fit (alpha={_L1_ALPHA}), p approximate"


def preference_regression(chosen: pd.DataFrame, rejected: pd.DataFrame, *,
                          covariates: Sequence[str] = ("length",), test_frac: float = 0.5,
                          seed: int = 0, joint: bool = False,
                          progress: bool = True) -> pd.DataFrame:
    """Bradley–Terry preference regression per concept, with held-out replication.

    chosen, rejected: DataFrames (pair x column) of floats as for `paired_stats`; the
        columns named in ``covariates`` are controls, every other column is a concept.
    covariates: control columns entered in every model (default: response length), so a
        concept's coefficient is its effect *beyond* them. ``()`` for none.
    test_frac: share of pairs held out (a seeded random split); the rest is discovery.
    seed: seeds the orientation and the split; same inputs and seed, same output.
    joint: False (default) fits one model per concept (concept + covariates); True fits one
        model with all concepts and covariates together and reports each concept's
        coefficient from it.
    progress: show a tqdm bar over the per-concept fits.

    Model: each pair is randomly oriented (seeded): y = 1 if the first item is the chosen
    one, x = features(first) - features(second). Logistic regression without intercept
    (Bradley–Terry is antisymmetric: swapping the items flips x and y). Gap columns are
    scaled, not centred, by their root mean square over all pairs, so a coefficient is the
    log-odds of being chosen per one RMS of the gap. Fitted with statsmodels ``Logit`` on the
    discovery half and on the held-out half separately.

    Returns one row per concept with columns concept, n_discovery, n_heldout,
    coef_discovery, p_discovery (the discovery half's fit), effect (the held-out
    coefficient), p (its held-out p-value), ci_low, ci_high (its 95% Wald CI), replicated
    (the held-out coefficient has the discovery sign and p < 0.05), q (Benjamini–Hochberg
    over concepts with a held-out p-value), and note ("" or what went wrong: a concept whose gap is 0 in every
    pair is not fitted (NaNs); under separation or a failed fit, an L1-regularised fit is
    used and flagged).

    Raises ValueError on bad tables (see `paired_stats`), a covariate missing from the
    columns, no concept column, test_frac outside (0, 1), or a split with < 2 pairs per half.
    """
    c_mat, r_mat = _pair_matrices(chosen, rejected)
    covariates = list(covariates)
    missing = [c for c in covariates if c not in chosen.columns]
    if missing:
        raise ValueError(f"covariate column(s) {missing} not in the tables "
                         f"(columns: {list(chosen.columns)[:10]}...)")
    concepts = [c for c in chosen.columns if c not in set(covariates)]
    if not concepts:
        raise ValueError("no concept columns left after removing the covariates")
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    n = len(chosen)
    n_held = int(round(test_frac * n))
    if n_held < 2 or n - n_held < 2:
        raise ValueError(f"{n} pairs cannot be split into two halves of >= 2 pairs "
                         f"(test_frac={test_frac})")

    gap = (c_mat - r_mat).T  # (pair, column)
    rms = np.sqrt(np.mean(gap ** 2, axis=0))
    gap = gap / np.where(rms > 0, rms, 1.0)
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float64)  # 1: chosen is first
    x = gap * np.where(y == 1, 1.0, -1.0)[:, None]
    perm = rng.permutation(n)
    halves = {"heldout": np.sort(perm[:n_held]), "discovery": np.sort(perm[n_held:])}

    col = {c: j for j, c in enumerate(chosen.columns)}
    cov_idx = [col[c] for c in covariates]
    zero_cov = [c for c in covariates if rms[col[c]] == 0]
    if zero_cov:
        raise ValueError(f"covariate column(s) {zero_cov} have a zero gap in every pair")
    rows = {c: {"concept": c, "n_discovery": len(halves["discovery"]),
                "n_heldout": len(halves["heldout"]), "note": ""} for c in concepts}
    fit_concepts = []
    for c in concepts:
        if rms[col[c]] == 0:
            rows[c]["note"] = "gap is 0 in every pair: not fitted"
        else:
            fit_concepts.append(c)

    if joint and fit_concepts:
        cols = [col[c] for c in fit_concepts] + cov_idx
        for half, idx in halves.items():
            params, pvalues, ci, note = _fit_logit(y[idx], x[np.ix_(idx, cols)])
            for j, c in enumerate(fit_concepts):
                rows[c].update({f"coef_{half}": params[j], f"p_{half}": pvalues[j]})
                if half == "heldout":
                    rows[c].update({"ci_low_heldout": ci[j, 0], "ci_high_heldout": ci[j, 1]})
                if note:
                    rows[c]["note"] = "; ".join(filter(None, [rows[c]["note"], f"{half}: {note}"]))
    elif fit_concepts:
        for c in tqdm(fit_concepts, desc="preference_regression", disable=not progress,
                      leave=False):
            cols = [col[c]] + cov_idx
            for half, idx in halves.items():
                params, pvalues, ci, note = _fit_logit(y[idx], x[np.ix_(idx, cols)])
                rows[c].update({f"coef_{half}": params[0], f"p_{half}": pvalues[0]})
                if half == "heldout":
                    rows[c].update({"ci_low_heldout": ci[0, 0], "ci_high_heldout": ci[0, 1]})
                if note:
                    rows[c]["note"] = "; ".join(filter(None, [rows[c]["note"], f"{half}: {note}"]))

    held = {"coef_heldout": "effect", "p_heldout": "p", "ci_low_heldout": "ci_low",
            "ci_high_heldout": "ci_high"}
    table = (pd.DataFrame([rows[c] for c in concepts]).rename(columns=held)
             .reindex(columns=REGRESSION_COLUMNS))
    numeric = ["coef_discovery", "p_discovery", "effect", "p", "ci_low", "ci_high"]
    table[numeric] = table[numeric].astype(float)
    table["replicated"] = ((np.sign(table["effect"]) == np.sign(table["coef_discovery"]))
                           & (table["coef_discovery"] != 0) & (table["p"] < 0.05))
    table["q"] = bh_qvalues(table["p"].to_numpy())
    table["note"] = table["note"].fillna("")
    return table


# ---------------------------------------------------------------- figures
def plot_volcano(stats: pd.DataFrame, *, effect: str = "d", p: str = "q",
                 label: str = "concept", alpha: float = 0.05):
    """Volcano plot: ``effect`` (x) against -log10 of ``p`` (y), one point per concept.

    stats: a table in the shared vocabulary: `paired_stats`, `preference_regression`
        (``effect="effect"``: its held-out coefficient) or a hypotheses table.
    Points are coloured "chosen" / "rejected" when ``p < alpha`` (by the sign of ``effect``)
    and "not significant" otherwise; a dashed line marks -log10(alpha). The hover shows the
    label, effect, p and, when the table has them, ``effect`` and its CI. p = 0 is drawn at
    the smallest positive float; an infinite effect (``d`` of a gap that is the same in every
    pair) is drawn as a triangle at the edge of the plot, on its side, and hovers as inf.
    Returns a plotly ``go.Figure``.
    """
    import plotly.graph_objects as go

    for column in (effect, p, label):
        if column not in stats:
            raise ValueError(f"column {column!r} not in the stats table "
                             f"(columns: {list(stats.columns)})")
    pv = stats[p].to_numpy(dtype=float)
    y = -np.log10(np.clip(pv, np.finfo(float).tiny, None))
    eff = stats[effect].to_numpy(dtype=float)
    finite = np.isfinite(eff)
    edge = 1.15 * max(1.0, float(np.abs(eff[finite]).max()) if finite.any() else 1.0)
    x = np.where(np.isinf(eff), np.sign(eff) * edge, eff)
    group = np.where(pv < alpha, np.where(eff > 0, "chosen", np.where(eff < 0, "rejected",
                                                                         "not significant")),
                     "not significant")
    extra = [c for c in ("effect", "ci_low", "ci_high") if c in stats and c != effect]
    hover = f"%{{text}}<br>{effect}=%{{customdata[1]:.3g}}<br>{p}=%{{customdata[0]:.3g}}"
    for j, c in enumerate(extra, start=2):
        hover += f"<br>{c}=%{{customdata[{j}]:.3g}}"
    colours = {"chosen": "#1f77b4", "rejected": "#d62728", "not significant": "#b0b0b0"}
    fig = go.Figure()
    for name, colour in colours.items():
        m = group == name
        if not m.any():
            continue
        sub = stats[m]
        fig.add_trace(go.Scatter(
            x=x[m], y=y[m], mode="markers", name=name,
            marker={"color": colour, "size": 7, "symbol": np.where(
                np.isinf(eff[m]), np.where(eff[m] > 0, "triangle-right", "triangle-left"), "circle").tolist()},
            text=sub[label].astype(str), customdata=np.column_stack(
                [pv[m], eff[m]] + [sub[c].to_numpy(dtype=float) for c in extra]),
            hovertemplate=hover + "<extra></extra>"))
    fig.add_hline(y=-np.log10(alpha), line_dash="dash", line_color="grey",
                  annotation_text=f"{p} = {alpha}")
    fig.add_vline(x=0, line_color="lightgrey")
    fig.update_layout(title=f"Concepts: {effect} vs -log10 {p}", xaxis_title=effect,
                      yaxis_title=f"-log10 {p}", legend_title="favoured side (significant)",
                      template="plotly_white")
    return fig


def plot_hypotheses(stats: pd.DataFrame, *, top: int = 20, by: str = "q"):
    """Forest plot of the ``top`` concepts: ``effect`` with its CI, one bar per row.

    stats: a table in the shared vocabulary (`paired_stats`, a hypotheses table). Concepts
    are picked by ascending ``by`` (ties broken by larger |d|) and drawn ordered by effect, chosen-favoured at the top, coloured by
    direction. Error bars are the ``ci_low`` / ``ci_high`` columns (absent when n_boot=0
    left them NaN). Returns a plotly ``go.Figure``.
    """
    import plotly.graph_objects as go

    for column in ("concept", "effect", by):
        if column not in stats:
            raise ValueError(f"column {column!r} not in the stats table "
                             f"(columns: {list(stats.columns)})")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    keys = [by] + (["abs_d"] if "d" in stats else [])
    picked = (stats.assign(abs_d=stats["d"].abs() if "d" in stats else 0.0)
              .sort_values(keys, ascending=[True, False][:len(keys)], kind="stable")
              .head(top).sort_values("effect", kind="stable"))
    error_x = None
    if {"ci_low", "ci_high"} <= set(picked.columns) and picked[["ci_low", "ci_high"]].notna().all().all():
        error_x = {"type": "data", "symmetric": False,
                   "array": (picked["ci_high"] - picked["effect"]).to_numpy(),
                   "arrayminus": (picked["effect"] - picked["ci_low"]).to_numpy()}
    direction = np.sign(picked["effect"].to_numpy())
    colours = np.where(direction > 0, "#1f77b4", np.where(direction < 0, "#d62728", "#b0b0b0"))
    custom = picked[[by]].to_numpy(dtype=float)
    fig = go.Figure(go.Bar(
        x=picked["effect"], y=picked["concept"].astype(str), orientation="h",
        marker_color=colours, error_x=error_x, customdata=custom,
        hovertemplate=f"%{{y}}<br>effect=%{{x:.3g}}<br>{by}=%{{customdata[0]:.3g}}<extra></extra>"))
    fig.add_vline(x=0, line_color="grey")
    fig.update_layout(title=f"Top {len(picked)} concepts by {by}: effect (chosen - rejected)"
                      + (" with CI" if error_x else ""),
                      xaxis_title="effect (chosen - rejected)", yaxis_title="",
                      height=max(300, 24 * len(picked) + 120), template="plotly_white")
    return fig
