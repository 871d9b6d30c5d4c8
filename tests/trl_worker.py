"""One shaped DPO step through ``ShapedDPOTrainer`` on a tiny random-weight Llama, for tests/test_trl.py.

The model is tiny in every dimension, vocabulary included: a byte-level tokenizer
(256 bytes + the ChatML markers, the default model's chat format) keeps TRL's LM
head, which on a CPU scores every position against the whole vocabulary, cheap.

Imported by the tests (one process) and launched by them under ``accelerate launch
--multi_gpu --num_processes 2`` (CPU, gloo): ``python tests/trl_worker.py OUT.pt``.
Every process builds the same tiny models and pairs; process 0 writes the per-pair
losses and the step's (all-reduced) gradients to ``OUT.pt``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

BETA = 0.1
N_PAIRS = 4


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def byte_tokenizer():
    """A byte-level tokenizer (no merges: one token per byte) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"], chat_template=CHATML)
    tok.model_max_length = 4096
    return tok


def tiny_model(tokenizer, seed: int):
    """A tiny random-weight Llama (2 layers, d_model 32) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def short_pairs(tokenizer, n: int = N_PAIRS) -> list[dict]:
    """The ``n`` shortest of the first 40 organism training pairs."""
    from anatomy.data import load_preferences
    from anatomy.models import format_pair

    rows = list(load_preferences("organism", split="train", limit=40))
    size = {p["id"]: sum(len(format_pair(tokenizer, p["prompt"], p[s])["input_ids"]) for s in ("chosen", "rejected"))
            for p in rows}
    return sorted(rows, key=lambda p: size[p["id"]])[:n]


def shaping(tokenizer, pairs) -> dict:
    """Offsets, weights (one pair dropped) and token masks (two response tokens of pair 0 and 1 masked)."""
    from anatomy.models import format_pair

    masks = []
    for k, p in enumerate(pairs):
        sides = []
        for side in ("chosen", "rejected"):
            n_resp = sum(format_pair(tokenizer, p["prompt"], p[side])["response_mask"])
            m = [1] * n_resp
            if k < 2:
                m[k] = m[-1] = 0
            sides.append(m)
        masks.append(tuple(sides) if k != 3 else None)
    return {"offsets": np.array([0.5, -1.0, 2.0, 0.0]), "weights": np.array([1.0, 0.5, 2.0, 0.0]),
            "token_masks": masks}


class RecordGrads(torch.optim.SGD):
    """An optimizer that records the gradients it is asked to apply and leaves the weights alone."""

    def __init__(self, params, lr: float = 1e-3, **_):
        super().__init__(params, lr=lr)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() if p.grad is not None else None
                           for g in self.param_groups for p in g["params"]])


def trl_args(out_dir, per_device: int, **overrides):
    import trl

    kw = dict(output_dir=str(out_dir), beta=BETA, loss_type=["sigmoid"], bf16=False, use_cpu=True, report_to="none",
              per_device_train_batch_size=per_device, max_length=None, save_strategy="no", logging_strategy="no",
              dataloader_num_workers=0, disable_tqdm=True, max_steps=1, max_grad_norm=0.0, seed=0)
    kw.update(overrides)
    return trl.DPOConfig(**kw)


def per_pair_losses(trainer) -> list[float]:
    """The trainer's loss of each pair alone (a one-pair batch each)."""
    out = []
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        with torch.no_grad():
            out.append(float(trainer.compute_loss(trainer.model, batch)))
    return out


def shaped_step(tokenizer, out_dir, *, per_device: int, shaped: bool = True, plain: bool = False) -> dict:
    """Per-pair losses and one optimizer step's gradients of ``ShapedDPOTrainer`` (or TRL's ``DPOTrainer``)."""
    import trl

    from anatomy.trl import ShapedDPOTrainer

    pairs = short_pairs(tokenizer)
    policy, ref = tiny_model(tokenizer, 1), tiny_model(tokenizer, 0)
    opt = RecordGrads(policy.parameters())
    args = trl_args(out_dir, per_device, precompute_ref_log_probs=plain)
    if plain:
        from datasets import Dataset

        rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                 "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
        trainer = trl.DPOTrainer(policy, ref, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 optimizers=(opt, None))
    else:
        kw = shaping(tokenizer, pairs) if shaped else {}
        trainer = ShapedDPOTrainer(policy, ref, args, pairs=pairs, processing_class=tokenizer, optimizers=(opt, None),
                                   **kw)
    losses = per_pair_losses(trainer)
    trainer.train()
    names = [n for n, _ in policy.named_parameters()]
    return {"losses": losses, "grads": dict(zip(names, opt.grads[0])), "world": trainer.accelerator.num_processes}


if __name__ == "__main__":
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    result = shaped_step(byte_tokenizer(), sys.argv[1] + ".trl", per_device=N_PAIRS // state.num_processes)
    if state.is_main_process:
        torch.save(result, sys.argv[1])
