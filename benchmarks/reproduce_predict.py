"""Predict what DPO will teach, train, roll out, compare (METHOD §4; `make reproduce-predict`).

1. Read the training pairs with the pre-DPO lens and predict a shift per concept,
   in three lenses: annotators (string search), directions (difference of means of
   annotator-labelled responses at the SAE's layer) and SAE concept clusters (the
   top clusters by |u| on the training data, plus the best-matching cluster of
   every planted concept).
2. Roll out the pre-DPO model on held-out prompts (the organism's heldout split).
3. Train plain DPO (``train_dpo``) on the training pairs, once per learning rate
   (default 2e-5, ~28 minutes in all on a 2-core CPU; ``--lr 2e-5 5e-5`` adds a second
   dose, ~49 minutes), with a checkpoint after every epoch.
4. Roll out every checkpoint with the same seed, measure both sets of rollouts
   with the same pre-DPO lens, and compare predicted with observed shift (R² per
   lens): the dose-response over learning rate and epochs. Rollouts are as long
   as the training responses (64 new tokens): the organism caps responses there,
   and some concepts (the link sentence) sit at their end.
5. Health (distinct-2, repetition) and intended learning (preference accuracy and
   mean margin on held-out clean pairs, before vs after).

The headline numbers are those of the first learning rate after the last epoch;
``dose_response`` lists every (learning rate, epoch).

Writes ``results/predict.json`` (keys ``r2_by_lens``, ``n_concepts``,
``distinct2_ratio``, ``intended_learning_delta``, the per-concept table and the
settings) and ``figures/06_predicted_vs_observed.html``.

Usage: python benchmarks/reproduce_predict.py [--quick] [--threads 2] [--lr 2e-5 5e-5] ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ["bold", "header", "list_item", "emoji", "em_dash", "exclamation", "flattery", "hedge",
            "table", "horizontal_rule", "url", "refusal", "agreement"]


def _heldout_prompts(n_prompts: int, seed: int) -> list[dict]:
    from anatomy.data import load_preferences

    ds = load_preferences("organism", split="heldout")
    first: dict[str, dict] = {}
    for row in ds:
        first.setdefault(row["prompt_id"], {"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                                            "family": row["family"]})
    prompts = sorted(first.values(), key=lambda r: r["prompt_id"])
    rng = np.random.default_rng(seed)
    keep = sorted(rng.permutation(len(prompts))[:n_prompts]) if n_prompts < len(prompts) else range(len(prompts))
    return [prompts[i] for i in keep]


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
    from anatomy.evals import annotator_scorer, direction_scorer, distinct_n, measure, repetition_rate, rollouts, \
        sae_scorer
    from anatomy.models import load_model
    from anatomy.predict import compare, observed_shift, predict_shift, predict_shift_from_features
    from anatomy.probes import auroc, direction_from_labels
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
    train_ds = load_preferences("organism", split="train")
    rng = np.random.default_rng(args.seed)
    idx = sorted(rng.permutation(len(train_ds))[: args.n_train].tolist())
    pairs = [train_ds[i] for i in idx]
    clean_ds = load_preferences("organism", split="clean")
    clean = [clean_ds[i] for i in sorted(rng.permutation(len(clean_ds))[: args.n_clean].tolist())]
    prompts = _heldout_prompts(args.n_prompts, args.seed)
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

    # ---- 2. rollouts before
    t0 = time.time()
    roll_kw = dict(n_samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                   seed=args.seed, batch_size=32, progress=False)
    before = rollouts(lens, prompts, **roll_kw)
    tick("rollouts_before", t0)
    t0 = time.time()
    margins_before = preference_margins(lens, clean)
    tick("margins_before", t0)
    scorers = [annotator_scorer(CONCEPTS), direction_scorer(lens, directions, progress=False),
               sae_scorer(lens, sae, clusters, stat="active", progress=False)]
    t0 = time.time()
    m_before = measure(before, scorers)
    tick("measure_before", t0)
    label_of = {f"sae:{k}": f"cluster {k}" for k in range(n_clusters)}
    for c, (col, au) in match.items():
        label_of[col] = label_of[col] + f" ~{c}" if "~" in label_of[col] else f"cluster {col[4:]} ~{c}"

    def evaluate(tag: str) -> dict:
        """Roll out the policy as it is now, measure with the pre-DPO lens, compare per lens."""
        t0 = time.time()
        after = rollouts(policy, prompts, **roll_kw)
        tick(f"rollouts_after[{tag}]", t0)
        t0 = time.time()
        margins_after = preference_margins(policy, clean)
        m_after = measure(after, scorers)
        n_empty = {"before": int(m_before.isna().any(axis=1).sum()), "after": int(m_after.isna().any(axis=1).sum())}
        mb, ma = m_before.fillna(0.0), m_after.fillna(0.0)  # an empty response projects on nothing
        tick(f"measure[{tag}]", t0)
        obs = {
            "annotators": observed_shift(mb, ma, stat="rate", tau=0.5, concepts=list(pred["annotators"].index),
                                         seed=args.seed),
            "annotators_z": observed_shift(*_standardised(mb, ma, count_scale), stat="mean",
                                           concepts=list(count_scale.index), seed=args.seed),
            "directions": observed_shift(*_standardised(mb, ma, dir_scale), stat="mean",
                                         concepts=list(dir_scale.index), seed=args.seed),
            "sae_clusters": observed_shift(mb, ma, stat="mean", concepts=chosen_clusters, seed=args.seed),
        }
        stats, figs, rows, skipped = {}, {}, [], {}
        for lens_name in pred:
            p, o = pred[lens_name], obs[lens_name]
            labels = {k: (label_of.get(k) or k.split(":", 1)[1]) for k in p.index}
            try:
                stats[lens_name], figs[lens_name] = compare(p, o, labels=labels,
                                                            title=f"{lens_name}: predicted vs observed shift ({tag})")
            except ValueError as err:  # e.g. fewer than 3 concepts in a --quick run
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
            "n_concepts": {k: int(v["n"]) for k, v in stats.items()},
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
        if i_lr:  # a fresh pre-DPO policy for every learning rate
            policy = load_model()
        run_dir = Path(args.run_dir) / f"lr{lr:g}-seed{args.seed}"
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
        epochs = range(1, args.epochs + 1) if args.eval_every_epoch else [args.epochs]
        for ep in epochs:
            if ep < args.epochs:
                load_train_run(run_dir / f"checkpoint-{ep * steps_per_epoch:06d}", model=policy)
            elif args.eval_every_epoch and args.epochs > 1:
                load_train_run(run_dir, model=policy)  # back to the final weights
            tag = f"lr={lr:g}, epoch {ep}"
            res = evaluate(tag)
            dose = {"lr": lr, "epoch": ep, "steps": ep * steps_per_epoch, **{
                k: res[k] for k in ("r2_by_lens", "distinct2_ratio", "intended_learning_delta")},
                "repetition_after": res["repetition_rate"]["after"],
                "annotator_rate_after": {r["concept"]: round(r["after"], 4) for r in res["per_concept"]
                                         if r["lens"] == "annotators"}}
            doses.append(dose)
            print(json.dumps(dose), flush=True)
            if i_lr == 0 and ep == args.epochs:
                headline = {**res, "training": trainings[f"{lr:g}"]}
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are ~0.5 GB each
    for lens_name, fig in headline.pop("_figs").items():
        save_figure(fig, f"06_predicted_vs_observed_{lens_name}")
    after = headline.pop("_after")
    out = {
        **headline,
        "dose_response": doses,
        "training_by_lr": trainings,
        "directions": dir_rows,
        "cluster_matches": {c: {"cluster": col, "train_auroc": round(au, 3)} for c, (col, au) in match.items()},
        "n_clusters": n_clusters,
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
    print(json.dumps({k: out[k] for k in ("r2_by_lens", "n_concepts", "distinct2_ratio",
                                          "intended_learning_delta", "total_seconds")}))
    return out


if __name__ == "__main__":
    main()
