"""Benchmark the whole `diagnose` against its floor, a bare forward pass over the same tokens.

Same seeded pairs of the organism's train split for both (``--n-pairs``, default all 2,270):

  floor     the Hugging Face model's own forward (no hooks, no SAE, no TransformerBridge) over
            every pair's two sequences, prompt + chosen and prompt + rejected, formatted with the
            chat template as diagnose formats them, in length-sorted batches of at most 4,096
            padded tokens, through the layers up to the SAE's (layer 12 of 30 for the shipped
            SAE: the least any SAE reading must run), under ``torch.no_grad``;
  diagnose  ``anatomy.diagnose(pairs)`` with the shipped recipe and no feature cache: the
            forward with hooks, SAE encoding and span summaries, the gate, clustering (NMI graph,
            Leiden sweep), both views with their tests, the length finding, and the labels (one
            more streamed pass over 200 pairs).

The goal is a ratio <= 1.5. Both are timed in one process, one after the other, as wall time
and as this process's CPU time (``time.process_time``: less sensitive to other jobs on a
shared machine). Each finished part is written to ``results/bench_diagnose.json`` at once; a
rerun with the same pairs skips a finished floor. Prints one JSON line.

Usage: python benchmarks/bench_diagnose.py [--n-pairs N] [--threads T] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def sample(n: int | None, seed: int) -> list[dict]:
    from anatomy import load_preferences

    rows = load_preferences("organism", split="train").to_list()
    if n is not None and n < len(rows):
        rows = [rows[int(i)] for i in np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])]
    return rows


@torch.no_grad()
def bare_forward(hf, tokenizer, pairs: list[dict], n_layers: int, *, batch_tokens: int = 4096) -> dict:
    """The floor: ``hf``'s first ``n_layers`` decoder layers over every pair's two sequences."""
    from anatomy.models import format_pair

    seqs = [format_pair(tokenizer, p["prompt"], p[side])["input_ids"] for p in pairs for side in ("chosen", "rejected")]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(seqs[i]) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    backbone = hf.model
    layers = backbone.layers
    backbone.layers = layers[:n_layers]  # the SAE's layer is the last one run
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            width = max(len(seqs[i]) for i in b)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            mask = torch.zeros((len(b), width), dtype=torch.long)
            for r, i in enumerate(b):
                ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, :len(seqs[i])] = 1
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        backbone.layers = layers
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "sequences": len(seqs),
            "tokens": int(sum(len(s) for s in seqs)), "batches": len(batches), "layers": n_layers}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pairs", type=int, default=None, help="organism train pairs (default: all 2,270)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_diagnose.json"))
    ap.add_argument("--save", default=None, help="also save the Diagnosis to this directory (after timing)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from anatomy import diagnose, load_model, load_sae
    from anatomy.fingerprint import pairs_digest
    from anatomy.models import _unwrapped
    from anatomy.saes import sae_hook

    pairs = sample(args.n_pairs, args.seed)
    key = {"n_pairs": len(pairs), "pairs_digest": pairs_digest(pairs), "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(out.read_text()) if out.exists() else {}
    if {k: record.get(k) for k in key} != key:
        record = dict(key)
    model, sae = load_model(), load_sae()
    layer = int(sae_hook(sae).split(".")[1])
    if "floor" not in record:
        record["floor"] = bare_forward(_unwrapped(model), model.tokenizer, pairs, layer + 1)
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"floor: {record['floor']}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    diagnosis = diagnose(pairs, model=model, sae=sae, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record["diagnose"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                          "stages_s": {k: round(v, 1) for k, v in diagnosis.timings.items()},
                          "global_rows": len(diagnosis.ranked)}
    record["ratio"] = round(wall / record["floor"]["wall_s"], 2)
    record["ratio_cpu"] = round(cpu / record["floor"]["cpu_s"], 2)
    record["goal"] = 1.5
    out.write_text(json.dumps(record, indent=1) + "\n")
    if args.save:
        diagnosis.save(args.save)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
