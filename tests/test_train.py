"""Shaped DPO (anatomy.train): loss parity with TRL, shaping knobs, hooks, training, errors.

Most tests use a tiny random-weight Llama (2 layers, d_model 32) wrapped in a
TransformerBridge with the default model's tokenizer; the TRL parity test also
runs the real default model on two short organism pairs.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from anatomy import train as T
from anatomy.models import format_pair

BETA = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_tiny(tokenizer, seed: int = 0):
    """A fresh tiny random-weight Llama bridge (same tokenizer and chat template as the default model)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).eval()
    return TransformerBridge.boot_transformers(
        "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )


@pytest.fixture(scope="module")
def by_length(tokenizer):
    """The first 80 organism training pairs, fewest tokens first (short pairs keep the tests fast)."""
    from anatomy.data import load_preferences

    ds = load_preferences("organism", split="train")
    rows = [ds[i] for i in range(80)]

    def n_tokens(p):
        return sum(len(format_pair(tokenizer, p["prompt"], p[s])["input_ids"]) for s in ("chosen", "rejected"))

    return sorted(rows, key=n_tokens)


@pytest.fixture(scope="module")
def pairs(by_length):
    return by_length[:8]


@pytest.fixture(scope="module")
def short_pairs(by_length):
    return by_length[:2]


def reference_logps(hf, tokenizer, pair) -> tuple[float, float]:
    """Independent reference: full-logits forward of one unpadded sequence, float64 log-softmax,
    explicit loop over every token after the prompt (response + end-of-turn suffix)."""
    out = []
    for side in ("chosen", "rejected"):
        enc = format_pair(tokenizer, pair["prompt"], pair[side])
        ids = enc["input_ids"]
        start = sum(enc["prompt_mask"])
        with torch.no_grad():
            logp = hf(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        out.append(sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids))))
    return out[0], out[1]


def trl_trainer(policy_hf, ref_hf, tokenizer, pairs, tmp_path):
    """TRL's own DPOTrainer (sigmoid loss) on the same pairs, conversational format."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), beta=BETA, loss_type=["sigmoid"], bf16=False, use_cpu=True,
        report_to="none", per_device_train_batch_size=1, max_length=None, precompute_ref_log_probs=False,
        save_strategy="no", logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
    )
    return trl.DPOTrainer(model=policy_hf, ref_model=ref_hf, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)


def trl_per_pair(trainer) -> tuple[list[float], list[tuple[float, float]]]:
    """TRL's loss and policy log-probs, one pair per batch (so its batch mean is the pair's loss)."""
    losses, logps = [], []
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        mode = "train" if trainer.model.training else "eval"  # where TRL logs its metrics
        trainer._metrics[mode].clear()
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trainer.model, batch)))
        m = trainer._metrics[mode]
        logps.append((m["logps/chosen"][-1], m["logps/rejected"][-1]))
    return losses, logps


# ----------------------------------------------------------------------------- 1. parity


@pytest.fixture(scope="module")
def tiny_pair_losses(tokenizer, pairs):
    """Our per-pair losses for a tiny policy against a differently initialised tiny reference."""
    ref_model, policy = make_tiny(tokenizer, seed=0), make_tiny(tokenizer, seed=1)
    ours_ref = T.pair_logprobs(ref_model, pairs, batch_size=4)
    ours_pol = T.pair_logprobs(policy, pairs, batch_size=4)
    ours, _ = T.dpo_loss(ours_pol, ours_ref, beta=BETA)
    assert ours.std() > 0.01  # the pairs differ: a real comparison, not log 2 everywhere
    return policy, ref_model, ours_pol, ours


def test_loss_matches_an_independent_reference_on_a_tiny_model(tokenizer, pairs, tiny_pair_losses):
    policy, ref_model, _, ours = tiny_pair_losses
    indep = []  # unpadded full-logits forwards, float64, explicit loops
    for p in pairs:
        pc, pr = reference_logps(policy.original_model, tokenizer, p)
        rc, rr = reference_logps(ref_model.original_model, tokenizer, p)
        indep.append(-F.logsigmoid(torch.tensor(BETA * ((pc - rc) - (pr - rr)))).item())
    np.testing.assert_allclose(ours.numpy(), indep, atol=1e-5)


def test_loss_matches_trl_on_a_tiny_model(tokenizer, pairs, tiny_pair_losses, tmp_path):
    policy, ref_model, ours_pol, ours = tiny_pair_losses
    trainer = trl_trainer(policy.original_model, ref_model.original_model, tokenizer, pairs, tmp_path)
    for i, p in enumerate(pairs):  # TRL tokenises the pairs exactly as format_pair does
        row = trainer.train_dataset[i]
        enc = format_pair(tokenizer, p["prompt"], p["chosen"])
        assert row["prompt_ids"] + row["chosen_ids"] == enc["input_ids"]
        assert len(row["prompt_ids"]) == sum(enc["prompt_mask"])
    trl_losses, trl_logps = trl_per_pair(trainer)
    np.testing.assert_allclose(ours.numpy(), trl_losses, atol=1e-5)
    np.testing.assert_allclose(ours_pol.numpy(), np.array(trl_logps), rtol=1e-5)


def test_loss_matches_trl_on_the_real_model(model, short_pairs, tmp_path):
    from anatomy.models import load_hf_model

    ref_hf, tok = load_hf_model(device="cpu")  # TRL runs with use_cpu=True
    policy_hf, _ = load_hf_model(device="cpu")
    for m in (ref_hf, policy_hf):  # de-quantised weights: nothing may stop a Trainer from tuning them
        assert getattr(m, "hf_quantizer", None) is None
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a policy that differs from the reference
        for layer in policy_hf.model.layers[-4:]:
            w = layer.mlp.down_proj.weight
            w.add_(0.02 * torch.randn(w.shape, generator=gen))

    ours_ref = T.pair_logprobs(model, short_pairs)  # the bridge (same weights as ref_hf)
    ours_pol = T.pair_logprobs(policy_hf, short_pairs, tokenizer=tok)  # a plain HF model
    ours, _ = T.dpo_loss(ours_pol, ours_ref, beta=BETA)

    trl_losses, trl_logps = trl_per_pair(trl_trainer(policy_hf, ref_hf, tok, short_pairs, tmp_path))
    assert (ours - math.log(2)).abs().max() > 0.01
    np.testing.assert_allclose(ours.numpy(), trl_losses, atol=1e-5)
    np.testing.assert_allclose(ours_pol.numpy(), np.array(trl_logps), rtol=1e-5)


def test_padding_does_not_change_log_probs(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    batched = T.pair_logprobs(tiny, pairs, batch_size=8)  # 16 sequences of different lengths, right-padded
    single = T.pair_logprobs(tiny, pairs, batch_size=1)
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-4)
    indep = torch.tensor([reference_logps(tiny.original_model, tokenizer, p) for p in pairs], dtype=torch.float64)
    torch.testing.assert_close(batched, indep, rtol=1e-6, atol=1e-4)


# ----------------------------------------------------------------------------- 2. shaping


def test_offsets_shift_the_logit_and_weights_scale_the_loss(tokenizer, pairs):
    offsets = np.linspace(-2.0, 3.0, len(pairs))
    weights = np.array([0.0, 0.5, 1.0, 2.0, 1.0, 0.0, 3.0, 1.0])
    # one step over all pairs: at the first step πθ = πref, so Δθ = 0 and the logit is the offset
    r = T.train_dpo(make_tiny(tokenizer), pairs, beta=BETA, lr=1e-3, batch_size=8, offsets=offsets,
                    weights=weights, progress=False)
    row = r.history.iloc[0]
    expected = (weights * -F.logsigmoid(torch.tensor(offsets)).numpy()).mean()  # Σ w·L / n
    assert row.loss == pytest.approx(expected, abs=1e-5)
    assert row.margin == pytest.approx(offsets.mean(), abs=1e-5)
    assert row.accuracy == pytest.approx((offsets > 0).mean())

    # dpo_loss itself: the offset adds to β·Δθ, the weight multiplies
    pol, ref = torch.randn(8, 2) * 5, torch.randn(8, 2) * 5
    delta = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    o, w = torch.tensor(offsets, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)
    losses, z = T.dpo_loss(pol, ref, beta=BETA, offsets=o, weights=w)
    torch.testing.assert_close(z, BETA * delta + o)
    torch.testing.assert_close(losses, -w * F.logsigmoid(BETA * delta + o))


def test_all_zero_weights_are_refused_before_any_work(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    before = {k: v.clone() for k, v in tiny.original_model.state_dict().items()}
    with pytest.raises(ValueError, match="field 'weights': all 4 weights are 0"):
        T.train_dpo(tiny, pairs[:4], lr=1e-2, batch_size=4, epochs=2, weights=[0, 0, 0, 0], progress=False)
    after = tiny.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # one pair left with a weight: training runs and moves the weights
    T.train_dpo(tiny, pairs[:4], lr=1e-2, batch_size=4, epochs=1, weights=[0, 0, 0, 1], progress=False)
    assert any(not torch.equal(before[k], tiny.original_model.state_dict()[k]) for k in before)


def test_nan_reference_log_probs_are_named_as_nan(tokenizer, pairs):
    ref = torch.zeros(4, 2, dtype=torch.float64)
    ref[2, 1] = float("nan")
    with pytest.raises(ValueError, match=rf"pair '{pairs[2]['id']}' field 'ref_logps' \(rejected\): NaN"):
        T.train_dpo(make_tiny(tokenizer), pairs[:4], ref_logps=ref, progress=False)
    with pytest.raises(ValueError, match=r"field 'ref_logps': need Tensor\[4, 2\].*shape \(3, 2\)"):
        T.train_dpo(make_tiny(tokenizer), pairs[:4], ref_logps=torch.zeros(3, 2), progress=False)


def test_token_masks(tokenizer):
    tiny = make_tiny(tokenizer)
    prompt = [{"role": "user", "content": "Is the sky blue?"}]
    pair = {"id": "sky", "prompt": prompt, "chosen": "The answer is yes, it is.",
            "rejected": "The answer is no, it is."}
    c = format_pair(tokenizer, prompt, pair["chosen"])
    r = format_pair(tokenizer, prompt, pair["rejected"])
    start = sum(c["prompt_mask"])
    comp_c, comp_r = c["input_ids"][start:], r["input_ids"][start:]
    first_diff = next(i for i, (a, b) in enumerate(zip(comp_c, comp_r)) if a != b)
    assert first_diff > 0

    # keep only the shared prefix of the completions: chosen and rejected become the same tokens
    keep = [[int(i < first_diff) for i in range(len(comp_c))], [int(i < first_diff) for i in range(len(comp_r))]]
    lp = T.pair_logprobs(tiny, [pair], token_masks=[keep])
    assert lp[0, 0].item() == pytest.approx(lp[0, 1].item(), abs=1e-5)
    full = T.pair_logprobs(tiny, [pair])
    assert abs(full[0, 0] - full[0, 1]) > 1e-3

    # a mask over the response tokens only (the end-of-turn suffix still counts) drops exactly those tokens
    n_resp = sum(c["response_mask"])
    drop = 2
    mask = [1] * n_resp
    mask[drop] = 0
    lp_drop = T.pair_logprobs(tiny, [pair], token_masks=[(mask, None)])
    with torch.no_grad():
        logits = tiny.original_model(input_ids=torch.tensor([c["input_ids"]])).logits[0].double()
    t = start + drop
    token_lp = logits[t - 1].log_softmax(-1)[c["input_ids"][t]].item()
    assert lp_drop[0, 0].item() == pytest.approx(full[0, 0].item() - token_lp, abs=1e-4)
    assert lp_drop[0, 1].item() == full[0, 1].item()

    # training on the masked pair: the margin cannot move, the loss stays log 2
    res = T.train_dpo(tiny, [pair] * 2, lr=1e-2, batch_size=2, epochs=3, token_masks=[keep] * 2, progress=False)
    np.testing.assert_allclose(res.history.loss, math.log(2), atol=1e-5)
    np.testing.assert_allclose(res.history.reward_margin, 0.0, atol=1e-5)


# ----------------------------------------------------------------------------- 3. hooks


def test_policy_hooks_reach_the_policy_only_and_are_removed(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    calls = []

    def push(acts, hook=None):
        calls.append(acts.shape)
        return acts + 3.0

    clean = T.pair_logprobs(tiny, pairs[:4], batch_size=4)
    hooked = T.pair_logprobs(tiny, pairs[:4], batch_size=4, hooks=[("blocks.0.hook_resid_post", push)])
    assert (clean - hooked).abs().max() > 0.1 and calls

    calls.clear()
    res = T.train_dpo(tiny, pairs[:4], lr=1e-6, batch_size=4, epochs=1, progress=False,
                      policy_hooks=[("blocks.0.hook_resid_post", push)])
    torch.testing.assert_close(res.ref_logps, clean)  # the reference pass ran without the hook
    assert len(calls) == 1  # one policy forward, hooked
    assert abs(res.history.reward_margin.iloc[0]) > 1e-3  # the hooked policy differs from the reference

    calls.clear()
    T.pair_logprobs(tiny, pairs[:2])
    assert calls == []  # removed after training

    def boom(acts, hook=None):
        calls.append(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        T.train_dpo(tiny, pairs[:4], batch_size=4, progress=False, policy_hooks=[("blocks.1.hook_resid_post", boom)])
    calls.clear()
    T.pair_logprobs(tiny, pairs[:2])
    assert calls == []  # removed after the exception too
    assert all(p.requires_grad for p in tiny.original_model.parameters())


# ----------------------------------------------------------------------------- 4. training


def test_training_raises_the_margin_and_is_deterministic(tokenizer, pairs):
    four = pairs[:4]
    kw = dict(lr=3e-3, batch_size=2, epochs=2, seed=7, progress=False)
    a = T.train_dpo(make_tiny(tokenizer), four, **kw)
    b = T.train_dpo(make_tiny(tokenizer), four, **kw)
    cols = [c for c in a.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])  # same seed, same history
    assert list(a.history.step) == [1, 2, 3, 4] and list(a.history.epoch) == [0, 0, 1, 1]

    h = a.history
    assert h.loss.iloc[-2:].mean() < h.loss.iloc[:2].mean() - 0.01
    assert h.margin.iloc[-2:].mean() > h.margin.iloc[:2].mean() + 0.1
    after = T.preference_margins(a.model, four, ref_logps=a.ref_logps)
    assert (after.delta > 0).all() and after.delta.mean() > 0.1  # the training pairs moved toward chosen
    assert a.ids == [p["id"] for p in four]

    c = T.train_dpo(make_tiny(tokenizer), four, **{**kw, "seed": 9, "epochs": 1})
    assert c.history.loss.iloc[1] != pytest.approx(a.history.loss.iloc[1], abs=1e-6)  # another shuffle


def test_grad_accum_equals_a_bigger_batch(tokenizer, pairs):
    kw = dict(lr=3e-3, epochs=2, shuffle=False, progress=False)
    one = T.train_dpo(make_tiny(tokenizer), pairs[:4], batch_size=4, **kw)
    acc = T.train_dpo(make_tiny(tokenizer), pairs[:4], batch_size=2, grad_accum=2, **kw)
    assert len(one.history) == len(acc.history) == 2
    np.testing.assert_allclose(acc.history.loss, one.history.loss, atol=1e-5)
    np.testing.assert_allclose(acc.history.grad_norm, one.history.grad_norm, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_training(tokenizer, pairs):
    def push(acts, hook=None):  # a policy hook: checkpointing must re-apply it when it recomputes
        return acts + 1.0

    kw = dict(lr=3e-3, batch_size=2, epochs=1, shuffle=False, progress=False,
              policy_hooks=[("blocks.0.hook_resid_post", push)])
    plain = T.train_dpo(make_tiny(tokenizer), pairs[:4], **kw)
    tiny = make_tiny(tokenizer)
    ckpt = T.train_dpo(tiny, pairs[:4], gradient_checkpointing=True, **kw)
    np.testing.assert_allclose(ckpt.history.loss, plain.history.loss, atol=1e-6)
    np.testing.assert_allclose(ckpt.history.grad_norm, plain.history.grad_norm, rtol=1e-5)
    hf = tiny.original_model
    assert not hf.training and not any(getattr(m, "gradient_checkpointing", False) for m in hf.modules())


def test_bf16_autocast_runs_and_stays_close(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    f32 = T.pair_logprobs(tiny, pairs[:1])
    bf16 = T.pair_logprobs(tiny, pairs[:1], autocast_bf16=True)
    assert bf16.dtype == torch.float64 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, f32, rtol=2e-2, atol=0.0)  # bf16 keeps ~3 significant digits


def test_preference_margins_columns(tokenizer, pairs):
    from datasets import Dataset

    tiny = make_tiny(tokenizer)
    df = T.preference_margins(tiny, Dataset.from_list(pairs[:3]))  # a datasets.Dataset works like a list
    lp = T.pair_logprobs(tiny, pairs[:3])
    assert list(df.id) == [p["id"] for p in pairs[:3]]
    np.testing.assert_allclose(df.margin, (lp[:, 0] - lp[:, 1]).numpy(), atol=1e-4)
    np.testing.assert_allclose(df.mean_logp_chosen * df.n_chosen, df.logp_chosen, rtol=1e-5)
    assert "delta" not in df


def test_out_dir_round_trip_and_reference_cache(tokenizer, pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tiny = make_tiny(tokenizer)
    res = T.train_dpo(tiny, pairs[:4], lr=1e-3, batch_size=2, save_every=1, out_dir=out, progress=False)
    for name in ("train_config.json", "history.json", "model.safetensors", "checkpoint-000001/model.safetensors",
                 "checkpoint-000002/history.json"):
        assert (out / name).exists(), name
    assert len(list(out.glob("ref_logps-*-4pairs-*.safetensors"))) == 1
    cfg, hist = T.load_train_run(out)
    assert cfg == res.config and cfg.policy_hooks == () and cfg.n_pairs == 4
    pd.testing.assert_frame_equal(hist, res.history)
    assert T.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

    fresh = make_tiny(tokenizer, seed=5)
    T.load_train_run(out, model=fresh)
    trained_lp = T.pair_logprobs(tiny, pairs[:2])
    torch.testing.assert_close(T.pair_logprobs(fresh, pairs[:2]), trained_lp)

    # the weights are saved under plain Hugging Face names: a model without the bridge reads them
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    head = tiny.original_model.get_output_embeddings().original_component
    assert head.bias is not None and not torch.count_nonzero(head.bias)  # the bridge's added bias stayed 0
    plain = LlamaForCausalLM(tiny.original_model.config).eval()
    missing, unexpected = plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=False)
    assert unexpected == [] and missing == ["lm_head.weight"]  # tied to the embedding
    plain.tie_weights()
    torch.testing.assert_close(T.pair_logprobs(plain, pairs[:2], tokenizer=tokenizer), trained_lp)

    # a rerun into the same directory with the same config reuses the cached reference
    def no_reference_pass(*a, **k):
        raise AssertionError("the reference log-probs should come from the cache")

    monkeypatch.setattr(T, "_all_logps", no_reference_pass)
    again = T.train_dpo(make_tiny(tokenizer), pairs[:4], lr=1e-3, batch_size=2, save_every=1, out_dir=out,
                        progress=False)
    torch.testing.assert_close(again.ref_logps, res.ref_logps)
    with pytest.raises(ValueError, match="other settings"):
        T.train_dpo(make_tiny(tokenizer), pairs[:4], lr=2e-3, batch_size=2, out_dir=out, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        T.train_dpo(make_tiny(tokenizer), pairs[:4], out_dir=tmp_path / "foreign", progress=False)


# ----------------------------------------------------------------------------- 5. errors


def test_bad_input_names_the_pair_and_field(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    ids = [p["id"] for p in pairs]
    with pytest.raises(ValueError, match=rf"'offsets'.*{ids[5]}"):
        T.train_dpo(tiny, pairs, offsets=[0.0] * 5, progress=False)
    bad = [0.0] * 8
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=rf"pair '{ids[3]}' field 'offsets'"):
        T.train_dpo(tiny, pairs, offsets=bad, progress=False)
    with pytest.raises(ValueError, match=rf"pair '{ids[2]}' field 'weights'"):
        T.train_dpo(tiny, pairs, weights=[1, 1, -1, 1, 1, 1, 1, 1], progress=False)
    with pytest.raises(ValueError, match=rf"'weights'.*{ids[7]}"):
        T.train_dpo(tiny, pairs, weights=np.ones(7), progress=False)
    masks = [None] * 8
    masks[6] = ([1, 0, 1], None)
    with pytest.raises(ValueError, match=rf"pair '{ids[6]}' field 'token_masks' \(chosen\): length 3"):
        T.train_dpo(tiny, pairs, token_masks=masks, progress=False)
    with pytest.raises(ValueError, match=rf"'token_masks'.*{ids[4]}"):
        T.train_dpo(tiny, pairs, token_masks=[None] * 4, progress=False)
    with pytest.raises(ValueError, match="'policy_hooks'.*unknown hook name"):
        T.train_dpo(tiny, pairs, policy_hooks=[("blocks.99.hook_nothing", lambda a, hook=None: a)], progress=False)
    with pytest.raises(ValueError, match="'ref_logps'"):
        T.train_dpo(tiny, pairs, ref_logps=torch.zeros(3, 2), progress=False)
    with pytest.raises(ValueError, match="pair 'x' field 'chosen'"):
        T.train_dpo(tiny, [{"id": "x", "prompt": [{"role": "user", "content": "hi"}], "rejected": "no"}],
                    progress=False)
    with pytest.raises(ValueError, match="beta"):
        T.TrainConfig(beta=0)


def test_lora_without_peft_says_how_to_install(tokenizer, pairs, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match="pip install peft"):
        T.train_dpo(make_tiny(tokenizer), pairs[:2], lora={"r": 4}, progress=False)


def test_lora_trains_adapters_and_merges_them(tokenizer, pairs):
    pytest.importorskip("peft")
    tiny = make_tiny(tokenizer)
    before = {k: v.detach().clone() for k, v in tiny.original_model.named_parameters()}
    res = T.train_dpo(tiny, pairs[:4], lr=1e-2, batch_size=4, epochs=2, lora={"r": 4, "lora_alpha": 8},
                      progress=False)
    after = dict(tiny.original_model.named_parameters())
    assert set(after) == set(before)  # adapters merged and removed
    assert not any("lora" in name for name, _ in tiny.named_modules())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert len(changed) == 4 and all("q_proj" in k or "v_proj" in k for k in changed)  # peft's Llama default
    x = torch.tensor([[1, 2, 3, 4]])
    calls = []
    with torch.no_grad(), tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_q", lambda a, hook=None: calls.append(1))]):
        torch.testing.assert_close(tiny(x, return_type="logits"), tiny.original_model(x).logits)
    assert calls  # the bridge still wraps the (merged) projections
    assert res.history.loss.iloc[-1] < res.history.loss.iloc[0]
