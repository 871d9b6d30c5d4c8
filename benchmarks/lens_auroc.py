"""The lens's acceptance table: per planted concept, held-out AUROC of directions, probes and SAE clusters.

Unit = one response (every pair gives its chosen and its rejected response; a
response that appears twice under the same prompt counts once). Label = the
annotators' verdict, ``anatomy.concepts.annotate(text)[concept] > 0`` (checked
against the organism's ground-truth columns ``<concept>_chosen`` /
``<concept>_rejected``; the script fails if they disagree). Everything is fitted
or selected on TRAIN-split responses and scored once on HELDOUT-split responses;
the organism's splits share no prompt, so the test is prompt-disjoint.

One streaming forward per split (``stream_pair_activations`` at the SAE's hook)
gives, per pair and span, the mean- and max-pooled residual activations and the
SAE's per-span feature summaries (``span_summary``: each firing feature's max and
firing frequency, exactly what ``feature_summaries`` keeps).

  direction  ``diff_of_means`` of train positives minus negatives (mean or max pooled)
  probe      ``fit_probe`` (standardise + ``LogisticRegressionCV``, nested CV) on the same
  cluster    ``cluster_features`` on the train pairs (NMI of binary firing, top 1% graph,
             Leiden at ``--resolution``); per concept the (cluster, stat) with the best
             train AUROC of its response-span score (the sum of its members' ``freq`` or
             ``max``), reported on heldout with no further choice
  feature    the same selection over single SAE features (``feature_cluster``: the cluster it
             belongs to, -1 if unclustered: a concept can live in one feature that the
             clustering leaves out or folds into a larger cluster)

The headline direction/probe AUROC is the variant (method x pooling) with the best
train-side estimate: the probe's nested-CV AUROC, diff-of-means' 5-fold CV AUROC on
train; every variant's held-out AUROC is reported too. A concept passes when its
headline AUROC is >= 0.95 (direction) and its cluster's held-out AUROC >= 0.80.
Concepts with fewer than ``--min-pos`` held-out positives (or train positives) are
reported with status ``too_few_positives`` and no AUROC.

Writes results/lens_auroc.csv (one row per concept) and results/lens_auroc.json
(the rows plus pass counts, cluster count and size distribution, sizes, timings).

Usage:
  python benchmarks/lens_auroc.py --quick                 # 150 train / 60 heldout pairs
  python benchmarks/lens_auroc.py --n-train 600 --n-heldout 200 --threads 1
  python benchmarks/lens_auroc.py --features-dir ~/.cache/anatomy/lens   # all pairs, reusable
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ("bold", "header", "list_item", "emoji", "em_dash", "exclamation", "horizontal_rule", "table",
            "url", "refusal", "flattery", "hedge", "agreement")
POOLINGS = ("mean", "max")
STATS = ("freq", "max")
DIRECTION_PASS, CLUSTER_PASS = 0.95, 0.80


# ----------------------------------------------------------------------------- data


def sample_pairs(split: str, n: int | None, seed: int) -> list[dict]:
    """``n`` pairs of the organism's ``split`` (a seeded random subset in file order; all if ``None``)."""
    from anatomy import load_preferences
    from anatomy.data import sample_pairs as draw

    return draw(load_preferences("organism", split=split), n, seed=seed)


def response_units(pairs: list[dict]) -> pd.DataFrame:
    """One row per distinct (prompt, response): ``row`` (pair index), ``span``, ``text``, labels.

    Labels are ``annotate(text) > 0``; the ground-truth columns must agree.
    """
    from anatomy.concepts import annotate

    rows, seen = [], set()
    for i, p in enumerate(pairs):
        for span in ("chosen", "rejected"):
            key = (p.get("prompt_id") or json.dumps(p["prompt"], default=str), p[span])
            if key in seen:
                continue
            seen.add(key)
            rows.append({"row": i, "span": span, "id": p["id"], "text": p[span],
                         **{f"truth_{c}": bool(p.get(f"{c}_{span}", False)) for c in CONCEPTS}})
    units = pd.DataFrame(rows)
    ann = annotate(units["text"].tolist(), list(CONCEPTS)) > 0
    for c in CONCEPTS:
        units[c] = ann[c].to_numpy()
        if f"{c}_chosen" in pairs[0]:
            bad = units[units[c] != units[f"truth_{c}"]]
            if len(bad):
                r = bad.iloc[0]
                raise ValueError(f"annotator and ground truth disagree on {len(bad)} responses for {c!r}, "
                                 f"e.g. pair {r['id']!r} field {r['span']!r}")
    return units.drop(columns=[f"truth_{c}" for c in CONCEPTS])


@torch.no_grad()
def encode_split(model, sae, pairs: list[dict], *, progress: bool = True):
    """One streaming pass: pooled activations per span and the SAE's ``PairFeatures``.

    Returns:
        ``(pooled, features)``: ``pooled[(span, pooling)]`` is ``Tensor[n_pairs, d_model]``
        (span in chosen / rejected); ``features`` as ``feature_summaries`` returns it.
    """
    from anatomy.cache import SPANS, stream_pair_activations
    from anatomy.features import PairFeatures, encode_span
    from anatomy.saes import sae_hook

    hook = sae_hook(sae)
    d_sae = sae.cfg.d_sae
    pooled = {(s, p): [] for s in ("chosen", "rejected") for p in POOLINGS}
    parts = {(stat, s): ([], [], [0]) for stat in ("max", "freq") for s in SPANS}
    ntok = {s: [] for s in SPANS}
    ids = []
    for pid, spans in stream_pair_activations(model, pairs, hook, progress=progress):
        ids.append(pid)
        for s in SPANS:
            x = spans[s].float()
            if s != "prompt":
                pooled[(s, "mean")].append(x.mean(0))
                pooled[(s, "max")].append(x.max(0).values)
            idx, vmax, vfreq, n = encode_span(sae, x)  # as feature_summaries: no attention-sink token
            for stat, v in (("max", vmax), ("freq", vfreq)):
                data, ind, ptr = parts[(stat, s)]
                data.append(v.numpy().astype(np.float32))
                ind.append(idx.numpy().astype(np.int32))
                ptr.append(ptr[-1] + len(idx))
            ntok[s].append(n)

    def csr(stat, s):
        data, ind, ptr = parts[(stat, s)]
        return sp.csr_matrix((np.concatenate(data), np.concatenate(ind), np.asarray(ptr)), shape=(len(ids), d_sae))

    feats = PairFeatures(ids, {s: csr("max", s) for s in SPANS}, {s: csr("freq", s) for s in SPANS},
                         {s: np.asarray(ntok[s], dtype=np.int64) for s in SPANS}, hook, d_sae)
    return {k: torch.stack(v) for k, v in pooled.items()}, feats


def sae_fingerprint(sae) -> str:
    """The SAE's `anatomy.fingerprint.weights_fingerprint`: cache directories are named after it."""
    from anatomy.fingerprint import weights_fingerprint

    return weights_fingerprint(sae)


def load_or_encode(model, sae, pairs: list[dict], cache: Path | None, *, progress: bool):
    """``encode_split``, saved to / reused from ``cache`` (``PairFeatures.save`` + ``pooled.pt``)."""
    from anatomy.features import PairFeatures

    if cache is not None and (cache / "pooled.pt").exists() and (cache / "features.json").exists():
        feats = PairFeatures.load(cache)
        blob = torch.load(cache / "pooled.pt", weights_only=False)
        if feats.ids == [p["id"] for p in pairs] and blob["ids"] == feats.ids:
            return blob["pooled"], feats, 0.0, True
        raise ValueError(f"{cache} holds other pairs than asked for; remove it or pass another --features-dir")
    t = time.perf_counter()
    pooled, feats = encode_split(model, sae, pairs, progress=progress)
    seconds = time.perf_counter() - t
    if cache is not None:
        feats.save(cache)
        torch.save({"ids": feats.ids, "pooled": pooled, "seconds": seconds}, cache / "pooled.pt")
    return pooled, feats, seconds, False


# ----------------------------------------------------------------------------- scores


def unit_rows(units: pd.DataFrame, n_pairs: int) -> np.ndarray:
    """Row of each unit in the chosen-then-rejected stacking of per-pair matrices."""
    return units["row"].to_numpy() + n_pairs * (units["span"].to_numpy() == "rejected")


def unit_matrix(mats: dict, units: pd.DataFrame) -> sp.csr_matrix:
    """Rows of ``mats[span]`` (``csr[n_pairs, d]``) for each unit, in unit order."""
    stacked = sp.vstack([mats["chosen"], mats["rejected"]]).tocsr()
    return stacked[unit_rows(units, mats["chosen"].shape[0])]


def unit_pooled(pooled: dict, units: pd.DataFrame, pooling: str) -> torch.Tensor:
    """``Tensor[n_units, d_model]``: each unit's pooled response activation."""
    stacked = torch.cat([pooled[("chosen", pooling)], pooled[("rejected", pooling)]])
    return stacked[torch.as_tensor(unit_rows(units, len(pooled[("chosen", pooling)])))]


def dom_cv_auroc(X: torch.Tensor, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated AUROC of difference of means on ``X`` (the train-side estimate)."""
    from sklearn.model_selection import StratifiedKFold

    from anatomy.probes import diff_of_means, heldout_auroc, project

    k = min(folds, int(y.sum()), int((1 - y).sum()))
    if k < 2:
        return float("nan")
    scores = np.zeros(len(y))
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        v = diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0])
        scores[te] = project(X[te], v).numpy()
    return heldout_auroc(scores[y == 1], scores[y == 0])


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=None, help="train pairs (default: all 2,270)")
    ap.add_argument("--n-heldout", type=int, default=None, help="heldout pairs (default: all 495)")
    ap.add_argument("--quick", action="store_true", help="150 train / 60 heldout pairs")
    ap.add_argument("--sae", default=None, help="load_sae(name): a shipped SAE or a directory (default: shipped)")
    ap.add_argument("--resolution", type=float, default=30.0, help="Leiden resolution of cluster_features")
    ap.add_argument("--min-pos", type=int, default=5, help="fewest positives (heldout and train) to score")
    ap.add_argument("--probe-cv", type=int, default=3, help="fit_probe folds (inner and outer)")
    ap.add_argument("--probe-cs", type=int, default=6, help="fit_probe's number of C values")
    ap.add_argument("--features-dir", default=None, help="save / reuse PairFeatures and pooled activations here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "lens_auroc"), help="output path without suffix")
    ap.add_argument("--check-pairs", type=int, default=3,
                    help="compare the one-pass summaries with feature_summaries on this many pairs (0: skip)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train = args.n_train or 150
        args.n_heldout = args.n_heldout or 60
    if args.threads:
        torch.set_num_threads(args.threads)

    from anatomy import cluster_features, fit_probe, load_model
    from anatomy.concepts import CONCEPT_KINDS
    from anatomy.features import membership_matrix
    from anatomy.probes import auroc, diff_of_means, evaluate_direction, heldout_auroc
    from anatomy.saes import load_sae, sae_hook

    t_all = time.perf_counter()
    timings = {}
    t = time.perf_counter()
    model = load_model()
    sae = load_sae(args.sae)
    hook = sae_hook(sae)
    timings["load_model_sae"] = time.perf_counter() - t

    splits = {"train": sample_pairs("train", args.n_train, args.seed),
              "heldout": sample_pairs("heldout", args.n_heldout, args.seed)}
    fp = sae_fingerprint(sae)
    data = {}
    for split, pairs in splits.items():
        cache = None
        if args.features_dir:
            n = {"train": args.n_train, "heldout": args.n_heldout}[split] or "all"
            cache = Path(args.features_dir).expanduser() / f"{split}-n{n}-seed{args.seed}-sae{fp}"
        pooled, feats, seconds, reused = load_or_encode(model, sae, pairs, cache,
                                                        progress=not args.no_progress)
        units = response_units(pairs)
        data[split] = (pooled, feats, units)
        timings[f"encode_{split}"] = seconds
        timings[f"encode_{split}_reused"] = reused
        n_tok = int(sum(a.sum() for a in feats.n_tokens.values()))
        timings[f"encode_{split}_span_tokens"] = n_tok
        print(f"{split}: {len(pairs)} pairs, {len(units)} responses, {n_tok:,} span tokens, "
              f"{'reused ' + str(cache) if reused else f'{seconds:.0f} s'}", flush=True)

    # parity: the one-pass summaries equal feature_summaries' on a few pairs
    if args.check_pairs:
        from anatomy import feature_summaries

        few = splits["train"][: args.check_pairs]
        ref = feature_summaries(model, sae, few, progress=False)
        ours = data["train"][1]
        for stat in STATS:
            for s in ref.max:
                a, b = getattr(ref, stat)[s].toarray(), getattr(ours, stat)[s][: len(few)].toarray()
                assert np.allclose(a, b, atol=1e-4), f"summaries differ from feature_summaries ({stat}, {s})"

    # --- clusters on train pairs
    t = time.perf_counter()
    tr_feats = data["train"][1]
    clusters = cluster_features(tr_feats, resolution=args.resolution, seed=args.seed)
    timings["cluster_features"] = time.perf_counter() - t
    member = clusters[clusters.cluster >= 0]
    M, sizes = membership_matrix(clusters, tr_feats.d_sae)
    n_clusters, sizes = M.shape[1], sizes.astype(int)
    print(f"{n_clusters} clusters at resolution {args.resolution} (sizes min/median/max "
          f"{sizes.min() if len(sizes) else 0}/{np.median(sizes) if len(sizes) else 0}/"
          f"{sizes.max() if len(sizes) else 0}; {len(member)} of {clusters.attrs['n_candidates']} "
          f"candidate features clustered)", flush=True)

    # per unit: SAE feature matrices and cluster scores, pooled activations
    U = {}
    for split in ("train", "heldout"):
        pooled, feats, units = data[split]
        feat = {stat: unit_matrix(getattr(feats, stat), units) for stat in STATS}
        clus = {stat: np.asarray((feat[stat] @ M).todense()) for stat in STATS}
        acts = {p: unit_pooled(pooled, units, p) for p in POOLINGS}
        U[split] = {"units": units, "feat": feat, "clus": clus, "acts": acts}
    # train-side ranks, once per stat, for the selection of clusters and features
    t = time.perf_counter()
    y_train = U["train"]["units"][list(CONCEPTS)].to_numpy(dtype=bool)
    train_auc = {stat: {"clus": auroc(U["train"]["clus"][stat], y_train) if n_clusters else None,
                        "feat": auroc(U["train"]["feat"][stat].toarray(), y_train)} for stat in STATS}
    timings["rank_train_scores"] = time.perf_counter() - t

    # --- per concept
    rows = []
    t_dir = t_sae = 0.0
    for ci, c in enumerate(CONCEPTS):
        y_tr = U["train"]["units"][c].to_numpy().astype(int)
        y_ho = U["heldout"]["units"][c].to_numpy().astype(int)
        row = {"concept": c, "n_pos_train": int(y_tr.sum()), "n_neg_train": int(len(y_tr) - y_tr.sum()),
               "n_pos_heldout": int(y_ho.sum()), "n_neg_heldout": int(len(y_ho) - y_ho.sum())}
        row["kind"] = CONCEPT_KINDS.get(c, "")
        if min(row["n_pos_train"], row["n_pos_heldout"]) < args.min_pos or min(
                row["n_neg_train"], row["n_neg_heldout"]) < args.min_pos:
            row["status"] = "too_few_positives"
            rows.append(row)
            print(f"{c:>16}: too few positives (train {row['n_pos_train']}, heldout {row['n_pos_heldout']})",
                  flush=True)
            continue
        row["status"] = "scored"
        # directions and probes
        t = time.perf_counter()
        train_side = {}
        for p in POOLINGS:
            Xtr, Xho = U["train"]["acts"][p], U["heldout"]["acts"][p]
            v = diff_of_means(Xtr[y_tr == 1], Xtr[y_tr == 0])
            row[f"auroc_dom_{p}"] = evaluate_direction(v, Xho[y_ho == 1], Xho[y_ho == 0])
            train_side[f"dom_{p}"] = dom_cv_auroc(Xtr, y_tr, seed=args.seed)
            probe = fit_probe(Xtr, y_tr, cv=args.probe_cv, Cs=args.probe_cs, seed=args.seed)
            s = probe.score(Xho)
            row[f"auroc_probe_{p}"] = heldout_auroc(s[y_ho == 1], s[y_ho == 0])
            train_side[f"probe_{p}"] = probe.cv_auroc
        best = max(train_side, key=lambda k: train_side[k])
        row["direction_choice"] = best
        row["direction_train_cv_auroc"] = train_side[best]
        row["direction_auroc"] = row[f"auroc_{best}"]
        t_dir += time.perf_counter() - t
        # SAE cluster and single feature: choose on train, score on heldout
        t = time.perf_counter()
        best_c = (-1.0, None, None)
        best_f = (-1.0, None, None)
        for stat in STATS:
            if n_clusters:
                a = train_auc[stat]["clus"][:, ci]
                j = int(np.nanargmax(a))
                if a[j] > best_c[0]:
                    best_c = (float(a[j]), j, stat)
            a = train_auc[stat]["feat"][:, ci]
            j = int(np.nanargmax(a))
            if a[j] > best_f[0]:
                best_f = (float(a[j]), j, stat)
        if best_c[1] is not None:
            a_tr, j, stat = best_c
            s = U["heldout"]["clus"][stat][:, j]
            row.update(cluster=j, cluster_size=int(sizes[j]), cluster_stat=stat, cluster_auroc_train=a_tr,
                       cluster_auroc=heldout_auroc(s[y_ho == 1], s[y_ho == 0]))
        a_tr, j, stat = best_f
        s = U["heldout"]["feat"][stat][:, j].toarray().ravel()
        row.update(feature=j, feature_cluster=int(clusters.cluster.iloc[j]), feature_stat=stat,
                   feature_auroc_train=a_tr, feature_auroc=heldout_auroc(s[y_ho == 1], s[y_ho == 0]))
        t_sae += time.perf_counter() - t
        row["pass_direction"] = bool(row["direction_auroc"] >= DIRECTION_PASS)
        row["pass_cluster"] = bool(row.get("cluster_auroc", 0.0) >= CLUSTER_PASS)
        rows.append(row)
        nan = float("nan")
        print(f"{c:>16}: direction {row['direction_auroc']:.3f} ({best}), cluster {row.get('cluster', '-')} "
              f"(size {row.get('cluster_size', '-')}, {row.get('cluster_stat', '-')}) train "
              f"{row.get('cluster_auroc_train', nan):.3f} heldout {row.get('cluster_auroc', nan):.3f}, "
              f"feature {row['feature']} {row['feature_auroc']:.3f}", flush=True)
    timings["directions_probes"] = t_dir
    timings["sae_selection"] = t_sae
    timings["total"] = time.perf_counter() - t_all

    cols = ["concept", "kind", "status", "n_pos_train", "n_neg_train", "n_pos_heldout", "n_neg_heldout",
            "auroc_dom_mean", "auroc_probe_mean", "auroc_dom_max", "auroc_probe_max", "direction_choice",
            "direction_train_cv_auroc", "direction_auroc", "cluster", "cluster_size", "cluster_stat",
            "cluster_auroc_train", "cluster_auroc", "feature", "feature_cluster", "feature_stat", "feature_auroc_train",
            "feature_auroc", "pass_direction", "pass_cluster"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    for col in ("cluster", "cluster_size", "feature", "feature_cluster"):
        table[col] = table[col].astype("Int64")
    scored = table[table.status == "scored"]
    summary = {
        "n_concepts": len(table),
        "n_scored": int(len(scored)),
        "too_few_positives": table.loc[table.status != "scored", "concept"].tolist(),
        "n_pass_direction": int(scored.pass_direction.sum()),
        "n_pass_cluster": int(scored.pass_cluster.sum()),
        "n_pass_both": int((scored.pass_direction & scored.pass_cluster).astype(bool).sum()),
        "criterion": f"direction/probe heldout AUROC >= {DIRECTION_PASS} and best train-selected cluster "
                     f"heldout AUROC >= {CLUSTER_PASS}, for at least 8 concepts",
    }
    summary["done"] = bool(summary["n_pass_both"] >= 8)
    record = {
        "summary": summary,
        "sizes": {"train_pairs": len(splits["train"]), "heldout_pairs": len(splits["heldout"]),
                  "train_responses": len(U["train"]["units"]), "heldout_responses": len(U["heldout"]["units"])},
        "config": {"hook": hook, "sae": args.sae or "shipped default", "sae_fingerprint": fp,
                   "d_sae": int(sae.cfg.d_sae), "k": int(getattr(sae.cfg, "k", 0) or 0),
                   "sae_metrics": dict(getattr(sae.cfg.metadata, "metrics", None) or {}),
                   "resolution": args.resolution, "min_pos": args.min_pos, "probe_cv": args.probe_cv,
                   "probe_cs": args.probe_cs, "seed": args.seed, "threads": torch.get_num_threads(),
                   "label": "anatomy.concepts.annotate(response) > 0 (equal to the ground-truth columns)"},
        "clusters": {"count": n_clusters, "clustered_features": int(len(member)),
                     "candidate_features": int(clusters.attrs["n_candidates"]),
                     "nmi_threshold": clusters.attrs["nmi_threshold"],
                     "size_min": int(sizes.min()) if len(sizes) else 0,
                     "size_median": float(np.median(sizes)) if len(sizes) else 0.0,
                     "size_max": int(sizes.max()) if len(sizes) else 0},
        "timings_seconds": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in timings.items()},
        "table": json.loads(table.to_json(orient="records")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        shown = ["concept", "status", "n_pos_heldout", "n_neg_heldout", "auroc_dom_mean", "auroc_probe_mean",
                 "auroc_dom_max", "auroc_probe_max", "direction_auroc", "cluster", "cluster_size",
                 "cluster_auroc_train", "cluster_auroc", "feature_cluster", "feature_auroc"]
        print(table[shown].round(3).to_string(index=False))
    print(json.dumps({k: record[k] for k in ("summary", "sizes", "clusters", "timings_seconds")}))
    return record


if __name__ == "__main__":
    main()
