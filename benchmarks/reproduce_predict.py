"""Predict what DPO will teach, train, roll out, compare (METHOD §4; `make reproduce-predict`).

1. Read the training pairs with the pre-DPO lens and predict a shift per concept,
   in four lenses: annotators (string search), directions (difference of means of
   annotator-labelled responses at the SAE's layer), SAE concept clusters at a fixed
   resolution (``sae_clusters``: the top clusters by |u| on the training data, plus the
   best-matching cluster of every planted concept) and the SAE lens as a user gets it
   (``sae_diagnosis``: the concept clusters of ``diagnose`` with its default recipe, their
   gated firing frequencies z-scored as the directions lens is; the clusters compared are fixed by the rule in
   ``benchmarks/dev_protocol.md``: every cluster whose dataset-wide row has q < 0.05;
   also the top 20 of its ranking, every cluster, and each set's clusters that match no
   planted concept). The same clusters are also read as projections on directions
   (``_dir``: ``probes.cluster_directions``, a direction labelled by each cluster's own
   activity; ``_decoder``: ``probes.decoder_directions``, the sum of its decoder vectors).
2. Roll out the pre-DPO model on held-out prompts (the organism's heldout split).
3. Train plain DPO (``train_dpo``) on the training pairs, once per learning rate
   (default 2e-5, ~28 minutes in all on a 2-core CPU; ``--lr 2e-5 5e-5`` adds a second
   dose, ~49 minutes), with a checkpoint after every epoch.
4. Roll out every checkpoint with the same seed, measure both sets of rollouts
   with the same pre-DPO lens, and compare predicted with observed shift (R² per
   lens): the dose-response over learning rate and epochs. Beside every R², the noise
   ceiling of that lens's observed shift (``predict.noise_ceiling``: split-half
   reliability over prompts, Spearman–Brown corrected; the R² a perfect prediction
   could reach given the rollouts' noise). Rollouts are as long as the training
   responses (64 new tokens): the organism caps responses there, and some concepts (the
   link sentence) sit at their end.
5. Health (distinct-2, repetition) and intended learning (preference accuracy and
   mean margin on held-out clean pairs, before vs after).

The headline numbers are those of the first learning rate after the last epoch;
``dose_response`` lists every (learning rate, epoch).

Writes ``results/predict.json`` (keys ``r2_by_lens``, ``ceiling_by_lens``, ``n_concepts``,
``distinct2_ratio``, ``intended_learning_delta``, ``noise_ceiling``, ``diagnosis``, the
per-concept table and the settings) and ``figures/06_predicted_vs_observed_<lens>.html``.

Resumable and deterministic: the diagnosis' feature summaries, the pre-DPO rollouts and, per
learning rate, every epoch's rollouts, clean-pair margins and training summary are kept under
``--run-dir`` in a folder named after a digest of everything they depend on (pairs, prompts,
settings, model weights); a rerun with the same settings reads them back and trains only the
learning rates whose rollouts are missing. The same seed gives the same numbers.

Usage: python benchmarks/reproduce_predict.py [--quick] [--threads 2] [--lr 2e-5 5e-5] [--organism DIR] ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["bold", "header", "list_item", "emoji", "em_dash", "exclamation", "flattery", "hedge",
            "table", "horizontal_rule", "url", "refusal", "agreement"]


def _heldout_prompts(n_prompts: int, seed: int, source: str = "organism") -> list[dict]:
    from anatomy.data import load_preferences

    ds = load_preferences(source, split="heldout")
    first: dict[str, dict] = {}
    for row in ds:
        first.setdefault(row["prompt_id"], {"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                                            "family": row["family"]})
    prompts = sorted(first.values(), key=lambda r: r["prompt_id"])
    rng = np.random.default_rng(seed)
    keep = sorted(rng.permutation(len(prompts))[:n_prompts]) if n_prompts < len(prompts) else range(len(prompts))
    return [prompts[i] for i in keep]


def diagnosis_selection(diagnosis, *, alpha: float = 0.05, top: int = 20) -> dict[str, list[int]]:
    """The concept clusters the ``sae_diagnosis`` lenses compare (rule: ``benchmarks/dev_protocol.md``).

    ``"sae_diagnosis"``: every cluster whose dataset-wide row (group -1, all pairs, the
    diagnosis' covariate adjustment; ``Diagnosis.rerank(one_per_concept=False)``) has q < ``alpha``;
    ``"sae_diagnosis_top20"``: the clusters of the first ``top`` rows of ``diagnosis.ranked``;
    ``"sae_diagnosis_all"``: every concept cluster. Chosen from the training pairs only.
    """
    rows = diagnosis.rerank(one_per_concept=False)
    wide = rows[(rows["group"] == -1) & (rows["q"] < alpha)]
    n_clusters = int(diagnosis.clusters["cluster"].max()) + 1
    return {"sae_diagnosis": sorted(int(c) for c in wide["concept"]),
            f"sae_diagnosis_top{top}": [int(c) for c in diagnosis.ranked["concept"].head(top)],
            "sae_diagnosis_all": list(range(n_clusters))}


def planted_matches(auc: pd.DataFrame, threshold: float) -> dict[int, str]:
    """Per concept cluster, the planted concepts it reads (AUROC >= ``threshold``, best first,
    comma-separated; "" for none), from ``score_diagnosis``' ``auroc`` table (clusters x labels)."""
    from anatomy.organism import CONCEPTS as PLANTED_CONCEPTS

    a = auc[list(PLANTED_CONCEPTS)]
    return {int(k): ",".join(sorted((c for c in a.columns if a.at[k, c] >= threshold), key=lambda c: -a.at[k, c]))
            for k in a.index}


def _frame_to_jsonl(df: pd.DataFrame, path: Path) -> None:
    """Write ``df``'s records as JSON lines, atomically (floats round-trip exactly)."""
    def plain(o):
        return o.item() if hasattr(o, "item") else o.tolist() if hasattr(o, "tolist") else str(o)

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=plain) + "\n" for r in df.to_dict("records")), encoding="utf-8")
    os.replace(tmp, path)


def cached_frame(path: Path, make) -> pd.DataFrame:
    """``make()`` once: its records are kept in ``path`` and read back on a rerun."""
    if path.exists():
        return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line])
    df = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    _frame_to_jsonl(df, path)
    return df


def _r2_and_ceiling(pred: pd.Series, before: pd.DataFrame, after: pd.DataFrame, *, stat: str, tau: float,
                    n_splits: int, seed: int, labels: dict, title: str):
    """One lens: ``observed_shift``, ``compare`` and ``noise_ceiling`` on the same frames and concepts.

    Returns ``(stats, fig, observed, ceiling)``; raises ValueError (from ``compare`` or
    ``noise_ceiling``) when the lens cannot be compared (e.g. fewer than 3 concepts).
    """
    from anatomy.predict import compare, noise_ceiling, observed_shift

    concepts = list(pred.index)
    observed = observed_shift(before, after, stat=stat, tau=tau, concepts=concepts, seed=seed)
    stats, fig = compare(pred, observed, labels=labels, title=title)
    ceiling = noise_ceiling(before, after, stat=stat, tau=tau, concepts=concepts, n_splits=n_splits, seed=seed)
    return stats, fig, observed, ceiling


def _standardised(before: pd.DataFrame, after: pd.DataFrame, scale: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = list(scale.index)
    b, a = before.copy(), after.copy()
    b[cols] = b[cols] / scale.values
    a[cols] = a[cols] / scale.values
    return b, a


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-5],
                    help="learning rates of the dose-response (e.g. --lr 2e-5 5e-5, ~20 more minutes each); "
                         "the first gives the headline numbers")
    ap.add_argument("--eval-every-epoch", action=argparse.BooleanOptionalAction, default=True,
                    help="roll out after every epoch (checkpoints), not only at the end")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "reproduce_predict"))
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--n-clean", type=int, default=64)
    ap.add_argument("--resolution", type=float, default=30.0)
    ap.add_argument("--top-clusters", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--organism", default="organism",
                    help="'organism' (the shipped build) or a folder of another build's split files "
                         "(anatomy.organism.build(seed=N, out_dir=DIR): a development organism)")
    ap.add_argument("--n-splits", type=int, default=200, help="random halves per noise ceiling")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (minutes)")
    ap.add_argument("--out", default=str(ROOT / "results" / "predict.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.epochs, args.n_prompts, args.samples = 24, 1, 12, 1
        args.max_new_tokens, args.n_clean, args.resolution = 24, 16, 10.0
    torch.set_num_threads(args.threads)
    t_start = time.time()
    timings: dict[str, float] = {}

    from anatomy.cache import cache_pairs
    from anatomy.concepts import annotate
    from anatomy.data import load_preferences
    from anatomy.diagnose import DiagnoseConfig, diagnose
    from anatomy.fingerprint import digest, pairs_digest, weights_fingerprint
    from anatomy.organism import AUROC_MATCH, score_diagnosis
    from anatomy.evals import annotator_scorer, diagnosis_scorer, direction_scorer, distinct_n, measure, \
        repetition_rate, rollouts, sae_scorer
    from anatomy.models import load_model
    from anatomy.predict import predict_shift, predict_shift_from_features
    from anatomy.probes import auroc, cluster_directions, decoder_directions, direction_from_labels
    from anatomy.features import cluster_features, cluster_scores, feature_summaries
    from anatomy.saes import load_sae
    from anatomy.train import TrainConfig, load_train_run, preference_margins, train_dpo
    from anatomy.viz import save_figure

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        print(f"[{name}] {timings[name]} s", flush=True)

    t0 = time.time()
    lens = load_model()  # the pre-DPO lens: never trained
    policy = load_model()  # trained in place
    sae = load_sae()
    hook = sae.cfg.metadata.hook_name
    train_ds = load_preferences(args.organism, split="train")
    rng = np.random.default_rng(args.seed)
    idx = sorted(rng.permutation(len(train_ds))[: args.n_train].tolist())
    pairs = [train_ds[i] for i in idx]
    clean_ds = load_preferences(args.organism, split="clean")
    clean = [clean_ds[i] for i in sorted(rng.permutation(len(clean_ds))[: args.n_clean].tolist())]
    prompts = _heldout_prompts(args.n_prompts, args.seed, args.organism)
    roll_kw = dict(n_samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                   seed=args.seed, batch_size=32, progress=False)
    # what the pre-DPO rollouts depend on; each learning rate's rollouts add its training settings
    rollout_key = digest(pairs_digest(pairs), pairs_digest(clean), [p["prompt_id"] for p in prompts],
                         [p["prompt"] for p in prompts], {k: v for k, v in roll_kw.items() if k != "progress"},
                         weights_fingerprint(lens))
    cache_dir = Path(args.run_dir) / f"cache-{rollout_key}"
    tick("load", t0)

    # ---- 1. predict, from the training pairs read by the pre-DPO lens
    t0 = time.time()
    ann_c = annotate([p["chosen"] for p in pairs], CONCEPTS)
    ann_r = annotate([p["rejected"] for p in pairs], CONCEPTS)
    pres_c, pres_r = (ann_c > 0).astype(float), (ann_r > 0).astype(float)
    pred = {"annotators": predict_shift(pres_c, pres_r, method="u", prefix="annotator_present:"),
            "annotators_z": predict_shift(ann_c.astype(float), ann_r.astype(float), method="z_gap",
                                          prefix="annotator:")}
    count_scale = pd.Series(np.sqrt((ann_c.var(ddof=1) + ann_r.var(ddof=1)).values / 2),
                            index=[f"annotator:{c}" for c in CONCEPTS])
    count_scale = count_scale[count_scale > 0]  # a concept absent from the training pairs predicts nothing
    pred["annotators_z"] = pred["annotators_z"][count_scale.index]

    acts = cache_pairs(lens, pairs, hook, pooling=("mean",), progress=False)
    xc, xr = acts.get(hook, "chosen", "mean"), acts.get(hook, "rejected", "mean")
    directions, dir_rows = {}, []
    for c in CONCEPTS:
        lab = np.r_[pres_c[c].to_numpy(), pres_r[c].to_numpy()].astype(bool)
        if lab.sum() < 6 or (~lab).sum() < 6:
            dir_rows.append({"concept": c, "skipped": f"{int(lab.sum())} positive responses"})
            continue
        x = torch.cat([xc, xr])
        d = direction_from_labels(x[torch.as_tensor(lab)], x[torch.as_tensor(~lab)], name=c, hook=hook,
                                  seed=args.seed)
        directions[c] = d
        dir_rows.append({"concept": c, "heldout_auroc": round(d.heldout_auroc, 3)})
    unit = {c: d.vector / d.vector.norm() for c, d in directions.items()}
    proj_c = pd.DataFrame({f"direction:{c}": (xc @ u).numpy() for c, u in unit.items()})
    proj_r = pd.DataFrame({f"direction:{c}": (xr @ u).numpy() for c, u in unit.items()})
    pred["directions"] = predict_shift(proj_c, proj_r, method="z_gap")
    dir_scale = pd.Series(np.sqrt((proj_c.var(ddof=1) + proj_r.var(ddof=1)).values / 2), index=proj_c.columns)

    feats = feature_summaries(lens, sae, pairs, progress=False)
    clusters = cluster_features(feats, resolution=args.resolution, seed=args.seed)
    u_all = predict_shift_from_features(feats, clusters)
    chosen_sc = cluster_scores(feats, clusters, span="chosen")
    rejected_sc = cluster_scores(feats, clusters, span="rejected")
    match = {}
    for c in CONCEPTS:  # the cluster whose activity best tracks each planted concept (on the training data)
        lab = np.r_[pres_c[c].to_numpy(), pres_r[c].to_numpy()]
        if 0 < lab.sum() < len(lab):
            au = {k: auroc(np.r_[chosen_sc[k].to_numpy(), rejected_sc[k].to_numpy()], lab) for k in chosen_sc}
            best = max(au, key=au.get)
            match[c] = (f"sae:{best}", au[best])
    top = u_all.abs().sort_values(ascending=False).index[: args.top_clusters].tolist()
    chosen_clusters = list(dict.fromkeys(top + [m for m, _ in match.values()]))
    pred["sae_clusters"] = u_all[chosen_clusters]
    n_clusters = int(clusters["cluster"].max()) + 1
    tick("predict", t0)

    # the SAE lens as a user gets it: the diagnosis' gated features and concept clusters
    t0 = time.time()
    # the shipped recipe; --quick's 24 pairs are too few for its data clusters of 10 pairs (numbers meaningless)
    dx_config = (DiagnoseConfig(seed=args.seed, min_size=4, n_boot=100, n_label_pairs=0) if args.quick
                 else DiagnoseConfig(seed=args.seed))
    dx = diagnose(pairs, model=lens, sae=sae, config=dx_config, cache_dir=cache_dir / "features", progress=False)
    dx_c = cluster_scores(dx.features, dx.clusters, span="chosen")
    dx_r = cluster_scores(dx.features, dx.clusters, span="rejected")
    dx_scale = pd.Series(np.sqrt((dx_c.var(ddof=1) + dx_r.var(ddof=1)).to_numpy() / 2),
                         index=[f"diagnosis:{k}" for k in dx_c.columns])
    dx_scale = dx_scale[dx_scale > 0]  # a cluster with no spread on the training responses predicts nothing
    dx_z = predict_shift(dx_c, dx_r, method="z_gap", prefix="diagnosis:")[dx_scale.index]
    # the same clusters read as directions in the residual stream (the directions lens' units):
    # labelled by each cluster's own activity ("_dir"), or the sum of its decoder vectors ("_decoder")
    if list(dx.features.ids) != list(acts.ids):
        raise ValueError("the diagnosis' features and the pooled activations cover different pairs")
    cl_dirs = {**cluster_directions(dx_c, dx_r, xc, xr, hook=hook, prefix="cluster:", seed=args.seed),
               **decoder_directions(sae, dx.clusters, hook=hook, prefix="decoder:")}
    cl_proj_c = pd.DataFrame({f"direction:{n}": (xc @ d.vector).numpy() for n, d in cl_dirs.items()})
    cl_proj_r = pd.DataFrame({f"direction:{n}": (xr @ d.vector).numpy() for n, d in cl_dirs.items()})
    cl_scale = pd.Series(np.sqrt((cl_proj_c.var(ddof=1) + cl_proj_r.var(ddof=1)).to_numpy() / 2),
                         index=cl_proj_c.columns)
    cl_z = predict_shift(cl_proj_c, cl_proj_r, method="z_gap")
    units = {"": (dx_z, "diagnosis:{}"), "_dir": (cl_z, "direction:cluster:{}"),
             "_decoder": (cl_z, "direction:decoder:{}")}  # lens suffix -> (predictions, column pattern)
    in_direction_units = set()  # the lenses read in projections (their observed shift: cl_scale's units)
    selection = diagnosis_selection(dx, alpha=0.05, top=20)
    dx_scored = score_diagnosis(dx, pairs, seed=args.seed)  # ground truth, read after discovery
    reads = planted_matches(dx_scored["auroc"], AUROC_MATCH)
    for name, ids in selection.items():
        for suffix, (z, pattern) in units.items():
            kept = [k for k in ids if pattern.format(k) in z.index]
            pred[name + suffix] = z[[pattern.format(k) for k in kept]]
            pred[f"{name}{suffix}_unmatched"] = z[[pattern.format(k) for k in kept if not reads[k]]]
            if suffix:
                in_direction_units |= {name + suffix, f"{name}{suffix}_unmatched"}
    dx_info = {
        "settings": {k: dx.settings.get(k) for k in ("resolution", "resolution_rule", "k_data", "gate", "graph",
                                                       "isolates", "covariate", "seed", "concept_clusters")},
        "n_clusters": int(dx.clusters["cluster"].max()) + 1,
        "n_zero_spread": int(len(dx_c.columns) - len(dx_scale)),
        "cluster_directions": {n: {"heldout_auroc": round(d.heldout_auroc, 3), "n_train": d.n_train}
                               for n, d in cl_dirs.items() if n.startswith("cluster:")},
        "selection_rule": "sae_diagnosis: dataset-wide row q < 0.05; sae_diagnosis_top20: first 20 rows of the "
                          "ranking; sae_diagnosis_all: every cluster; *_unmatched: those with AUROC < "
                          f"{AUROC_MATCH} for every organism concept (benchmarks/dev_protocol.md)",
        "selected": {name: len(pred[name]) for name in pred if name.startswith("sae_diagnosis")},
        "score_diagnosis": {k: round(float(v), 4) for k, v in dx_scored["headline"].items()},
        "timings": dx.timings,
    }
    tick("diagnose", t0)

    # ---- 2. rollouts before
    t0 = time.time()
    before = cached_frame(cache_dir / "rollouts_before.jsonl", lambda: rollouts(lens, prompts, **roll_kw))
    tick("rollouts_before", t0)
    t0 = time.time()
    margins_before = cached_frame(cache_dir / "margins_before.jsonl", lambda: preference_margins(lens, clean))
    tick("margins_before", t0)
    scorers = [annotator_scorer(CONCEPTS), direction_scorer(lens, {**directions, **cl_dirs}, progress=False),
               sae_scorer(lens, sae, clusters, stat="active", progress=False),
               diagnosis_scorer(lens, sae, dx)]
    t0 = time.time()
    m_before = measure(before, scorers)
    tick("measure_before", t0)
    label_of = {f"sae:{k}": f"cluster {k}" for k in range(n_clusters)}
    for c, (col, au) in match.items():
        label_of[col] = label_of[col] + f" ~{c}" if "~" in label_of[col] else f"cluster {col[4:]} ~{c}"
    for k in range(dx_info["n_clusters"]):
        text = f"concept {k}" + (f" · {dx.labels[k]}" if dx.labels.get(k) else "")
        for pattern in ("diagnosis:{}", "direction:cluster:{}", "direction:decoder:{}"):
            label_of[pattern.format(k)] = text + (f" ~{reads[k]}" if reads[k] else "")

    def evaluate(tag: str, after: pd.DataFrame, margins_after: pd.DataFrame) -> dict:
        """Measure the policy's rollouts with the pre-DPO lens; compare per lens, beside its noise ceiling."""
        t0 = time.time()
        m_after = measure(after, scorers)
        n_empty = {"before": int(m_before.isna().any(axis=1).sum()), "after": int(m_after.isna().any(axis=1).sum())}
        mb, ma = m_before.fillna(0.0), m_after.fillna(0.0)  # an empty response projects on nothing
        tick(f"measure[{tag}]", t0)
        dx_frames = _standardised(mb, ma, dx_scale)
        cl_frames = _standardised(mb, ma, cl_scale)
        readings = {  # lens -> (before, after, stat, tau): what its observed shift and noise ceiling read
            "annotators": (mb, ma, "rate", 0.5),
            "annotators_z": (*_standardised(mb, ma, count_scale), "mean", 0.01),
            "directions": (*_standardised(mb, ma, dir_scale), "mean", 0.01),
            "sae_clusters": (mb, ma, "mean", 0.01),
            **{name: (*(cl_frames if name in in_direction_units else dx_frames), "mean", 0.01)
               for name in pred if name.startswith("sae_diagnosis")},
        }
        stats, figs, rows, skipped, ceilings = {}, {}, [], {}, {}
        for lens_name in pred:
            p = pred[lens_name]
            b, a, stat, tau = readings[lens_name]
            labels = {k: (label_of.get(k) or k.split(":", 1)[1]) for k in p.index}
            try:
                stats[lens_name], figs[lens_name], o, ceilings[lens_name] = _r2_and_ceiling(
                    p, b, a, stat=stat, tau=tau, n_splits=args.n_splits, seed=args.seed, labels=labels,
                    title=f"{lens_name}: predicted vs observed shift ({tag})")
            except ValueError as err:  # fewer than 3 concepts (a --quick run, a small selection), constant prediction
                skipped[lens_name] = str(err)
                continue
            for k in p.index:
                rows.append({"lens": lens_name, "concept": labels[k], "column": k, "predicted": float(p[k]),
                             **{c: float(o.loc[k, c]) for c in ("before", "after", "effect", "ci_low", "ci_high")}})
        d2_before, d2_after = distinct_n(before["response"], 2), distinct_n(after["response"], 2)
        acc_b, acc_a = float((margins_before.margin > 0).mean()), float((margins_after.margin > 0).mean())
        tok_b, tok_a = float((margins_before.mean_margin > 0).mean()), float((margins_after.mean_margin > 0).mean())
        grew = float((margins_after.margin.to_numpy() > margins_before.margin.to_numpy()).mean())
        margin_b, margin_a = float(margins_before.margin.mean()), float(margins_after.margin.mean())
        return {
            "r2_by_lens": {k: round(v["r2"], 4) for k, v in stats.items()},
            "ceiling_by_lens": {k: round(float(c.loc["prompts", "ceiling_r2"]), 4) for k, c in ceilings.items()},
            "n_concepts": {k: int(v["n"]) for k, v in stats.items()},
            "noise_ceiling": {k: {split: {col: (round(float(v), 4) if isinstance(v, float) else int(v))
                                          for col, v in row.items()}
                                  for split, row in c.to_dict(orient="index").items()}
                              for k, c in ceilings.items()},
            "compare": {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                        for k, v in stats.items()},
            "distinct2_ratio": round(d2_after / d2_before, 4),
            "distinct2": {"before": round(d2_before, 4), "after": round(d2_after, 4)},
            "repetition_rate": {"before": round(repetition_rate(before["response"]), 4),
                                "after": round(repetition_rate(after["response"]), 4)},
            "intended_learning_delta": round(margin_a - margin_b, 4),
            "intended_learning": {
                "metric": "intended_learning_delta = change of the mean margin log p(chosen) - log p(rejected) "
                          "(nats, summed over completion tokens) on held-out clean pairs; the rejected responses "
                          "are truncated, hence shorter, so the summed-log-prob accuracy is near 0 for any model: "
                          "per-token accuracy and the share of pairs whose margin grew are given beside it",
                "mean_margin_before": round(margin_b, 3), "mean_margin_after": round(margin_a, 3),
                "accuracy_before": round(acc_b, 4), "accuracy_after": round(acc_a, 4),
                "per_token_accuracy_before": round(tok_b, 4), "per_token_accuracy_after": round(tok_a, 4),
                "share_margin_grew": round(grew, 4),
                "n_pairs": len(clean)},
            "empty_rollouts": n_empty,
            "skipped_lenses": skipped,
            "per_concept": rows,
            "_figs": figs,
            "_after": after,
        }

    # ---- 3. train at each learning rate; 4. roll out after every epoch (the dose-response)
    doses, ref_logps, headline, trainings = [], None, None, {}
    steps_per_epoch = TrainConfig(batch_size=args.batch_size).steps_per_epoch(len(pairs))  # as train_dpo counts
    for i_lr, lr in enumerate(args.lr):
        epochs = range(1, args.epochs + 1) if args.eval_every_epoch else [args.epochs]
        lr_dir = cache_dir / (f"lr{lr:g}-" + digest(lr, args.beta, args.epochs, args.batch_size, args.seed))
        done = lr_dir / "train.json"
        have = done.exists() and all((lr_dir / f"rollouts_epoch{ep}.jsonl").exists()
                                     and (lr_dir / f"margins_epoch{ep}.jsonl").exists() for ep in epochs)
        run_dir = Path(args.run_dir) / f"lr{lr:g}-seed{args.seed}"
        if have:  # a finished learning rate of an earlier run with the same settings: read back, not retrained
            trainings[f"{lr:g}"] = json.loads(done.read_text())
            print(f"[train[lr={lr:g}]] read back from {lr_dir}", flush=True)
        else:
            if i_lr:  # a fresh pre-DPO policy for every learning rate
                policy = load_model()
            if run_dir.exists():
                shutil.rmtree(run_dir)
            t0 = time.time()
            result = train_dpo(policy, pairs, beta=args.beta, lr=lr, epochs=args.epochs, batch_size=args.batch_size,
                               seed=args.seed, progress=False, out_dir=run_dir, save_every=steps_per_epoch,
                               ref_logps=ref_logps)
            ref_logps = result.ref_logps  # the same pairs and reference model: computed once
            tick(f"train[lr={lr:g}]", t0)
            trainings[f"{lr:g}"] = {"final_loss": round(float(result.history.loss.tail(5).mean()), 4),
                                    "final_accuracy": round(float(result.history.accuracy.tail(5).mean()), 4),
                                    "steps": len(result.history), "seconds": round(result.wall_seconds, 1)}
        for ep in epochs:
            if not have:
                if ep < args.epochs:
                    load_train_run(run_dir / f"checkpoint-{ep * steps_per_epoch:06d}", model=policy)
                elif args.eval_every_epoch and args.epochs > 1:
                    load_train_run(run_dir, model=policy)  # back to the final weights
            tag = f"lr={lr:g}, epoch {ep}"
            t0 = time.time()
            after_ep = cached_frame(lr_dir / f"rollouts_epoch{ep}.jsonl", lambda: rollouts(policy, prompts, **roll_kw))
            margins_ep = cached_frame(lr_dir / f"margins_epoch{ep}.jsonl", lambda: preference_margins(policy, clean))
            tick(f"rollouts_after[{tag}]", t0)
            res = evaluate(tag, after_ep, margins_ep)
            dose = {"lr": lr, "epoch": ep, "steps": ep * steps_per_epoch, **{
                k: res[k] for k in ("r2_by_lens", "ceiling_by_lens", "distinct2_ratio", "intended_learning_delta")},
                "repetition_after": res["repetition_rate"]["after"],
                "annotator_rate_after": {r["concept"]: round(r["after"], 4) for r in res["per_concept"]
                                         if r["lens"] == "annotators"}}
            doses.append(dose)
            print(json.dumps(dose), flush=True)
            if i_lr == 0 and ep == args.epochs:
                headline = {**res, "training": trainings[f"{lr:g}"]}
        if not have:
            (lr_dir / "train.json").write_text(json.dumps(trainings[f"{lr:g}"]))  # last: marks the rate finished
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are ~0.5 GB each
    for lens_name, fig in headline.pop("_figs").items():
        if not lens_name.endswith("_unmatched"):  # a subset of its set's scatter
            save_figure(fig, f"06_predicted_vs_observed_{lens_name}")
    after = headline.pop("_after")
    out = {
        **headline,
        "dose_response": doses,
        "training_by_lr": trainings,
        "directions": dir_rows,
        "cluster_matches": {c: {"cluster": col, "train_auroc": round(au, 3)} for c, (col, au) in match.items()},
        "n_clusters": n_clusters,
        "diagnosis": dx_info,
        "settings": vars(args),
        "timings": timings,
        "total_seconds": round(time.time() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    before.assign(policy="before").to_json(Path(args.out).with_name("predict_rollouts_before.jsonl"),
                                           orient="records", lines=True)
    after.assign(policy="after").to_json(Path(args.out).with_name("predict_rollouts_after.jsonl"),
                                         orient="records", lines=True)
    print(json.dumps({k: out[k] for k in ("r2_by_lens", "ceiling_by_lens", "n_concepts", "distinct2_ratio",
                                          "intended_learning_delta", "total_seconds")}))
    return out


if __name__ == "__main__":
    main()
