"""Feature extraction across processes (anatomy.distributed, `anatomy features` / `anatomy merge`).

The default model and the shipped SAE on the first four organism pairs: two
processes under torchrun (CPU, gloo barrier) give the one-process result to the
bit; Slurm-style shards merge to the same; bad merges are refused, named.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anatomy.cache import CacheError
from anatomy.distributed import extract_features, load_merged, merge_features, parse_shard

N_PAIRS = 4


@pytest.fixture(scope="module")
def pairs():
    from anatomy.data import load_preferences

    return load_preferences("organism", split="train", limit=N_PAIRS)


@pytest.fixture(scope="module")
def one_process(model, sae, pairs):
    """The one-process result, without any cache, in one thread (as each torchrun process runs)."""
    from anatomy.features import feature_summaries

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return feature_summaries(model, sae, pairs, progress=False)
    finally:
        torch.set_num_threads(old)


def assert_identical(a, b) -> None:
    assert a.ids == b.ids and a.hook == b.hook and a.d_sae == b.d_sae
    for span in a.spans:
        np.testing.assert_array_equal(a.n_tokens[span], b.n_tokens[span])
        for stat in ("max", "freq"):
            x, y = getattr(a, stat)[span], getattr(b, stat)[span]
            for part in ("data", "indices", "indptr"):
                np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=f"{stat}/{span}/{part}")
    assert a.max["chosen"].nnz > 100  # real features fired


def test_two_processes_under_torchrun_equal_one_process(one_process, tmp_path):
    out = tmp_path / "feats"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "anatomy", "features", "organism", "--split", "train", "--limit", str(N_PAIRS), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2" in proc.stdout and "rank 1/2" in proc.stdout and "merged 4 pairs" in proc.stdout
    assert len(list(out.glob("shard-*.npz"))) == 2  # one contiguous shard per process
    assert_identical(load_merged(out), one_process)


@pytest.fixture(scope="module")
def array_dir(model, sae, pairs, tmp_path_factory):
    """Shards written as two Slurm array tasks would (in the order they happen to finish)."""
    out = tmp_path_factory.mktemp("array") / "feats"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in ("1/2", "0/2"):
            assert extract_features(pairs, out, model=model, sae=sae, shard=parse_shard(task), progress=False) is None
    finally:
        torch.set_num_threads(old)
    return out


def test_slurm_array_shards_then_merge(array_dir, one_process, capsys):
    from anatomy.__main__ import main

    main(["merge", str(array_dir)])
    assert "merged 4 pairs" in capsys.readouterr().out
    assert_identical(load_merged(array_dir), one_process)


def copy_shards(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir()
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    for name in names:
        for f in src.glob(f"{name}.*"):
            shutil.copy(f, dst / f.name)
    return dst


def test_merge_refuses_missing_overlapping_and_foreign_shards(model, sae, pairs, array_dir, tmp_path):
    from anatomy.__main__ import main

    torch.set_num_threads(1)
    first, second = "shard-0000000-0000002", "shard-0000002-0000004"
    missing = copy_shards(array_dir, tmp_path / "missing", [second])
    with pytest.raises(SystemExit, match=r"(?i)missing|not covered"):  # rows 0-1 have no shard
        main(["merge", str(missing)])

    overlap = copy_shards(array_dir, tmp_path / "overlap", [first, second])
    extract_features(pairs, overlap, model=model, sae=sae, shard=(0, 4), progress=False)  # row 0 again
    with pytest.raises(CacheError, match="shard-0000000-0000001") as err:
        merge_features(overlap)
    assert "overlap" in str(err.value).lower()

    # a shard made from other pairs (the first two swapped), copied in, is refused by name
    other = tmp_path / "other"
    extract_features([pairs[i] for i in (1, 0, 2, 3)], other, model=model, sae=sae, shard=(0, 2), progress=False)
    foreign = copy_shards(array_dir, tmp_path / "foreign", [second])
    for f in other.glob(f"{first}.*"):
        shutil.copy(f, foreign / f.name)
    with pytest.raises(CacheError, match=first):
        merge_features(foreign)

    # a shard with another hook is refused before it is computed, naming the hook
    with pytest.raises(CacheError, match="hook"):
        extract_features(pairs, missing, model=model, sae=sae, hook="blocks.11.hook_resid_post", shard=(0, 2),
                         progress=False)


def test_shard_argument_errors():
    assert parse_shard("3/16") == (3, 16)
    for bad in ("3", "16/16", "-1/4", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
