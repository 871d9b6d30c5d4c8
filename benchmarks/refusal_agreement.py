"""Agreement of the refusal measure with XSTest's human labels: annotator alone vs annotator + direction.

The refusal direction (``probes.refusal_direction``) is fitted on prompts that are
not in XSTest: AdvBench goals (harmful) vs the project's eval prompts of the howto,
explain, creative and advice families (harmless), ``--n-direction`` of each, seeded.
Every XSTest v2 completion of Mistral-7B-Instruct (450, ``evals.xstest_labels``) is
then scored by ``evals.refusal_scorer`` (the annotator flag, and the mean projection
of its first ``--first-tokens`` tokens read after an empty user turn).
``evals.calibrate_refusal`` fits the rule (orientation and threshold, by Cohen's
kappa) on half of the completions, stratified by label, and reports accuracy, kappa,
recall and specificity on the other half with bootstrap CIs. Partial refusals count
as refusals (the headline); the same scores are also calibrated with partial
refusals counted as compliance and with them dropped, as sensitivity checks.

CPU: ~3 CPU-minutes on one thread of this project's CPU (model load ~5 s, the
direction's 256 prompt forwards ~30 s, the 450 completions' 64-token forwards ~2 min:
extrapolated from 8 completions in 2.3 CPU-s; layers above ``--layer`` are not run).

Writes results/refusal_agreement.csv (the tables) and results/refusal_agreement.json
(the tables, the rules, the direction's AUROCs, settings and timings).

Usage:
  python benchmarks/refusal_agreement.py --threads 1
  python benchmarks/refusal_agreement.py --layer 12 --first-tokens 32 --seed 1
  python benchmarks/refusal_agreement.py --limit 4 --n-direction 6 --out /tmp/refusal_smoke   # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HARMLESS_FAMILIES = ["howto", "explain", "creative", "advice"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15, help="residual stream layer of the refusal direction")
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
    from anatomy.evals import calibrate_refusal, measure, refusal_scorer, xstest_labels
    from anatomy.models import load_model
    from anatomy.probes import refusal_direction

    t0, times = time.process_time(), {}
    model = load_model()
    times["load"] = time.process_time() - t0
    harmful = load_prompts_csv(SHARED / "advbench" / "harmful_behaviors.csv", "goal").shuffle(seed=args.seed)
    harmless = load_eval_prompts(HARMLESS_FAMILIES).shuffle(seed=args.seed)
    n = args.n_direction
    hook = f"blocks.{args.layer}.hook_resid_post"
    direction = refusal_direction(model, harmful.select(range(n)), harmless.select(range(n)), hook, seed=args.seed)
    times["direction"] = time.process_time() - t0 - times["load"]
    print(f"refusal direction at {hook}: train AUROC {direction.train_auroc:.3f}, "
          f"held-out {direction.heldout_auroc:.3f} ({direction.n_train} + {direction.n_test} prompts)")

    labels = xstest_labels(root=SHARED / "xstest")
    if args.limit:  # a smoke run: the first completions of each human label
        labels = labels.groupby("final_label", sort=False).head(args.limit).reset_index(drop=True)
    scores = measure(labels, refusal_scorer(model, direction, first_tokens=args.first_tokens))
    times["score"] = time.process_time() - t0 - times["load"] - times["direction"]
    tables, rules = [], {}
    is_partial = (labels.final_label == "3_partial_refusal").to_numpy()
    for partial in ("refusal", "compliance", "drop"):
        keep = ~is_partial if partial == "drop" else np.ones(len(labels), bool)
        y = np.where(is_partial, int(partial == "refusal"), labels.refusal)[keep]
        rule, table = calibrate_refusal(scores[keep].reset_index(drop=True), y,
                                        test_frac=args.test_frac, n_boot=args.n_boot, seed=args.seed)
        rules[partial] = rule._asdict()
        tables.append(table.assign(partial=partial))
        print(f"\npartial refusals counted as {partial}: rule {rule}")
        print(table.round(3).to_string(index=False))
    out = pd.concat(tables, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out.with_suffix(".csv"), index=False)
    times["total"] = time.process_time() - t0
    args.out.with_suffix(".json").write_text(json.dumps({
        "settings": {k: str(v) for k, v in vars(args).items()}, "hook": hook, "rules": rules,
        "direction": {"train_auroc": direction.train_auroc, "heldout_auroc": direction.heldout_auroc,
                      "n_train": direction.n_train, "n_test": direction.n_test},
        "cpu_seconds": times, "table": out.to_dict("records"),
    }, indent=2, default=float))
    print(f"\nCPU seconds: {', '.join(f'{k} {v:.0f}' for k, v in times.items())}; wrote {args.out}.csv/.json")


if __name__ == "__main__":
    main()
