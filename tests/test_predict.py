"""predict: hand-computed predicted shifts, a prompt-level bootstrap, and the fit statistics."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from anatomy.predict import compare, observed_shift, predict_shift, predict_shift_from_features
from anatomy.features import PairFeatures

# ----------------------------------------------------------------------------- predict_shift


def _pair_tables():
    idx = pd.Index(["p0", "p1", "p2", "p3"], name="id")
    chosen = pd.DataFrame({"a": [0.5, 0.0, 0.2, 0.0], "b": [1.0, 2.0, 3.0, 4.0]}, index=idx)
    rejected = pd.DataFrame({"a": [0.0, 0.0, 0.3, 0.02], "b": [0.0, 1.0, 1.0, 2.0]}, index=idx)
    return chosen, rejected


def test_predict_shift_u_by_hand():
    chosen, rejected = _pair_tables()
    u = predict_shift(chosen, rejected, method="u", tau=0.01)
    # a: chosen fires in p0, p2; rejected in p2, p3 -> (1 + 0 + 0 - 1) / 4 = 0
    # b: chosen fires in all; rejected in p1, p2, p3 -> (1 + 0 + 0 + 0) / 4 = 0.25
    assert u.to_dict() == pytest.approx({"a": 0.0, "b": 0.25})
    assert u.name == "u" and u.attrs["n_pairs"] == 4
    # a higher threshold: a's 0.02 in p3 no longer counts -> (1 + 0 + 0 + 0) / 4
    assert predict_shift(chosen, rejected, tau=0.05)["a"] == pytest.approx(0.25)


def test_predict_shift_z_gap_by_hand():
    chosen, rejected = _pair_tables()
    z = predict_shift(chosen, rejected, method="z_gap")
    # b: gap mean = (1 + 1 + 2 + 2) / 4 = 1.5; var(chosen) = 5/3, var(rejected) = 2/3 (ddof 1)
    assert z["b"] == pytest.approx(1.5 / np.sqrt((5 / 3 + 2 / 3) / 2))
    # a: gap = (0.5, 0, -0.1, -0.02) -> mean 0.095
    va, vr = np.var([0.5, 0, 0.2, 0], ddof=1), np.var([0, 0, 0.3, 0.02], ddof=1)
    assert z["a"] == pytest.approx(0.095 / np.sqrt((va + vr) / 2))


def test_predict_shift_prefix_and_column_order():
    chosen, rejected = _pair_tables()
    u = predict_shift(chosen, rejected[["b", "a"]], prefix="sae:")
    assert list(u.index) == ["sae:a", "sae:b"]
    assert u["sae:b"] == pytest.approx(0.25)


def test_predict_shift_errors_name_the_problem():
    chosen, rejected = _pair_tables()
    with pytest.raises(ValueError, match="only in chosen \\['b'\\]"):
        predict_shift(chosen, rejected[["a"]])
    with pytest.raises(ValueError, match="same pair index"):
        predict_shift(chosen, rejected.iloc[::-1])
    with pytest.raises(ValueError, match="method"):
        predict_shift(chosen, rejected, method="nope")
    bad = chosen.copy()
    bad.loc["p2", "b"] = np.nan
    with pytest.raises(ValueError, match="'b'.*'p2'"):
        predict_shift(bad, rejected)


def test_predict_shift_from_features_is_the_papers_member_average():
    # 3 pairs, 4 features; cluster 0 = features {0, 1}, cluster 1 = {2, 3}
    ch = sp.csr_matrix(np.array([[0.5, 0.0, 0.2, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.005, 0.0]]))
    rj = sp.csr_matrix(np.array([[0.0, 0.0, 0.2, 0.3], [0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0]]))
    feats = PairFeatures(["x", "y", "z"], {"chosen": ch, "rejected": rj}, {"chosen": ch, "rejected": rj},
                         {"chosen": np.ones(3), "rejected": np.ones(3)}, None, 4)
    clusters = pd.DataFrame({"feature": [0, 1, 2, 3], "cluster": [0, 0, 1, 1]})
    u = predict_shift_from_features(feats, clusters, tau=0.01)
    # cluster 0 per pair: mean over members of (chosen fired - rejected fired): (1+0)/2, (1+1)/2, (0-1)/2
    assert u["sae:0"] == pytest.approx(np.mean([0.5, 1.0, -0.5]))
    # cluster 1: (1-1 + 0-1)/2, 0, (0.005 < tau) 0
    assert u["sae:1"] == pytest.approx(np.mean([-0.5, 0.0, 0.0]))


# ----------------------------------------------------------------------------- observed_shift


def _rollout_frame(values: np.ndarray, name: str = "c") -> pd.DataFrame:
    """values[p, s] -> one row per (prompt p, sample s)."""
    P, S = values.shape
    return pd.DataFrame({"prompt_id": np.repeat([f"q{p}" for p in range(P)], S),
                         "sample": np.tile(np.arange(S), P), name: values.ravel()})


def test_observed_shift_point_estimates_by_hand():
    before = _rollout_frame(np.array([[0, 0], [1, 0], [0, 0]]))  # rate 1/6
    after = _rollout_frame(np.array([[1, 1], [1, 0], [0, 2]]))  # 4 of 6 > tau
    out = observed_shift(before, after, n_boot=50)
    row = out.loc["c"]
    assert row["before"] == pytest.approx(1 / 6) and row["after"] == pytest.approx(4 / 6)
    assert row["effect"] == pytest.approx(0.5)
    assert row["n_prompts"] == 3 and row["n_before"] == 6
    mean = observed_shift(before, after, stat="mean", n_boot=50).loc["c"]
    assert mean["after"] == pytest.approx(5 / 6)
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]


def test_observed_shift_ci_covers_truth_in_repeated_synthetic_experiments():
    # prompt-level effects: each prompt has its own base rate; the true shift is +0.2
    rng = np.random.default_rng(1)
    covered, n_rep = 0, 150
    for rep in range(n_rep):
        P, S = 40, 4
        base = rng.uniform(0.1, 0.5, size=P)
        before = (rng.random((P, S)) < base[:, None]).astype(float)
        after = (rng.random((P, S)) < (base + 0.2)[:, None]).astype(float)
        out = observed_shift(_rollout_frame(before), _rollout_frame(after), n_boot=400, seed=rep).loc["c"]
        covered += out["ci_low"] <= 0.2 <= out["ci_high"]
    assert 0.85 <= covered / n_rep <= 1.0


def test_observed_shift_resamples_prompts_not_samples():
    # every sample of a prompt is identical: the information is in 30 prompts, not 30 x 20 rollouts
    rng = np.random.default_rng(0)
    P, S = 30, 20
    before = np.repeat(rng.normal(0, 1, P)[:, None], S, 1)
    after = np.repeat(rng.normal(0.5, 1, P)[:, None], S, 1)
    out = observed_shift(_rollout_frame(before), _rollout_frame(after), stat="mean", n_boot=2000).loc["c"]
    prompt_se = np.sqrt(before[:, 0].var(ddof=1) / P + after[:, 0].var(ddof=1) / P)
    sample_se = np.sqrt(before.var(ddof=1) / before.size + after.var(ddof=1) / after.size)
    assert out["se"] == pytest.approx(prompt_se, rel=0.15)  # a per-sample bootstrap gives ~sqrt(S) less
    assert out["se"] > 3 * sample_se


def test_observed_shift_resamples_before_and_after_with_the_same_prompts():
    # after = before + 0.5 on every prompt: with paired resampling the shift never varies
    rng = np.random.default_rng(0)
    before = rng.normal(0, 1, (25, 3))
    out = observed_shift(_rollout_frame(before), _rollout_frame(before + 0.5), stat="mean", n_boot=300).loc["c"]
    assert out["effect"] == pytest.approx(0.5)
    assert out["ci_high"] - out["ci_low"] < 1e-9


def test_observed_shift_errors():
    before = _rollout_frame(np.zeros((3, 2)))
    after = _rollout_frame(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="different prompts.*only after \\['q3'\\]"):
        observed_shift(before, after)
    with pytest.raises(ValueError, match="missing from `after`"):
        observed_shift(before, _rollout_frame(np.zeros((3, 2)), name="d"), concepts=["c"])
    nan = _rollout_frame(np.array([[0.0, np.nan], [0, 0], [0, 0]]))
    with pytest.raises(ValueError, match="'c'.*'q0'"):
        observed_shift(nan, before)
    with pytest.raises(ValueError, match="prompt column"):
        observed_shift(before.drop(columns="prompt_id"), before)


# ----------------------------------------------------------------------------- compare


def test_compare_perfect_line_gives_r2_one():
    pred = pd.Series([-0.2, 0.0, 0.1, 0.3], index=list("abcd"))
    obs = pd.DataFrame({"effect": 2 * pred + 0.1}).assign(ci_low=lambda d: d["effect"] - 0.05,
                                                         ci_high=lambda d: d["effect"] + 0.05)
    stats, fig = compare(pred, obs.iloc[::-1], labels={"a": "bold"})
    assert stats["r2"] == pytest.approx(1.0) and stats["pearson_r"] == pytest.approx(1.0)
    assert stats["slope"] == pytest.approx(2.0) and stats["intercept"] == pytest.approx(0.1)
    assert stats["slope_se"] == pytest.approx(0.0, abs=1e-9) and stats["spearman_rho"] == pytest.approx(1.0)
    assert stats["n"] == 4
    points = fig.data[0]
    assert list(points.text) == ["bold", "b", "c", "d"]
    assert list(points.y) == pytest.approx(list(2 * pred + 0.1))  # aligned by concept, not by position
    assert list(points.error_y.array) == pytest.approx([0.05] * 4)


def test_compare_known_values():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 2.0, 1.0, 4.0, 3.0])
    stats, _ = compare(pd.Series(x, index=list("abcde")), pd.Series(y, index=list("abcde")))
    # by hand: Sxx = 10, Sxy = 8, Syy = 10 -> slope 0.8, r = 0.8, R² = 0.64
    assert stats["slope"] == pytest.approx(0.8) and stats["r2"] == pytest.approx(0.64)
    assert stats["intercept"] == pytest.approx(0.4)
    # residuals (-0.4, 0.8, -1, 1.2, -0.6): SSE = 3.6, se(slope) = sqrt(3.6 / 3 / 10)
    assert stats["slope_se"] == pytest.approx(np.sqrt(0.12))
    # ranks are the values themselves: rho = 1 - 6 * Σd² / (n (n² - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert stats["spearman_rho"] == pytest.approx(0.8)
    # zero-intercept fit: b0 = Σxy / Σx² = 28 / 30; R² = 1 - Σ(y - b0 x)² / Σ(y - ȳ)²
    b0 = 28 / 30
    assert stats["slope_origin"] == pytest.approx(b0)
    assert stats["r2_origin"] == pytest.approx(1 - ((y - b0 * x) ** 2).sum() / 10)


def test_compare_names_mismatched_concepts():
    pred = pd.Series([0.1, 0.2, 0.3], index=["sae:0", "sae:1", "sae:2"])
    obs = pd.Series([0.1, 0.2, 0.3], index=["sae:0", "sae:1", "sae:3"])
    with pytest.raises(ValueError, match="only predicted \\['sae:2'\\], only observed \\['sae:3'\\]"):
        compare(pred, obs)
    with pytest.raises(ValueError, match="at least 3"):
        compare(pred[:2], obs[:2])
    with pytest.raises(ValueError, match="same for every concept"):
        compare(pd.Series(0.0, index=pred.index), pd.Series([1.0, 2.0, 3.0], index=pred.index))


# ----------------------------------------------------------------------------- under a plan


def _inputs(ids, **fields):
    from anatomy.interventions import TrainInputs

    return TrainInputs(ids=list(ids), **fields)


def test_predict_shift_under_a_plan_by_hand():
    chosen, rejected = _pair_tables()
    plain = predict_shift(chosen, rejected, method="u")
    empty = predict_shift(chosen, rejected, method="u", plan=_inputs(chosen.index))
    pd.testing.assert_series_equal(empty, plain)
    # weights: a dropped pair adds nothing (b's only chosen-only pair is p0)
    w = predict_shift(chosen, rejected, plan=_inputs(chosen.index, weights=np.array([0.0, 1, 1, 1])))
    assert w["b"] == pytest.approx(0.0) and w["a"] == pytest.approx(-0.25)
    # offsets: gradient weight 2σ(−o); a huge positive offset on p0 explains b away, a negative one doubles it
    for o, expected in ((50.0, 0.0), (-50.0, 0.5), (0.0, 0.25)):
        shaped = predict_shift(chosen, rejected, plan=_inputs(chosen.index, offsets=np.array([o, 0, 0, 0])))
        assert shaped["b"] == pytest.approx(expected, abs=1e-9)
    # effective offsets of hooks / prompts add to the offsets
    both = _inputs(chosen.index, offsets=np.array([25.0, 0, 0, 0]), effective_offsets=np.array([25.0, 0, 0, 0]))
    assert predict_shift(chosen, rejected, plan=both)["b"] == pytest.approx(0.0, abs=1e-9)
    # masks: the share of the concept's tokens removed scales its scores (matched by name)
    share = {"annotator:a": np.array([[1.0, 0], [0, 0], [1.0, 0], [0, 0]])}
    masked = predict_shift(chosen, rejected, plan=_inputs(chosen.index, token_share=share))
    assert masked["a"] == pytest.approx((0 + 0 - 1 - 1) / 4) and masked["b"] == plain["b"]
    with pytest.raises(ValueError, match="compiled for other pairs"):
        predict_shift(chosen, rejected, plan=_inputs(["x", "y", "z", "w"]))
    with pytest.raises(TypeError, match="compile a Plan first"):
        from anatomy.interventions import Plan

        predict_shift(chosen, rejected, plan=Plan(()))


def test_recovery_by_hand_and_its_bootstrap():
    from anatomy.predict import recovery

    def frame(flags):  # two prompts x two samples, one concept column
        return pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "sample": [0, 1, 0, 1], "x": flags, "y": flags})

    before, plain = frame([0, 0, 0, 0]), frame([1, 1, 1, 0])
    half = frame([1, 0, 0, 0])
    rec = recovery(before, plain, half, concepts=["x"], n_boot=500, seed=1)
    r = rec.loc["x"]
    assert r.recovery == pytest.approx((0.75 - 0.25) / 0.75 * 100) and r.change == pytest.approx(-0.5)
    assert r.ci_low <= r.recovery <= r.ci_high and r.n_boot_used > 400
    full = recovery(before, plain, before, concepts=["x"], n_boot=50)
    assert full.loc["x", "recovery"] == pytest.approx(100.0)
    none = recovery(before, plain, plain, concepts=["x"], n_boot=50)
    assert none.loc["x", "recovery"] == pytest.approx(0.0) and none.loc["x", "change"] == 0
    still = recovery(before, before, half, concepts=["x"], n_boot=50)  # plain DPO did not move it
    assert np.isnan(still.loc["x", "recovery"])
    with pytest.raises(ValueError, match="same prompts"):
        recovery(before, plain, frame([0, 0, 0, 0]).assign(prompt_id=["a", "a", "c", "c"]), concepts=["x"])


# ----------------------------------------------------------------------------- noise_ceiling


def _concept_frames(values: np.ndarray) -> pd.DataFrame:
    """values[p, s, c] -> one row per (prompt p, sample s), one column per concept c."""
    P, S, C = values.shape
    return pd.DataFrame({"prompt_id": np.repeat([f"q{p}" for p in range(P)], S), "sample": np.tile(np.arange(S), P),
                         **{f"c{j}": values[:, :, j].ravel() for j in range(C)}})


def _experiment(rng, true, *, noise, prompt_sd=0.0, P=30, S=2):
    """Rollout scores before / after of concepts whose true shift is ``true``: a per-prompt base
    shared by both sides, per-rollout noise ``noise``, per-prompt deviations of the shift ``prompt_sd``."""
    C = len(true)
    base = rng.normal(0, 1, (P, 1, C))
    before = base + rng.normal(0, noise, (P, S, C))
    after = base + true + rng.normal(0, prompt_sd, (P, 1, C)) + rng.normal(0, noise, (P, S, C))
    return _concept_frames(before), _concept_frames(after)


def test_noise_ceiling_is_the_r2_a_perfect_predictor_reaches():
    from anatomy.predict import noise_ceiling

    for noise in (1.0, 3.0):
        r2, ceiling = [], []
        for rep in range(20):
            rng = np.random.default_rng(rep)
            true = rng.normal(0, 0.5, 15)
            before, after = _experiment(rng, true, noise=noise)
            observed = observed_shift(before, after, stat="mean", n_boot=1)["effect"].to_numpy()
            r2.append(np.corrcoef(true, observed)[0, 1] ** 2)
            ceiling.append(noise_ceiling(before, after, stat="mean", n_splits=60, seed=rep).loc["prompts", "ceiling_r2"])
        assert np.mean(ceiling) == pytest.approx(np.mean(r2), abs=0.08), noise


def test_noise_ceiling_high_with_small_noise_low_with_large_noise():
    from anatomy.predict import noise_ceiling

    rng = np.random.default_rng(0)
    true = rng.normal(0, 0.5, 12)
    quiet = noise_ceiling(*_experiment(rng, true, noise=0.05), stat="mean", n_splits=50)
    loud = noise_ceiling(*_experiment(rng, true, noise=20.0), stat="mean", n_splits=50)
    assert quiet.loc["prompts", "ceiling_r2"] > 0.97 and quiet.loc["samples", "ceiling_r2"] > 0.97
    assert loud.loc["prompts", "ceiling_r2"] < 0.4
    assert loud.loc["prompts", "split_low"] <= loud.loc["prompts", "reliability"] <= loud.loc["prompts", "split_high"]
    assert quiet.loc["prompts", "n"] == 12 and quiet.loc["prompts", "n_splits"] == 50
    assert quiet.loc["prompts", "n_prompts"] == 30 and quiet.loc["samples", "n_samples"] == 2


def test_noise_ceiling_sample_halves_miss_prompt_level_noise():
    # the shift differs from prompt to prompt: only the prompt halves see that noise
    from anatomy.predict import noise_ceiling

    rng = np.random.default_rng(3)
    table = noise_ceiling(*_experiment(rng, rng.normal(0, 0.5, 15), noise=0.3, prompt_sd=4.0, S=4), stat="mean")
    assert table.loc["samples", "ceiling_r2"] > 0.9
    assert table.loc["prompts", "ceiling_r2"] < table.loc["samples", "ceiling_r2"] - 0.2


def test_noise_ceiling_keeps_sample_s_before_and_after_in_one_half():
    # common random numbers: rollout (p, s) carries the same large noise before and after, so
    # every half's shift is the true shift exactly, as long as the pairing is kept
    from anatomy.predict import noise_ceiling

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 50, (10, 4, 5))
    true = np.array([0.0, 1.0, -2.0, 0.5, 3.0])
    table = noise_ceiling(_concept_frames(noise), _concept_frames(noise + true), stat="mean", n_splits=30)
    assert table["r_half"].to_numpy() == pytest.approx([1.0, 1.0])
    assert table["ceiling_r2"].to_numpy() == pytest.approx([1.0, 1.0])


def test_noise_ceiling_two_prompts_by_hand():
    # with two prompts every split puts one prompt in each half: r = corr(shift of q0, shift of q1)
    from anatomy.predict import noise_ceiling

    before = _concept_frames(np.zeros((2, 1, 4)))
    after_values = np.array([[[0.0, 0.5, 0.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]])  # rates with tau 0.01
    table = noise_ceiling(before, _concept_frames(after_values), n_splits=7)
    r = np.corrcoef([0, 1, 0, 1], [0, 0, 1, 1])[0, 1]  # q0 shows c1, c3; q1 shows c2, c3
    row = table.loc["prompts"]
    assert row["r_half"] == pytest.approx(r) and row["reliability"] == pytest.approx(2 * r / (1 + r))
    assert row["ceiling_r2"] == pytest.approx(max(0.0, 2 * r / (1 + r))) and row["n_splits"] == 7
    # one sample per prompt: no sample halves
    assert np.isnan(table.loc["samples", "reliability"]) and table.loc["samples", "n_splits"] == 0


def test_noise_ceiling_is_deterministic_under_a_seed():
    from anatomy.predict import noise_ceiling

    rng = np.random.default_rng(5)
    before, after = _experiment(rng, rng.normal(0, 0.3, 10), noise=2.0, P=12, S=3)
    a = noise_ceiling(before, after, stat="mean", seed=4)
    pd.testing.assert_frame_equal(a, noise_ceiling(before, after, stat="mean", seed=4))
    assert not a.equals(noise_ceiling(before, after, stat="mean", seed=5))
    # the prompt halves do not depend on whether the sample halves can be drawn
    no_samples = noise_ceiling(before.drop(columns="sample"), after.drop(columns="sample"), stat="mean", seed=4)
    assert no_samples.loc["prompts", "r_half"] == a.loc["prompts", "r_half"]
    assert no_samples.loc["samples", "n_splits"] == 0


def test_noise_ceiling_errors_name_the_problem():
    from anatomy.predict import noise_ceiling

    one_prompt = _concept_frames(np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="at least 2 prompts"):
        noise_ceiling(one_prompt, one_prompt)
    two_concepts = _concept_frames(np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="at least 3 concepts"):
        noise_ceiling(two_concepts, two_concepts)
    frames = _concept_frames(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="n_splits"):
        noise_ceiling(frames, frames, n_splits=0)
    with pytest.raises(ValueError, match="different prompts"):
        noise_ceiling(frames, _concept_frames(np.zeros((6, 2, 4))))
    with pytest.raises(ValueError, match="stat"):
        noise_ceiling(frames, frames, stat="median")
    with pytest.raises(ValueError, match="pandas"):
        noise_ceiling(np.zeros((10, 4)), frames)


# ----------------------------------------------------------------------------- the benchmark's SAE lens


def _reproduce_predict():
    """benchmarks/reproduce_predict.py as a module (its helpers, not its run)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_predict.py"
    spec = importlib.util.spec_from_file_location("reproduce_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cached_frame_reads_back_the_same_rollouts(tmp_path):
    bench = _reproduce_predict()
    df = pd.DataFrame({"prompt_id": ["007", "010"], "sample": [0, 1],
                       "prompt": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
                       "response": ["a **b**", ""], "n_tokens": [3, 0], "finished": [True, False],
                       "margin": [0.1 + 0.2, -1 / 3]})
    calls = []
    first = bench.cached_frame(tmp_path / "x.jsonl", lambda: calls.append(1) or df)
    again = bench.cached_frame(tmp_path / "x.jsonl", lambda: calls.append(1) or df)
    assert calls == [1]  # made once, then read back
    pd.testing.assert_frame_equal(first, df)
    pd.testing.assert_frame_equal(again, df)  # ids stay strings, floats exact, messages intact


@pytest.fixture(scope="module")
def small_diagnosis(model, sae):
    from anatomy import DiagnoseConfig, diagnose, load_preferences, sample_pairs

    pairs = sample_pairs(load_preferences("organism", split="train"), 24, seed=0)
    config = DiagnoseConfig(min_size=4, n_boot=0, n_label_pairs=0)
    return pairs, diagnose(pairs, model=model, sae=sae, config=config, progress=False)


def test_diagnosis_scorer_reads_rollouts_in_the_diagnosis_units(model, sae, small_diagnosis):
    # the chosen responses rolled out again: the scorer must give what the diagnosis read on them
    from dataclasses import replace

    from anatomy.evals import diagnosis_scorer
    from anatomy.features import cluster_scores

    pairs, dx = small_diagnosis
    as_rollouts = pd.DataFrame({"prompt_id": [p["id"] for p in pairs], "sample": 0,
                                "prompt": [p["prompt"] for p in pairs], "response": [p["chosen"] for p in pairs]})
    got = diagnosis_scorer(model, sae, dx)(as_rollouts)
    want = cluster_scores(dx.features, dx.clusters, span="chosen")
    assert list(got.columns) == [f"diagnosis:{k}" for k in want.columns]
    close = np.isclose(got.to_numpy(), want.to_numpy(), atol=1e-4)
    assert close.mean() > 0.99, np.argwhere(~close)[:5]  # a feature right at its gate may flip by rounding
    # without the gate the same responses score higher: the gate is applied, with the training thresholds
    ungated = diagnosis_scorer(model, sae, replace(dx, config=replace(dx.config, gate=0.0)))(as_rollouts)
    assert (ungated.to_numpy() >= got.to_numpy() - 1e-6).all() and (ungated.to_numpy() > got.to_numpy() + 1e-6).any()


def test_diagnosis_selection_follows_the_written_rule(small_diagnosis):
    bench = _reproduce_predict()
    _, dx = small_diagnosis
    chosen = bench.diagnosis_selection(dx, alpha=0.05, top=20)
    rows = dx.rerank(one_per_concept=False)
    wide = rows[rows["group"] == -1].set_index("concept")["q"]
    n_clusters = int(dx.clusters["cluster"].max()) + 1
    assert chosen["sae_diagnosis"] == sorted(int(c) for c in wide.index[wide < 0.05])
    assert chosen["sae_diagnosis_top20"] == [int(c) for c in dx.ranked["concept"].head(20)]
    assert chosen["sae_diagnosis_all"] == list(range(n_clusters)) and len(wide) == n_clusters


def test_planted_matches_names_every_concept_a_cluster_reads():
    from anatomy.organism import CONCEPTS

    bench = _reproduce_predict()
    auc = pd.DataFrame(0.5, index=pd.RangeIndex(3, name="cluster"), columns=[*CONCEPTS, "kind_truncated"])
    auc.loc[0, "bold"], auc.loc[0, "header"] = 0.85, 0.95
    auc.loc[1, "kind_truncated"] = 0.99  # not a planted concept
    auc.loc[2, "table"] = 0.8  # a control is planted too (on both sides)
    assert bench.planted_matches(auc, 0.8) == {0: "header,bold", 1: "", 2: "table"}
