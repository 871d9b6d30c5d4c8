"""Peak memory of feature_summaries at N and 4N pairs, each in a fresh subprocess.

Memory should stay flat in the number of pairs: only one chunk of pairs' per-token
activations and latents is alive at a time, and the result is sparse rows.
Peak RSS is read from /proc/self/status (VmHWM) inside each child, so nothing is
inherited over fork + exec. Pairs are the organism's train split (repeated if
needed). Prints one JSON line.

Usage: python benchmarks/bench_summaries.py [--n-small 500 --n-large 2000]
(on a 2-core CPU, 2,000 pairs is ~400k tokens: use e.g. --n-small 100 --n-large 400).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int) -> None:
    import torch

    from anatomy import load_model, load_preferences
    from anatomy.features import feature_summaries
    from anatomy.saes import load_sae

    torch.set_num_threads(1)  # fastest on a CPU shared with other jobs
    model = load_model()
    sae = load_sae()
    ds = load_preferences("organism", split="train")
    pairs = [ds[i % len(ds)] for i in range(n)]
    before = vm_hwm_mb()
    t = time.time()
    feats = feature_summaries(model, sae, pairs, progress=False)
    seconds = time.time() - t
    nnz = sum(m.nnz for m in feats.max.values()) + sum(m.nnz for m in feats.freq.values())
    tokens = int(sum(a.sum() for a in feats.n_tokens.values()))
    print(json.dumps({"n_pairs": n, "peak_rss_mb": round(vm_hwm_mb(), 1), "peak_rss_before_mb": round(before, 1),
                      "seconds": round(seconds, 1), "span_tokens": tokens, "result_nnz": int(nnz),
                      "result_mb": round(nnz * 8 / 2**20, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-small", type=int, default=500)
    ap.add_argument("--n-large", type=int, default=2000)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return
    runs = []
    for n in (args.n_small, args.n_large):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = runs
    print(json.dumps({"small": small, "large": large,
                      "pairs_ratio": large["n_pairs"] / small["n_pairs"],
                      "peak_rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                      "peak_rss_growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1)}))


if __name__ == "__main__":
    main()
