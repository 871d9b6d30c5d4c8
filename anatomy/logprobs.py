"""The log-prob engine: summed completion log-probs of pairs and sequences, without training.

Takes a model (a ``TransformerBridge`` from ``load_model``, or a Hugging Face causal
LM plus its tokenizer) and preference pairs (``id``, ``prompt`` messages, ``chosen``,
``rejected``) or (prompt, response) sequences; returns

- ``pair_logprobs``: ``Tensor[n_pairs, 2]`` of ``log π(y|x)`` for chosen and rejected,
  optionally under token masks and forward hooks (e.g. a steered model);
- ``preference_margins``: per pair margins (chosen − rejected), per token and against a
  reference, the "intended learning" metric of a trained policy;
- ``sequence_logprobs``: per (prompt, response) the summed log-prob and the token count,
  e.g. the perplexity of rollouts under another model (``evals.perplexity``).

``log π(y|x)`` is the sum over the *completion*: the response tokens and the end-of-turn
suffix the chat template appends, i.e. every token after the prompt, as TRL's
``DPOTrainer`` does. A token mask removes tokens from the sum. Only the counted
positions go through the LM head; sums are float64. ``train.train_dpo`` runs its
forwards through the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .cache import _pair_fields
from .models import format_pair

Hook = tuple[str, Callable]


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


def check_one_per_pair(values: Sequence, ids: Sequence[str], field: str) -> None:
    """Raise unless ``values`` has one entry per pair, naming the field and the first pair without one."""
    if len(values) != len(ids):
        n = len(values)
        extra = f"; pair {ids[n]!r} (index {n}) has none" if n < len(ids) else ""
        raise ValueError(f"field {field!r}: {n} entries for {len(ids)} pairs; need one per pair{extra}")


def _apply_token_masks(seqs, token_masks, ids) -> list[tuple[_Seq, _Seq]]:
    """Fold token masks into the sequences' ``count`` flags.

    Each mask is over that side's response tokens (the suffix always counts) or
    over all its completion tokens (response + suffix); ``None`` keeps all.
    """
    if token_masks is None:
        return seqs
    check_one_per_pair(token_masks, ids, "token_masks")
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


def sequence_logprobs(
    model,
    prompts: Sequence[list[dict]],
    responses: Sequence[str],
    *,
    batch_size: int = 16,
    hooks: Sequence[Hook] | None = None,
    tokenizer=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Summed log-prob of each response (and its end-of-turn suffix) given its prompt, under ``model``.

    Args:
        prompts: per sequence the prompt messages; ``responses``: the texts, same length.

    Returns:
        DataFrame, one row per sequence in order: ``logp`` (float64 sum), ``n_tokens``
        (tokens counted: response + suffix) and ``nll_per_token`` (``-logp / n_tokens``).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; need one prompt per response")
    if len(responses) == 0:
        raise ValueError("no sequences to score")
    bridge, hf, tok = _unwrap(model, tokenizer)
    hooks = _check_hooks(bridge, hooks)
    _check_head(hf)
    n_ctx = _n_ctx(bridge, hf)
    seqs = []
    for i, (prompt, text) in enumerate(zip(prompts, responses)):
        enc = format_pair(tok, list(prompt), text)
        n, n_prompt = len(enc["input_ids"]), sum(enc["prompt_mask"])
        if n_ctx and n > n_ctx:
            raise ValueError(f"sequence {i}: {n} tokens is longer than the model's context ({n_ctx})")
        seqs.append(_Seq(tuple(enc["input_ids"]), n_prompt, sum(enc["response_mask"]), (True,) * (n - n_prompt)))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    out = torch.zeros(len(seqs), dtype=torch.float64)
    pad_id = _pad_id(tok)
    with torch.no_grad(), _eval_mode(hf):
        for lo in tqdm(range(0, len(order), batch_size), desc="sequence_logprobs", disable=not progress):
            idx = order[lo: lo + batch_size]
            with _hooked(bridge, hooks):
                out[idx] = _seq_logps(hf, [seqs[i] for i in idx], pad_id=pad_id, autocast_bf16=False).double().cpu()
    n_tok = np.array([len(s.count) for s in seqs])
    logp = out.numpy()
    return pd.DataFrame({"logp": logp, "n_tokens": n_tok, "nll_per_token": -logp / np.maximum(n_tok, 1)})
