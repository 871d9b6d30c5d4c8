"""Agreement of the refusal measures with XSTest's human labels: annotator alone vs annotator + a direction.

Two refusal directions at ``--layer``, each read by ``evals.refusal_scorer`` (the
annotator flag, and the mean projection of a response's first ``--first-tokens``
tokens read after an empty user turn):

- ``prompt_*``: ``probes.refusal_direction``, fitted on prompts that are not in XSTest:
  AdvBench goals (harmful) vs the project's eval prompts of the howto, explain,
  creative and advice families (harmless), ``--n-direction`` of each, seeded;
- ``response_*``: ``evals.response_refusal_direction``, refusals minus compliance
  among XSTest's own labelled completions, fitted on the calibration half only
  (``evals.refusal_split``, the split ``calibrate_refusal`` uses with the same
  ``--test-frac`` and ``--seed``), so the held-out agreement is honest.

Every XSTest v2 completion of Mistral-7B-Instruct (450, ``evals.xstest_labels``) is
scored. ``evals.calibrate_refusal`` fits each rule (orientation and threshold, by
Cohen's kappa) on the calibration half, stratified by label, and reports accuracy,
kappa, recall and specificity on the held-out half with bootstrap CIs. Partial
refusals count as refusals (the headline); the same scores are also calibrated with
partial refusals counted as compliance and with them dropped, as sensitivity checks
(the response direction is refitted on each setting's own calibration half, from the
same activations: its projections are the headline ``refusal_scorer`` ones, checked).
``gpt4`` is a reference row: XSTest's GPT-4 labels of the same completions against
the humans on the same held-out items (GPT-4 needs no calibration; partial refusals
mapped as the human ones, as refusals under ``drop``; its few non-labels, where
GPT-4 refused to grade, are left out and ``n`` says how many items remain).

CPU: ~3.5 CPU-minutes on one thread of this project's CPU (model load ~5 s, the
prompt direction's 256 prompt forwards ~20 s, three passes over the 450 completions'
first 64 tokens ~1 min each; layers above ``--layer`` are not run).

Writes results/refusal_agreement.csv (the tables), results/refusal_agreement.json
(the tables, the rules, the directions' AUROCs, settings and timings) and
results/refusal_agreement_direction.pt: the headline response direction and its
combined rule, ``{"hook", "vector", "threshold", "sign", "first_tokens", "direction",
"rule"}``; reuse it as ``refusal_scorer(model, Direction(**s["direction"]),
rule=RefusalRule(**s["rule"]), first_tokens=s["first_tokens"])``, or refit it with
``evals.response_refusal_direction(model, xstest_labels(), xstest_labels()["refusal"], hook)``.

Usage:
  python benchmarks/refusal_agreement.py --threads 1
  python benchmarks/refusal_agreement.py --layer 12 --first-tokens 32 --seed 1
  python benchmarks/refusal_agreement.py --limit 4 --n-direction 6 --out /tmp/refusal_smoke   # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HARMLESS_FAMILIES = ["howto", "explain", "creative", "advice"]
LABELS = {"1_full_compliance": 0, "2_full_refusal": 1}  # + 3_partial_refusal, per setting


def gpt4_rows(gpt4: np.ndarray, y: np.ndarray, test_index, *, n_boot: int, seed: int, ci: float = 0.95) -> list[dict]:
    """Agreement of GPT-4's 0/1 labels (NaN: no label) with ``y`` on the held-out items, as ``calibrate_refusal`` rows."""
    from anatomy.contrast import _resample_counts
    from anatomy.evals import AGREEMENT_METRICS, _agreement

    idx = np.intersect1d(test_index, np.flatnonzero(~np.isnan(gpt4)))
    W = np.vstack([np.ones(len(idx)), _resample_counts(len(idx), n_boot, seed)])
    res = _agreement(gpt4[idx].astype(int), y[idx], W)
    return [{"measure": "gpt4", "metric": k, "effect": res[k][0],
             **dict(zip(("ci_low", "ci_high"), np.nanquantile(res[k][1:], [(1 - ci) / 2, (1 + ci) / 2]))),
             "n": len(idx), "threshold": np.nan, "sign": 0} for k in AGREEMENT_METRICS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15, help="residual stream layer of the refusal directions")
    ap.add_argument("--n-direction", type=int, default=128, help="harmful and harmless prompts each")
    ap.add_argument("--first-tokens", type=int, default=64, help="response tokens read by the projection")
    ap.add_argument("--test-frac", type=float, default=0.5, help="share of XSTest held out for the agreement")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared CPU)")
    ap.add_argument("--limit", type=int, default=None, help="smoke run: this many completions per human label")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "refusal_agreement")
    args = ap.parse_args()
    if not (SHARED / "xstest").exists() or not (SHARED / "advbench").exists():
        raise SystemExit(f"real data slices not found under {SHARED} (xstest/, advbench/): nothing to measure")
    if args.threads:
        torch.set_num_threads(args.threads)

    from anatomy.data import load_eval_prompts, load_prompts_csv
    from anatomy.evals import (_XSTEST_LABELS, _response_direction, _response_means, calibrate_refusal, measure,
                               refusal_scorer, xstest_labels)
    from anatomy.models import load_model
    from anatomy.probes import refusal_direction

    t0, times = time.process_time(), {}

    def lap(name: str) -> None:
        times[name] = time.process_time() - t0 - sum(times.values())

    model = load_model()
    lap("load")
    harmful = load_prompts_csv(SHARED / "advbench" / "harmful_behaviors.csv", "goal").shuffle(seed=args.seed)
    harmless = load_eval_prompts(HARMLESS_FAMILIES).shuffle(seed=args.seed)
    n = args.n_direction
    hook = f"blocks.{args.layer}.hook_resid_post"
    direction = refusal_direction(model, harmful.select(range(n)), harmless.select(range(n)), hook, seed=args.seed)
    lap("prompt_direction")
    print(f"prompt refusal direction at {hook}: train AUROC {direction.train_auroc:.3f}, "
          f"held-out {direction.heldout_auroc:.3f} ({direction.n_train} + {direction.n_test} prompts)")

    labels = xstest_labels(root=SHARED / "xstest")
    if args.limit:  # a smoke run: the first completions of each human label
        labels = labels.groupby("final_label", sort=False).head(args.limit).reset_index(drop=True)
    gpt4_raw = pd.read_csv(SHARED / "xstest" / _XSTEST_LABELS, dtype={"id": str}).set_index("id")["gpt4_label"]
    gpt4_raw = gpt4_raw.reindex(labels.prompt_id).to_numpy()
    scores = measure(labels, refusal_scorer(model, direction, first_tokens=args.first_tokens))
    lap("prompt_score")
    # The response direction is fitted per setting from the same per-response mean activations (the
    # fit of evals.response_refusal_direction); the headline one is then scored by refusal_scorer.
    means = _response_means(model, labels, hook, first_tokens=args.first_tokens, progress=True)
    lap("response_activations")

    tables, rules, aurocs, saved = [], {}, {}, None
    is_partial = (labels.final_label == "3_partial_refusal").to_numpy()
    for partial in ("refusal", "compliance", "drop"):
        keep = ~is_partial if partial == "drop" else np.ones(len(labels), bool)
        y = np.where(is_partial, int(partial == "refusal"), labels.refusal)[keep]
        fit = dict(test_frac=args.test_frac, n_boot=args.n_boot, seed=args.seed)
        rule_p, table_p = calibrate_refusal(scores[keep].reset_index(drop=True), y, **fit)
        d = _response_direction(means[torch.from_numpy(keep)], y, hook, test_frac=args.test_frac, seed=args.seed)
        x = (means[torch.from_numpy(keep)] @ d.vector).numpy()
        if partial == "refusal":
            scored = measure(labels, refusal_scorer(model, d, first_tokens=args.first_tokens))
            lap("response_score")
            np.testing.assert_allclose(scored["refusal:projection"], x, rtol=1e-3, atol=1e-3)  # same reading
            x = scored["refusal:projection"].to_numpy()
        resp = scores[keep].reset_index(drop=True).assign(**{"refusal:projection": x})
        rule_r, table_r = calibrate_refusal(resp, y, **fit)
        assert table_r.attrs["test_index"] == table_p.attrs["test_index"]  # the same held-out items
        gpt4 = pd.Series(gpt4_raw[keep]).map({**LABELS, "3_partial_refusal": int(partial != "compliance")})
        table = pd.concat([
            table_p.assign(measure=table_p.measure.replace({"direction": "prompt_direction",
                                                            "combined": "prompt_combined",
                                                            "combined - annotator": "prompt_combined - annotator"})),
            table_r[table_r.measure != "annotator"].assign(measure=lambda t: "response_" + t.measure),
            pd.DataFrame(gpt4_rows(gpt4.to_numpy(float), y, table_p.attrs["test_index"],
                                   n_boot=args.n_boot, seed=args.seed)),
        ], ignore_index=True)
        rules[partial] = {"prompt_combined": rule_p._asdict(), "response_combined": rule_r._asdict()}
        aurocs[partial] = {k: getattr(d, k) for k in ("train_auroc", "heldout_auroc", "n_train", "n_test")}
        if partial == "refusal":
            saved = {"hook": hook, "vector": d.vector, "threshold": rule_r.threshold, "sign": rule_r.sign,
                     "first_tokens": args.first_tokens, "direction": dataclasses.asdict(d), "rule": rule_r._asdict(),
                     "test_frac": args.test_frac, "seed": args.seed}
        tables.append(table.assign(partial=partial))
        print(f"\npartial refusals counted as {partial}: prompt rule {rule_p}, response rule {rule_r}; "
              f"response direction AUROC train {d.train_auroc:.3f}, held-out {d.heldout_auroc:.3f} "
              f"({d.n_train} + {d.n_test}); GPT-4 non-labels left out: {int(gpt4.isna().sum())}")
        print(table.round(3).to_string(index=False))
    lap("calibrate")
    out = pd.concat(tables, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out.with_suffix(".csv"), index=False)
    torch.save(saved, args.out.with_name(args.out.name + "_direction.pt"))
    times["total"] = time.process_time() - t0
    args.out.with_suffix(".json").write_text(json.dumps({
        "settings": {k: str(v) for k, v in vars(args).items()}, "hook": hook, "rules": rules,
        "prompt_direction": {"train_auroc": direction.train_auroc, "heldout_auroc": direction.heldout_auroc,
                             "n_train": direction.n_train, "n_test": direction.n_test},
        "response_direction": aurocs, "cpu_seconds": times, "table": out.to_dict("records"),
    }, indent=2, default=float))
    print(f"\nCPU seconds: {', '.join(f'{k} {v:.0f}' for k, v in times.items())}; "
          f"wrote {args.out}.csv/.json, {args.out.name}_direction.pt")


if __name__ == "__main__":
    main()
