"""Diagnose the organism end to end and score the diagnosis (METHOD §3; `make reproduce-diagnose`).

Two parts, kept apart on purpose:

DISCOVERY (``discover``) reads only the model's activations: the shipped SAE's per-span
feature summaries of the organism's train pairs (`feature_summaries`, reused from
``--features-dir`` when a cache of exactly these pairs exists), and the prompt texts (to
group pairs that share a prompt for split-half replication; the prompt *text*, not the
``prompt_id`` column). It never opens a ground-truth column, an annotator or ``family``:

  0. weak firings gated (`gate_weak_firing`, rho 0.5): a feature counts as firing in a span
     only where its span max reaches half its largest over all responses; everything below
     reads the gated features, and the scoring scores them (``--gate 0``: METHOD's firing);
  1. concept clusters T_m (`cluster_features`, NMI graph + Leiden) on the response spans,
     and prompt-concept clusters on the prompt span, at one Leiden resolution chosen by a
     ground-truth-free rule (``choose_resolution``, below); the graph joins each feature to
     its 15 highest-NMI partners (``--graph knn``) rather than METHOD's top 1% of all
     feature pairs (``--graph threshold``); a feature with no partner above that top-1% cut
     is a concept of its own (``isolates``; ``--no-isolates``: it joins its neighbours);
  2. global view: symmetric activity s, silent bucket + spherical k-means data clusters
     B_k, signed disparity u (τ = 0.01), in-vs-out Δ with Welch tests and grouped split
     halves (`global_hypotheses`), and one ranking with the dataset-wide paired rows
     (`rank_hypotheses`, u adjusted for the length gap (`length_gap`: chosen is longer,
     and longer responses fire more features); ``--covariate length+mean_disparity`` also
     adjusts for the pair's mean u over all concept clusters (`mean_disparity`, the common
     shift of degraded rejected responses), which absorbs sentence-adding concepts);
  3. prompt-conditioned view: prompt clusters A_k (`prompt_clusters` on the prompt-concept
     clusters) and A_k ⇝ T_m (`prompt_conditioned_hypotheses`);
  4. offline navigation labels of the top clusters (`label_clusters`; never used by a test).

Defaults are fixed by ground-truth-free rules, stated once here and recorded in the JSON:
  - k (data clusters and prompt clusters) = round(sqrt(n / 2)), the usual rule of thumb,
    with n = pairs (data clusters) or distinct prompts (prompt clusters), at least 2;
  - Leiden resolution: on the grid 1, 2, 4, 8, 16, 32, 64, the smallest resolution whose
    largest response-concept cluster holds at most 5% of the clustered features (no
    catch-all cluster that mixes unrelated features, as resolution 1 gives on this SAE),
    so it is chosen from cluster sizes alone; ``--resolution`` overrides it;
  - τ = 0.01, min data-cluster size 10, n_boot 1000, α = 0.05 (the library's defaults);
  - the duplicate cut of `rank_hypotheses`, |r| of u >= 0.8 (the library's default;
    ``--redundancy``: 0.5 won on seeds 1–3 and lost on seeds 4–5, see dev_protocol.md);
  - the ranking key of `rank_hypotheses`, "impact" (``--rank-by d``, the coverage-weighted
    standardized effect, found flattery on seeds 1–5 at a precision below the stop-17 rule's bar);
  - the gate (0.5) and the isolates were chosen on seeds 2–5 by the stop-18 rule of
    ``benchmarks/dev_protocol.md`` (recall at top 20 0.61 -> 0.93, precision 0.70 -> 0.54);
  - the graph (knn) and the adjustment (length) were chosen on a second organism built with
    seed 1 (``--organism DIR``), by the rule in ``benchmarks/dev_protocol.md`` written before
    any of its results, and only then run on the shipped organism (seed 0).

SCORING (``score_against_truth``, the only function that reads the organism's ground-truth
columns ``<concept>_chosen`` / ``<concept>_rejected``, ``family`` and ``rejected_kind``; it
runs after discovery has returned):

  - unit = one response (each pair's chosen and rejected; a response that appears twice
    under the same prompt counts once). A hypothesis' concept cluster T_m *matches* a
    concept when the AUROC of the cluster's score on that unit — the sum of its member
    features' (gated) firing frequency over that response's span (`cluster_scores`, stat="freq")
    — against "the concept is present in that response" (ground truth) is >= 0.8;
  - right sign: the hypothesis' direction ("chosen" / "rejected") equals the sign of the
    concept's ground-truth rate (chosen-only share minus rejected-only share) in the
    hypothesis' scope (all pairs, or the pairs of its data cluster);
  - recall_top{10,20}: share of the planted concepts with |rate| >= 10% (bold, list_item,
    emoji, header, exclamation, flattery, hedge) matched with the right sign by at least one
    of the top-k rows of the global ranking (`rank_hypotheses`: dataset-wide and
    data-cluster rows, one row per concept cluster);
  - precision_top{10,20} (headline): share of the top-k global rows that match, with the
    right sign, any planted concept with a non-zero rate (the seven above plus em_dash,
    url, refusal, agreement; the 0% controls table and horizontal_rule do not count).
    Reported beside it (``detail``): a strict variant where a row matches only the concept
    its cluster reads best (highest AUROC), since one cluster can pass 0.8 for several
    co-occurring concepts; and how many top-k rows match the intended signal instead (the
    response is the rejected side of a pair whose rejected_kind is truncated / repetitive
    / off_topic: AUROC >= 0.8 with direction "rejected", or <= 0.2 with direction
    "chosen"), and the share matching either;
  - controls_min_q: the smaller Benjamini–Hochberg q (Wilcoxon signed-rank) of the 0%
    controls table and horizontal_rule in `paired_stats` on the *annotator-count* tables
    (`anatomy.concepts.annotate`) of chosen vs rejected, over the 13 concepts. The controls
    are text concepts, so the annotators measure them exactly; this is a test of the
    statistics (does a concept that varies without a preference stay insignificant?);
  - lens coverage (``lens_coverage``, in the per-concept table): the best single feature per
    concept and whether the concept is lost at the SAE, the clustering or the ranking;
  - links on resource requests: the url-matching concept clusters' Δ in the prompt clusters
    that are mostly ``resource`` prompts, against the same clusters' dataset-wide effect
    and best global rank;
  - bench_ratio: ``benchmarks/bench_contrast.py --quick`` run as a subprocess (its ratio of
    the per-concept scipy/statsmodels loop's time to `paired_stats`'s, numbers identical).

Writes ``results/diagnose.json`` (the six headline keys, the per-concept table, the links
check, the settings, timings) and ``results/diagnose_hypotheses.csv`` (the ranked global
and prompt-conditioned hypotheses with labels and, added by the scoring, their matches).

Usage:
  python benchmarks/reproduce_diagnose.py --threads 1                 # all 2,270 train pairs
  python benchmarks/reproduce_diagnose.py --n-train 200 --threads 1   # a seeded subset
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ("bold", "header", "list_item", "emoji", "em_dash", "exclamation", "horizontal_rule", "table",
            "url", "refusal", "flattery", "hedge", "agreement")
RECALL_CONCEPTS = ("bold", "list_item", "emoji", "header", "exclamation", "flattery", "hedge")  # |rate| >= 10%
CONTROLS = ("table", "horizontal_rule")
PLANTED = tuple(c for c in CONCEPTS if c not in CONTROLS)  # a non-zero planted rate
REJECTED_KINDS = ("truncated", "repetitive", "off_topic")
RESOLUTION_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
MAX_CLUSTER_SHARE = 0.05
AUROC_MATCH = 0.8
COVARIATES = ("length", "length+mean_disparity", "none")  # the dataset-wide rows' adjustment
REDUNDANCY = 0.8  # rank_hypotheses' duplicate cut (0.5 was tried and reverted: benchmarks/dev_protocol.md, stop 16)
RANK_BY = "impact"  # rank_hypotheses' ordering key (one of anatomy.hypotheses.RANK_KEYS; dev_protocol.md, stop 17)
GRAPHS = ("knn", "threshold")  # cluster_features' graph: 15 nearest neighbours by NMI, or METHOD's top 1% of pairs
GATE = 0.5  # gate_weak_firing's rho: firing = span max >= 0.5 x the feature's largest (dev_protocol.md, stop 18)
ISOLATES = True  # cluster_features(isolates=): a feature with no edge in METHOD's graph is its own concept (stop 18)


# ============================================================================ data and features
def sample_pairs(split: str, n: int | None, seed: int, source: str = "organism") -> list[dict]:
    """``n`` pairs of the organism's ``split``: a seeded random subset kept in file order (all if None).

    The same subset as ``benchmarks/lens_auroc.py`` draws, so their feature caches are shared.
    source: ``"organism"`` (the shipped one) or a folder holding another build's split files.
    """
    from anatomy import load_preferences, sample_pairs as draw

    return draw(load_preferences(source, split=split), n, seed=seed)


def discovery_view(pair: dict) -> dict:
    """What discovery may read of a pair: its id, prompt and the two responses."""
    return {k: pair[k] for k in ("id", "prompt", "chosen", "rejected")}


def prompt_keys(pairs: list[dict]) -> list[str]:
    """One key per pair: its prompt messages as JSON (pairs of one prompt are coupled)."""
    return [json.dumps(p["prompt"], sort_keys=True) for p in pairs]


def load_or_compute_features(pairs: list[dict], cache: Path | None, *, model_sae, progress: bool):
    """`PairFeatures` of ``pairs``: reused from ``cache`` when it holds exactly these ids, else
    computed with `feature_summaries` and saved there. Returns (features, seconds, reused)."""
    from anatomy.features import PairFeatures, feature_summaries

    ids = [p["id"] for p in pairs]
    if cache is not None and (cache / "features.json").exists():
        feats = PairFeatures.load(cache)
        if feats.ids == ids:
            return feats, 0.0, True
        raise ValueError(f"{cache} holds other pairs ({len(feats.ids)}) than asked for ({len(ids)}); "
                         "remove it or pass another --features-dir")
    model, sae = model_sae()
    t = time.perf_counter()
    feats = feature_summaries(model, sae, [discovery_view(p) for p in pairs], progress=progress)
    seconds = time.perf_counter() - t
    if cache is not None:
        feats.save(cache)
    return feats, seconds, False


# ============================================================================ discovery (no ground truth)
def default_k(n: int) -> int:
    """The rule of thumb k = round(sqrt(n / 2)), at least 2."""
    return max(2, int(round(math.sqrt(n / 2))))


def covariate_matrix(name: str, lg: pd.Series, md: pd.Series) -> np.ndarray | None:
    """The dataset-wide rows' covariates for adjustment ``name`` (one of COVARIATES):
    columns of length gap and mean disparity, or None for no adjustment."""
    if name not in COVARIATES:
        raise ValueError(f"covariate must be one of {COVARIATES}, got {name!r}")
    columns = {"none": [], "length": [lg], "length+mean_disparity": [lg, md]}[name]
    return np.column_stack(columns) if columns else None


def cluster_size_profile(clusters: pd.DataFrame) -> dict:
    member = clusters[clusters["cluster"] >= 0]
    sizes = member.groupby("cluster").size()
    return {"clusters": int(len(sizes)), "clustered_features": int(sizes.sum()),
            "size_min": int(sizes.min()) if len(sizes) else 0,
            "size_median": float(sizes.median()) if len(sizes) else 0.0,
            "size_max": int(sizes.max()) if len(sizes) else 0,
            "max_share": float(sizes.max() / sizes.sum()) if len(sizes) else 1.0}


def choose_resolution(features, *, grid=RESOLUTION_GRID, max_share: float = MAX_CLUSTER_SHARE,
                      graph: str = GRAPHS[0], n_neighbors: int = 15, isolates: bool = False,
                      seed: int = 0) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """The smallest resolution on ``grid`` whose largest cluster holds <= ``max_share`` of the
    clustered features (ground-truth free: cluster sizes only). Returns (resolution, the
    clusters at it, the size profile of every resolution tried)."""
    from anatomy import cluster_features_sweep

    sweep = cluster_features_sweep(features, grid, graph=graph, n_neighbors=n_neighbors, isolates=isolates,
                                   seed=seed)  # one NMI graph
    rows, chosen = [], None
    for r, cl in sweep.items():
        prof = cluster_size_profile(cl)
        rows.append({"resolution": r, **prof})
        if prof["max_share"] <= max_share:
            chosen = (r, cl)
            break
    if chosen is None:  # no resolution on the grid is fine enough: take the finest
        chosen = (grid[-1], cl)
    return chosen[0], chosen[1], pd.DataFrame(rows)


def discover(features, keys: list[str], *, resolution: float | None = None, k_data: int | None = None,
             k_prompt: int | None = None, tau: float = 0.01, min_size: int = 10, n_boot: int = 1000,
             covariate: str = COVARIATES[0], graph: str = GRAPHS[0], n_neighbors: int = 15,
             redundancy: float | None = REDUNDANCY, rank_by: str = RANK_BY, gate: float = GATE,
             isolates: bool = ISOLATES, seed: int = 0) -> dict:
    """The whole diagnosis from activations: clusters, both views, the ranked tables.

    features: `PairFeatures` of the pairs; keys: one prompt key per pair (`prompt_keys`).
    Returns a dict with clusters, prompt_concepts, u, s, data_labels, prompt_labels,
    global_rows, ranked, prompt_rows, length_gap, mean_disparity and the settings used.
    covariate: the dataset-wide rows' adjustment, one of COVARIATES.
    graph, n_neighbors: the feature graph of `cluster_features` ("knn" or "threshold"), for both spans.
    redundancy: `rank_hypotheses`' cut (|Pearson r| of u) above which a concept cluster counts as a
        duplicate of one ranked before it.
    rank_by: `rank_hypotheses`' ordering key (one of `anatomy.hypotheses.RANK_KEYS`).
    gate: `gate_weak_firing`'s rho, applied to ``features`` before everything else (0: none);
        the gated features are returned as ``features`` (score them, not the input).
    isolates: `cluster_features`' ``isolates`` (both spans): a feature with no partner above
        METHOD's top-1% NMI cut is a concept of its own.
    """
    if covariate not in COVARIATES:  # fail before the clustering
        raise ValueError(f"covariate must be one of {COVARIATES}, got {covariate!r}")
    from anatomy import cluster_features, gate_weak_firing
    from anatomy.hypotheses import (RANK_KEYS, data_clusters, global_hypotheses, length_gap, mean_disparity,
                                    prompt_clusters, prompt_conditioned_hypotheses, rank_hypotheses,
                                    signed_disparity, symmetric_activity)
    if rank_by not in RANK_KEYS:  # fail before the clustering
        raise ValueError(f"rank_by must be one of {RANK_KEYS}, got {rank_by!r}")

    timings = {}
    t = time.perf_counter()
    features = gate_weak_firing(features, gate)  # validates gate; 0 returns the input
    if resolution is None:
        resolution, clusters, profile = choose_resolution(features, graph=graph, n_neighbors=n_neighbors,
                                                          isolates=isolates, seed=seed)
        rule = (f"smallest of {list(RESOLUTION_GRID)} with largest cluster <= {MAX_CLUSTER_SHARE:.0%} "
                "of clustered features")
    else:
        clusters = cluster_features(features, resolution=resolution, graph=graph, n_neighbors=n_neighbors,
                                    isolates=isolates, seed=seed)
        profile = pd.DataFrame([{"resolution": resolution, **cluster_size_profile(clusters)}])
        rule = "given (--resolution)"
    prompt_concepts = cluster_features(features, span="prompt", resolution=resolution, graph=graph,
                                       n_neighbors=n_neighbors, isolates=isolates, seed=seed)
    if not (prompt_concepts["cluster"] >= 0).any():  # a handful of prompts: NMI ties leave no edge
        prompt_concepts = clusters
    timings["clusters"] = time.perf_counter() - t

    t = time.perf_counter()
    n = len(features)
    n_prompts = len(set(keys))
    k_data = k_data or default_k(n)
    k_prompt = k_prompt or default_k(n_prompts)
    s = symmetric_activity(features, clusters)
    data_labels = data_clusters(s, k=k_data, seed=seed)
    u = signed_disparity(features, clusters, tau=tau)
    lg, md = length_gap(features), mean_disparity(u)
    groups = np.asarray(keys, dtype=object)
    global_rows = global_hypotheses(u, data_labels, min_size=min_size, groups=groups, seed=seed)
    ranked = rank_hypotheses(u, data_labels, conditional=global_rows,
                             covariates=covariate_matrix(covariate, lg, md),
                             min_size=min_size, groups=groups, seed=seed, n_boot=n_boot,
                             redundancy=redundancy, by=rank_by)
    prompt_labels = prompt_clusters(features, prompt_concepts, k=k_prompt, seed=seed)
    prompt_rows = prompt_conditioned_hypotheses(u, prompt_labels, min_size=min_size, groups=groups, seed=seed)
    timings["hypotheses"] = time.perf_counter() - t
    settings = {"resolution": resolution, "resolution_rule": rule, "k_data": k_data, "k_prompt": k_prompt,
                "k_rule": "round(sqrt(n / 2)), n = pairs (data) or distinct prompts (prompt clusters)",
                "tau": tau, "min_size": min_size, "n_boot": n_boot, "covariate": covariate, "graph": graph,
                "n_neighbors": n_neighbors if graph == "knn" else None, "redundancy": redundancy,
                "rank_by": rank_by, "gate": gate, "isolates": isolates,
                "n_isolates": clusters.attrs.get("n_isolates", 0),
                "seed": seed,
                "n_pairs": n, "n_prompts": n_prompts,
                "concept_clusters": cluster_size_profile(clusters),
                "prompt_concept_clusters": cluster_size_profile(prompt_concepts),
                "resolution_profile": profile.to_dict(orient="records")}
    return {"features": features, "clusters": clusters, "prompt_concepts": prompt_concepts, "s": s, "u": u, "length_gap": lg, "mean_disparity": md,
            "data_labels": data_labels, "prompt_labels": prompt_labels, "global_rows": global_rows,
            "ranked": ranked, "prompt_rows": prompt_rows, "settings": settings, "timings": timings}


def label_top_clusters(model, sae, pairs: list[dict], disc: dict, *, top: int = 20, n_pairs: int = 200,
                       seed: int = 0) -> pd.DataFrame:
    """Offline labels (`label_clusters`) of the concept clusters in the top ``top`` rows of both views,
    from ``n_pairs`` seeded pairs. Navigation only."""
    from anatomy import label_clusters

    ids = list(dict.fromkeys([int(c) for c in disc["ranked"]["concept"].head(top)]
                             + [int(c) for c in disc["prompt_rows"]["concept"].head(top)]))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(pairs))[:min(n_pairs, len(pairs))])
    return label_clusters(model, sae, [discovery_view(pairs[i]) for i in idx], disc["clusters"],
                          cluster_ids=ids, top_k=6, progress=False)


# ============================================================================ scoring (GROUND TRUTH)
def response_units(pairs: list[dict]) -> pd.DataFrame:
    """GROUND TRUTH. One row per distinct (prompt, response): row, span, truth_<concept>, kind_<k>."""
    rows, seen = [], set()
    for i, p in enumerate(pairs):
        for span in ("chosen", "rejected"):
            key = (json.dumps(p["prompt"], sort_keys=True), p[span])
            if key in seen:
                continue
            seen.add(key)
            row = {"row": i, "span": span}
            for c in CONCEPTS:
                row[c] = bool(p[f"{c}_{span}"])
            for k in REJECTED_KINDS:
                row[f"kind_{k}"] = span == "rejected" and p["rejected_kind"] == k
            rows.append(row)
    return pd.DataFrame(rows)


def auroc_matrix(scores: np.ndarray, labels: pd.DataFrame) -> pd.DataFrame:
    """AUROC of every score column (clusters) for every boolean label column (ties count half)."""
    from anatomy.probes import auroc

    return pd.DataFrame(auroc(scores, labels.to_numpy(dtype=bool)).reshape(scores.shape[1], -1),
                        columns=labels.columns)


def truth_rate(pairs_df: pd.DataFrame, concept: str, rows: np.ndarray | None = None) -> float:
    """GROUND TRUTH. Chosen-only share minus rejected-only share (over ``rows``, or all pairs)."""
    d = pairs_df if rows is None else pairs_df.iloc[rows]
    c, r = d[f"{concept}_chosen"].astype(bool), d[f"{concept}_rejected"].astype(bool)
    return float((c & ~r).mean() - (r & ~c).mean()) if len(d) else float("nan")


def _scope_rows(row, labels: np.ndarray) -> np.ndarray | None:
    return None if int(row["group"]) == -1 else np.flatnonzero(labels == int(row["group"]))


def match_rows(table: pd.DataFrame, labels: np.ndarray, auc: pd.DataFrame, pairs_df: pd.DataFrame) -> pd.DataFrame:
    """GROUND TRUTH. Per hypothesis row: matched concepts (right sign), intended-signal matches."""
    out = []
    for _, row in table.iterrows():
        m = int(row["concept"])
        scope = _scope_rows(row, labels)
        sign = 1 if row["direction"] == "chosen" else -1 if row["direction"] == "rejected" else 0
        matched, wrong_sign = [], []
        for c in CONCEPTS:
            if auc.at[m, c] >= AUROC_MATCH:
                rate = truth_rate(pairs_df, c, scope)
                (matched if sign != 0 and np.sign(rate) == sign else wrong_sign).append(c)
        intended = [k for k in REJECTED_KINDS
                    if (auc.at[m, f"kind_{k}"] >= AUROC_MATCH and sign == -1)
                    or (auc.at[m, f"kind_{k}"] <= 1 - AUROC_MATCH and sign == 1)]
        best = max(CONCEPTS, key=lambda c: auc.at[m, c])
        out.append({"matches": ",".join(matched), "matches_wrong_sign": ",".join(wrong_sign),
                    "matches_strict": best if best in matched else "",
                    "matches_planted": any(c in PLANTED for c in matched),
                    "matches_intended": ",".join(intended),
                    "best_concept": best, "best_concept_auroc": float(auc.at[m, best])})
    return pd.DataFrame(out, index=table.index)


def score_against_truth(pairs: list[dict], features, disc: dict, *, tops=(10, 20), seed: int = 0,
                        ungated=None) -> dict:
    """GROUND TRUTH is read here and only here, after discovery. See the module docstring.

    ungated: the features before `gate_weak_firing`; when given, ``detail["top{k}"]`` also reports
    ``recall_ungated_scores``: recall with the clusters' AUROC taken on them."""
    from anatomy import cluster_scores, paired_stats, preference_regression
    from anatomy.concepts import annotate

    pairs_df = pd.DataFrame(pairs)
    assert list(pairs_df["id"]) == list(features.ids), "pairs and features are not in the same order"
    clusters = disc["clusters"]
    units = response_units(pairs)
    rows = units["row"].to_numpy() + len(pairs) * (units["span"].to_numpy() == "rejected")
    label_cols = list(CONCEPTS) + [f"kind_{k}" for k in REJECTED_KINDS]

    def cluster_auroc(feats) -> pd.DataFrame:  # [clusters, label_cols]: each cluster's freq-sum per response
        spans = [cluster_scores(feats, clusters, stat="freq", span=s).to_numpy() for s in ("chosen", "rejected")]
        auc = auroc_matrix(np.vstack(spans)[rows], units[label_cols])
        auc.index.name = "cluster"
        return auc

    auc = cluster_auroc(features)

    ranked = disc["ranked"].copy()
    ranked = pd.concat([ranked, match_rows(ranked, disc["data_labels"], auc, pairs_df)], axis=1)
    prompt_rows = disc["prompt_rows"]
    prompt_top = prompt_rows.head(50).copy()
    prompt_top = pd.concat([prompt_top, match_rows(prompt_top, disc["prompt_labels"], auc, pairs_df)], axis=1)

    headline, detail = {}, {}
    ungated_matches = (match_rows(ranked, disc["data_labels"], cluster_auroc(ungated), pairs_df)["matches"]
                       if ungated is not None and ungated is not features else None)
    for k in tops:
        top = ranked.head(k)
        found = {c: bool(any(c in m.split(",") for m in top["matches"])) for c in RECALL_CONCEPTS}
        headline[f"recall_top{k}"] = float(np.mean(list(found.values())))
        headline[f"precision_top{k}"] = float(top["matches_planted"].mean())
        detail[f"top{k}"] = {
            "recall_concepts_found": [c for c, f in found.items() if f],
            "recall_concepts_missed": [c for c, f in found.items() if not f],
            "n_match_planted": int(top["matches_planted"].sum()),
            "n_match_intended": int((top["matches_intended"] != "").sum()),
            "n_match_planted_or_intended": int((top["matches_planted"] | (top["matches_intended"] != "")).sum()),
            "precision_planted_or_intended": float((top["matches_planted"] | (top["matches_intended"] != "")).mean()),
            "n_rows": int(len(top)),
            "recall_strict": float(np.mean([c in set(top["matches_strict"]) for c in RECALL_CONCEPTS])),
            "precision_strict": float(top["matches_strict"].isin(PLANTED).mean()),
        }
        if ungated_matches is not None:  # the same rows, the clusters read on the features before the gate
            detail[f"top{k}"]["recall_ungated_scores"] = float(np.mean(
                [any(c in m.split(",") for m in ungated_matches.head(k)) for c in RECALL_CONCEPTS]))

    # per-concept paired tests on annotator counts (text concepts: the annotators are exact)
    ann_c = annotate([p["chosen"] for p in pairs], list(CONCEPTS))
    ann_r = annotate([p["rejected"] for p in pairs], list(CONCEPTS))
    ann_c.index = ann_r.index = pairs_df["id"]
    stats = paired_stats(ann_c.astype(float), ann_r.astype(float), n_boot=1000, seed=seed).set_index("concept")
    headline["controls_min_q"] = float(stats.loc[list(CONTROLS), "q"].min())
    lengths_c = annotate([p["chosen"] for p in pairs], ["length"])["length"].to_numpy()
    lengths_r = annotate([p["rejected"] for p in pairs], ["length"])["length"].to_numpy()
    present_c = (ann_c > 0).astype(float).assign(length=np.log1p(lengths_c))
    present_r = (ann_r > 0).astype(float).assign(length=np.log1p(lengths_r))
    reg = preference_regression(present_c, present_r, covariates=("length",), seed=seed,
                                progress=False).set_index("concept")

    # per-concept table
    per_concept = []
    ranked_rows = ranked.reset_index(drop=True)
    for c in CONCEPTS:
        best = int(auc[c].idxmax())
        matching = auc.index[auc[c] >= AUROC_MATCH].tolist()
        hit = ranked_rows[ranked_rows["matches"].str.split(",").apply(lambda m: c in m)]
        row = {"concept": c, "truth_rate": truth_rate(pairs_df, c),
               "annotator_mean_gap": float(stats.at[c, "effect"]),
               "annotator_ci_low": float(stats.at[c, "ci_low"]), "annotator_ci_high": float(stats.at[c, "ci_high"]),
               "annotator_q_wilcoxon": float(stats.at[c, "q"]),
               "annotator_q_sign": float(stats.at[c, "q_sign"]),
               "annotator_d_z": float(stats.at[c, "d"]),
               "bt_coef_heldout_beyond_length": float(reg.at[c, "effect"]),
               "bt_p_heldout": float(reg.at[c, "p"]), "bt_replicated": bool(reg.at[c, "replicated"]),
               "best_cluster": best, "best_cluster_auroc": float(auc.at[best, c]),
               "n_matching_clusters": len(matching),
               "best_global_rank_right_sign": int(hit["rank"].min()) if len(hit) else None}
        if len(hit):
            h = hit.iloc[0]
            row.update(best_row_scope="all pairs" if h["group"] == -1 else f"data cluster {int(h['group'])}",
                       best_row_effect=float(h["effect"]), best_row_q=float(h["q"]),
                       best_row_replicated=bool(h["replicated"]))
        for k in tops:
            row[f"in_top{k}"] = bool(len(hit) and hit["rank"].min() <= k)
        p_hit = np.flatnonzero(prompt_top["matches"].str.split(",").apply(lambda m: c in m).to_numpy())
        row["best_prompt_rank_right_sign"] = int(p_hit[0]) + 1 if len(p_hit) else None  # within the top 50
        if len(p_hit):
            h = prompt_top.iloc[p_hit[0]]
            row.update(best_prompt_row_scope=f"prompt cluster {int(h['group'])}",
                       best_prompt_row_effect=float(h["effect"]), best_prompt_row_q=float(h["q"]))
        per_concept.append(row)
    per_concept = pd.DataFrame(per_concept)

    # the controls in the SAE lens: the ranked rows of the clusters that read them
    controls_sae = {}
    for c in CONTROLS:
        rows_c = ranked[ranked["concept"].isin(auc.index[auc[c] >= AUROC_MATCH])]
        controls_sae[c] = [{"cluster": int(r["concept"]), "auroc": float(auc.at[int(r["concept"]), c]),
                            "rank": int(r["rank"]),
                            "scope": "all pairs" if r["group"] == -1 else f"data cluster {int(r['group'])}",
                            "effect": float(r["effect"]), "q": float(r["q"]), "replicated": bool(r["replicated"]),
                            "best_concept": r["best_concept"]} for _, r in rows_c.iterrows()]
    links = links_on_resource_requests(pairs_df, disc, auc, ranked)
    coverage = lens_coverage(features, clusters, units, rows, auc, per_concept, top=max(tops))
    per_concept = per_concept.merge(coverage, on="concept", how="left")
    return {"headline": headline, "detail": detail, "per_concept": per_concept, "links": links,
            "controls_sae": controls_sae,
            "ranked": ranked, "prompt_top": prompt_top, "auroc": auc, "annotator_stats": stats.reset_index()}


def lens_coverage(features, clusters: pd.DataFrame, units: pd.DataFrame, rows: np.ndarray,
                  auc: pd.DataFrame, per_concept: pd.DataFrame, *, top: int = 20) -> pd.DataFrame:
    """GROUND TRUTH. Where a concept is lost, if it is: does the SAE have a feature for it, does
    the clustering keep that feature in a cluster whose score still reads the concept, and does
    the ranking put a matching cluster in the top ``top``?

    Per concept: the single feature whose firing frequency reads it best (AUROC over the same
    response units as the cluster match), that feature's concept cluster (-1: unclustered) and
    the cluster's own AUROC for the concept, the number of features with AUROC >= 0.8, and
    ``lost_at``: "sae" (no feature reaches 0.8), "clustering" (a feature does, no cluster
    does), "ranking" (a cluster matches, no right-sign row in the top ``top``) or "" (found, or
    a 0% control, which no row should find).
    """
    import scipy.sparse as sp

    F = sp.vstack([features.freq["chosen"], features.freq["rejected"]]).tocsr()[rows]
    live = np.flatnonzero(np.asarray((F > 0).sum(0)).ravel() > 0)
    feat_auc = auroc_matrix(F[:, live].toarray(), units[list(CONCEPTS)])
    member = clusters.set_index("feature")["cluster"]
    found = per_concept.set_index("concept")
    out = []
    for c in CONCEPTS:
        a = feat_auc[c].to_numpy()
        best = int(live[int(np.nanargmax(a))])
        cl = int(member.at[best])
        rank = found.at[c, "best_global_rank_right_sign"]
        lost = ("" if c in CONTROLS else "sae" if np.nanmax(a) < AUROC_MATCH
                else "clustering" if found.at[c, "best_cluster_auroc"] < AUROC_MATCH
                else "ranking" if pd.isna(rank) or rank > top else "")
        out.append({"concept": c, "best_feature": best, "best_feature_auroc": float(np.nanmax(a)),
                    "best_feature_cluster": cl,
                    "best_feature_cluster_auroc": float(auc.at[cl, c]) if cl >= 0 else None,
                    "n_features_auroc_ge_match": int((a >= AUROC_MATCH).sum()),
                    "lost_at": lost})
    return pd.DataFrame(out)


def links_on_resource_requests(pairs_df: pd.DataFrame, disc: dict, auc: pd.DataFrame, ranked: pd.DataFrame) -> dict:
    """GROUND TRUTH (url labels, family). The url-matching clusters in the resource prompt
    clusters (prompt view) against their dataset-wide effect and best global rank."""
    url_clusters = auc.index[auc["url"] >= AUROC_MATCH].tolist()
    plabels = disc["prompt_labels"]
    share = (pd.Series(pairs_df["family"].to_numpy() == "resource").groupby(plabels).mean())
    share = share[share.index >= 0]
    resource = share.index[share >= 0.5].tolist() or [int(share.idxmax())]
    prompt_rows = disc["prompt_rows"].reset_index(drop=True)
    prompt_rows["rank"] = np.arange(1, len(prompt_rows) + 1)
    rows = prompt_rows[prompt_rows["concept"].isin(url_clusters) & prompt_rows["group"].isin(resource)]
    out = {"url_clusters": [int(c) for c in url_clusters],
           "url_cluster_aurocs": {int(c): float(auc.at[c, "url"]) for c in url_clusters},
           "best_url_cluster": int(auc["url"].idxmax()), "best_url_auroc": float(auc["url"].max()),
           "resource_prompt_clusters": {int(g): float(share[g]) for g in resource},
           "resource_pairs_in_them": int(np.isin(plabels, resource).sum()),
           "resource_pairs_total": int((pairs_df["family"] == "resource").sum())}
    if len(rows) == 0:
        out["finds_links"] = False
        out["note"] = "no url-matching concept cluster" if not url_clusters else "no prompt row tested"
        return out
    best = rows.sort_values("effect", ascending=False).iloc[0]
    m = int(best["concept"])
    raw_mean = float(disc["u"][m].mean())
    cond = disc["global_rows"]
    cond = cond[(cond["concept"] == m) & cond["consistent"]]
    best_cond = cond.loc[cond["effect"].abs().idxmax()] if len(cond) else None
    global_rank = ranked.loc[ranked["concept"] == m, "rank"]
    out.update({
        "concept_cluster": m, "prompt_cluster": int(best["group"]), "n_in": int(best["n"]),
        "delta_prompt": float(best["effect"]), "ci_low": float(best["ci_low"]), "ci_high": float(best["ci_high"]),
        "q_prompt": float(best["q"]), "replicated": bool(best["replicated"]), "direction": best["direction"],
        "mean_u_in_resource_cluster": float(best["mean_in"]), "rank_in_prompt_view": int(best["rank"]),
        "global_mean_u": raw_mean,
        "global_best_data_cluster_delta": float(best_cond["effect"]) if best_cond is not None else None,
        "global_best_data_cluster_q": float(best_cond["q"]) if best_cond is not None else None,
        "global_rank": int(global_rank.iloc[0]) if len(global_rank) else None,
        "n_global_rows": int(len(ranked)),
    })
    out["finds_links"] = bool(best["direction"] == "chosen" and best["q"] <= 0.05 and best["replicated"])
    out["ratio_prompt_to_global"] = (float(best["effect"]) / abs(raw_mean)) if raw_mean else float("inf")
    out["global_much_weaker"] = bool(abs(raw_mean) * 3 <= float(best["effect"])
                                      and (out["global_rank"] is None or out["global_rank"] > 20))
    # the same question for every url-matching cluster: the best global rank any of them reaches
    url_rows = ranked[ranked["concept"].isin(url_clusters)]
    out["best_global_rank_any_url_cluster"] = int(url_rows["rank"].min()) if len(url_rows) else None
    if len(url_rows):  # that row's effect, in the global ranking's own units (adjusted u)
        r = url_rows.sort_values("rank").iloc[0]
        out.update(best_global_url_row={"concept_cluster": int(r["concept"]), "rank": int(r["rank"]),
                                        "scope": "all pairs" if r["group"] == -1 else f"data cluster {int(r['group'])}",
                                        "effect": float(r["effect"]), "q": float(r["q"])},
                   ratio_prompt_to_best_global_url_row=float(best["effect"]) / abs(float(r["effect"]))
                   if r["effect"] else float("inf"))
    out["definition"] = ("finds_links: the best (resource prompt cluster, url-matching concept cluster) row of "
                         "the prompt view has direction chosen, q <= 0.05 and replicates; global_much_weaker: "
                         "its Δ is >= 3x the cluster's dataset-wide mean u and the cluster is not in the global "
                         "top 20")
    return out


def covariate_sensitivity(pairs: list[dict], features, disc: dict, *, seed: int = 0) -> list[dict]:
    """The global ranking re-done with each adjustment in COVARIATES (discovery's other outputs
    kept), scored like the headline. Per adjustment: the ground-truth-free share of concepts
    whose dataset-wide row leans chosen and has q <= 0.05, then (GROUND TRUTH) the four
    recall / precision figures and each recall concept's best right-sign rank."""
    from anatomy.hypotheses import length_gap, mean_disparity, rank_hypotheses

    u, groups = disc["u"], np.asarray(prompt_keys(pairs), dtype=object)
    lg, md = length_gap(features), mean_disparity(u)
    out = []
    for name in COVARIATES:
        cov = covariate_matrix(name, lg, md)
        ranked = rank_hypotheses(u, disc["data_labels"], conditional=disc["global_rows"], covariates=cov,
                                 groups=groups, seed=seed, n_boot=0,
                                 redundancy=disc["settings"]["redundancy"], by=disc["settings"]["rank_by"])
        wide = rank_hypotheses(u, np.full(len(u), -1), covariates=cov, groups=groups, seed=seed, n_boot=0)
        scored = score_against_truth(pairs, features, dict(disc, ranked=ranked), seed=seed)
        ranks = scored["per_concept"].set_index("concept")["best_global_rank_right_sign"]
        out.append({"covariate": name,
                    "dataset_wide_share_chosen": float((wide["direction"] == "chosen").mean()),
                    "dataset_wide_share_q05": float((wide["q"] <= 0.05).mean()),
                    **{k: scored["headline"][k] for k in ("recall_top10", "recall_top20", "precision_top10",
                                                          "precision_top20")},
                    "best_rank_right_sign": {c: (None if pd.isna(ranks[c]) else int(ranks[c]))
                                             for c in RECALL_CONCEPTS}})
    return out


def run_bench(quick: bool = True) -> dict:
    """``benchmarks/bench_contrast.py`` in a subprocess; its JSON line."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_contrast.py")] + (["--quick"] if quick else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ============================================================================ main
def main(argv=None) -> dict:
    from anatomy.hypotheses import RANK_KEYS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=None, help="train pairs (default: all 2,270)")
    ap.add_argument("--sae", default=None, help="load_sae(name): a shipped SAE or a directory (default: shipped)")
    ap.add_argument("--features-dir", default=str(ROOT / "results" / "features"),
                    help="reuse / save PairFeatures here (<split>-n<n|all>-seed<seed>-sae<fingerprint>)")
    ap.add_argument("--resolution", type=float, default=None, help="Leiden resolution (default: the size rule)")
    ap.add_argument("--k-data", type=int, default=None, help="data clusters (default round(sqrt(n/2)))")
    ap.add_argument("--k-prompt", type=int, default=None, help="prompt clusters (default round(sqrt(prompts/2)))")
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--covariate", choices=COVARIATES, default=COVARIATES[0])
    ap.add_argument("--graph", choices=GRAPHS, default=GRAPHS[0],
                    help="cluster_features' feature graph (see benchmarks/dev_protocol.md)")
    ap.add_argument("--n-neighbors", type=int, default=15, help="neighbours per feature of the knn graph")
    ap.add_argument("--redundancy", type=float, default=REDUNDANCY,
                    help="rank_hypotheses' duplicate cut on |r| of u (see benchmarks/dev_protocol.md)")
    ap.add_argument("--rank-by", choices=RANK_KEYS, default=RANK_BY,
                    help="rank_hypotheses' ordering key (see benchmarks/dev_protocol.md)")
    ap.add_argument("--gate", type=float, default=GATE,
                    help="gate_weak_firing's rho, 0 for none (see benchmarks/dev_protocol.md, stop 18)")
    ap.add_argument("--isolates", action=argparse.BooleanOptionalAction, default=ISOLATES,
                    help="features with no edge in METHOD's top-1%% NMI graph are concepts of their own")
    ap.add_argument("--organism", default="organism",
                    help="'organism' (the shipped build) or a folder of another build's split files (the dev organism)")
    ap.add_argument("--n-label-pairs", type=int, default=200, help="pairs streamed for labels (0: no labels)")
    ap.add_argument("--bench-full", action="store_true", help="bench_contrast at full size, not --quick")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "diagnose"), help="output path without suffix")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lens_auroc import sae_fingerprint

    from anatomy import load_model, load_sae

    t_all = time.perf_counter()
    timings = {}
    sae = load_sae(args.sae)
    fp = sae_fingerprint(sae)
    loaded = {}

    def model_sae():
        if "model" not in loaded:
            loaded["model"] = load_model()
        return loaded["model"], sae

    pairs = sample_pairs("train", args.n_train, args.seed, source=args.organism)
    cache = None
    if args.features_dir:
        name = f"train-n{args.n_train or 'all'}-seed{args.seed}-sae{fp}"
        if args.organism != "organism":  # another build reuses the ids: key its cache by content
            name += "-data" + hashlib.sha1(json.dumps([discovery_view(p) for p in pairs]).encode()).hexdigest()[:10]
        cache = Path(args.features_dir).expanduser() / name
    features, seconds, reused = load_or_compute_features(pairs, cache, model_sae=model_sae,
                                                         progress=not args.no_progress)
    timings["features"] = seconds
    how = f"reused from {cache}" if reused else f"computed in {seconds:.0f} s"
    print(f"train: {len(pairs)} pairs, features {how}", flush=True)

    # ---- discovery: activations and prompt texts only
    t = time.perf_counter()
    disc = discover(features, prompt_keys([discovery_view(p) for p in pairs]), resolution=args.resolution,
                    k_data=args.k_data, k_prompt=args.k_prompt, tau=args.tau, n_boot=args.n_boot,
                    covariate=args.covariate, graph=args.graph,
                    n_neighbors=args.n_neighbors, redundancy=args.redundancy,
                    rank_by=args.rank_by, gate=args.gate, isolates=args.isolates, seed=args.seed)
    raw_features, features = features, disc["features"]  # what discovery read (gated): the clusters are scored on it
    timings["discover"] = time.perf_counter() - t
    timings.update({f"discover_{k}": v for k, v in disc["timings"].items()})
    st = disc["settings"]
    print(f"discovery: resolution {st['resolution']} -> {st['concept_clusters']['clusters']} concept clusters "
          f"({st['n_isolates']} of one feature), {st['prompt_concept_clusters']['clusters']} prompt-concept "
          f"clusters; k_data {st['k_data']}, "
          f"k_prompt {st['k_prompt']}; {len(disc['ranked'])} global rows, {len(disc['prompt_rows'])} prompt rows "
          f"({timings['discover']:.0f} s)", flush=True)
    labels = None
    if args.n_label_pairs:
        t = time.perf_counter()
        model, _ = model_sae()
        labels = label_top_clusters(model, sae, pairs, disc, n_pairs=args.n_label_pairs, seed=args.seed)
        timings["labels"] = time.perf_counter() - t

    # ---- scoring: the ground truth, read only now
    t = time.perf_counter()
    scored = score_against_truth(pairs, features, disc, seed=args.seed, ungated=raw_features)
    sensitivity = covariate_sensitivity(pairs, features, disc, seed=args.seed)
    timings["score"] = time.perf_counter() - t
    bench = None
    if not args.no_bench:
        t = time.perf_counter()
        bench = run_bench(quick=not args.bench_full)
        timings["bench"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    label_of = dict(zip(labels["cluster"], labels["label"])) if labels is not None else {}
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
                     "sae": args.sae or "shipped", "sae_fingerprint": fp, "organism": args.organism, "features_cache": str(cache) if cache else None,
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
        print(scored["per_concept"][["concept", "truth_rate", "annotator_mean_gap", "annotator_q_wilcoxon",
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
