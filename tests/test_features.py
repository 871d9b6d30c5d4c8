"""features: summaries are exact, labels give snippets, clustering recovers planted groups."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from anatomy.features import (
    PairFeatures,
    cluster_features,
    cluster_scores,
    feature_summaries,
    label_features,
    nmi_matrix,
    span_summary,
)


def _pairs():
    texts = [
        ("What is 2+2?", "It is 4.", "Five, clearly, and here is a much longer wrong answer."),
        ("Name a colour.", "**Blue** is a lovely colour!", "\nRed"),
        ("Give me two tips for sleep.", "- Keep a schedule\n- Avoid screens late", "Sleep is good."),
        ("Capital of France?", "Paris. See https://en.wikipedia.org/wiki/Paris", "I cannot help with that."),
    ]
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
            for i, (q, c, r) in enumerate(texts)]


# ----------------------------------------------------------------------------- summaries


@torch.no_grad()
def _direct_summaries(model, sae, pairs):
    """Per sequence, one unbatched run_with_cache; encode; max / share of tokens per span (no first token)."""
    from anatomy.models import format_pair

    hook = sae.cfg.metadata.hook_name
    out = {}
    for pair in pairs:
        for side in ("chosen", "rejected"):
            enc = format_pair(model.tokenizer, pair["prompt"], pair[side])
            layer = int(hook.split(".")[1])
            _, cache = model.run_with_cache(torch.tensor([enc["input_ids"]]), names_filter=lambda n: n == hook,
                                            stop_at_layer=layer + 1)
            acts = cache[hook][0]
            spans = [(side, enc["response_mask"])] + ([("prompt", enc["prompt_mask"])] if side == "chosen" else [])
            for span, mask in spans:
                keep = torch.tensor(mask)
                if span == "prompt":
                    assert keep[0]
                    keep[0] = False  # the first token, an attention sink (norm ~200x), is the one token left out
                z = sae.encode(acts[keep])
                out[(pair["id"], span)] = (z.max(0).values.clamp(min=0), (z > 0).float().mean(0), len(z))
    return out


@pytest.fixture(scope="module")
def feats4(model, sae):
    # batch_tokens=1: every sequence is its own batch, as in the reference -> exact equality
    return feature_summaries(model, sae, _pairs(), batch_tokens=1, progress=False)


def test_feature_summaries_equal_direct_computation(model, sae, feats4, tmp_path):
    pairs = _pairs()
    ref = _direct_summaries(model, sae, pairs)
    feats = feats4
    assert feats.ids == [p["id"] for p in pairs]
    for span in ("prompt", "chosen", "rejected"):
        assert feats.max[span].shape == (4, sae.cfg.d_sae)
        for i, p in enumerate(pairs):
            vmax, vfreq, n = ref[(p["id"], span)]
            assert feats.n_tokens[span][i] == n
            assert np.array_equal(feats.max[span][i].toarray().ravel(), vmax.numpy())
            np.testing.assert_allclose(feats.freq[span][i].toarray().ravel(), vfreq.numpy(), rtol=1e-6, atol=0)
    # batched with padding: same up to float noise
    batched = feature_summaries(model, sae, pairs, progress=False)
    for span in ("prompt", "chosen", "rejected"):
        np.testing.assert_allclose(batched.max[span].toarray(), feats.max[span].toarray(), atol=2e-3)
    # save / load round trip
    feats.save(tmp_path / "f")
    again = PairFeatures.load(tmp_path / "f")
    assert again.ids == feats.ids and again.hook == feats.hook
    for span in ("prompt", "chosen", "rejected"):
        assert (again.max[span] != feats.max[span]).nnz == 0
        assert (again.freq[span] != feats.freq[span]).nnz == 0
        assert np.array_equal(again.n_tokens[span], feats.n_tokens[span])


def test_span_summary_of_empty_span():
    idx, vmax, vfreq = span_summary(torch.zeros(0, 8))
    assert len(idx) == len(vmax) == len(vfreq) == 0


def test_label_features_returns_snippets(model, sae, feats4):
    pairs = _pairs()[:2]
    top = np.asarray(feats4.freq["chosen"][:2].sum(0)).ravel().argsort()[::-1][:3]
    df = label_features(model, sae, pairs, top, top_k=2, window=2, progress=False)
    assert list(df["feature"]) == [int(f) for f in top]
    assert all(isinstance(x, str) and x for x in df["label"])
    sn = df["snippets"].iloc[0][0]
    assert len(sn["tokens"]) == len(sn["acts"]) and sn["acts"][sn["argmax"]] == pytest.approx(sn["max"], abs=1e-3)
    seen = []
    df2 = label_features(model, sae, pairs, top[:1], top_k=2, labeler=lambda p: seen.append(p) or "my label",
                         progress=False)
    assert df2["label"].iloc[0] == "my label" and "[[" in seen[0]


# ----------------------------------------------------------------------------- clusters


def _planted(n_pairs=400, d_sae=64, groups=((0, 1, 2, 3, 4), (10, 11, 12, 13), (20, 21, 22, 23, 24, 25)), seed=0):
    """Synthetic PairFeatures: each group fires together (on a random 20% of pair-spans, each member
    with prob 0.9 then), other features fire independently at random."""
    rng = np.random.default_rng(seed)
    mats = {}
    for span in ("prompt", "chosen", "rejected"):
        f = (rng.random((n_pairs, d_sae)) < 0.1) * rng.random((n_pairs, d_sae))
        for g in groups:
            on = rng.random(n_pairs) < 0.2
            for j in g:
                f[:, j] = np.where(on & (rng.random(n_pairs) < 0.9), rng.random(n_pairs) * 0.5 + 0.1, 0.0)
        mats[span] = sp.csr_matrix(f)
    ids = [f"p{i}" for i in range(n_pairs)]
    n = {s: np.full(n_pairs, 10) for s in mats}
    return PairFeatures(ids, {s: m.copy() for s, m in mats.items()}, mats, n, None, d_sae), groups


def test_knn_edges_keep_each_rows_nearest_neighbours_symmetrised():
    from anatomy.features import _knn_edges

    rng = np.random.default_rng(0)
    a = rng.random((30, 30))
    sim = (a + a.T) / 2
    sim[0, 1:] = sim[1:, 0] = 0.0  # feature 0 shares no information: no edge of its own
    i, j, w = _knn_edges(sim, 3)
    assert np.all(i < j) and len(set(zip(i, j))) == len(i)
    np.testing.assert_allclose(w, sim[i, j])
    edges = set(zip(i.tolist(), j.tolist()))
    assert not any(0 in e for e in edges)
    for r in range(1, 30):
        row = sim[r].copy()
        row[[0, r]] = -np.inf
        for c in np.argsort(-row)[:3]:  # each row's 3 nearest are kept (ties are measure-zero here)
            assert (min(r, c), max(r, c)) in edges
    assert len(edges) <= 29 * 3
    for block in (1, 7, 64):  # rows are taken a block at a time: the edges cannot depend on the block
        for got, want in zip(_knn_edges(sim, 3, block=block), (i, j, w)):
            np.testing.assert_array_equal(got, want)


def test_cluster_features_knn_graph_keeps_planted_groups_apart():
    feats, groups = _planted()
    df = cluster_features(feats, graph="knn", n_neighbors=3, min_size=4, min_fires=5, seed=0)
    assert df.attrs["graph"] == "knn" and df.attrs["n_edges"] > 0
    for g in groups:  # each planted group lands in one cluster, and no cluster holds two groups
        labels = set(df.loc[df.feature.isin(g), "cluster"])
        assert len(labels) == 1 and labels != {-1}
    assert len({df.loc[df.feature == g[0], "cluster"].item() for g in groups}) == len(groups)
    with pytest.raises(ValueError, match="graph"):
        cluster_features(feats, graph="mutual")


def test_cluster_features_sweep_equals_one_call_per_resolution():
    from anatomy.features import cluster_features_sweep

    feats, _ = _planted()
    sweep = cluster_features_sweep(feats, [0.5, 1.0, 4.0], graph="knn", n_neighbors=3, seed=0)
    assert list(sweep) == [0.5, 1.0, 4.0]
    for r, df in sweep.items():
        pd.testing.assert_frame_equal(df, cluster_features(feats, resolution=r, graph="knn", n_neighbors=3, seed=0))
    assert not sweep[4.0].cluster.equals(sweep[0.5].cluster)  # each resolution partitions the graph anew


def test_cluster_features_recovers_planted_groups():
    feats, groups = _planted()
    df = cluster_features(feats, top_percentile=98.5, min_size=4, min_fires=5, seed=0)
    assert len(df) == 64 and set(df.columns) >= {"feature", "cluster", "n_fires", "cluster_size"}
    # 31 planted edges of 64 * 63 / 2 = 2016 feature pairs: the top 1.5% are the planted ones
    found = [set(df.loc[df.cluster == c, "feature"]) for c in sorted(set(df.cluster) - {-1})]
    assert sorted(map(sorted, found)) == sorted(map(sorted, [set(g) for g in groups]))
    again = cluster_features(feats, top_percentile=98.5, min_size=4, min_fires=5, seed=0)
    pd.testing.assert_frame_equal(df, again)
    scores = cluster_scores(feats, df, stat="freq")
    assert scores.shape == (400, len(found))
    c0 = df.loc[df.feature == groups[0][0], "cluster"].item()
    expected = sum(feats.freq[s][:, list(groups[0])].toarray().sum(1) for s in ("chosen", "rejected"))
    np.testing.assert_allclose(scores[c0].to_numpy(), expected, rtol=1e-5)
    one = cluster_scores(feats, df, span="prompt")
    np.testing.assert_allclose(one[c0].to_numpy(), feats.freq["prompt"][:, list(groups[0])].toarray().sum(1),
                               rtol=1e-5)


def test_nmi_matrix_equals_sklearn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(1)
    B = (rng.random((300, 6)) < [0.05, 0.3, 0.5, 0.5, 0.9, 0.2]).astype(float)
    B[:, 3] = np.where(rng.random(300) < 0.8, B[:, 2], 1 - B[:, 2])  # correlated with column 2
    nmi = nmi_matrix(sp.csr_matrix(B))
    for i in range(6):
        for j in range(6):
            if i != j:
                assert nmi[i, j] == pytest.approx(normalized_mutual_info_score(B[:, i], B[:, j]), abs=1e-5)
    assert nmi[2, 3] > 0.1


def test_gate_weak_firing_keeps_only_clear_firings():
    from anatomy import gate_weak_firing

    feats, _ = _planted(n_pairs=50)
    before = {s: (feats.max[s].copy(), feats.freq[s].copy()) for s in feats.spans}
    gated = gate_weak_firing(feats, 0.5)
    top = np.maximum(feats.max["chosen"].toarray().max(0), feats.max["rejected"].toarray().max(0))
    for s in feats.spans:  # the prompt span too, against the response spans' largest max
        m, f = feats.max[s].toarray(), feats.freq[s].toarray()
        keep = m >= 0.5 * top
        np.testing.assert_array_equal(gated.max[s].toarray(), np.where(keep, m, 0.0))
        np.testing.assert_array_equal(gated.freq[s].toarray(), np.where(keep, f, 0.0))
        assert (feats.max[s] != before[s][0]).nnz == 0 and (feats.freq[s] != before[s][1]).nnz == 0  # input kept
        assert 0 < gated.max[s].nnz < feats.max[s].nnz
    assert gated.ids == feats.ids and gated.meta["gate_rho"] == 0.5 and "gate_rho" not in feats.meta
    assert gate_weak_firing(feats, 0.0) is feats
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rho must be in"):
            gate_weak_firing(feats, bad)
    with pytest.raises(ValueError, match="reference spans"):
        gate_weak_firing(feats, 0.5, reference=("response",))


def test_cluster_features_isolates_are_concepts_of_one_feature():
    feats, groups = _planted()
    planted = set().union(*groups)
    for graph in ("knn", "threshold"):
        df = cluster_features(feats, graph=graph, n_neighbors=3, top_percentile=98.5, min_size=4, min_fires=5,
                              isolates=True, seed=0)
        # the 31 planted pairs are the top 1.5% by NMI, so every other feature has no partner above the cut
        alone = df[~df.feature.isin(planted) & (df.n_fires >= 5)]
        assert df.attrs["n_isolates"] == len(alone) > 0
        assert (alone.cluster_size == 1).all() and alone.cluster.is_unique and (alone.cluster >= 0).all()
        found = [set(df.loc[df.cluster == c, "feature"]) for c in set(df.cluster) - {-1} if (df.cluster == c).sum() > 1]
        assert sorted(map(sorted, found)) == sorted(map(sorted, [set(g) for g in groups]))
        assert df.loc[df.feature.isin(planted), "cluster"].max() < alone.cluster.min()  # communities first
    noise, _ = _planted(groups=())  # a cut at the largest NMI: every candidate is an isolate, no graph is left
    alone = cluster_features(noise, graph="knn", n_neighbors=3, top_percentile=100, isolates=True, seed=0)
    assert alone.attrs["n_isolates"] == (alone.n_fires >= 5).sum() and (alone.cluster_size <= 1).all()
    without = cluster_features(feats, graph="knn", n_neighbors=3, top_percentile=98.5, seed=0)
    assert without.attrs["n_isolates"] == 0 and (without.cluster_size != 1).all()


# ----------------------------------------------------------------------------- the feature_summaries cache

TINY_HOOK = "blocks.1.hook_resid_post"


def tiny_lens(seed: int = 0):
    """A tiny random-weight Llama bridge (d_model 32, 2 layers, the default tokenizer) and a
    random TopK SAE (64 latents, k = 8) on its last residual stream; the same for the same seed."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    from anatomy.models import load_tokenizer

    tok = load_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).eval()
    model = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok,
                                                device="cpu", dtype=torch.float32)
    scfg = TopKSAEConfig(d_in=32, d_sae=64, k=8)
    scfg.metadata.hook_name = TINY_HOOK
    sae = TopKSAE(scfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())))
    return model, sae.eval()


@pytest.fixture(scope="module")
def tiny():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_lens()
    torch.set_num_threads(old)


def _same(a: PairFeatures, b: PairFeatures) -> None:
    assert a.ids == b.ids and a.hook == b.hook and a.d_sae == b.d_sae
    for s in ("prompt", "chosen", "rejected"):
        assert (a.max[s] != b.max[s]).nnz == 0 and (a.freq[s] != b.freq[s]).nnz == 0
        assert np.array_equal(a.n_tokens[s], b.n_tokens[s])


def test_feature_cache_resumes_shards_and_equals_the_fresh_result(tiny, tmp_path):
    from anatomy.features import load_pair_features

    model, sae = tiny
    pairs = _pairs()
    fresh = feature_summaries(model, sae, pairs, progress=False)
    assert fresh.max["chosen"].nnz > 0

    def stop(a, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        feature_summaries(model, sae, pairs, cache_dir=tmp_path / "c", shard_size=1, on_shard_done=stop, progress=False)
    first = tmp_path / "c" / "shard-0000000-0000001.npz"
    stamp = first.stat().st_mtime_ns
    calls = []
    resumed = feature_summaries(model, sae, pairs, cache_dir=tmp_path / "c", shard_size=1,
                                on_shard_done=lambda a, b: calls.append((a, b)), progress=False)
    assert calls == [(1, 2), (2, 3), (3, 4)] and first.stat().st_mtime_ns == stamp
    _same(resumed, fresh)
    _same(load_pair_features(tmp_path / "c"), fresh)
    assert oct(first.stat().st_mode & 0o777) == "0o644"
    # one shard per process / array task, then a merge
    parts = [feature_summaries(model, sae, pairs, cache_dir=tmp_path / "s", shard=(i, 3), progress=False)
             for i in range(3)]
    assert [len(p) for p in parts] == [1, 1, 2]
    _same(load_pair_features(tmp_path / "s"), fresh)


def test_feature_cache_refuses_other_pairs_weights_sae_hook_and_settings(tiny, tmp_path):
    from anatomy.cache import CacheError

    model, sae = tiny
    pairs = _pairs()
    d = tmp_path / "c"
    feature_summaries(model, sae, pairs, cache_dir=d, shard_size=2, progress=False)
    edited = [dict(p) for p in pairs]
    edited[3]["rejected"] = "I cannot help with that!"
    with pytest.raises(CacheError, match=r"made with other pairs \(changed: \{'pairs_digest'"):
        feature_summaries(model, sae, edited, cache_dir=d, shard_size=2, progress=False)
    with pytest.raises(CacheError, match="made with other settings .*max_norm_ratio"):
        feature_summaries(model, sae, pairs, cache_dir=d, shard_size=2, max_norm_ratio=None, progress=False)
    with pytest.raises(CacheError, match="made with other hook "):
        feature_summaries(model, sae, pairs, cache_dir=d, shard_size=2, hook="blocks.0.hook_resid_post",
                          progress=False)
    w = sae.W_enc
    with torch.no_grad():
        old = w[0, 0].clone()
        w[0, 0] += 0.5  # trained in place
        try:
            with pytest.raises(CacheError, match="made with other SAE "):
                feature_summaries(model, sae, pairs, cache_dir=d, shard_size=2, progress=False)
        finally:
            w[0, 0] = old
    p = next(model.parameters())
    with torch.no_grad():
        old = p.view(-1)[0].clone()
        p.view(-1)[0] += 0.5
        try:
            with pytest.raises(CacheError, match="made with other model weights "):
                feature_summaries(model, sae, pairs, cache_dir=d, shard_size=2, progress=False)
        finally:
            p.view(-1)[0] = old
    with pytest.raises(ValueError, match=r"pair ids must be unique; repeated: \['p0'\]"):
        feature_summaries(model, sae, pairs + pairs[:1], progress=False)
    with pytest.raises(ValueError, match="SAE field 'hook_name'.*blocks.7.hook_resid_post.*2 layers"):
        feature_summaries(model, sae, pairs, hook="blocks.7.hook_resid_post", progress=False)


def test_load_pair_features_refuses_overlapping_missing_foreign_and_corrupt_shards(tiny, tmp_path):
    import shutil

    from anatomy.cache import CacheError
    from anatomy.features import load_pair_features

    model, sae = tiny
    pairs = _pairs()
    d = tmp_path / "c"
    feature_summaries(model, sae, pairs, cache_dir=d, shard=(0, 2), progress=False)
    with pytest.raises(CacheError, match="shards cover 2 of 4 pairs; missing rows 2-4"):
        load_pair_features(d)
    feature_summaries(model, sae, pairs, cache_dir=d, shard=(1, 4), progress=False)  # rows 1-2: overlaps 0-2
    with pytest.raises(CacheError, match="shards overlap: shard-0000000-0000002.npz and shard-0000001-0000002.npz"):
        load_pair_features(d)
    for f in d.glob("shard-0000001-0000002.*"):
        f.unlink()
    feature_summaries(model, sae, pairs, cache_dir=d, shard=(1, 2), progress=False)
    fresh = load_pair_features(d)
    # a shard made with another hook copied in
    other = tmp_path / "other"
    feature_summaries(model, sae, pairs, cache_dir=other, hook="blocks.0.hook_resid_post", shard=(1, 2),
                      progress=False)
    bad = tmp_path / "mixed"
    shutil.copytree(d, bad)
    for f in other.glob("shard-*"):
        shutil.copy(f, bad / f.name)
    with pytest.raises(CacheError, match=r"shard shard-0000002-0000004.npz: it was made with other hook"):
        load_pair_features(bad)
    # 100 zeroed bytes inside a shard: named on load, recomputed (and named) on rerun
    f = d / "shard-0000002-0000004.npz"
    raw = bytearray(f.read_bytes())
    raw[200:300] = bytes(100)
    f.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="shard shard-0000002-0000004.npz: checksum mismatch"):
        load_pair_features(d)
    with pytest.warns(UserWarning, match="shard-0000002-0000004.npz: checksum mismatch.*recomputing"):
        again = feature_summaries(model, sae, pairs, cache_dir=d, shard=(1, 2), progress=False)
    _same(load_pair_features(d), fresh)
    assert len(again) == 2
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="manifest.json is not a valid manifest"):
        load_pair_features(d)


_KILL_CHILD = """
import io, sys, time
sys.path.insert(0, {tests!r})
import numpy as np
import torch
torch.set_num_threads(1)
from test_features import _pairs, tiny_lens
import anatomy.features as F
model, sae = tiny_lens()
written = []

def save_then_stall(path, arrays):  # the second shard: half its bytes written, then the kill comes
    if written:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with open(path, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            time.sleep(120)
    written.append(path)
    F._save_npz_orig(path, arrays)

F._save_npz_orig, F._save_npz = F._save_npz, save_then_stall
F.feature_summaries(model, sae, _pairs(), cache_dir={d!r}, shard_size=1, progress=False)
"""


def test_feature_cache_survives_sigkill_mid_run(tiny, tmp_path):
    """SIGKILL a process mid-run (subprocess), rerun: finished shards are kept, the result is the fresh one."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from anatomy.features import load_pair_features

    model, sae = tiny
    pairs = _pairs()
    d = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD.format(tests=str(Path(__file__).parent), d=str(d))],
                             env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(d.glob(".shard-0000001-*.tmp")) and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # mid-write of the second shard
    os.kill(child.pid, signal.SIGKILL)
    _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = sorted(p.stem for p in d.glob("shard-*.json"))
    assert done == ["shard-0000000-0000001"] and list(d.glob(".shard-0000001-*.tmp")), sorted(d.iterdir())
    calls = []
    resumed = feature_summaries(model, sae, pairs, cache_dir=d, shard_size=1, progress=False,
                                on_shard_done=lambda a, b: calls.append(f"shard-{a:07d}-{b:07d}"))
    assert sorted(set(calls) | set(done)) == [f"shard-{i:07d}-{i + 1:07d}" for i in range(4)]
    assert not set(calls) & set(done)
    fresh = feature_summaries(model, sae, pairs, progress=False)
    _same(resumed, fresh)
    _same(load_pair_features(d), fresh)
