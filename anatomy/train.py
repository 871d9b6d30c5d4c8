"""Stage 5: shaped DPO, the training step that the diagnosis decides how to steer.

Takes a model (a ``TransformerBridge`` from ``load_model``, or a Hugging Face
causal LM plus its tokenizer), preference pairs (``id``, ``prompt`` messages,
``chosen``, ``rejected``: ``load_preferences``) and the shaping of the learning
signal: per-pair offsets ``λ·ΔA_u`` (METHOD §2), per-pair weights, per-token
masks and forward hooks applied to the policy only. ``train_dpo`` returns a
``TrainResult``: the config, a per-step history DataFrame, the model (the same
object, trained in place), the reference log-probs and the wall time.

The loss of pair i (METHOD §2)::

    L_i = -w_i · log σ(β·Δθ_i + offset_i)
    Δθ_i = [log πθ(y+|x) − log πref(y+|x)] − [log πθ(y−|x) − log πref(y−|x)]

Decisions, so that results can be compared with TRL and between runs:

- **Which tokens count.** ``log π(y|x)`` is the sum over the *completion*: the
  response tokens and the end-of-turn suffix the chat template appends
  (``<|im_end|>`` and the newline for SmolLM2), i.e. every token after the
  prompt, as TRL's ``DPOTrainer`` does. A token mask removes tokens from the
  policy *and* the reference sums.
- **Weights are absolute.** The loss of an optimizer step is
  ``Σ_i w_i·L_i / n``, ``n`` = the pairs in that step (``batch_size ·
  grad_accum``, fewer in an epoch's last step): ``w = 1`` everywhere is TRL's
  mean, ``w_i = 0`` drops pair i, and ``w = 0.5`` everywhere halves the step.
  Rescale weights to mean 1 first if only their ratios should matter.
- **Reference.** ``πref`` is the model's initial weights. Its log-probs are
  computed once, before the first update (no second copy of the model), with
  the same autocast setting and without the policy hooks; kept in memory and,
  with ``out_dir``, written to ``ref_logps-<model>-<n>pairs-<digest>.safetensors``
  (the digest covers the weights' fingerprint, the tokens and the masks), which
  a rerun into the same ``out_dir`` reuses.
- **Metrics** (history, progress bar) are those of each step's batch *before*
  its update, as TRL logs them: ``accuracy`` is the share of pairs with
  ``β·Δθ + offset > 0`` and ``margin`` its mean; ``reward_margin`` is the mean
  of ``β·Δθ`` alone. At the first step ``Δθ`` is 0 up to float rounding
  (different padding than the reference batches), so its accuracy means nothing.
- **Dropout is off**, as TRL's default: the model stays in eval mode (with
  ``gradient_checkpointing``, which needs train mode, every dropout's p is 0).

``pair_logprobs`` and ``preference_margins`` score pairs without training:
preference accuracy and mean margin on held-out clean pairs are the
"intended learning" metric of a trained policy.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .cache import _pair_fields
from .models import format_pair

Hook = tuple[str, Callable]

CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"
PEFT_HINT = (
    "lora= needs the optional package peft, which anatomy does not install: "
    "`pip install peft` in this environment (or leave lora=None for a full fine-tune)"
)
HISTORY_COLUMNS = [
    "step", "epoch", "loss", "accuracy", "margin", "reward_margin",
    "grad_norm", "lr", "n_pairs", "seconds",
]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that made a ``train_dpo`` run, saved as JSON beside its weights.

    The first block are the knobs of ``train_dpo``; the second is provenance
    filled in by ``train_dpo`` (the model, the pairs, the hook names and
    digests of the offsets / weights / token masks).
    """

    beta: float = 0.1
    lr: float = 5e-6
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    shuffle: bool = True
    group_by_length: bool = True
    autocast_bf16: bool = False
    gradient_checkpointing: bool = False
    lora: dict | None = None
    save_every: int | None = None
    # provenance
    model_name: str | None = None
    n_pairs: int | None = None
    ids_digest: str | None = None
    policy_hooks: tuple[str, ...] = ()
    shaping: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"save_every must be >= 1 or None, got {self.save_every}")
        if self.lora is not None and not isinstance(self.lora, dict):
            raise ValueError(f"lora must be a dict of peft.LoraConfig arguments or None, got {type(self.lora)}")
        object.__setattr__(self, "policy_hooks", tuple(self.policy_hooks))
        if self.lora is not None:
            try:
                object.__setattr__(self, "lora", json.loads(json.dumps(self.lora)))
            except TypeError as err:
                raise ValueError(f"lora must hold plain JSON values (peft.LoraConfig arguments): {err}") from err

    def to_dict(self) -> dict:
        """Plain JSON types (tuples become lists), so that ``from_dict(json round trip)`` is equal."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**d)

    def steps_per_epoch(self, n_pairs: int) -> int:
        """Optimizer steps in one epoch over ``n_pairs`` pairs (an epoch's last batch may be short)."""
        return math.ceil(math.ceil(n_pairs / self.batch_size) / self.grad_accum)

    def train_kwargs(self) -> dict:
        """The knobs, as keyword arguments of ``train_dpo`` (to rerun a saved config)."""
        keep = ("beta", "lr", "epochs", "batch_size", "grad_accum", "seed", "max_grad_norm", "weight_decay",
                "warmup_steps", "shuffle", "group_by_length", "autocast_bf16", "gradient_checkpointing", "lora", "save_every")
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What ``train_dpo`` returns.

    Attributes:
        config: the ``TrainConfig`` of the run.
        history: one row per optimizer step: ``step`` (1-based), ``epoch``
            (0-based), ``loss``, ``accuracy``, ``margin``, ``reward_margin``,
            ``grad_norm`` (before clipping), ``lr``, ``n_pairs``, ``seconds``.
        model: the model that was passed in, trained in place (same object).
        ref_logps: ``Tensor[n_pairs, 2]``, reference log-probs of (chosen, rejected).
        ids: pair ids, in the row order of ``ref_logps``.
        wall_seconds: total time of ``train_dpo``, reference pass included.
        out_dir: where the run was saved, if anywhere.
    """

    config: TrainConfig
    history: pd.DataFrame
    model: Any
    ref_logps: Float[Tensor, "pair 2"]
    ids: list[str]
    wall_seconds: float
    out_dir: Path | None = None


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Seq:
    """One prompt + completion sequence; ``count[j]`` says whether completion token j counts."""

    ids: tuple[int, ...]
    n_prompt: int
    n_response: int
    count: tuple[bool, ...]


def _unwrap(model, tokenizer=None):
    """(bridge or None, Hugging Face model, tokenizer)."""
    if hasattr(model, "original_model") and hasattr(model, "hooks"):
        return model, model.original_model, tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("a plain Hugging Face model needs tokenizer=...; a TransformerBridge brings its own")
    return None, model, tokenizer


def _model_name(bridge, hf) -> str | None:
    if bridge is not None and getattr(bridge.cfg, "model_name", None):
        return str(bridge.cfg.model_name)
    return getattr(hf.config, "name_or_path", None) or None


def _n_ctx(bridge, hf) -> int | None:
    if bridge is not None and getattr(bridge.cfg, "n_ctx", None):
        return int(bridge.cfg.n_ctx)
    return getattr(hf.config.get_text_config(), "max_position_embeddings", None)


def _encode(tokenizer, pairs, n_ctx: int | None) -> tuple[list[str], list[tuple[_Seq, _Seq]]]:
    ids, seqs = [], []
    for i in range(len(pairs)):
        pid, prompt, chosen, rejected = _pair_fields(pairs[i], i)
        sides = []
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            enc = format_pair(tokenizer, prompt, text)
            n, n_prompt, n_resp = len(enc["input_ids"]), sum(enc["prompt_mask"]), sum(enc["response_mask"])
            if n_ctx and n > n_ctx:
                raise ValueError(
                    f"pair {pid!r} field {side!r}: {n} tokens is longer than the model's context ({n_ctx})"
                )
            if n_resp == 0:
                raise ValueError(f"pair {pid!r} field {side!r}: empty response")
            if n_prompt == 0:
                raise ValueError(f"pair {pid!r} field 'prompt': the prompt has no tokens")
            sides.append(_Seq(tuple(enc["input_ids"]), n_prompt, n_resp, (True,) * (n - n_prompt)))
        ids.append(pid)
        seqs.append(tuple(sides))
    return ids, seqs


def _per_pair(values, name: str, ids: list[str], *, nonneg: bool = False) -> np.ndarray | None:
    """Validate a per-pair number array (offsets, weights) against the pairs."""
    if values is None:
        return None
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != len(ids):
        n = len(arr) if arr.ndim == 1 else None
        extra = f"; pair {ids[n]!r} (index {n}) has none" if n is not None and n < len(ids) else ""
        raise ValueError(
            f"field {name!r}: {n if n is not None else arr.shape} values for {len(ids)} pairs; need one per pair{extra}"
        )
    bad = np.flatnonzero(~np.isfinite(arr) | ((arr < 0) if nonneg else False))
    if len(bad):
        i = int(bad[0])
        what = "must be finite and >= 0" if nonneg else "must be finite"
        raise ValueError(f"pair {ids[i]!r} field {name!r}: {arr[i]} {what} ({len(bad)} bad value(s) in all)")
    return arr


def _apply_token_masks(seqs, token_masks, ids) -> list[tuple[_Seq, _Seq]]:
    """Fold token masks into the sequences' ``count`` flags.

    Each mask is over that side's response tokens (the suffix always counts) or
    over all its completion tokens (response + suffix); ``None`` keeps all.
    """
    if token_masks is None:
        return seqs
    if len(token_masks) != len(ids):
        n = len(token_masks)
        extra = f"; pair {ids[n]!r} (index {n}) has none" if n < len(ids) else ""
        raise ValueError(f"field 'token_masks': {n} entries for {len(ids)} pairs; need one per pair{extra}")
    out = []
    for pid, pair_seqs, masks in zip(ids, seqs, token_masks):
        if masks is None:
            out.append(pair_seqs)
            continue
        if len(masks) != 2:
            raise ValueError(f"pair {pid!r} field 'token_masks': need a (chosen_mask, rejected_mask) pair")
        new = []
        for side, seq, mask in zip(("chosen", "rejected"), pair_seqs, masks):
            if mask is None:
                new.append(seq)
                continue
            m = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask).reshape(-1)
            n_comp = len(seq.count)
            if len(m) not in (seq.n_response, n_comp):
                raise ValueError(
                    f"pair {pid!r} field 'token_masks' ({side}): length {len(m)}, expected {seq.n_response} "
                    f"response tokens (or {n_comp} completion tokens including the end-of-turn suffix)"
                )
            if not np.isin(m, (0, 1)).all():
                raise ValueError(f"pair {pid!r} field 'token_masks' ({side}): values must be 0/1 or bool")
            count = [bool(x) for x in m] + [True] * (n_comp - len(m))
            new.append(_Seq(seq.ids, seq.n_prompt, seq.n_response, tuple(count)))
        out.append(tuple(new))
    return out


def _policy_seqs(tokenizer, pairs, seqs, policy_prompts, ids, n_ctx):
    """The sequences the policy sees: ``seqs`` itself, or each pair's responses under its policy prompt
    (same completion tokens and count flags, another prompt)."""
    if policy_prompts is None:
        return seqs
    if len(policy_prompts) != len(ids):
        n = len(policy_prompts)
        extra = f"; pair {ids[n]!r} (index {n}) has none" if n < len(ids) else ""
        raise ValueError(f"field 'policy_prompts': {n} entries for {len(ids)} pairs; need one per pair{extra}")
    out = []
    for i, (pid, pair_seqs, prompt) in enumerate(zip(ids, seqs, policy_prompts)):
        if prompt is None:
            out.append(pair_seqs)
            continue
        if not (isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) and "role" in m and "content" in m
                                                                 for m in prompt)):
            raise ValueError(f"pair {pid!r} field 'policy_prompts': need a list of {{'role', 'content'}} messages")
        row = dict(pairs[i])
        row["prompt"] = [dict(m) for m in prompt]
        _, [(c, r)] = _encode(tokenizer, [row], n_ctx)
        new = []
        for side, old, seq in (("chosen", pair_seqs[0], c), ("rejected", pair_seqs[1], r)):
            if seq.ids[seq.n_prompt:] != old.ids[old.n_prompt:]:
                raise ValueError(f"pair {pid!r} field 'policy_prompts' ({side}): the response tokenises differently "
                                 "under the policy prompt")
            new.append(_Seq(seq.ids, seq.n_prompt, seq.n_response, old.count))
        out.append(tuple(new))
    return out


def _check_hooks(bridge, hooks, what: str = "hooks") -> list[Hook]:
    if not hooks:
        return []
    if bridge is None:
        raise ValueError(f"field {what!r}: hooks need a TransformerBridge (load_model), not a plain Hugging Face model")
    from transformer_lens.model_bridge.bridge import build_alias_to_canonical_map

    names = set(bridge.hook_dict) | set(build_alias_to_canonical_map(bridge.hook_dict))
    out = []
    for k, item in enumerate(hooks):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and callable(item[1])):
            raise ValueError(f"field {what!r}[{k}]: need a (hook_name, fn) pair, got {item!r}")
        if item[0] not in names:
            raise ValueError(
                f"field {what!r}[{k}]: unknown hook name {item[0]!r} (names like 'blocks.12.hook_resid_post')"
            )
        out.append((item[0], item[1]))
    return out


# ----------------------------------------------------------------------------- log-probs


def _head_logits(hf, hidden: Tensor) -> Tensor:
    """The LM head on selected hidden states, with the final-logit transforms some models apply."""
    logits = hf.get_output_embeddings()(hidden)
    cfg = hf.config.get_text_config()
    scale = getattr(cfg, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _check_head(hf) -> None:
    """Our backbone + head path must reproduce the model's own logits (a guard for unusual heads)."""
    ids = torch.arange(1, 9, device=next(hf.parameters()).device)[None]
    with torch.no_grad():
        full = hf(input_ids=ids, use_cache=False).logits[0].float()
        ours = _head_logits(hf, _backbone(hf)(input_ids=ids, use_cache=False).last_hidden_state[0]).float()
    if not torch.allclose(full, ours, atol=1e-3, rtol=1e-3):
        raise NotImplementedError(
            f"{type(hf).__name__}: the LM head applies a transform anatomy.train does not reproduce "
            f"(max logit difference {(full - ours).abs().max():.3g})"
        )


def _backbone(hf):
    return getattr(hf, hf.base_model_prefix)


def _seq_logps(hf, seqs: Sequence[_Seq], *, pad_id: int, autocast_bf16: bool) -> Float[Tensor, "seq"]:
    """Summed log-probs of each sequence's counted completion tokens; one right-padded forward.

    Only the counted positions go through the LM head (no ``[batch, seq, vocab]`` logits).
    """
    device = next(hf.parameters()).device
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, pos, tgt = [], [], []
    for r, s in enumerate(seqs):
        ids[r, : len(s.ids)] = torch.tensor(s.ids)
        attn[r, : len(s.ids)] = 1
        for j, c in enumerate(s.count):
            if c:
                t = s.n_prompt + j
                rows.append(r)
                pos.append(t - 1)  # the logits at t-1 predict token t
                tgt.append(s.ids[t])
    rows_t = torch.tensor(rows, dtype=torch.long, device=device)
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    out = torch.zeros(len(seqs), dtype=acc, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast_bf16 else nullcontext()
    with ctx:
        hidden = _backbone(hf)(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
        hidden = hidden.last_hidden_state
        if not rows:
            return out + 0.0 * hidden.sum()  # nothing counted: zeros, still attached to the graph
        logits = _head_logits(hf, hidden[rows_t, torch.tensor(pos, device=device)])
    logits = logits.float()
    target = torch.tensor(tgt, dtype=torch.long, device=device)
    lp = logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return out.index_add(0, rows_t, lp.to(acc))  # float64 sums: float32 loses ~1e-4 on sums of ~1000


def _pair_batch_logps(hf, batch: Sequence[tuple[_Seq, _Seq]], *, pad_id, autocast_bf16) -> Float[Tensor, "b 2"]:
    """Chosen and rejected of a batch of pairs in one forward: ``Tensor[b, 2]``."""
    seqs = [p[0] for p in batch] + [p[1] for p in batch]
    lp = _seq_logps(hf, seqs, pad_id=pad_id, autocast_bf16=autocast_bf16)
    return torch.stack([lp[: len(batch)], lp[len(batch):]], dim=1)


@contextmanager
def _hooked(bridge, hooks: list[Hook]):
    """The bridge's hooks context (removes its hooks on exit, exceptions included)."""
    if not hooks:
        yield
        return
    with bridge.hooks(fwd_hooks=hooks):
        yield


@contextmanager
def _eval_mode(hf):
    was_training = hf.training
    hf.eval()
    try:
        yield
    finally:
        hf.train(was_training)


def _set_checkpointing(hf, on: bool) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5
        if on:
            hf.activation_checkpointing_enable(kwargs)
        else:
            hf.activation_checkpointing_disable()
    elif on:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_disable()


@contextmanager
def _training_mode(hf, checkpointing: bool):
    """Dropout off; with ``checkpointing``, activation checkpointing on (it needs train mode, so
    every dropout's p is set to 0 instead). Everything is restored on exit."""
    if not checkpointing:
        with _eval_mode(hf):
            yield
        return
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(hf).__name__} does not support it")
    was_training = hf.training
    was_on = any(getattr(m, "gradient_checkpointing", False) for m in hf.modules())
    dropouts = [(m, m.p) for m in hf.modules() if isinstance(m, torch.nn.Dropout)]
    try:
        for m, _ in dropouts:
            m.p = 0.0
        _set_checkpointing(hf, True)
        hf.train()
        yield
    finally:
        for m, p in dropouts:
            m.p = p
        if not was_on:
            _set_checkpointing(hf, False)
        hf.train(was_training)


def _all_logps(hf, bridge, seqs, *, batch_size, pad_id, hooks, autocast_bf16, progress, desc) -> Tensor:
    """``Tensor[n_pairs, 2]`` without gradients, in length-sorted batches (padding does not change results)."""
    order = sorted(range(len(seqs)), key=lambda i: max(len(s.ids) for s in seqs[i]))
    out = torch.zeros(len(seqs), 2, dtype=torch.float64)
    with torch.no_grad(), _eval_mode(hf):
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[lo : lo + batch_size]
            with _hooked(bridge, hooks):
                lp = _pair_batch_logps(hf, [seqs[i] for i in idx], pad_id=pad_id, autocast_bf16=autocast_bf16)
            out[idx] = lp.double().cpu()
    return out


def _pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return int(pid if pid is not None else (tokenizer.eos_token_id or 0))


def pair_logprobs(
    model,
    pairs: Sequence[dict],
    *,
    batch_size: int = 8,
    token_masks: Sequence | None = None,
    hooks: Sequence[Hook] | None = None,
    tokenizer=None,
    autocast_bf16: bool = False,
    progress: bool = False,
) -> Float[Tensor, "pair 2"]:
    """Summed completion log-probs of chosen and rejected under ``model`` (no gradients).

    Args:
        model: a ``TransformerBridge`` or a Hugging Face causal LM (then pass ``tokenizer``).
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``.
        batch_size: pairs per forward (chosen and rejected run together).
        token_masks: per pair ``(chosen_mask, rejected_mask)`` of 0/1 over that side's
            response tokens (or over response + end-of-turn suffix), or ``None``.
        hooks: ``(hook_name, fn)`` forward hooks to apply (a bridge only), e.g. to
            score the pairs under a steered model.

    Returns:
        ``Tensor[n_pairs, 2]`` (float64, CPU): column 0 chosen, column 1 rejected,
        each ``Σ log π(token | prefix)`` over the counted completion tokens (token
        log-probs in the model's precision, summed in float64).
    """
    return _score(model, pairs, batch_size=batch_size, token_masks=token_masks, hooks=hooks, tokenizer=tokenizer,
                  autocast_bf16=autocast_bf16, progress=progress)[2]


def _score(model, pairs, *, batch_size, token_masks, hooks, tokenizer, autocast_bf16, progress):
    """(ids, sequences with masks applied, ``Tensor[n_pairs, 2]`` log-probs)."""
    bridge, hf, tok = _unwrap(model, tokenizer)
    hooks = _check_hooks(bridge, hooks)
    ids, seqs = _encode(tok, pairs, _n_ctx(bridge, hf))
    seqs = _apply_token_masks(seqs, token_masks, ids)
    _check_head(hf)
    lp = _all_logps(hf, bridge, seqs, batch_size=batch_size, pad_id=_pad_id(tok), hooks=hooks,
                    autocast_bf16=autocast_bf16, progress=progress, desc="pair_logprobs")
    return ids, seqs, lp


def preference_margins(
    model,
    pairs: Sequence[dict],
    *,
    ref_logps: Tensor | None = None,
    batch_size: int = 8,
    token_masks: Sequence | None = None,
    hooks: Sequence[Hook] | None = None,
    tokenizer=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-pair preference margins of ``model``: the intended-learning metric.

    Returns a DataFrame with one row per pair: ``id``, ``logp_chosen``,
    ``logp_rejected``, ``margin`` (= chosen − rejected), ``n_chosen`` /
    ``n_rejected`` (counted tokens), ``mean_logp_chosen`` / ``mean_logp_rejected``
    (per token) and ``mean_margin`` (their difference). With ``ref_logps``
    (``Tensor[n_pairs, 2]`` of the reference model on the same pairs, e.g.
    ``pair_logprobs`` of the model before training) also ``ref_margin`` and
    ``delta`` (= margin − ref_margin = Δθ). Preference accuracy is
    ``(df.margin > 0).mean()``, or ``(df.delta > 0).mean()`` against a reference.
    """
    ids, seqs, lp = _score(model, pairs, batch_size=batch_size, token_masks=token_masks, hooks=hooks,
                           tokenizer=tokenizer, autocast_bf16=False, progress=progress)
    n = torch.tensor([[sum(s.count) for s in pair] for pair in seqs], dtype=torch.float64)
    df = pd.DataFrame({
        "id": ids,
        "logp_chosen": lp[:, 0].numpy(),
        "logp_rejected": lp[:, 1].numpy(),
        "margin": (lp[:, 0] - lp[:, 1]).numpy(),
        "n_chosen": n[:, 0].long().numpy(),
        "n_rejected": n[:, 1].long().numpy(),
    })
    mean = lp / n.clamp(min=1)
    df["mean_logp_chosen"] = mean[:, 0].numpy()
    df["mean_logp_rejected"] = mean[:, 1].numpy()
    df["mean_margin"] = (mean[:, 0] - mean[:, 1]).numpy()
    if ref_logps is not None:
        ref = torch.as_tensor(ref_logps, dtype=torch.float64).cpu()
        if ref.shape != lp.shape:
            raise ValueError(f"field 'ref_logps': shape {tuple(ref.shape)}, expected {tuple(lp.shape)}")
        df["ref_margin"] = (ref[:, 0] - ref[:, 1]).numpy()
        df["delta"] = df["margin"] - df["ref_margin"]
    return df


# ----------------------------------------------------------------------------- loss


def dpo_loss(
    policy_logps: Float[Tensor, "pair 2"],
    ref_logps: Float[Tensor, "pair 2"],
    *,
    beta: float = 0.1,
    offsets: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Float[Tensor, "pair"], Float[Tensor, "pair"]]:
    """Per-pair shaped DPO loss ``-w·log σ(β·Δθ + offset)`` and its logit ``z = β·Δθ + offset``.

    Columns of the log-prob tensors are (chosen, rejected). ``offsets`` and
    ``weights`` default to 0 and 1. Returns ``(losses, z)``, both ``Tensor[pair]``.
    """
    delta = (policy_logps[:, 0] - ref_logps[:, 0]) - (policy_logps[:, 1] - ref_logps[:, 1])
    z = beta * delta
    if offsets is not None:
        z = z + offsets
    losses = -F.logsigmoid(z)
    if weights is not None:
        losses = losses * weights
    return losses, z


# ----------------------------------------------------------------------------- LoRA


def _plain_name(name: str) -> str:
    return name.replace("._original_component", "")


def _inject_lora(hf, lora: dict, seed: int) -> list[Tensor]:
    """Inject LoRA adapters in place (peft); returns the adapter parameters."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(PEFT_HINT) from err
    kwargs = dict(lora)
    targets = kwargs.pop("target_modules", None)
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        targets = defaults.get(hf.config.model_type)
        if targets is None:
            raise ValueError(f"lora: no default target_modules for model type {hf.config.model_type!r}; pass some")
    targets = [targets] if isinstance(targets, str) else list(targets)
    # A TransformerBridge wraps each Linear (``q_proj._original_component``): name the Linear leaves exactly
    names = [n for n, m in hf.named_modules()
             if isinstance(m, torch.nn.Linear) and _plain_name(n).split(".")[-1] in targets]
    if not names:
        raise ValueError(f"lora: no Linear module named like {targets} in {type(hf).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(peft.LoraConfig(target_modules=names, **kwargs), hf)
    return [p for n, p in hf.named_parameters() if "lora_" in n]


def _merge_lora(hf) -> None:
    """Merge every LoRA adapter into its base Linear and put the base Linear back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(hf.named_modules()):
        if isinstance(module, LoraLayer):
            with torch.no_grad():
                module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent_name) if parent_name else hf, child, module.get_base_layer())


# ----------------------------------------------------------------------------- out_dir


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() if not isinstance(p, bytes) else p)
    return h.hexdigest()[:16]


def _weights_fingerprint(hf) -> str:
    """A cheap fingerprint of the weights (a strided sample of every tensor)."""
    h = hashlib.sha256()
    for name, p in hf.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _prepare_out_dir(out: Path, cfg: TrainConfig) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        new = cfg.to_dict()
        if old != new:
            diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
            raise ValueError(f"{out} holds a run with other settings {diff}; use another out_dir or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {CONFIG_FILE}; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=1))


def _bridge_head_bias(bridge, hf) -> Tensor | None:
    """The zero bias a TransformerBridge adds to a bias-free LM head (to expose ``b_U``).

    It is not part of the Hugging Face architecture: ``train_dpo`` keeps it frozen
    (so it stays zero) and the saved weights leave it out.
    """
    if bridge is None:
        return None
    head = hf.get_output_embeddings()
    bias = getattr(getattr(head, "original_component", head), "bias", None)
    return bias if bias is not None and not torch.count_nonzero(bias) else None


def _plain_state_dict(hf, skip: Tensor | None = None, only: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """Parameters and persistent buffers under their Hugging Face names (bridge wrappers and
    aliases removed; tied weights once, as ``save_pretrained`` does)."""
    keep = None if only is None else {id(t) for t in only}
    out = {}
    for name, p in hf.named_parameters():  # deduplicated: the first name is the Hugging Face path
        if p is skip or (keep is not None and id(p) not in keep):
            continue
        out[_plain_name(name)] = p.detach().contiguous().cpu()
    if only is None:
        for mod_name, mod in hf.named_modules():
            for b_name, buf in mod.named_buffers(recurse=False):
                if buf is not None and b_name not in mod._non_persistent_buffers_set:
                    out.setdefault(_plain_name(f"{mod_name}.{b_name}" if mod_name else b_name), buf.detach().cpu())
    return out


def _load_plain_state_dict(hf, state: dict[str, Tensor], source: Path) -> None:
    targets: dict[str, Tensor] = {}
    for name, t in list(hf.named_parameters()) + list(hf.named_buffers()):
        targets.setdefault(_plain_name(name), t)
    unexpected = sorted(set(state) - set(targets))
    if unexpected:
        raise ValueError(f"{source}: weights {unexpected[:5]} do not exist in {type(hf).__name__}")
    with torch.no_grad():
        for name, value in state.items():
            if targets[name].shape != value.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                 f"the model's has {tuple(targets[name].shape)}")
            targets[name].copy_(value)


def _save(dst: Path, hf, cfg: TrainConfig, history: list[dict], adapters: list[Tensor] | None,
          skip: Tensor | None) -> None:
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    if adapters:
        save_file(_plain_state_dict(hf, only=adapters), str(dst / ADAPTER_FILE))
    else:
        save_file(_plain_state_dict(hf, skip=skip), str(dst / WEIGHTS_FILE))
    (dst / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    (dst / HISTORY_FILE).write_text(json.dumps(history, indent=1))


def load_train_run(out_dir: str | Path, model=None) -> tuple[TrainConfig, pd.DataFrame]:
    """Read a saved run (``out_dir`` or one of its ``checkpoint-*`` folders).

    With ``model`` (a bridge or a Hugging Face model of the same architecture),
    also load the saved full weights into it, in place. ``model.safetensors``
    holds the weights under their Hugging Face names (tied weights once), so
    ``hf_model.load_state_dict(safetensors.torch.load_file(path), strict=False)``
    reads it too.
    """
    out = Path(out_dir)
    cfg = TrainConfig.from_dict(json.loads((out / CONFIG_FILE).read_text()))
    history = pd.DataFrame(json.loads((out / HISTORY_FILE).read_text()), columns=HISTORY_COLUMNS)
    if model is not None:
        from safetensors.torch import load_file

        path = out / WEIGHTS_FILE
        if not path.exists():
            raise ValueError(f"{out} has no {WEIGHTS_FILE} (a LoRA checkpoint holds only {ADAPTER_FILE})")
        hf = model.original_model if hasattr(model, "original_model") else model
        _load_plain_state_dict(hf, load_file(str(path)), path)
    return cfg, history


# ----------------------------------------------------------------------------- training


def train_dpo(
    model,
    pairs: Sequence[dict],
    *,
    beta: float = 0.1,
    lr: float = 5e-6,
    epochs: int = 1,
    batch_size: int = 8,
    grad_accum: int = 1,
    offsets: Sequence[float] | np.ndarray | Tensor | None = None,
    weights: Sequence[float] | np.ndarray | Tensor | None = None,
    token_masks: Sequence | None = None,
    policy_hooks: Sequence[Hook] | None = None,
    policy_prompts: Sequence[list[dict] | None] | None = None,
    shaping_ids: Sequence[str] | None = None,
    lora: dict | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    autocast_bf16: bool = False,
    gradient_checkpointing: bool = False,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    shuffle: bool = True,
    group_by_length: bool = True,
    save_every: int | None = None,
    ref_logps: Tensor | None = None,
    tokenizer=None,
    progress: bool = True,
) -> TrainResult:
    """Shaped DPO (METHOD §2) on ``pairs``, training ``model`` in place.

    Args:
        model: a ``TransformerBridge`` (``load_model``) or a Hugging Face causal LM
            (then pass ``tokenizer``; ``policy_hooks`` need a bridge). Trained in
            place: the returned ``TrainResult.model`` is this same object.
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``.
        beta: the DPO temperature β.
        lr: AdamW learning rate (constant after ``warmup_steps`` of linear warm-up).
        epochs: passes over the pairs; each epoch shuffles them (seeded) unless
            ``shuffle=False``.
        batch_size: pairs per forward (chosen and rejected run as one padded batch).
        group_by_length: batch pairs of similar length (less padding; see ``_micro_batches``).
        grad_accum: forwards per optimizer step.
        offsets: per pair ``λ·ΔA`` added to the logit (default 0).
        weights: per pair ``w ≥ 0`` multiplying its loss (default 1; absolute,
            see the module docstring).
        token_masks: per pair ``(chosen_mask, rejected_mask)`` of 0/1 over that
            side's response tokens (the end-of-turn suffix still counts) or over
            its completion tokens (response + suffix); masked tokens count in
            neither policy nor reference log-probs. ``None`` (for all, a pair or a
            side) keeps every token.
        policy_hooks: ``(hook_name, fn)`` forward hooks (TransformerLens names,
            ``fn(acts, hook=None) -> acts``) applied in the policy forwards only,
            never in the reference pass; removed after every forward + backward
            (also on an error).
        policy_prompts: per pair the prompt messages the *policy* sees instead of the
            pair's own (``None`` for all or a pair: the original), e.g. with an
            inoculation system prompt. The reference log-probs are computed on the
            original prompts, so ``Δθ`` compares the policy under its prompt with the
            reference under the pair's; only training sees them.
        shaping_ids: the pair ids the offsets / weights / masks / prompts were made for
            (``TrainInputs.train_kwargs()`` passes them): refused if the pairs differ.
        lora: ``None`` for a full fine-tune, else ``peft.LoraConfig`` arguments
            (e.g. ``{"r": 8, "lora_alpha": 16}``; needs peft installed). The
            adapters are merged into the weights at the end (also on an error), so
            the model stays a plain model of the same structure.
        seed: seeds the shuffling and the LoRA initialisation; same seed, same inputs
            → the same history.
        out_dir: write ``train_config.json`` at the start, the reference log-probs,
            ``checkpoint-<step>/`` every ``save_every`` steps, and the final
            ``model.safetensors`` + ``train_config.json`` + ``history.json``. A
            directory holding a run with the same config is reused (its reference
            log-probs too); any other non-empty directory is refused.
        autocast_bf16: run forwards under bfloat16 autocast (reference included).
            Fast on GPUs; about 50x *slower* on CPUs without native bf16.
        gradient_checkpointing: recompute activations in the backward pass
            (transformers' activation checkpointing; the model runs in train mode
            with every dropout's p set to 0 meanwhile). Same results, less memory,
            more time: a step on 8 pairs of ~120 tokens (SmolLM2-135M, CPU) peaked
            at ~11 GB RSS without it and ~5 GB with it, ~35% slower.
        max_grad_norm: clip the global gradient norm (``None``: no clipping).
        ref_logps: reference log-probs (``Tensor[n_pairs, 2]``) computed earlier
            with the same tokens and masks, to skip the reference pass.
        progress: show a tqdm bar with loss, accuracy and mean margin.

    Returns:
        ``TrainResult`` (config, history, model, ref_logps, ids, wall_seconds, out_dir).

    Raises:
        ValueError: offsets / weights / token masks that do not fit the pairs
            (naming the pair id and field), unknown hook names, a bad out_dir.
    """
    t_start = time.perf_counter()
    knobs = TrainConfig(  # validates the knobs before any work
        beta=beta, lr=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, seed=seed,
        max_grad_norm=max_grad_norm, weight_decay=weight_decay, warmup_steps=warmup_steps, shuffle=shuffle,
        group_by_length=group_by_length,
        autocast_bf16=autocast_bf16, gradient_checkpointing=gradient_checkpointing,
        lora=None if lora is None else dict(lora), save_every=save_every,
    )
    bridge, hf, tok = _unwrap(model, tokenizer)
    hooks = _check_hooks(bridge, policy_hooks, "policy_hooks")
    if len(pairs) == 0:
        raise ValueError("no pairs to train on")
    ids, seqs = _encode(tok, pairs, _n_ctx(bridge, hf))
    if shaping_ids is not None and [str(x) for x in shaping_ids] != ids:
        diff = next((i for i, (a, b) in enumerate(zip(map(str, shaping_ids), ids)) if a != b),
                    min(len(shaping_ids), len(ids)))
        raise ValueError(f"field 'shaping_ids': the shaping was compiled for other pairs (first difference at "
                         f"index {diff}: {list(shaping_ids)[diff] if diff < len(shaping_ids) else None!r} vs "
                         f"{ids[diff] if diff < len(ids) else None!r}); compile the plan for these pairs")
    off = _per_pair(offsets, "offsets", ids)
    wts = _per_pair(weights, "weights", ids, nonneg=True)
    if wts is not None and not wts.any():
        raise ValueError(f"field 'weights': all {len(ids)} weights are 0, so no pair would train the model; "
                         "keep at least one pair with a weight > 0")
    seqs = _apply_token_masks(seqs, token_masks, ids)
    pol_seqs = _policy_seqs(tok, pairs, seqs, policy_prompts, ids, _n_ctx(bridge, hf))
    ref = None
    if ref_logps is not None:
        ref = torch.as_tensor(ref_logps, dtype=torch.float64).detach().cpu()
        if ref.shape != (len(ids), 2):
            raise ValueError(f"field 'ref_logps': need Tensor[{len(ids)}, 2] (pairs x chosen/rejected), "
                             f"got shape {tuple(ref.shape)}")
        bad = (~torch.isfinite(ref)).nonzero()
        if len(bad):
            i, j = bad[0].tolist()
            what = "NaN" if torch.isnan(ref[i, j]) else "infinite"
            raise ValueError(f"pair {ids[i]!r} field 'ref_logps' ({('chosen', 'rejected')[j]}): {what} "
                             f"({len(bad)} non-finite value(s) in all); recompute the reference log-probs")
    pad_id = _pad_id(tok)
    _check_head(hf)

    tokens_digest = _digest([[s.ids, s.n_prompt, s.count] for pair in seqs for s in pair])
    policy_digest = None if pol_seqs is seqs else _digest([[s.ids, s.n_prompt] for pair in pol_seqs for s in pair])
    cfg = replace(
        knobs,
        model_name=_model_name(bridge, hf), n_pairs=len(ids), ids_digest=_digest(ids),
        policy_hooks=tuple(name for name, _ in hooks),
        shaping={
            "offsets": None if off is None else _digest(off.tolist()),
            "weights": None if wts is None else _digest(wts.tolist()),
            "token_masks": None if token_masks is None else tokens_digest,
            **({} if policy_digest is None else {"policy_prompts": policy_digest}),
        },
    )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _prepare_out_dir(out, cfg)

    # Reference log-probs: once, from the initial weights, without the policy hooks
    if ref is None:
        ref = _reference(hf, bridge, seqs, ids, cfg, tokens_digest, out, pad_id, progress)

    device = next(hf.parameters()).device
    off_t = torch.zeros(len(ids), dtype=torch.float64) if off is None else torch.tensor(off, dtype=torch.float64)
    w_t = torch.ones(len(ids), dtype=torch.float64) if wts is None else torch.tensor(wts, dtype=torch.float64)

    grad_flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    head_bias = _bridge_head_bias(bridge, hf)
    adapters = None
    history: list[dict] = []
    try:
        if head_bias is not None:
            head_bias.requires_grad_(False)
        if lora is not None:
            adapters = _inject_lora(hf, cfg.lora, seed)
            for n, p in hf.named_parameters():
                p.requires_grad_("lora_" in n)
            params = adapters
        else:
            params = [p for p in hf.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
        history = _train_loop(hf, bridge, pol_seqs, ref, off_t, w_t, params, hooks, cfg, pad_id, device, out, adapters,
                              head_bias, progress)
    finally:
        if adapters is not None:
            _merge_lora(hf)
        for n, p in hf.named_parameters():
            p.requires_grad_(grad_flags.get(n, p.requires_grad))

    if out is not None:
        _save(out, hf, cfg, history, None, head_bias)
    return TrainResult(
        config=cfg,
        history=pd.DataFrame(history, columns=HISTORY_COLUMNS),
        model=model,
        ref_logps=ref,
        ids=ids,
        wall_seconds=time.perf_counter() - t_start,
        out_dir=out,
    )


def _reference(hf, bridge, seqs, ids, cfg, tokens_digest, out, pad_id, progress) -> Tensor:
    path = None
    if out is not None:
        slug = (cfg.model_name or type(hf).__name__).split("/")[-1]
        digest = _digest(_weights_fingerprint(hf), tokens_digest, cfg.autocast_bf16)
        path = out / f"ref_logps-{slug}-{len(ids)}pairs-{digest}.safetensors"
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if json.loads(f.metadata()["ids"]) == ids:
                    return f.get_tensor("ref_logps")
    ref = _all_logps(hf, bridge, seqs, batch_size=cfg.batch_size, pad_id=pad_id, hooks=[],
                     autocast_bf16=cfg.autocast_bf16, progress=progress, desc="reference log-probs")
    if path is not None:
        from safetensors.torch import save_file

        save_file({"ref_logps": ref.contiguous()}, str(path), metadata={"ids": json.dumps(ids)})
    return ref


def _micro_batches(order: Tensor, seqs, cfg: TrainConfig, gen: torch.Generator) -> list[Tensor]:
    """Split ``order`` into micro-batches of ``cfg.batch_size`` pairs.

    With ``group_by_length`` (as HF's ``group_by_length``), each run of 32 batches'
    worth of pairs is sorted by length before it is cut, and the batches are then
    shuffled (seeded), so a batch holds pairs of similar length and pads little
    (on organism pairs, unsorted batches were ~45% padding).
    """
    b = cfg.batch_size
    if not cfg.group_by_length:
        return [order[i : i + b] for i in range(0, len(order), b)]
    length = [max(len(seqs[i][0].ids), len(seqs[i][1].ids)) for i in range(len(seqs))]
    mega = 32 * b
    micro = []
    for lo in range(0, len(order), mega):
        chunk = sorted(order[lo : lo + mega].tolist(), key=lambda i: length[i])
        micro += [torch.tensor(chunk[i : i + b]) for i in range(0, len(chunk), b)]
    if cfg.shuffle:
        micro = [micro[i] for i in torch.randperm(len(micro), generator=gen).tolist()]
    return micro


def _train_loop(hf, bridge, seqs, ref, off_t, w_t, params, hooks, cfg, pad_id, device, out, adapters, head_bias,
                progress):
    n = len(seqs)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    steps_per_epoch = cfg.steps_per_epoch(n)
    history: list[dict] = []
    bar = tqdm(total=steps_per_epoch * cfg.epochs, desc="train_dpo", disable=not progress)
    try:
        with _training_mode(hf, cfg.gradient_checkpointing):  # dropout off, as TRL's default
            for epoch in range(cfg.epochs):
                order = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
                micro = _micro_batches(order, seqs, cfg, gen)
                for s in range(0, len(micro), cfg.grad_accum):
                    t0 = time.perf_counter()
                    row = _step(hf, bridge, micro[s : s + cfg.grad_accum], seqs, ref, off_t, w_t, hooks, cfg,
                                pad_id, device, opt, params)
                    sched.step()
                    row.update(step=len(history) + 1, epoch=epoch, seconds=time.perf_counter() - t0)
                    history.append({k: row[k] for k in HISTORY_COLUMNS})
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}",
                                    margin=f"{row['margin']:.3f}")
                    if out is not None and cfg.save_every and row["step"] % cfg.save_every == 0:
                        _save(out / f"checkpoint-{row['step']:06d}", hf, cfg, history, adapters, head_bias)
    finally:
        bar.close()
    return history


def _step(hf, bridge, group, seqs, ref, off_t, w_t, hooks, cfg, pad_id, device, opt, params) -> dict:
    """One optimizer step over the micro-batches in ``group`` (index tensors); returns its metrics."""
    n_step = sum(len(idx) for idx in group)
    total, zs = 0.0, []
    opt.zero_grad(set_to_none=True)
    for idx in group:
        # the hooks stay on through backward: activation checkpointing re-runs the forward there
        with _hooked(bridge, hooks):
            lp = _pair_batch_logps(hf, [seqs[i] for i in idx.tolist()], pad_id=pad_id,
                                   autocast_bf16=cfg.autocast_bf16)
            off = off_t[idx].to(device)
            losses, z = dpo_loss(lp, ref[idx].to(device), beta=cfg.beta, offsets=off, weights=w_t[idx].to(device))
            loss = losses.sum() / n_step
            loss.backward()
        total += loss.item()
        zs.append(torch.stack([z.detach(), (z - off).detach()], 1).cpu())
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
    lr = opt.param_groups[0]["lr"]
    opt.step()
    zs = torch.cat(zs)
    return {
        "loss": total, "accuracy": (zs[:, 0] > 0).double().mean().item(), "margin": zs[:, 0].mean().item(),
        "reward_margin": zs[:, 1].mean().item(), "grad_norm": float(norm), "lr": lr, "n_pairs": n_step,
    }
