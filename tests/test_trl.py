"""Shaped DPO on TRL (anatomy.trl): parity with train_dpo in one process and in two, hooks, prompts, export.

The models are tiny random-weight Llamas over a byte-level ChatML tokenizer
(tests/trl_worker.py) on the shortest organism pairs; the policy and the
reference differ, so the per-pair losses are not log 2. Tolerances: per-pair losses atol 5e-5 (TRL sums log-probs in
float32, train_dpo in float64; sums of ~100 tokens of ~-10 each), gradients
rtol 1e-3 / atol 1e-7 (float32 backward passes over differently padded batches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

import trl_worker as W  # noqa: E402  (tests/ is on sys.path under pytest)

from anatomy import train as T  # noqa: E402
from anatomy.trl import ShapedDPOTrainer, export_shaped, load_shaped  # noqa: E402

LOSS_ATOL = 5e-5
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-7


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok():
    return W.byte_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    return W.short_pairs(tok)


def train_dpo_reference(tok, pairs, shaping: dict) -> dict:
    """train_dpo's per-pair losses and one step's gradients (the optimizer records instead of stepping)."""
    policy, ref = W.tiny_model(tok, 1), W.tiny_model(tok, 0)
    masks = shaping.get("token_masks")
    ref_lp = T.pair_logprobs(ref, pairs, token_masks=masks, tokenizer=tok)
    pol_lp = T.pair_logprobs(policy, pairs, token_masks=masks, tokenizer=tok)
    as_t = {k: torch.tensor(shaping[k]) for k in ("offsets", "weights") if k in shaping}
    losses, _ = T.dpo_loss(pol_lp, ref_lp, beta=W.BETA, **as_t)
    made = []

    class Recorder(W.RecordGrads):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(self)

    old = torch.optim.AdamW
    torch.optim.AdamW = Recorder
    try:
        T.train_dpo(policy, pairs, beta=W.BETA, batch_size=len(pairs), shuffle=False, max_grad_norm=None,
                    ref_logps=ref_lp, tokenizer=tok, progress=False, **shaping)
    finally:
        torch.optim.AdamW = old
    names = [n for n, _ in policy.named_parameters()]
    return {"losses": losses.tolist(), "grads": dict(zip(names, made[0].grads[0]))}


@pytest.fixture(scope="module")
def ours_shaped(tok, pairs):
    return train_dpo_reference(tok, pairs, W.shaping(tok, pairs))


def assert_same_step(theirs: dict, ours: dict) -> dict:
    """Per-pair losses and gradients agree; returns the largest differences seen."""
    np.testing.assert_allclose(theirs["losses"], ours["losses"], atol=LOSS_ATOL)
    assert set(theirs["grads"]) == set(ours["grads"])
    worst = 0.0
    for name, g in ours["grads"].items():
        torch.testing.assert_close(theirs["grads"][name], g, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
        worst = max(worst, float((theirs["grads"][name] - g).abs().max()))
    assert max(float(g.abs().max()) for g in ours["grads"].values()) > 1e-4  # a real gradient, not zeros
    return {"loss": float(np.abs(np.subtract(theirs["losses"], ours["losses"])).max()), "grad": worst}


# ----------------------------------------------------------------------------- parity


def test_shaped_trainer_matches_train_dpo_in_one_process(tok, pairs, ours_shaped, tmp_path):
    theirs = W.shaped_step(tok, tmp_path, per_device=len(pairs))
    assert ours_shaped["losses"][3] == 0.0 and len(set(np.round(ours_shaped["losses"], 3))) == 4
    print("1 process, max |diff|:", assert_same_step(theirs, ours_shaped))


def test_unshaped_trainer_is_trls_dpo_trainer(tok, pairs, tmp_path):
    ours = train_dpo_reference(tok, pairs, {})
    plain = W.shaped_step(tok, tmp_path / "plain", per_device=len(pairs), plain=True)
    shaped = W.shaped_step(tok, tmp_path / "shaped", per_device=len(pairs), shaped=False)
    assert_same_step(plain, ours)
    assert_same_step(shaped, plain)


def test_shaped_trainer_matches_train_dpo_on_two_processes(ours_shaped, tmp_path):
    out = tmp_path / "two.pt"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29517", str(root / "tests" / "trl_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(out)
    assert theirs["world"] == 2
    print("2 processes, max |diff|:", assert_same_step(theirs, ours_shaped))


# ----------------------------------------------------------------------------- hooks and prompts


def tiny_bridge(tok, seed: int):
    """The tiny model in a TransformerBridge (with its own copy of the tokenizer: booting edits the tokenizer)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=W.tiny_model(tok, seed),
                                               tokenizer=W.byte_tokenizer(), device="cpu", dtype=torch.float32)


def test_policy_hooks_are_on_for_train_only_and_removed_after(tok, pairs, tmp_path):
    bridge = tiny_bridge(tok, 1)
    calls = []

    def push(acts, hook=None):
        calls.append(1)
        return acts + 3.0

    clean = T.pair_logprobs(bridge, pairs[:2])
    trainer = ShapedDPOTrainer(bridge, None, W.trl_args(tmp_path, 2, learning_rate=1e-6), pairs=pairs[:2],
                               policy_hooks=[("blocks.0.hook_resid_post", push)])
    ref = np.array([trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]]).T
    np.testing.assert_allclose(ref, clean.numpy(), rtol=1e-5)  # the reference ran without the hook
    assert calls == []
    trainer.train()
    assert calls  # the policy forwards were hooked
    assert trainer.state.log_history[-1]["train_loss"] > 0.7  # hooked policy ≠ reference: loss far from log 2
    calls.clear()
    T.pair_logprobs(bridge, pairs[:2])
    assert calls == []  # removed after train()

    def boom(acts, hook=None):
        raise RuntimeError("boom")

    trainer = ShapedDPOTrainer(bridge, None, W.trl_args(tmp_path / "b", 2), pairs=pairs[:2],
                               policy_hooks=[("blocks.1.hook_resid_post", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    np.testing.assert_allclose(T.pair_logprobs(bridge, pairs[:2]).numpy(), clean.numpy(), rtol=1e-4)  # removed


def test_inoculation_prompts_reach_the_policy_not_the_reference(tok, pairs, tmp_path):
    policy, ref = W.tiny_model(tok, 1), W.tiny_model(tok, 0)
    system = [{"role": "system", "content": "You are a sycophantic assistant."}]
    prompts = [system + list(p["prompt"]) for p in pairs]
    trainer = ShapedDPOTrainer(policy, ref, W.trl_args(tmp_path, 1), pairs=pairs, processing_class=tok,
                               policy_prompts=prompts)
    ds = trainer.train_dataset
    ref_lp = T.pair_logprobs(ref, pairs, tokenizer=tok)  # original prompts
    np.testing.assert_allclose(np.array([ds["ref_chosen_logps"], ds["ref_rejected_logps"]]).T, ref_lp.numpy(),
                               rtol=1e-5)
    inoculated = [{**p, "prompt": q} for p, q in zip(pairs, prompts)]
    pol_lp = T.pair_logprobs(policy, inoculated, tokenizer=tok)
    losses, _ = T.dpo_loss(pol_lp, ref_lp, beta=W.BETA)
    np.testing.assert_allclose(W.per_pair_losses(trainer), losses.numpy(), atol=LOSS_ATOL)
    plain, _ = T.dpo_loss(T.pair_logprobs(policy, pairs, tokenizer=tok), ref_lp, beta=W.BETA)
    assert (plain - losses).abs().max() > 1e-3  # the policy prompt made a difference


# ----------------------------------------------------------------------------- export


def plan_inputs(pairs, shaping):
    from anatomy.interventions import TrainInputs

    return TrainInputs(ids=[p["id"] for p in pairs], offsets=shaping["offsets"], weights=shaping["weights"],
                       token_masks=shaping["token_masks"], summary={"explain_away sycophancy": {"n_pairs": 3}})


@pytest.mark.parametrize("fmt,name", [("jsonl", "shaped.jsonl"), ("parquet", "shaped.parquet"), ("hf", "shaped")])
def test_export_shaped_trains_to_train_dpos_loss(tok, pairs, fmt, name, tmp_path):
    shaping = W.shaping(tok, pairs)
    ref = W.tiny_model(tok, 0)
    path = tmp_path / name
    manifest = export_shaped(pairs, plan_inputs(pairs, shaping), path, format=fmt, model=ref, tokenizer=tok,
                             beta=W.BETA)
    assert manifest["n_pairs_in"] == 4 and manifest["n_pairs_out"] == 3  # weight 0 is filtered out
    assert manifest["removed"] == {"not_in_plan": 0, "weight_zero": 1, "ids": [pairs[3]["id"]]}
    assert manifest["changed"]["offsets"]["n_nonzero"] == 3 and manifest["changed"]["weights"]["n_not_one"] == 2
    assert manifest["changed"]["token_masks"]["n_tokens_masked_chosen"] == 4
    assert manifest["decisions"] == {"explain_away sycophancy": {"n_pairs": 3}}
    with pytest.raises(FileExistsError):
        export_shaped(pairs, plan_inputs(pairs, shaping), path, format=fmt, model=ref, tokenizer=tok)

    ds = load_shaped(path)
    assert {"prompt", "chosen", "rejected", "weight", "ref_chosen_logps", "ref_rejected_logps"} <= set(ds.column_names)
    # trained with another reference model: the supplied (offset-folded) columns are kept, not recomputed
    policy = W.tiny_model(tok, 1)
    trainer = ShapedDPOTrainer(policy, W.tiny_model(tok, 7), W.trl_args(tmp_path / "t", 1), train_dataset=ds,
                               processing_class=tok)
    np.testing.assert_array_equal(trainer.train_dataset["ref_chosen_logps"], ds["ref_chosen_logps"])

    masks = shaping["token_masks"]
    ours, _ = T.dpo_loss(T.pair_logprobs(policy, pairs, token_masks=masks, tokenizer=tok),
                         T.pair_logprobs(ref, pairs, token_masks=masks, tokenizer=tok), beta=W.BETA,
                         offsets=torch.tensor(shaping["offsets"]), weights=torch.tensor(shaping["weights"]))
    np.testing.assert_allclose(W.per_pair_losses(trainer), ours.numpy()[:3], atol=LOSS_ATOL)


def test_export_without_a_reference_keeps_offsets_for_the_trainer(tok, pairs, tmp_path):
    shaping = W.shaping(tok, pairs)
    manifest = export_shaped(pairs[:3], plan_inputs(pairs[:2], shaping | {"offsets": shaping["offsets"][:2],
                                                                          "weights": None, "token_masks": None}),
                             tmp_path / "s.jsonl")
    assert manifest["reference"]["source"] == "none" and manifest["removed"]["not_in_plan"] == 1
    row = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[1])
    assert row["offset"] == -1.0 and row["weight"] == 1.0 and "ref_chosen_logps" not in row
    ref = W.tiny_model(tok, 0)
    trainer = ShapedDPOTrainer(ref, None, W.trl_args(tmp_path / "t", 1),
                               train_dataset=load_shaped(tmp_path / "s.jsonl"),
                               processing_class=tok)
    ref_lp = T.pair_logprobs(ref, pairs[:2], tokenizer=tok)
    np.testing.assert_allclose(trainer.train_dataset["ref_chosen_logps"],
                               ref_lp[:, 0].numpy() - shaping["offsets"][:2] / W.BETA, rtol=1e-5)


def test_bad_shaping_names_the_pair_and_field(tok, pairs, tmp_path):
    args = W.trl_args(tmp_path, 1)
    model = W.tiny_model(tok, 0)
    with pytest.raises(ValueError, match="field 'offsets': 3 values for 4 pairs"):
        ShapedDPOTrainer(model, None, args, pairs=pairs, processing_class=tok, offsets=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=f"pair '{pairs[1]['id']}' field 'weights'"):
        ShapedDPOTrainer(model, None, args, pairs=pairs, processing_class=tok, weights=[1, -1, 1, 1])
    with pytest.raises(ValueError, match=f"pair '{pairs[0]['id']}' field 'token_masks' \\(chosen\\): length 2"):
        ShapedDPOTrainer(model, None, args, pairs=pairs, processing_class=tok,
                         token_masks=[([1, 0], None)] + [None] * 3)
    with pytest.raises(ValueError, match="policy_hooks.*TransformerBridge"):
        ShapedDPOTrainer(model, None, args, pairs=pairs, processing_class=tok,
                         policy_hooks=[("blocks.0.hook_resid_post", lambda a, hook=None: a)])
    with pytest.raises(NotImplementedError, match="loss_type"):
        ShapedDPOTrainer(model, None, W.trl_args(tmp_path, 1, loss_type=["ipo"]), pairs=pairs, processing_class=tok,
                         weights=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="not in pairs"):
        export_shaped(pairs, plan_inputs([{"id": "nope"}], {"offsets": None, "weights": None, "token_masks": None}),
                      tmp_path / "x.jsonl")
