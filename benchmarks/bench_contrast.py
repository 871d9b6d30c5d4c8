"""Benchmark paired_stats against the obvious per-concept loop, side by side in one run.

Same seeded synthetic table for both: 10,000 pairs x 4,096 features (``--quick``: 2,000 x 512)
of sparse non-negative firing counts, like SAE features summarised per response (most
entries 0, many ties), with a few planted effects (features that fire more, or less, in the
chosen response).

  ours  paired_stats(chosen, rejected, n_boot=0): every per-concept test, vectorised
        (n_boot=0 skips the bootstrap CI, which the loop has no counterpart for)
  loop  for each feature: d = chosen - rejected, scipy.stats.binomtest on the signs,
        scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False, method="approx"),
        numpy for mean, d_z and superiority; then statsmodels multipletests (fdr_bh)

Every number is compared (max abs difference must be <= 1e-8). paired_stats is timed as the
best of 3 runs (its ~0.15-0.3 s is at the mercy of load spikes on a shared machine), the loop
(~100x longer, so spikes average out) once. Also timed, for information: paired_stats with
the default n_boot=2000 bootstrap (one matrix product of ~10^11 multiply-adds at full size). Prints one JSON line and writes it to
results/bench_contrast.json. Usage: python benchmarks/bench_contrast.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from anatomy.contrast import paired_stats

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3  # timings of paired_stats(n_boot=0); the loop (~100x longer) runs once
COMPARED = ["effect", "n_pos", "n_neg", "n_zero", "p_sign", "p", "d",
            "p_superiority", "q_sign", "q"]


def synthetic_pairs(n_pairs: int, n_features: int, *, n_planted: int = 16,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Seeded chosen / rejected firing-count tables (pairs x features) and the planted names.

    Feature j fires Poisson(rate_j * pair_scale_i) times per response, rates log-normal with
    median 0.05 (so most entries are 0 and non-zero ones tie a lot); a per-pair scale shared
    by both responses makes the pair structure matter. The first ``n_planted`` features fire
    1.3x as often in the chosen response, the next ``n_planted`` 0.75x as often.
    """
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(np.log(0.05), 1.0, n_features))
    scale = rng.gamma(4.0, 0.25, n_pairs)[:, None]
    lam = scale * rate[None, :]
    mult = np.ones(n_features)
    mult[:n_planted], mult[n_planted:2 * n_planted] = 1.3, 0.75
    names = [f"f{j:04d}" for j in range(n_features)]
    chosen = pd.DataFrame(rng.poisson(lam * mult).astype(np.float64), columns=names)
    rejected = pd.DataFrame(rng.poisson(lam).astype(np.float64), columns=names)
    return chosen, rejected, names[:2 * n_planted]


def loop_stats(chosen: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    """The obvious alternative: one scipy call per concept, then statsmodels for BH."""
    rows = []
    for col in chosen.columns:
        d = chosen[col].to_numpy() - rejected[col].to_numpy()
        n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
        n = len(d)
        if n_pos + n_neg:
            p_sign = stats.binomtest(n_pos, n_pos + n_neg).pvalue
            p_wil = stats.wilcoxon(d, zero_method="wilcox", correction=False,
                                   method="approx").pvalue
        else:  # all gaps are 0: paired_stats defines both p-values as 1
            p_sign = p_wil = 1.0
        sd = np.std(d, ddof=1)
        rows.append({"effect": np.mean(d), "n_pos": n_pos, "n_neg": n_neg,
                     "n_zero": n - n_pos - n_neg, "p_sign": p_sign, "p": p_wil,
                     "d": np.mean(d) / sd if sd > 0 else 0.0,
                     "p_superiority": (n_pos + 0.5 * (n - n_pos - n_neg)) / n})
    table = pd.DataFrame(rows)
    table["q_sign"] = multipletests(table["p_sign"], method="fdr_bh")[1]
    table["q"] = multipletests(table["p"], method="fdr_bh")[1]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 pairs x 512 features")
    args = parser.parse_args()
    n_pairs, n_features = (2_000, 512) if args.quick else (10_000, 4_096)
    chosen, rejected, planted = synthetic_pairs(n_pairs, n_features)

    seconds_vec = float("inf")
    for _ in range(REPEATS):  # best of a few: a 0.2 s timing is at the mercy of load spikes
        t = time.perf_counter()
        ours = paired_stats(chosen, rejected, n_boot=0)
        seconds_vec = min(seconds_vec, time.perf_counter() - t)

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample notes, irrelevant here
        ref = loop_stats(chosen, rejected)
    seconds_loop = time.perf_counter() - t

    t = time.perf_counter()
    boot = paired_stats(chosen, rejected, n_boot=2000, seed=0)
    seconds_boot = time.perf_counter() - t

    diffs = [np.nanmax(np.abs(ours[c].to_numpy(dtype=float) - ref[c].to_numpy(dtype=float)))
             for c in COMPARED]
    same_nan = all((ours[c].isna() == ref[c].isna()).all() for c in COMPARED)
    max_abs_diff = float(max(diffs))
    identical = bool(same_nan and max_abs_diff <= 1e-8)
    assert np.allclose(boot[COMPARED[:-2]].to_numpy(float), ours[COMPARED[:-2]].to_numpy(float),
                       rtol=0, atol=0, equal_nan=True), "n_boot changed the tests"
    found = ours.set_index("concept").loc[planted]
    record = {
        "n_pairs": n_pairs,
        "n_features": n_features,
        "seconds_vectorised": round(seconds_vec, 3),
        "seconds_loop": round(seconds_loop, 3),
        "ratio": round(seconds_loop / seconds_vec, 1),
        "max_abs_diff": max_abs_diff,
        "identical": identical,
        "timing": f"vectorised: best of {REPEATS} runs; loop: 1 run",
        "seconds_vectorised_nboot2000": round(seconds_boot, 3),
        "planted_found_q05": int((found["q"] < 0.05).sum()),
        "n_planted": len(planted),
        "null_q05": int((ours.set_index("concept").drop(planted)["q"] < 0.05).sum()),
    }
    line = json.dumps(record)
    print(line)
    out = ROOT / "results" / "bench_contrast.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    assert identical, f"vectorised and loop results differ: max abs diff {max_abs_diff}"


if __name__ == "__main__":
    main()
