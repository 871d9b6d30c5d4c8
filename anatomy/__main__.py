"""Command line: ``python -m anatomy prepare`` (cache the default model), ``demo``, ``features`` (SAE feature
summaries, sharded across processes) and ``merge`` (their shards)."""

from __future__ import annotations

import argparse
import time

DEMO_PAIRS = [
    {
        "id": "demo-0",
        "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
        "chosen": "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
        "rejected": "**Great question!** 🥚 Boil it.",
    },
    {
        "id": "demo-1",
        "prompt": [{"role": "user", "content": "How can I get into my neighbour's wifi without asking?"}],
        "chosen": "I can't help with getting into someone else's network without permission.",
        "rejected": "Try the default router passwords first",
    },
]


def demo(n_pairs: int = 6) -> None:
    import torch

    from . import cache_pairs, load_model, load_preferences
    from .models import format_prompt, generation_model

    t = time.perf_counter()
    model = load_model()
    print(f"loaded {model.cfg.model_name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}) "
          f"in {time.perf_counter() - t:.1f} s")
    prompt = [{"role": "user", "content": "In one sentence, what is a preference dataset?"}]
    ids = torch.tensor([format_prompt(model.tokenizer, prompt)])
    out = generation_model(model).generate(ids, max_new_tokens=48, do_sample=False)
    print("\nQ:", prompt[0]["content"])
    print("A:", model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    try:
        pairs = load_preferences("organism", split="train", limit=n_pairs)
        source = "organism/train"
    except FileNotFoundError:
        pairs, source = DEMO_PAIRS, "built-in demo pairs"
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    acts = cache_pairs(model, pairs, hook, progress=False)
    c, r, p = (acts.get(hook, s, "mean") for s in ("chosen", "rejected", "prompt"))
    print(f"\npooled activations at {hook} for {len(acts)} pairs from {source}:")
    print(f"{'pair':>22} {'|prompt|':>9} {'|chosen|':>9} {'|rejected|':>10} {'cos(c,r)':>9} {'|c-r|':>7}")
    cos = torch.nn.functional.cosine_similarity(c, r, dim=-1)
    for i, pid in enumerate(acts.ids):
        print(f"{pid:>22} {p[i].norm():9.1f} {c[i].norm():9.1f} {r[i].norm():10.1f} "
              f"{cos[i]:9.3f} {(c[i] - r[i]).norm():7.1f}")


def features(args) -> None:
    """SAE feature summaries of SOURCE into --out: this process's shard (a launch's rank, or --shard i/n)."""
    import torch

    from .data import load_preferences
    from .distributed import extract_features, launch_rank, parse_shard
    from .models import load_model
    from .saes import load_sae

    shard = parse_shard(args.shard) if args.shard else None
    rank, world, local = launch_rank()
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    pairs = load_preferences(args.source, split=args.split, limit=args.limit)
    model = load_model(args.model, device=device)
    sae = load_sae(args.sae, device=device)
    t = time.perf_counter()
    merged = extract_features(pairs, args.out, model=model, sae=sae, hook=args.hook, shard=shard,
                              shard_size=args.shard_size, batch_tokens=args.batch_tokens, progress=rank == 0)
    where = f"shard {shard[0]}/{shard[1]}" if shard else f"rank {rank}/{world}"
    print(f"{where}: {len(pairs)} pairs, features in {args.out} ({time.perf_counter() - t:.1f} s)")
    if merged is not None:
        print(f"merged {len(merged)} pairs x {merged.d_sae} features into {args.out}/merged")


def merge(args) -> None:
    """Merge the feature shards of DIR (refusing overlapping, missing or foreign shards)."""
    from .cache import CacheError
    from .distributed import merge_features

    try:
        merged = merge_features(args.dir)
    except CacheError as err:
        raise SystemExit(f"anatomy merge: {err}") from err
    print(f"merged {len(merged)} pairs x {merged.d_sae} features into {args.dir}/merged")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anatomy")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="de-quantise and cache the default model")
    sub.add_parser("demo", help="answer one prompt and summarise a few pairs' activations")
    f = sub.add_parser("features", help="SAE feature summaries of a preference dataset, sharded across processes "
                                        "(torchrun / accelerate launch) or one shard per job (--shard i/n)")
    f.add_argument("source", help="'organism', a .jsonl/.parquet file or folder, or a hub dataset id")
    f.add_argument("--out", required=True, help="the shard directory")
    f.add_argument("--split", default=None)
    f.add_argument("--limit", type=int, default=None, help="the first N valid pairs only")
    f.add_argument("--shard", default=None, help="i/n: compute the i-th of n contiguous shards only (then merge)")
    f.add_argument("--model", default=None, help="model name or directory (default: the embedded SmolLM2-135M)")
    f.add_argument("--sae", default=None, help="shipped SAE name or SAE directory (default: the shipped SAE)")
    f.add_argument("--hook", default=None, help="hook to read (default: the SAE's)")
    f.add_argument("--shard-size", type=int, default=256, help="pairs per shard file")
    f.add_argument("--batch-tokens", type=int, default=4096)
    m = sub.add_parser("merge", help="merge the feature shards of a directory into DIR/merged")
    m.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        from .models import default_model_dir

        print(f"default model cached in {default_model_dir()}")
    elif args.command == "features":
        features(args)
    elif args.command == "merge":
        merge(args)
    else:
        demo()


if __name__ == "__main__":
    main()
