"""Stage 5: shaped DPO, the training step that the diagnosis decides how to steer.

Takes a model (a ``TransformerBridge`` from ``load_model``, or a Hugging Face
causal LM plus its tokenizer), preference pairs (``id``, ``prompt`` messages,
``chosen``, ``rejected``: ``load_preferences``) and the shaping of the learning
signal: per-pair offsets ``λ·ΔA_u`` (METHOD §2), per-pair weights, per-token
masks, and forward hooks and prompts applied to the policy only (what
``interventions.compile_plan`` makes from a Plan: ``train_dpo(model, pairs,
**inputs.train_kwargs())``). ``train_dpo`` returns a
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
  the same autocast setting, without the policy hooks and on the pairs' own
  prompts (never the policy prompts); kept in memory and,
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

The log-prob engine (``pair_logprobs``, ``preference_margins``, sequence log-probs)
lives in ``anatomy.logprobs``, run directories and LoRA in ``anatomy.checkpoints``;
both are re-exported here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
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

from .checkpoints import (ADAPTER_FILE, CONFIG_FILE, HISTORY_COLUMNS, HISTORY_FILE, PEFT_HINT, WEIGHTS_FILE,  # noqa: F401
                          _bridge_head_bias, _inject_lora, _merge_lora, _prepare_out_dir, _save, load_train_run)
from .fingerprint import digest as _digest
from .fingerprint import weights_fingerprint as _weights_fingerprint
from .logprobs import (Hook, _all_logps, _apply_token_masks, _check_head, _check_hooks, _encode, _eval_mode, _hooked,  # noqa: F401
                       check_one_per_pair, _model_name, _n_ctx, _pad_id, _pair_batch_logps, _Seq, _unwrap, pair_logprobs,
                       preference_margins, sequence_logprobs)


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


def _policy_seqs(tokenizer, pairs, seqs, policy_prompts, ids, n_ctx):
    """The sequences the policy sees: ``seqs`` itself, or each pair's responses under its policy prompt
    (same completion tokens and count flags, another prompt)."""
    if policy_prompts is None:
        return seqs
    check_one_per_pair(policy_prompts, ids, "policy_prompts")
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
