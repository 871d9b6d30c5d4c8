"""Our DPO step (train_dpo) against TRL's DPOTrainer, and ShapedDPOTrainer's overhead over DPOTrainer.

Side by side in one run, each trainer in a fresh subprocess (so peak RSS is its
own): the default model (SmolLM2-135M-Instruct, float32, CPU), the same pairs (the
shortest organism training pairs), the same batches (in dataset order, no
shuffling or length grouping on either side), the same optimizer (AdamW, constant
learning rate, gradient clipping at 1.0), full fine-tuning, and the reference
log-probs computed once before training on both sides (TRL:
``precompute_ref_log_probs=True``, so no second model is held, as in train_dpo).
ShapedDPOTrainer runs with per-pair offsets, weights and token masks.

Measured per trainer: seconds per optimizer step (the ratios use each trainer's
fastest step: on a shared CPU other jobs slow the rest; all steps are printed), the
reference pass, and peak RSS (VmHWM). Results go to a JSON-lines file as each
trainer finishes (a rerun skips finished ones); the summary is one JSON line with
``ours_over_trl`` (step time) and ``shaped_over_trl``, with the memory beside them.
Each trainer loads the model itself: the ratios exclude loading and tokenisation.

Usage: python benchmarks/bench_train.py [--pairs 8 --batch-size 4 --steps 2 --out results/bench_train.jsonl]
(about 5-10 min on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAINERS = ("ours", "trl", "shaped")
BETA, LR = 0.1, 5e-6


def vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_pairs(tokenizer, n: int) -> list[dict]:
    """The ``n`` shortest of the first 200 organism training pairs (as a plain list, in that order)."""
    from anatomy.data import load_preferences
    from anatomy.models import format_pair

    rows = list(load_preferences("organism", split="train", limit=200))
    size = {p["id"]: max(len(format_pair(tokenizer, p["prompt"], p[s])["input_ids"]) for s in ("chosen", "rejected"))
            for p in rows}
    return sorted(rows, key=lambda p: size[p["id"]])[:n]


def shaping(tokenizer, pairs) -> dict:
    """Offsets, weights and token masks (the first response token of each side masked), all non-trivial."""
    import numpy as np

    from anatomy.models import format_pair

    masks = []
    for p in pairs:
        sides = []
        for side in ("chosen", "rejected"):
            m = [1] * sum(format_pair(tokenizer, p["prompt"], p[side])["response_mask"])
            m[0] = 0
            sides.append(m)
        masks.append(tuple(sides))
    n = len(pairs)
    return {"offsets": np.linspace(-1, 1, n), "weights": np.linspace(0.5, 1.5, n), "token_masks": masks}


def run_ours(model, tok, pairs, args) -> dict:
    from anatomy.train import pair_logprobs, train_dpo

    kw = dict(beta=BETA, lr=LR, batch_size=args.batch_size, shuffle=False, group_by_length=False, tokenizer=tok,
              progress=False)
    t = time.perf_counter()
    ref = pair_logprobs(model, pairs, batch_size=args.batch_size, tokenizer=tok)  # what train_dpo runs first
    ref_s = time.perf_counter() - t
    res = train_dpo(model, pairs[: args.steps * args.batch_size], ref_logps=ref[: args.steps * args.batch_size], **kw)
    return {"ref_seconds": ref_s, "step_seconds": list(res.history.seconds)}


def run_trl(model, tok, pairs, args, *, shaped: bool) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from anatomy.trl import ShapedDPOTrainer

    steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            steps.append(time.perf_counter() - self.t)

    def in_order(base):
        class Timed(base):
            ref_seconds = 0.0

            def _get_train_sampler(self, train_dataset=None):  # the same batches as train_dpo(shuffle=False)
                return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

            def _precompute_ref_logps(self, dataset, name, batch_size):
                t = time.perf_counter()
                out = super()._precompute_ref_logps(dataset, name, batch_size)
                Timed.ref_seconds += time.perf_counter() - t
                return out

        return Timed

    cfg = trl.DPOConfig(
        output_dir=str(Path(args.out).parent / "trl-bench"), beta=BETA, learning_rate=LR, lr_scheduler_type="constant",
        per_device_train_batch_size=args.batch_size, max_steps=args.steps, max_grad_norm=1.0, weight_decay=0.0,
        bf16=False, use_cpu=True, report_to="none", max_length=None, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, precompute_ref_log_probs=True, loss_type=["sigmoid"],
    )
    if shaped:
        trainer = in_order(ShapedDPOTrainer)(model, None, cfg, pairs=pairs, processing_class=tok,
                                             callbacks=[StepTimer()], **shaping(tok, pairs))
    else:
        rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                 "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
        trainer = in_order(trl.DPOTrainer)(model, None, cfg, train_dataset=Dataset.from_list(rows),
                                           processing_class=tok, callbacks=[StepTimer()])
    ref_s = type(trainer).ref_seconds
    trainer.train()
    return {"ref_seconds": ref_s, "step_seconds": steps}


def child(name: str, args) -> None:
    import torch

    from anatomy.models import load_hf_model

    torch.manual_seed(0)
    model, tok = load_hf_model(device="cpu")
    pairs = bench_pairs(tok, args.pairs)
    t = time.perf_counter()
    out = run_ours(model, tok, pairs, args) if name == "ours" else run_trl(model, tok, pairs, args,
                                                                             shaped=name == "shaped")
    steps = sorted(out["step_seconds"])
    out.update(trainer=name, wall_seconds=time.perf_counter() - t, peak_rss_mb=vm_hwm_mb(),
               median_step_seconds=steps[len(steps) // 2], threads=torch.get_num_threads(),
               pairs=len(pairs), batch_size=args.batch_size, steps=args.steps)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "bench_train.jsonl"))
    ap.add_argument("--child", choices=TRAINERS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            if (r["pairs"], r["batch_size"], r["steps"]) == (args.pairs, args.batch_size, args.steps):
                done[r["trainer"]] = r
    for name in TRAINERS:
        if name in done:
            continue
        cmd = [sys.executable, __file__, "--child", name, "--pairs", str(args.pairs), "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        done[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(out, "a") as f:
            f.write(json.dumps(done[name]) + "\n")
    fastest = {k: min(done[k]["step_seconds"]) for k in TRAINERS}  # on a shared CPU, other jobs slow the rest
    print(json.dumps({
        "ours_over_trl": round(fastest["ours"] / fastest["trl"], 3),
        "shaped_over_trl": round(fastest["shaped"] / fastest["trl"], 3),
        "ref_ours_over_trl": round(done["ours"]["ref_seconds"] / done["trl"]["ref_seconds"], 3),
        "step_seconds_fastest": {k: round(v, 2) for k, v in fastest.items()},
        "step_seconds_all": {k: [round(x, 2) for x in done[k]["step_seconds"]] for k in TRAINERS},
        "ref_seconds": {k: round(done[k]["ref_seconds"], 2) for k in TRAINERS},
        "peak_rss_mb": {k: round(done[k]["peak_rss_mb"]) for k in TRAINERS},
        "pairs": args.pairs, "batch_size": args.batch_size, "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
