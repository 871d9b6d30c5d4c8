"""Command line: ``anatomy diagnose`` (the audit of a preference dataset), ``anatomy train-sae``
(an SAE on your own data), ``anatomy demo`` (the audit of the embedded organism, scored against
its planted answer) and ``anatomy prepare`` (cache the default model).

  anatomy diagnose SOURCE [--split S] [--limit N] [--model ID] [--sae PATH | RELEASE:ID]
                   [--config FILE] [--cache-dir DIR] --out DIR
      writes DIR/report.html, DIR/hypotheses.csv and DIR/diagnosis/ (`Diagnosis.save`), shows a
      progress bar per stage and prints the top 10 hypotheses.
  anatomy train-sae SOURCE [--split S] [--limit N] [--model ID] --layer L --out DIR
      trains a BatchTopK SAE on the residual stream at layer L over SOURCE's prompts and
      responses; ``anatomy diagnose ... --sae DIR`` then reads through it.

Bad input (an unreadable file, too few pairs, an SAE that does not fit the model) ends with a
one-line error and exit status 2, not a traceback (``ANATOMY_TRACEBACK=1`` shows it).

  anatomy features SOURCE --out DIR [--shard i/n]     (or under torchrun / accelerate launch)
      SAE feature summaries, one contiguous shard per process or per job; rank 0 merges.
  anatomy merge DIR
      merges a directory's feature shards, refusing overlapping, missing or foreign shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEMO_N_PAIRS = 600  # the demo's seeded subset of the organism's train split (sized for `make demo`)
DEMO_OUT = Path("results") / "demo"
# Two hand-written pairs, for a first look at activations without any data file.
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


class _UserError(Exception):
    """An error the command line reports in one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import PreferenceDataError
    from .diagnose import DiagnoseError
    from .models import ModelNotAvailableError
    from .saes import SAENotAvailableError

    return (_UserError, DiagnoseError, PreferenceDataError, ModelNotAvailableError, SAENotAvailableError,
            FileNotFoundError, PermissionError, IsADirectoryError, EOFError, UnicodeError, ValueError, OSError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:397] + "..."


def _top(table, n: int = 10) -> str:
    """The first ``n`` global rows of a `Diagnosis.table`, as text."""
    g = table[table["view"] == "global"].head(n)
    cols = ["rank", "scope", "concept", "label", "direction", "effect", "ci_low", "ci_high", "q", "replicated"]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_colwidth", 36):
        return g[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}")


def _length_line(length: dict) -> str:
    return (f"length: median {length['median_chosen']:.0f} tokens chosen vs {length['median_rejected']:.0f} rejected; "
            f"median gap {length['median_gap']:+.0f} (95% CI {length['ci_low']:+.0f} to {length['ci_high']:+.0f}), "
            f"chosen longer in {length['share_chosen_longer']:.0%} of pairs, q = {length['q']:.2g}")


def write_outputs(diagnosis, out: Path) -> dict:
    """DIR/diagnosis/, DIR/hypotheses.csv and DIR/report.html of a diagnosis; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"diagnosis": diagnosis.save(out / "diagnosis", overwrite=True)}
    table = diagnosis.table(top=None)
    table.assign(examples=table["examples"].map(" ".join)).to_csv(out / "hypotheses.csv", index=False,
                                                                   float_format="%.5g")
    paths["hypotheses"] = out / "hypotheses.csv"
    try:
        paths["report"] = diagnosis.report(out / "report.html")
    except ModuleNotFoundError as err:  # the report writer is not installed in this version
        if "anatomy.report" not in str(err):
            raise
        print("report: anatomy.report is not available; wrote the tables only", file=sys.stderr)
    return paths


def run_diagnose(args) -> None:
    from .diagnose import DiagnoseConfig, diagnose

    config = DiagnoseConfig.from_json(args.config) if args.config else DiagnoseConfig()
    source = args.source
    if not Path(source).exists() and source != "organism" and (os.sep in source or Path(source).suffix):
        raise _UserError(f"{source}: no such file or directory")
    diagnosis = diagnose(source, split=args.split, limit=args.limit, model=args.model, sae=args.sae, config=config,
                         cache_dir=args.cache_dir, progress=not args.no_progress)
    paths = write_outputs(diagnosis, Path(args.out))
    src = diagnosis.source
    print(f"\n{src['n_kept']} pairs read from {src['source']}" + (f" ({src['n_skipped']} bad rows skipped: see the "
                                                               "report)" if src["n_skipped"] else ""))
    print(_length_line(diagnosis.length))
    print(f"top 10 of {len(diagnosis.ranked)} global hypotheses:")
    print(_top(diagnosis.table(top=10)))
    for name, path in paths.items():
        print(f"{name}: {path}")


def run_train_sae(args) -> None:
    import torch

    from .data import load_preferences
    from .models import load_model
    from .saes import MAX_NORM_RATIO, _drop_outliers, collect_activations, save_sae, train_sae

    source = args.source
    if not Path(source).exists() and source != "organism" and (os.sep in source or Path(source).suffix):
        raise _UserError(f"{source}: no such file or directory")
    ds, bad = load_preferences(source, split=args.split, limit=args.limit, strict=False)
    if len(ds) == 0:
        raise _UserError(f"{source}: no readable pairs ({len(bad)} bad rows)")
    model = load_model(args.model)
    n_layers = model.cfg.n_layers
    if not 0 <= args.layer < n_layers:
        raise _UserError(f"--layer {args.layer}: the model has layers 0..{n_layers - 1}")
    hook = f"blocks.{args.layer}.hook_resid_post"
    t0 = time.time()
    tacts = collect_activations(model, ds.to_list(), hook, progress=not args.no_progress)
    acts, n_out = _drop_outliers(tacts.acts[hook], MAX_NORM_RATIO)
    d_sae = args.d_sae or 10 * model.cfg.d_model
    meta = {"model_name": getattr(model.cfg, "model_name", None), "hook_name": hook, "dataset": str(source),
            "n_pairs": len(ds), "dropped_outlier_tokens": n_out, "max_norm_ratio": MAX_NORM_RATIO,
            "collect_seconds": round(time.time() - t0, 1), "expansion": d_sae // acts.shape[1]}
    sae, metrics = train_sae(acts, d_sae=d_sae, k=args.k, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             seed=args.seed, hook_name=hook, dead_window=args.dead_window,
                             aux_coefficient=args.aux_coef, metadata=meta, progress=not args.no_progress)
    out = save_sae(sae, args.out)
    print(json.dumps({"out": str(out), "tokens": int(acts.shape[0]), "d_sae": d_sae, **{
        k: metrics[k] for k in ("explained_variance", "train_dead_fraction", "train_seconds") if k in metrics}}))
    print(f"read your data through it: anatomy diagnose {source} --sae {out} --out DIR")
    del torch


def run_demo(args) -> None:
    """The audit of a seeded subset of the organism's train pairs, scored against what was planted."""
    from .data import load_preferences, sample_pairs
    from .diagnose import diagnose
    from .organism import RECALL_CONCEPTS, score_diagnosis

    t = time.perf_counter()
    rows = load_preferences("organism", split="train").to_list()
    n = min(args.n_pairs, len(rows))
    pairs = sample_pairs(rows, n, seed=args.seed)
    print(f"diagnosing {n} of the organism's {len(rows)} train pairs (seed {args.seed}); "
          "discovery reads only prompts and responses")
    diagnosis = diagnose(pairs, progress=not args.no_progress, cache_dir=args.cache_dir)
    paths = write_outputs(diagnosis, Path(args.out))
    print(_length_line(diagnosis.length))
    print("top 10 global hypotheses:")
    print(_top(diagnosis.table(top=10)))
    scored = score_diagnosis(diagnosis, pairs, tops=(20,), seed=args.seed)
    found = scored["detail"]["top20"]["recall_concepts_found"]
    print(f"\nscored against the planted answer: the top 20 finds {len(found)} of the {len(RECALL_CONCEPTS)} "
          f"planted concepts ({', '.join(found) or 'none'}); precision at 20 {scored['headline']['precision_top20']:.2f}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"demo: {time.perf_counter() - t:.0f} s")


def run_features(args) -> None:
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


def run_merge(args) -> None:
    """Merge the feature shards of DIR (refusing overlapping, missing or foreign shards)."""
    from .cache import CacheError
    from .distributed import merge_features

    try:
        merged = merge_features(args.dir)
    except CacheError as err:
        raise SystemExit(f"anatomy merge: {err}") from err
    print(f"merged {len(merged)} pairs x {merged.d_sae} features into {args.dir}/merged")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anatomy", description="Audit preference data through the model.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="de-quantise and cache the default model")

    d = sub.add_parser("diagnose", help="diagnose a preference dataset: report, hypotheses, saved diagnosis")
    d.add_argument("source", help="a .jsonl/.json/.jsonl.gz/.parquet file or folder, 'organism', or a hub id")
    d.add_argument("--split", default=None)
    d.add_argument("--limit", type=int, default=None, help="the first N readable pairs")
    d.add_argument("--model", default=None, help="a model id or directory (default: the embedded model)")
    d.add_argument("--sae", default=None, help="an SAE directory, a shipped SAE name, or RELEASE:ID (SAELens)")
    d.add_argument("--config", default=None, help="a JSON file of DiagnoseConfig fields")
    d.add_argument("--cache-dir", default=None, help="reuse / save the feature summaries here")
    d.add_argument("--out", required=True, help="output directory")

    t = sub.add_parser("train-sae", help="train an SAE on your own data (for `diagnose --sae DIR`)")
    t.add_argument("source")
    t.add_argument("--split", default=None)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--model", default=None)
    t.add_argument("--layer", type=int, required=True, help="the residual layer (hook blocks.L.hook_resid_post)")
    t.add_argument("--d-sae", type=int, default=None, help="latents (default 10 x d_model)")
    t.add_argument("--k", type=int, default=32, help="active latents per token")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--lr", type=float, default=1.5e-3)
    t.add_argument("--batch-size", type=int, default=2048)
    t.add_argument("--aux-coef", type=float, default=0.25)
    t.add_argument("--dead-window", type=int, default=20_000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)

    m = sub.add_parser("demo", help="diagnose a seeded subset of the embedded organism and score it")
    m.add_argument("--n-pairs", type=int, default=DEMO_N_PAIRS)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--cache-dir", default=None)
    m.add_argument("--out", default=str(DEMO_OUT))
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
    mg = sub.add_parser("merge", help="merge the feature shards of a directory into DIR/merged")
    mg.add_argument("dir")
    for p in (d, t, m):
        p.add_argument("--threads", type=int, default=None, help="torch threads")
        p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "prepare":
        from .models import default_model_dir

        print(f"default model cached in {default_model_dir()}")
        return
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    run = {"diagnose": run_diagnose, "train-sae": run_train_sae, "demo": run_demo, "features": run_features,
           "merge": run_merge}[args.command]
    try:
        run(args)
    except _user_errors() as err:
        if os.environ.get("ANATOMY_TRACEBACK"):
            raise
        print(f"anatomy {args.command}: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
