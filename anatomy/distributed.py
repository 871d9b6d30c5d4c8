"""Feature extraction across processes: each process its contiguous shard, one merge.

``extract_features`` runs ``feature_summaries(..., cache_dir=out, shard=(i, n))`` for
the shard of this process and, where the processes were started together, merges
on process 0 after a barrier. The shards, their manifest and the refusals are
those of ``feature_summaries`` / ``load_pair_features`` (``anatomy.features``):
a shard is a contiguous slice of the pairs, written atomically with a checksummed
record; a merge refuses overlapping or missing shards (naming them) and shards
made with another model, SAE, hook, settings or other pairs.

Three ways to run it, all writing the same shard files into ``DIR``:

- one launch of N processes: ``torchrun --nproc-per-node N -m anatomy features
  SOURCE --out DIR`` (or ``accelerate launch --num_processes N -m anatomy features
  ...``); the rank and world size come from the launcher's ``RANK`` /
  ``WORLD_SIZE``; process 0 waits for the others (a gloo barrier) and merges;
- a Slurm array (or any N independent jobs): ``anatomy features SOURCE --out DIR
  --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`` per task, then ``anatomy
  merge DIR`` once;
- one process: ``anatomy features SOURCE --out DIR`` (shard 0/1, merged at once).

The merged result is written to ``DIR/merged`` (``PairFeatures.save``). It holds the
same rows as the one-process result; the values can differ only through the
batching of the forwards (which pairs share a padded batch), at float-rounding
level if at all: on CPU, two processes under torchrun gave the one-process
result to the bit (tests/test_distributed.py). A rerun skips finished shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

MERGED = "merged"


def launch_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (torchrun, accelerate, Slurm's
    srun with one task per process); ``(0, 1, 0)`` without one."""
    def env(*names, default):
        for n in names:
            if os.environ.get(n, "") != "":
                return int(os.environ[n])
        return default

    world = env("WORLD_SIZE", default=1)
    rank = env("RANK", default=0)
    local = env("LOCAL_RANK", default=rank)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return rank, world, local


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``, with ``0 <= i < n``."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _barrier(world: int) -> None:
    """Wait for every process of the launch (a gloo process group: no GPU collective is needed)."""
    import torch.distributed as dist

    started = dist.is_initialized()
    if not started:
        dist.init_process_group(backend="gloo", world_size=world)
    try:
        dist.barrier()
    finally:
        if not started:
            dist.destroy_process_group()


def extract_features(
    pairs: Sequence[dict],
    out: str | Path,
    *,
    model,
    sae,
    hook: str | None = None,
    shard: tuple[int, int] | None = None,
    shard_size: int = 256,
    batch_tokens: int = 4096,
    chunk_pairs: int = 64,
    progress: bool = True,
):
    """Feature summaries of this process's shard into ``out``; merged where this process is the last word.

    Args:
        pairs: the whole dataset (every process passes the same pairs).
        out: the shard directory (``feature_summaries(cache_dir=...)``).
        shard: ``(i, n)`` for an independent job (a Slurm array task): compute that
            shard only and return ``None``; merge later with ``merge_features(out)``.
            ``None``: the rank and world size of the launch (``launch_rank``); all
            processes compute their shards, process 0 merges after a barrier.

    Returns:
        The merged ``PairFeatures`` on process 0 of a launch (also saved to
        ``out/merged``); ``None`` on the other processes and for ``shard=``.
    """
    from .features import feature_summaries

    launched = shard is None
    rank, world = (launch_rank()[:2]) if launched else shard
    feature_summaries(model, sae, pairs, hook=hook, cache_dir=out, shard=(rank, world), shard_size=shard_size,
                      batch_tokens=batch_tokens, chunk_pairs=chunk_pairs, progress=progress and rank == 0)
    if not launched:
        return None
    if world > 1:
        _barrier(world)
    return merge_features(out) if rank == 0 else None


def merge_features(out: str | Path):
    """Merge the shards in ``out`` (``load_pair_features``: refuses overlapping, missing, corrupt or foreign
    shards, naming them) and save the result to ``out/merged``; returns the ``PairFeatures``."""
    from .features import load_pair_features

    feats = load_pair_features(out)
    feats.save(Path(out) / MERGED)
    return feats


def load_merged(out: str | Path):
    """The merged ``PairFeatures`` of ``out`` (``out/merged``, written by ``merge_features``)."""
    from .features import PairFeatures

    return PairFeatures.load(Path(out) / MERGED)
