"""cache_pairs: exact pooled values, resume, shards, streaming and bad input."""

import pytest
import torch

from anatomy.cache import cache_pairs, load_pair_activations, stream_pair_activations
from anatomy.models import format_pair

HOOKS = ["blocks.2.hook_resid_post", "blocks.5.hook_resid_post"]


def _pairs():
    texts = [
        ("What is 2+2?", "It is 4.", "Five, clearly, and here is a much longer wrong answer."),
        ("Name a colour.", "  Blue 💙", "\nRed"),
        ("Tell me a joke about cats.", "Why did the cat sit on the laptop? To watch the mouse!", "No."),
        ("Say hi.", "Hi!", "Hello there, how are you doing today, my friend?"),
        ("Capital of France?", "Paris.", "It is Lyon, I think."),
        ("Count to three.", "1, 2, 3.", "1, 2."),
        ("Is ice cold?", "Yes, ice is cold.", "No."),
    ]
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
             for i, (q, c, r) in enumerate(texts)]
    pairs[1]["prompt"] = [{"role": "system", "content": "Be brief."}] + pairs[1]["prompt"]
    return pairs


def _by_hand(model, pair, hooks):
    """Pooled values from one unbatched run_with_cache per sequence (all layers, no early stop)."""
    out = {}
    for span, text in (("chosen", pair["chosen"]), ("rejected", pair["rejected"])):
        enc = format_pair(model.tokenizer, pair["prompt"], text)
        _, cache = model.run_with_cache(torch.tensor([enc["input_ids"]]), names_filter=lambda n: n in hooks)
        for h in hooks:
            spans = [(span, enc["response_mask"])] + ([("prompt", enc["prompt_mask"])] if span == "chosen" else [])
            for name, mask in spans:
                x = cache[h][0][torch.tensor(mask)]
                out[(h, name, "mean")] = x.mean(0)
                out[(h, name, "max")] = x.max(0).values
                out[(h, name, "last")] = x[-1]
    return out


@pytest.fixture(scope="module")
def by_hand(model):
    return [_by_hand(model, pair, HOOKS) for pair in _pairs()]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_pooled_values_equal_unbatched_run_with_cache(model, by_hand, padding_side, batch_size):
    pairs = _pairs()
    acts = cache_pairs(model, pairs, HOOKS, batch_size=batch_size, batch_tokens=10**6,
                       padding_side=padding_side, progress=False)
    assert acts.ids == [p["id"] for p in pairs]
    for i, pair in enumerate(pairs):
        for (h, span, pooling), ref in by_hand[i].items():
            torch.testing.assert_close(acts.get(h, span, pooling)[i], ref, atol=1e-4, rtol=0)


def test_resume_after_interrupt_does_not_recompute_finished_shards(model, tmp_path):
    pairs = _pairs()
    done = []

    def interrupt(a, b):
        done.append((a, b))
        raise KeyboardInterrupt("simulated interruption after the first shard")

    with pytest.raises(KeyboardInterrupt):
        cache_pairs(model, pairs, HOOKS[0], out_dir=tmp_path, shard_size=3, on_shard_done=interrupt, progress=False)
    first = tmp_path / "shard-0000000-0000003.safetensors"
    assert done == [(0, 3)] and first.exists()
    stamp = first.stat().st_mtime_ns
    calls = []
    resumed = cache_pairs(model, pairs, HOOKS[0], out_dir=tmp_path, shard_size=3,
                          on_shard_done=lambda a, b: calls.append((a, b)), progress=False)
    assert calls == [(3, 6), (6, 7)]
    assert first.stat().st_mtime_ns == stamp
    fresh = cache_pairs(model, pairs, HOOKS[0], progress=False)
    reopened = load_pair_activations(tmp_path)
    for span in ("prompt", "chosen", "rejected"):
        for pooling in ("mean", "max", "last"):
            assert torch.equal(resumed.get(HOOKS[0], span, pooling), fresh.get(HOOKS[0], span, pooling))
            assert torch.equal(reopened.get(HOOKS[0], span, pooling), fresh.get(HOOKS[0], span, pooling))


def test_shards_from_several_machines_merge(model, tmp_path):
    pairs = _pairs()
    parts = [cache_pairs(model, pairs, HOOKS[1], out_dir=tmp_path, shard=(i, 3), shard_size=2,
                         pooling=("mean",), progress=False) for i in range(3)]
    assert sum(len(p) for p in parts) == len(pairs)
    merged = load_pair_activations(tmp_path)
    full = cache_pairs(model, pairs, HOOKS[1], pooling=("mean",), progress=False)
    assert merged.ids == full.ids
    assert torch.equal(merged.get(HOOKS[1], "chosen", "mean"), full.get(HOOKS[1], "chosen", "mean"))


def test_incomplete_cache_and_foreign_directories_are_refused(model, tmp_path):
    pairs = _pairs()
    cache_pairs(model, pairs, HOOKS[0], out_dir=tmp_path / "a", shard=(0, 2), progress=False)
    with pytest.raises(ValueError, match="cover 3 of 7"):
        load_pair_activations(tmp_path / "a")
    with pytest.raises(ValueError, match="made with other hooks"):
        cache_pairs(model, pairs, HOOKS[1], out_dir=tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        cache_pairs(model, pairs, HOOKS[0], out_dir=tmp_path / "b", progress=False)


def test_streaming_gives_per_token_activations(model):
    pairs = _pairs()[:3]
    streamed = list(stream_pair_activations(model, pairs, HOOKS[1], chunk_pairs=2, progress=False))
    assert [pid for pid, _ in streamed] == ["p0", "p1", "p2"]
    for pair, (_, spans) in zip(pairs, streamed):
        enc = format_pair(model.tokenizer, pair["prompt"], pair["rejected"])
        _, cache = model.run_with_cache(torch.tensor([enc["input_ids"]]), names_filter=HOOKS[1], stop_at_layer=6)
        ref = cache[HOOKS[1]][0][torch.tensor(enc["response_mask"])]
        torch.testing.assert_close(spans["rejected"], ref, atol=1e-4, rtol=0)
        assert spans["prompt"].shape[0] == sum(format_pair(model.tokenizer, pair["prompt"], "x")["prompt_mask"])


def test_bad_input_names_the_pair_and_field(model, monkeypatch):
    pairs = _pairs()
    broken = dict(pairs[2], rejected=None)
    with pytest.raises(ValueError, match=r"pair 'p2' field 'rejected': missing field"):
        cache_pairs(model, [pairs[0], broken], HOOKS[0], progress=False)
    monkeypatch.setattr(model.cfg, "n_ctx", 30)
    with pytest.raises(ValueError, match=r"pair 'p0' field 'chosen': \d+ tokens is longer than the model's context \(30\)"):
        cache_pairs(model, pairs, HOOKS[0], progress=False)


# ----------------------------------------------------------------------------- a cache never returns other data

TINY = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_model():
    from test_features import tiny_lens

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_lens()[0]
    torch.set_num_threads(old)


def test_edited_pair_text_or_weights_trained_in_place_are_never_reused(tiny_model, tmp_path):
    from anatomy.cache import CacheError

    pairs = _pairs()
    cache_pairs(tiny_model, pairs, TINY, out_dir=tmp_path, shard_size=3, progress=False)
    edited = [dict(p) for p in pairs]
    edited[4]["chosen"] = "Paris, of course."  # same id, new text
    with pytest.raises(CacheError, match=r"made with other pairs \(changed: \{'pairs_digest'"):
        cache_pairs(tiny_model, edited, TINY, out_dir=tmp_path, shard_size=3, progress=False)
    p = next(tiny_model.parameters())
    with torch.no_grad():
        old = p.view(-1)[:4].clone()
        p.view(-1)[:4] += 0.01  # an optimiser step in place
        try:
            with pytest.raises(CacheError, match="made with other model weights"):
                cache_pairs(tiny_model, pairs, TINY, out_dir=tmp_path, shard_size=3, progress=False)
        finally:
            p.view(-1)[:4] = old
    with pytest.raises(CacheError, match="made with other settings .*shard_size"):
        cache_pairs(tiny_model, pairs, TINY, out_dir=tmp_path, shard_size=2, progress=False)
    assert load_pair_activations(tmp_path).ids == [p["id"] for p in pairs]


def test_overlapping_and_missing_shards_are_refused_by_name(tiny_model, tmp_path):
    from anatomy.cache import CacheError

    pairs = _pairs()
    for shard in ((0, 2), (1, 3), (5, 6)):  # rows 0-3, 2-4 and 5-7: p2 twice, p4 nowhere
        cache_pairs(tiny_model, pairs, TINY, out_dir=tmp_path, shard=shard, pooling=("mean",), progress=False)
    with pytest.raises(CacheError, match="shards overlap: shard-0000000-0000003.safetensors and "
                                         "shard-0000002-0000004.safetensors"):
        load_pair_activations(tmp_path)
    for f in tmp_path.glob("shard-0000002-0000004.*"):
        f.unlink()
    with pytest.raises(CacheError, match="shards cover 5 of 7 pairs; missing rows 3-5"):
        load_pair_activations(tmp_path)


def test_corrupt_or_truncated_shards_are_named_and_recomputed(tiny_model, tmp_path):
    from anatomy.cache import CacheError

    pairs = _pairs()
    kw = dict(out_dir=tmp_path, shard_size=3, progress=False)
    fresh = cache_pairs(tiny_model, pairs, TINY, **kw)
    ref = fresh.get(TINY, "chosen", "mean").clone()
    zeroed, cut = tmp_path / "shard-0000003-0000006.safetensors", tmp_path / "shard-0000006-0000007.safetensors"
    raw = bytearray(zeroed.read_bytes())
    raw[-300:-200] = bytes(100)
    zeroed.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="shard shard-0000003-0000006.safetensors: checksum mismatch"):
        load_pair_activations(tmp_path)
    cut.write_bytes(cut.read_bytes()[:50])
    with pytest.warns(UserWarning) as seen:
        cache_pairs(tiny_model, pairs, TINY, **kw)
    named = " ".join(str(w.message) for w in seen)
    assert "shard-0000003-0000006.safetensors: checksum mismatch" in named and "recomputing" in named
    assert "shard-0000006-0000007.safetensors: checksum mismatch" in named
    assert torch.equal(load_pair_activations(tmp_path).get(TINY, "chosen", "mean"), ref)
    assert oct(zeroed.stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "manifest.json").stat().st_mode & 0o777) == "0o644"


def test_hook_typos_duplicate_ids_and_garbage_manifests_get_named_errors(tiny_model, tmp_path):
    from anatomy.cache import CacheError

    pairs = _pairs()
    out = tmp_path / "a"
    with pytest.raises(KeyError, match=r"\['blocks.1.hook_resid_pots'\] are not hooks of the model \(2 layers"):
        cache_pairs(tiny_model, pairs, "blocks.1.hook_resid_pots", out_dir=out, progress=False)
    assert not out.exists()  # nothing written: the corrected rerun goes through
    cache_pairs(tiny_model, pairs[:2], TINY, out_dir=out, progress=False)
    with pytest.raises(ValueError, match=r"pair ids must be unique; repeated: \['p1'\]"):
        cache_pairs(tiny_model, pairs[:2] + [dict(pairs[3], id="p1")], TINY, progress=False)
    (out / "manifest.json").write_text("\x00garbage")
    with pytest.raises(CacheError, match=r"a/manifest.json is not a valid manifest"):
        load_pair_activations(out)
    with pytest.raises(CacheError, match=r"a/manifest.json is not a valid manifest"):
        cache_pairs(tiny_model, pairs[:2], TINY, out_dir=out, progress=False)
