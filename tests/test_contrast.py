"""Tests for anatomy.contrast: parity with scipy / statsmodels, planted effects, CI coverage,
bad input, the Bradley–Terry regression, and the figures."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from anatomy import contrast
from anatomy.contrast import paired_stats, plot_hypotheses, plot_volcano, preference_regression


def make_pairs(n: int = 40, k: int = 12, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Small chosen / rejected tables with zeros, ties, continuous and degenerate columns."""
    rng = np.random.default_rng(seed)
    cols = {}
    for j in range(k):  # sparse counts: many zero gaps and tied |gaps|
        rate = [0.2, 0.7, 2.0][j % 3]
        cols[f"count{j}"] = (rng.poisson(rate * (1.3 if j == 1 else 1.0), n),
                             rng.poisson(rate, n))
    cols["normal"] = (rng.normal(0.2, 1, n), rng.normal(0, 1, n))  # no ties
    cols["all_zero"] = (np.full(n, 3.0), np.full(n, 3.0))  # every gap 0
    cols["one_nonzero"] = (np.r_[1.0, np.zeros(n - 1)], np.zeros(n))
    cols["neg_zero"] = (np.r_[-0.0, -0.0, rng.integers(0, 3, n - 2)], np.zeros(n))  # -0.0 gaps
    cols["constant_gap"] = (np.full(n, 2.0), np.ones(n))  # sd 0
    chosen = pd.DataFrame({c: v[0] for c, v in cols.items()}).astype(float)
    rejected = pd.DataFrame({c: v[1] for c, v in cols.items()}).astype(float)
    return chosen, rejected


def reference(chosen: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    """The same statistics, one scipy / numpy call per concept."""
    rows = []
    for col in chosen.columns:
        d = chosen[col].to_numpy() - rejected[col].to_numpy()
        n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
        if n_pos + n_neg:
            p_sign = stats.binomtest(n_pos, n_pos + n_neg).pvalue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_wil = stats.wilcoxon(d, zero_method="wilcox", correction=False,
                                       method="approx").pvalue
        else:
            p_sign = p_wil = 1.0
        sd = np.std(d, ddof=1)
        rows.append({"effect": d.mean(), "n_pos": n_pos, "n_neg": n_neg,
                     "n_zero": len(d) - n_pos - n_neg, "p_sign": p_sign, "p": p_wil,
                     "d": d.mean() / sd if sd > 0 else (np.copysign(np.inf, d.mean()) if d.mean() else 0.0),
                     "p_superiority": np.mean(d > 0) + 0.5 * np.mean(d == 0)})
    ref = pd.DataFrame(rows)
    ref["q_sign"] = multipletests(ref["p_sign"], method="fdr_bh")[1]
    ref["q"] = multipletests(ref["p"], method="fdr_bh")[1]
    return ref


NUMERIC = ["effect", "n_pos", "n_neg", "n_zero", "p_sign", "p", "d",
           "p_superiority", "q_sign", "q"]


@pytest.mark.parametrize("sparse_share", [0.0, 0.25, 1.01])  # dense path, default, sparse path
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_stats_matches_scipy_and_statsmodels(seed, sparse_share, monkeypatch):
    monkeypatch.setattr(contrast, "_SPARSE_SHARE", sparse_share)
    chosen, rejected = make_pairs(seed=seed)
    got = paired_stats(chosen, rejected, n_boot=200, seed=seed)
    ref = reference(chosen, rejected)
    assert list(got.columns) == contrast.STATS_COLUMNS
    assert list(got["concept"]) == list(chosen.columns)
    for col in NUMERIC:
        np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float),
                                   rtol=0, atol=1e-8, err_msg=col)
    row = got.set_index("concept")
    assert row.loc["all_zero", ["p_sign", "p", "d"]].tolist() == [1.0, 1.0, 0.0]
    assert row.loc["all_zero", "direction"] == "none"
    assert row.loc["constant_gap", "d"] == np.inf
    assert row.loc["constant_gap", "ci_low"] == row.loc["constant_gap", "ci_high"] == 1.0
    assert (got["ci_low"] <= got["effect"] + 1e-12).all()
    assert (got["effect"] <= got["ci_high"] + 1e-12).all()
    assert set(got["direction"]) <= {"chosen", "rejected", "none"}


def test_chunking_column_order_and_layout_do_not_change_results(monkeypatch):
    chosen, rejected = make_pairs(n=57, k=30, seed=3)
    full = paired_stats(chosen, rejected, n_boot=300, seed=5)
    # other memory layouts and column order of `rejected`
    again = paired_stats(pd.DataFrame(np.asfortranarray(chosen.to_numpy()), columns=chosen.columns),
                         rejected[list(reversed(rejected.columns))], n_boot=300, seed=5)
    pd.testing.assert_frame_equal(full, again)
    # tiny blocks and bootstrap chunks: many block and chunk boundaries
    monkeypatch.setattr(contrast, "_BLOCK_ELEMS", 57 * 4)
    monkeypatch.setattr(contrast, "_CHUNK_ELEMS", 57 * 7)
    chunked = paired_stats(chosen, rejected, n_boot=300, seed=5)
    for col in NUMERIC:
        np.testing.assert_allclose(chunked[col].to_numpy(float), full[col].to_numpy(float),
                                   rtol=0, atol=1e-12, err_msg=col)
    for col in ["ci_low", "ci_high"]:  # float32 products: blocking may change the last bits
        np.testing.assert_allclose(chunked[col], full[col], rtol=0, atol=1e-6, err_msg=col)


@pytest.mark.parametrize("sparse_share", [0.0, 1.01])
@pytest.mark.parametrize("block_rows", [1, 3, 7])
def test_all_zero_rows_at_block_edges_and_tied_magnitudes(block_rows, sparse_share, monkeypatch):
    # only the non-zero gaps are ranked, row segment by row segment: rows with no, one or
    # all non-zero gaps, at the start and end of blocks, and +/- ties across rows
    monkeypatch.setattr(contrast, "_SPARSE_SHARE", sparse_share)
    rng = np.random.default_rng(11)
    n = 31
    cols = {}
    for j in range(17):
        kind = j % 4
        if kind == 0:
            c = r = np.zeros(n)
        elif kind == 1:
            c, r = np.r_[2.5, np.zeros(n - 1)], np.zeros(n)
        elif kind == 2:
            c, r = rng.integers(-2, 3, n).astype(float), rng.integers(-2, 3, n).astype(float)
        else:
            c, r = rng.choice([0.0, 0.5, -0.5, 1e-300], n), np.zeros(n)
        cols[f"c{j}"] = (c, r)
    chosen = pd.DataFrame({k: v[0] for k, v in cols.items()})
    rejected = pd.DataFrame({k: v[1] for k, v in cols.items()})
    monkeypatch.setattr(contrast, "_BLOCK_ELEMS", n * block_rows)
    got = paired_stats(chosen, rejected, n_boot=0)
    ref = reference(chosen, rejected)
    for col in NUMERIC:
        np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float),
                                   rtol=0, atol=1e-8, err_msg=col)


def test_n_boot_zero_skips_the_bootstrap_only():
    chosen, rejected = make_pairs(seed=4)
    no_boot = paired_stats(chosen, rejected, n_boot=0)
    boot = paired_stats(chosen, rejected, n_boot=100)
    assert no_boot[["ci_low", "ci_high"]].isna().all().all()
    pd.testing.assert_frame_equal(no_boot[NUMERIC], boot[NUMERIC])


def test_planted_effect_found_and_null_not():
    rng = np.random.default_rng(0)
    n = 400
    chosen = pd.DataFrame({"bold": rng.poisson(1.6, n), "hedging": rng.poisson(0.5, n)})
    rejected = pd.DataFrame({"bold": rng.poisson(1.0, n), "hedging": rng.poisson(1.0, n)})
    for j in range(8):
        chosen[f"null{j}"] = rng.poisson(0.8, n)
        rejected[f"null{j}"] = rng.poisson(0.8, n)
    got = paired_stats(chosen.astype(float), rejected.astype(float), n_boot=500).set_index("concept")
    assert got.loc["bold", "direction"] == "chosen" and got.loc["bold", "q"] < 0.05
    assert got.loc["bold", "q_sign"] < 0.05 and got.loc["bold", "ci_low"] > 0
    assert got.loc["hedging", "direction"] == "rejected" and got.loc["hedging", "q"] < 0.05
    nulls = got.loc[[f"null{j}" for j in range(8)]]
    assert (nulls["q"] > 0.05).all() and (nulls["q_sign"] > 0.05).all()


def test_bootstrap_ci_covers_the_true_mean():
    rng = np.random.default_rng(0)
    true_mean, covered = 0.3, 0
    for rep in range(100):  # skewed gaps, 40 pairs each
        chosen = pd.DataFrame({"x": rng.exponential(1.0, 40) + true_mean - 1.0})
        rejected = pd.DataFrame({"x": np.zeros(40)})
        row = paired_stats(chosen, rejected, n_boot=400, seed=rep).iloc[0]
        covered += row["ci_low"] <= true_mean <= row["ci_high"]
    assert 0.88 <= covered / 100 <= 0.99


@pytest.mark.parametrize("change, message", [
    (lambda c, r: (c, r.iloc[:-1]), "differ in shape"),
    (lambda c, r: (c, r.rename(columns={"normal": "other"})), "only in chosen \\['normal'\\]"),
    (lambda c, r: (c, r.set_axis(r.index + 1)), "different indexes"),
    (lambda c, r: (c.assign(normal=np.r_[np.nan, c["normal"].iloc[1:]]), r),
     "column 'normal' of `chosen` has 1 NaN"),
    (lambda c, r: (c, r.assign(count3=np.r_[c["count3"].iloc[:-1], np.inf])),
     "column 'count3' of `rejected`"),
    (lambda c, r: (c.assign(normal="a"), r), "column 'normal' of `chosen` is not numeric"),
    (lambda c, r: (c.to_numpy(), r), "must be a pandas DataFrame"),
])
@pytest.mark.parametrize("sparse_share", [0.0, 1.01])
def test_bad_input_raises_clear_errors(change, message, sparse_share, monkeypatch):
    monkeypatch.setattr(contrast, "_SPARSE_SHARE", sparse_share)
    chosen, rejected = make_pairs()
    with pytest.raises(ValueError, match=message):
        paired_stats(*change(chosen, rejected), n_boot=0)


def test_bad_knobs_raise():
    chosen, rejected = make_pairs()
    with pytest.raises(ValueError, match="n_boot"):
        paired_stats(chosen, rejected, n_boot=-1)
    with pytest.raises(ValueError, match="ci must be"):
        paired_stats(chosen, rejected, ci=95)


def bt_pairs(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bradley–Terry pairs: utility = 0.01 * length + 0.5 * bold. Both bold and emoji grow
    with length, so both separate chosen from rejected, but only bold adds to length."""
    rng = np.random.default_rng(seed)

    def responses():
        length = rng.normal(200, 60, n).clip(20)
        return pd.DataFrame({"length": length, "bold": rng.poisson(length / 150),
                             "emoji": rng.poisson(length / 100)}).astype(float)

    a, b = responses(), responses()
    utility = lambda x: 0.01 * x["length"] + 0.5 * x["bold"]  # noqa: E731
    a_wins = rng.random(n) < 1 / (1 + np.exp(-(utility(a) - utility(b)).to_numpy()))
    wins = np.repeat(a_wins[:, None], a.shape[1], axis=1)
    chosen, rejected = a.where(wins, b), b.where(wins, a)
    return chosen, rejected


def test_preference_regression_beyond_length():
    chosen, rejected = bt_pairs()
    got = preference_regression(chosen, rejected, progress=False)
    assert list(got.columns) == contrast.REGRESSION_COLUMNS
    assert list(got["concept"]) == ["bold", "emoji"]  # length is the covariate
    row = got.set_index("concept")
    assert row.loc["bold", "replicated"] and row.loc["bold", "effect"] > 0
    assert row.loc["bold", "p"] < 0.05 and row.loc["bold", "q"] < 0.05
    assert row.loc["bold", "ci_low"] > 0
    assert not row.loc["emoji", "replicated"] and row.loc["emoji", "p"] > 0.05
    assert (got["note"] == "").all()
    assert row.loc["bold", "n_discovery"] + row.loc["bold", "n_heldout"] == len(chosen)
    # without the length control, emoji looks preferred: the confound the covariate removes
    raw = preference_regression(chosen.drop(columns="length"), rejected.drop(columns="length"),
                                covariates=(), progress=False).set_index("concept")
    assert raw.loc["emoji", "p"] < 0.05 and raw.loc["emoji", "effect"] > 0
    # the joint model agrees on the planted effect; same seed, same output
    joint = preference_regression(chosen, rejected, joint=True, progress=False).set_index("concept")
    assert joint.loc["bold", "replicated"] and not joint.loc["emoji", "replicated"]
    pd.testing.assert_frame_equal(got, preference_regression(chosen, rejected, progress=False))


def test_preference_regression_separation_and_degenerate_columns():
    rng = np.random.default_rng(0)
    n = 30
    chosen = pd.DataFrame({"length": rng.normal(100, 10, n), "perfect": np.ones(n),
                           "silent": np.zeros(n)})
    rejected = pd.DataFrame({"length": rng.normal(100, 10, n), "perfect": np.zeros(n),
                             "silent": np.zeros(n)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # separation is handled, not leaked as warnings
        got = preference_regression(chosen, rejected, progress=False).set_index("concept")
    assert "separation" in got.loc["perfect", "note"]
    assert np.isfinite(got.loc["perfect", ["effect", "p"]].astype(float)).all()
    assert got.loc["perfect", "effect"] > 0
    assert "not fitted" in got.loc["silent", "note"] and np.isnan(got.loc["silent", "p"])
    assert not got.loc["silent", "replicated"]
    with pytest.raises(ValueError, match="covariate column"):
        preference_regression(chosen.drop(columns="length"), rejected.drop(columns="length"))
    with pytest.raises(ValueError, match="test_frac"):
        preference_regression(chosen, rejected, test_frac=1.0)


def test_a_gap_the_same_in_every_pair_is_infinitely_consistent_and_drawn_significant():
    n = 8
    chosen = pd.DataFrame({"always_plus_one": np.arange(n) + 1.0, "always_minus_tenth": np.full(n, 0.0),
                           "noise": np.random.default_rng(0).normal(size=n)})
    rejected = pd.DataFrame({"always_plus_one": np.arange(n) + 0.0, "always_minus_tenth": np.full(n, 0.1),
                             "noise": np.zeros(n)})
    table = paired_stats(chosen, rejected, n_boot=100).set_index("concept")
    assert table.loc["always_plus_one", "d"] == np.inf
    assert table.loc["always_minus_tenth", "d"] == -np.inf  # 0.1 is not exact in binary: sd rounds to ~1e-17
    assert table.loc["always_plus_one", "q"] < 0.05
    fig = plot_volcano(table.reset_index())
    by_group = {t.name: t for t in fig.data}
    plus = list(by_group["chosen"].text).index("always_plus_one")
    assert np.isfinite(by_group["chosen"].x[plus]) and by_group["chosen"].x[plus] > 1
    assert by_group["chosen"].marker.symbol[plus] == "triangle-right"
    assert by_group["chosen"].customdata[plus][1] == np.inf
    assert "always_minus_tenth" in list(by_group["rejected"].text)


def test_figures():
    import plotly.graph_objects as go

    chosen, rejected = make_pairs(seed=0)
    table = paired_stats(chosen, rejected, n_boot=100)
    fig = plot_volcano(table)
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1
    assert sum(len(t.x) for t in fig.data) == len(table)
    bars = plot_hypotheses(table, top=5)
    assert isinstance(bars, go.Figure) and len(bars.data[0].y) == 5
    assert list(bars.data[0].x) == sorted(bars.data[0].x)  # ordered by effect
    assert bars.data[0].error_x.array is not None
    assert isinstance(plot_hypotheses(paired_stats(chosen, rejected, n_boot=0)), go.Figure)
    reg = preference_regression(*bt_pairs(n=400), progress=False)
    assert isinstance(plot_volcano(reg, effect="effect", p="q"), go.Figure)
    with pytest.raises(ValueError, match="not in the stats table"):
        plot_volcano(table, p="missing")
