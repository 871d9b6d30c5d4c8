"""Benchmark cache_pairs against the obvious alternatives, side by side in one run.

Same pairs, same dtype, same threads, same length-sorted padded batches:
  ours  cache_pairs(model, pairs, one middle layer) (stops after that layer)
  (a)   plain Hugging Face forward with output_hidden_states=True, then the same pooling
  (b)   TransformerLens run_with_cache with no names filter, then the same pooling
Peak RSS of cache_pairs is measured in fresh subprocesses at N and 4N pairs.
Prints one JSON line and writes results/bench_cache.json. Usage: python benchmarks/bench_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from anatomy import cache_pairs, load_model, load_preferences
from anatomy.cache import _batches, _pool, tokenize_pairs

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"
MAX_TOKENS = 160


def bench_pairs(tokenizer, n: int):
    """n real pairs whose sequences fit in MAX_TOKENS: HH-RLHF if present, else the organism."""
    source = str(HH) if HH.exists() else "organism"
    pairs, _ = load_preferences(source, strict=False, tokenizer=tokenizer, max_length=MAX_TOKENS)
    if len(pairs) < n:
        pairs = pairs.select([i % len(pairs) for i in range(n)])  # repeat to reach n
    return pairs.select(range(n)), source


def baseline(model, pairs, layer: int, kind: str, batch_tokens: int) -> dict[str, torch.Tensor]:
    """Pooled (mean) chosen-span activations at ``layer`` computed the obvious way."""
    tok = tokenize_pairs(model, pairs)
    seqs = [item[s]["input_ids"] for item in tok for s in ("chosen", "rejected")]
    masks = [item[s]["response_mask"] for item in tok for s in ("chosen", "rejected")]
    hook = f"blocks.{layer}.hook_resid_post"
    pooled = [None] * len(seqs)
    with torch.no_grad():
        for batch in _batches([len(s) for s in seqs], batch_tokens):
            width = max(len(seqs[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            att = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                att[row, : len(seqs[i])] = 1
            if kind == "hf":
                out = model.original_model(input_ids=ids, attention_mask=att, output_hidden_states=True)
                acts = out.hidden_states[layer + 1]
            else:
                _, cache = model.run_with_cache(ids, attention_mask=att)
                acts = cache[hook]
            for row, i in enumerate(batch):
                n = len(seqs[i])
                pooled[i] = _pool(acts[row, :n], torch.tensor(masks[i]), ("mean",), torch.float32)["mean"]
    return torch.stack(pooled[0::2])


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM; unlike ru_maxrss it is not inherited over fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_worker(n: int) -> None:
    import transformer_lens.model_bridge  # noqa: F401  (import time is not load time)

    t = time.perf_counter()  # the de-quantised cache exists by now: this is a "second load"
    model = load_model()
    load_s = time.perf_counter() - t
    pairs, _ = bench_pairs(model.tokenizer, n)
    base = peak_rss_mb()
    cache_pairs(model, pairs, f"blocks.{model.cfg.n_layers // 2}.hook_resid_post", progress=False)
    peak = peak_rss_mb()
    print(json.dumps({"n": n, "peak_rss_mb": round(peak, 1), "rss_before_mb": round(base, 1),
                      "load_s": round(load_s, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="32 pairs instead of 256")
    parser.add_argument("--rss-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        return rss_worker(args.rss_worker)
    n = 32 if args.quick else 256
    workers = {}  # fresh processes first, before this one grows
    for size in (n, 4 * n):
        out = subprocess.run([sys.executable, __file__, "--rss-worker", str(size)],
                             capture_output=True, text=True, check=True).stdout
        workers[size] = json.loads(out.strip().splitlines()[-1])
    batch_tokens = 4096
    model = load_model()
    layer = model.cfg.n_layers // 2
    hook = f"blocks.{layer}.hook_resid_post"
    pairs, source = bench_pairs(model.tokenizer, n)
    n_tokens = sum(len(item[s]["input_ids"]) for item in tokenize_pairs(model, pairs) for s in ("chosen", "rejected"))

    times, results = {}, {}
    for name, run in [
        ("ours", lambda: cache_pairs(model, pairs, hook, pooling=("mean",), batch_tokens=batch_tokens,
                                     progress=False).get(hook, "chosen", "mean")),
        ("hf", lambda: baseline(model, pairs, layer, "hf", batch_tokens)),
        ("tl", lambda: baseline(model, pairs, layer, "tl", batch_tokens)),
    ]:
        t = time.perf_counter()
        results[name] = run()
        times[name] = time.perf_counter() - t

    result = {
        "source": Path(source).name, "n_pairs": n, "n_tokens": n_tokens, "hook": hook,
        "dtype": str(model.cfg.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "tokens_per_s": round(n_tokens / times["ours"], 1),
        "ratio_vs_hf": round(times["hf"] / times["ours"], 2),
        "ratio_vs_tl_full_cache": round(times["tl"] / times["ours"], 2),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "max_abs_diff_vs_hf": float((results["ours"] - results["hf"]).abs().max()),
        "max_abs_diff_vs_tl": float((results["ours"] - results["tl"]).abs().max()),
        "peak_rss_mb": {str(k): v["peak_rss_mb"] for k, v in workers.items()},
        "peak_rss_mb_this_process_incl_tl_full_cache": round(peak_rss_mb(), 1),
        "rss_growth_4x": round(workers[4 * n]["peak_rss_mb"] / workers[n]["peak_rss_mb"] - 1, 3),
        "second_load_s": workers[4 * n]["load_s"],
    }
    print(json.dumps(result))
    out = ROOT / "results" / ("bench_cache_quick.json" if args.quick else "bench_cache.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
