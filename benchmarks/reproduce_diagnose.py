"""Diagnose the organism end to end and score the diagnosis (METHOD §3; `make reproduce-diagnose`).

Two parts, kept apart on purpose:

DISCOVERY is `anatomy.diagnose.diagnose` with the shipped recipe (`DiagnoseConfig`'s defaults;
each flag below overrides one field): it reads only the model's activations of the organism's
train pairs and their prompt texts, never a ground-truth column, an annotator or ``family``.
Feature summaries are reused from ``--features-dir`` only when they were made from the same
pair texts, model weights, SAE and hook.

SCORING is `anatomy.organism.score_diagnosis` (the only reader of the organism's ground truth,
after discovery has returned; its docstring defines unit, match, right sign, recall, precision
and the controls' q) and `anatomy.organism.covariate_sensitivity` (the global ranking re-done
under each adjustment). ``bench_ratio`` is ``benchmarks/bench_contrast.py --quick`` run as a
subprocess. How each default was chosen (gate, isolates, graph, covariate, redundancy, ranking
key) is in ``benchmarks/dev_protocol.md``.

Writes ``results/diagnose.json`` (the six headline keys, the per-concept table, the links
check, the length finding, the settings, timings) and ``results/diagnose_hypotheses.csv`` (the
ranked global and prompt-conditioned hypotheses with labels and their matches).

Usage:
  python benchmarks/reproduce_diagnose.py --threads 1                 # all 2,270 train pairs
  python benchmarks/reproduce_diagnose.py --n-train 200 --threads 1   # a seeded subset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def sample_pairs(split: str, n: int | None, seed: int, source: str = "organism") -> list[dict]:
    """``n`` pairs of the organism's ``split``: a seeded random subset kept in file order (all if None).

    The same subset as ``benchmarks/lens_auroc.py`` draws, so their feature caches are shared.
    source: ``"organism"`` (the shipped one) or a folder holding another build's split files.
    """
    from anatomy import load_preferences, sample_pairs as draw

    return draw(load_preferences(source, split=split).to_list(), n, seed=seed)


def run_bench(quick: bool = True) -> dict:
    """``benchmarks/bench_contrast.py`` in a subprocess; its JSON line."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_contrast.py")] + (["--quick"] if quick else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _ungated(diagnosis):
    """The features before the gate, read back from the feature cache (None without one)."""
    if not diagnosis.settings.get("features_cache"):
        return None
    from anatomy.features import load_pair_features

    return load_pair_features(diagnosis.settings["features_cache"])


# ============================================================================ main
def main(argv=None) -> dict:
    from anatomy.diagnose import COVARIATES, GRAPHS, DiagnoseConfig, diagnose
    from anatomy.hypotheses import RANK_KEYS
    from anatomy.organism import AUROC_MATCH, CONTROLS, PLANTED, RECALL_CONCEPTS, covariate_sensitivity, score_diagnosis

    recipe = DiagnoseConfig()

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=None, help="train pairs (default: all 2,270)")
    ap.add_argument("--sae", default=None, help="load_sae(name): a shipped SAE or a directory (default: shipped)")
    ap.add_argument("--features-dir", default=str(ROOT / "results" / "features"),
                    help="reuse / save PairFeatures here (<split>-n<n|all>-seed<seed>-sae<fingerprint>)")
    ap.add_argument("--resolution", type=float, default=None, help="Leiden resolution (default: the size rule)")
    ap.add_argument("--k-data", type=int, default=None, help="data clusters (default round(sqrt(n/2)))")
    ap.add_argument("--k-prompt", type=int, default=None, help="prompt clusters (default round(sqrt(prompts/2)))")
    ap.add_argument("--tau", type=float, default=recipe.tau)
    ap.add_argument("--n-boot", type=int, default=recipe.n_boot)
    ap.add_argument("--covariate", choices=COVARIATES, default=recipe.covariate)
    ap.add_argument("--graph", choices=GRAPHS, default=recipe.graph,
                    help="cluster_features' feature graph (see benchmarks/dev_protocol.md)")
    ap.add_argument("--n-neighbors", type=int, default=recipe.n_neighbors, help="neighbours per feature of the knn graph")
    ap.add_argument("--redundancy", type=float, default=recipe.redundancy,
                    help="rank_hypotheses' duplicate cut on |r| of u (see benchmarks/dev_protocol.md)")
    ap.add_argument("--rank-by", choices=RANK_KEYS, default=recipe.rank_by,
                    help="rank_hypotheses' ordering key (see benchmarks/dev_protocol.md)")
    ap.add_argument("--gate", type=float, default=recipe.gate,
                    help="gate_weak_firing's rho, 0 for none (see benchmarks/dev_protocol.md)")
    ap.add_argument("--isolates", action=argparse.BooleanOptionalAction, default=recipe.isolates,
                    help="features with no edge in METHOD's top-1%% NMI graph are concepts of their own")
    ap.add_argument("--organism", default="organism",
                    help="'organism' (the shipped build) or a folder of another build's split files (the dev organism)")
    ap.add_argument("--n-label-pairs", type=int, default=recipe.n_label_pairs, help="pairs streamed for labels (0: no labels)")
    ap.add_argument("--bench-full", action="store_true", help="bench_contrast at full size, not --quick")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "diagnose"), help="output path without suffix")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from anatomy import load_sae
    from anatomy.fingerprint import weights_fingerprint

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    sae = load_sae(args.sae)
    fp = weights_fingerprint(sae)
    pairs = sample_pairs("train", args.n_train, args.seed, source=args.organism)
    config = DiagnoseConfig(gate=args.gate, isolates=args.isolates, graph=args.graph, n_neighbors=args.n_neighbors,
                            covariate=args.covariate, resolution=args.resolution, k_data=args.k_data,
                            k_prompt=args.k_prompt, tau=args.tau, n_boot=args.n_boot, redundancy=args.redundancy,
                            rank_by=args.rank_by, seed=args.seed, n_label_pairs=args.n_label_pairs)
    cache = None
    if args.features_dir:  # the name keeps subsets apart; the cache itself is keyed by content
        cache = Path(args.features_dir).expanduser() / f"train-n{args.n_train or 'all'}-seed{args.seed}-sae{fp}"
    reused = cache is not None and cache.exists() and any(cache.iterdir())
    diagnosis = diagnose(pairs, sae=sae, config=config, cache_dir=cache, progress=not args.no_progress)
    timings = dict(diagnosis.timings)
    st = diagnosis.settings
    print(f"train: {len(pairs)} pairs, features {'reused from ' + str(cache) if reused else 'computed'} "
          f"({timings['features']:.0f} s)", flush=True)
    print(f"discovery: resolution {st['resolution']} -> {st['concept_clusters']['clusters']} concept clusters "
          f"({st['n_isolates']} of one feature), {st['prompt_concept_clusters']['clusters']} prompt-concept "
          f"clusters; k_data {st['k_data']}, k_prompt {st['k_prompt']}; {len(diagnosis.ranked)} global rows, "
          f"{len(diagnosis.prompt_rows)} prompt rows", flush=True)

    # ---- scoring: the ground truth, read only now
    t = time.perf_counter()
    ungated = diagnosis.features if not args.gate else _ungated(diagnosis)
    scored = score_diagnosis(diagnosis, pairs, seed=args.seed, ungated=ungated)
    sensitivity = covariate_sensitivity(diagnosis, pairs, seed=args.seed)
    timings["score"] = time.perf_counter() - t
    bench = None
    if not args.no_bench:
        t = time.perf_counter()
        bench = run_bench(quick=not args.bench_full)
        timings["bench"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    label_of = diagnosis.labels
    top20 = scored["ranked"].head(20)
    top20 = [{"rank": int(r["rank"]), "concept_cluster": int(r["concept"]),
              "label": label_of.get(int(r["concept"]), ""),
              "scope": "all pairs" if r["group"] == -1 else f"data cluster {int(r['group'])}",
              "direction": r["direction"], "effect": float(r["effect"]), "q": float(r["q"]),
              "replicated": bool(r["replicated"]), "duplicate_of": int(r["duplicate_of"]),
              "matches": r["matches"], "matches_intended": r["matches_intended"],
              "best_concept": r["best_concept"], "best_concept_auroc": float(r["best_concept_auroc"])}
             for _, r in top20.iterrows()]
    headline = dict(scored["headline"])
    headline["bench_ratio"] = bench["ratio"] if bench else None
    record = {
        **{k: headline[k] for k in ("recall_top10", "recall_top20", "precision_top10", "precision_top20",
                                    "controls_min_q", "bench_ratio")},
        "controls_q": {c: float(scored["annotator_stats"].set_index("concept").at[c, "q"]) for c in CONTROLS},
        "controls_in_sae_ranking": scored["controls_sae"],
        "links_on_resource_requests": scored["links"],
        "length": diagnosis.length,
        "top20_global": top20,
        "detail": scored["detail"],
        "covariate_sensitivity": sensitivity,
        "bench": bench,
        "definitions": {
            "unit": "one response (chosen and rejected of every pair; a response repeated under one prompt "
                    "counts once)",
            "match": f"AUROC >= {AUROC_MATCH} of the concept cluster's freq-sum over the response span (of the "
                     "features discovery read, i.e. after gate_weak_firing) against the concept's ground-truth "
                     "presence in that response",
            "right_sign": "hypothesis direction == sign of the concept's ground-truth rate in the hypothesis' scope "
                          "(all pairs, or its data cluster)",
            "recall": f"share of {list(RECALL_CONCEPTS)} matched with the right sign by a top-k global row",
            "precision (headline)": f"share of top-k global rows matching any of {list(PLANTED)} with the right sign",
            "intended signal": "response is the rejected side of a pair of rejected_kind k: AUROC >= 0.8 with "
                               "direction rejected, or <= 0.2 with direction chosen (reported in detail, not in "
                               "the headline)",
            "controls_min_q": "min BH q (Wilcoxon) of table and horizontal_rule in paired_stats on annotator counts "
                              "(chosen vs rejected, 13 concepts)",
            "global ranking": f"rank_hypotheses: dataset-wide paired rows (u adjusted for: {args.covariate}) + "
                              "data-cluster in-vs-out rows, one row per concept cluster, passing rows first",
            "bench_ratio": "benchmarks/bench_contrast.py " + ("(full)" if args.bench_full else "--quick"),
        },
        "settings": {**{k: v for k, v in st.items() if k != "resolution_profile"},
                     "sae": args.sae or "shipped", "sae_fingerprint": fp, "organism": args.organism, 
                     "features_reused": reused, "threads": torch.get_num_threads(),
                     "n_label_pairs": args.n_label_pairs},
        "resolution_profile": st["resolution_profile"],
        "sizes": {"train_pairs": len(pairs), "prompts": st["n_prompts"]},
        "per_concept": json.loads(scored["per_concept"].to_json(orient="records")),
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(record, indent=1, default=float) + "\n")

    g = scored["ranked"].head(50).assign(view="global")
    p = scored["prompt_top"].reset_index(drop=True)
    p = p.assign(view="prompt", rank=np.arange(1, len(p) + 1))
    cols = ["view", "rank", "group", "n", "concept", "label", "direction", "effect", "ci_low", "ci_high", "p", "q",
            "d", "delta_a", "delta_b", "delta_min", "replicated", "consistent", "test", "matches", "matches_strict",
            "matches_wrong_sign", "matches_intended", "best_concept", "best_concept_auroc"]
    table = pd.concat([g, p], ignore_index=True)
    table["label"] = table["concept"].map(lambda c: label_of.get(int(c), ""))
    table[cols].to_csv(out.parent / f"{out.name}_hypotheses.csv", index=False, float_format="%.5g")

    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 40):
        shown = ["rank", "group", "concept", "label", "direction", "effect", "q", "replicated", "matches",
                 "matches_intended", "best_concept", "best_concept_auroc"]
        print(table[table.view == "global"].head(20)[shown].round(3).to_string(index=False))
        print(scored["per_concept"][["concept", "truth_rate", "annotator_effect", "annotator_q",
                                     "best_cluster", "best_cluster_auroc", "n_matching_clusters",
                                     "best_global_rank_right_sign", "best_feature", "best_feature_auroc",
                                     "best_feature_cluster", "lost_at"]].round(3).to_string(index=False))
    print(json.dumps({k: record[k] for k in ("recall_top10", "recall_top20", "precision_top10", "precision_top20",
                                             "controls_min_q", "bench_ratio")}))
    print(json.dumps(record["links_on_resource_requests"], default=float))
    print(pd.DataFrame(sensitivity).to_string(index=False))
    return record


if __name__ == "__main__":
    main()
