"""Stage 1: activations of preference pairs, pooled per span or streamed per token.

Takes a model (``load_model``), preference pairs (``load_preferences``) and hook
names (``blocks.{L}.hook_resid_post``, ...); returns ``PairActivations``: for each
hook, span (``prompt`` / ``chosen`` / ``rejected``) and pooling (``mean`` /
``max`` / ``last``) a ``Tensor[n_pairs, d]``.

Each pair is run as two sequences, prompt + chosen and prompt + rejected
(``format_pair``); the prompt span is pooled once per pair, from the first.
Sequences are length-sorted into batches of at most ``batch_tokens`` padded
tokens, and the forward stops after the deepest hook asked for.

With ``out_dir`` the pairs are processed in shards of ``shard_size`` pairs, each
written as soon as it is done (``shard-<start>-<end>.safetensors`` beside a
``manifest.json``): a rerun skips finished shards, and loading is lazy.
``shard=(i, n)`` computes only the i-th of n contiguous slices, so that n
machines can share the work and write into one directory.
``stream_pair_activations`` yields each pair's per-token activations instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from .models import format_pair

SPANS = ("prompt", "chosen", "rejected")
POOLINGS = ("mean", "max", "last")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PairActivations:
    """Pooled activations: ``get(hook, span, pooling)`` is a ``Tensor[n_pairs, d]``.

    ``ids`` are the pair ids in row order. Tensors live in memory (``tensors``)
    or, for a cache directory, are read lazily from its shard files.
    """

    ids: list[str]
    hooks: tuple[str, ...]
    pooling: tuple[str, ...]
    tensors: dict[str, Tensor] = field(default_factory=dict, repr=False)
    out_dir: Path | None = None
    shard_files: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, hook: str, span: str, pooling: str = "mean") -> Float[Tensor, "pair d"]:
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not cached; cached: {list(self.hooks)}")
        if span not in SPANS:
            raise KeyError(f"span {span!r} is not one of {SPANS}")
        if pooling not in self.pooling:
            raise KeyError(f"pooling {pooling!r} was not cached; cached: {list(self.pooling)}")
        key = _key(hook, span, pooling)
        if key not in self.tensors:  # lazy: read this one key from every shard file
            parts = []
            for path in self.shard_files:
                with safe_open(str(path), framework="pt") as f:
                    parts.append(f.get_tensor(key))
            self.tensors[key] = torch.cat(parts) if parts else torch.empty(0)
        return self.tensors[key]


def _key(hook: str, span: str, pooling: str) -> str:
    return f"{hook}/{span}/{pooling}"


def _hook_layer(hook: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def _pair_fields(pair: dict, index: int) -> tuple[str, list[dict], str, str]:
    pid = str(pair.get("id", index))
    for name in ("prompt", "chosen", "rejected"):
        if pair.get(name) is None:
            raise ValueError(f"pair {pid!r} field {name!r}: missing field")
    prompt = pair["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return pid, prompt, pair["chosen"], pair["rejected"]


def tokenize_pairs(model, pairs: Sequence[dict]) -> list[dict]:
    """Run ``format_pair`` on every pair: ``[{"id", "chosen": enc, "rejected": enc}, ...]``.

    Raises ``ValueError`` naming the pair and field when a sequence is longer
    than the model's context (``model.cfg.n_ctx``).
    """
    n_ctx = getattr(model.cfg, "n_ctx", None)
    out = []
    for i, pair in enumerate(pairs):
        pid, prompt, chosen, rejected = _pair_fields(pair, i)
        item = {"id": pid}
        for span, text in (("chosen", chosen), ("rejected", rejected)):
            enc = format_pair(model.tokenizer, prompt, text)
            if n_ctx and len(enc["input_ids"]) > n_ctx:
                raise ValueError(
                    f"pair {pid!r} field {span!r}: {len(enc['input_ids'])} tokens is longer "
                    f"than the model's context ({n_ctx})"
                )
            if not any(enc["response_mask"]):
                raise ValueError(f"pair {pid!r} field {span!r}: empty response")
            item[span] = enc
        out.append(item)
    return out


def _batches(lengths: list[int], batch_tokens: int, batch_size: int | None = None) -> list[list[int]]:
    """Length-sorted batches of sequence indices: at most ``batch_tokens`` padded tokens
    and at most ``batch_size`` sequences each."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        full = batch_size is not None and len(current) >= batch_size
        if current and (full or (len(current) + 1) * lengths[i] > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@contextmanager
def _recording(model, hooks: Sequence[str], store: dict):
    """Context manager: record the named hook activations into ``store``; always removes the hooks."""

    def make(name):
        def hook(acts, hook=None):
            store[name] = acts.detach()
            return acts

        return hook

    with model.hooks(fwd_hooks=[(h, make(h)) for h in hooks]):
        yield store


@torch.no_grad()
def _forward_sequences(
    model, seqs: list[list[int]], hooks: Sequence[str], batch_tokens: int, padding_side: str,
    batch_size: int | None = None,
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Yield ``(seq_index, {hook: Tensor[seq_len, d]})`` for every sequence, batch by batch."""
    layers = [_hook_layer(h) for h in hooks]
    n_layers = model.cfg.n_layers
    stop = max(layers) + 1 if all(x is not None for x in layers) else None
    stop = stop if stop is not None and stop < n_layers else None
    pad = model.tokenizer.pad_token_id or 0
    device = model.cfg.device
    for batch in _batches([len(s) for s in seqs], batch_tokens, batch_size):
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        starts = []
        for row, i in enumerate(batch):
            n = len(seqs[i])
            a = width - n if padding_side == "left" else 0
            ids[row, a : a + n] = torch.tensor(seqs[i])
            mask[row, a : a + n] = 1
            starts.append(a)
        store: dict[str, Tensor] = {}
        with _recording(model, hooks, store):
            model(ids.to(device), attention_mask=mask.to(device), return_type=None, stop_at_layer=stop)
        for row, i in enumerate(batch):
            a, n = starts[row], len(seqs[i])
            yield i, {h: store[h][row, a : a + n] for h in hooks}


def _pool(acts: Float[Tensor, "tok d"], mask: Tensor, pooling: Sequence[str], dtype) -> dict[str, Tensor]:
    span = acts[mask].float()
    out = {}
    for p in pooling:
        if p == "mean":
            out[p] = span.mean(0)
        elif p == "max":
            out[p] = span.max(0).values
        elif p == "last":
            out[p] = span[-1]
        else:
            raise ValueError(f"pooling {p!r} is not one of {POOLINGS}")
    return {k: v.to(dtype) for k, v in out.items()}


def _iter_token_chunks(model, pairs, hooks, *, batch_tokens, padding_side, chunk_pairs, start, end,
                       batch_size=None):
    """Yield ``(pair_offset, tokenized, per_seq)`` chunk by chunk; per_seq[2*j + s] is the
    ``{hook: Tensor[seq_len, d]}`` of pair j's chosen (s=0) / rejected (s=1) sequence."""
    for lo in range(start, end, chunk_pairs):
        hi = min(lo + chunk_pairs, end)
        tok = tokenize_pairs(model, [pairs[i] for i in range(lo, hi)])
        seqs = [item[s]["input_ids"] for item in tok for s in ("chosen", "rejected")]
        per_seq = dict(_forward_sequences(model, seqs, hooks, batch_tokens, padding_side, batch_size))
        yield lo, tok, per_seq


def stream_pair_activations(
    model,
    pairs: Sequence[dict],
    hook: str,
    *,
    batch_tokens: int = 4096,
    padding_side: str = "right",
    chunk_pairs: int = 64,
    progress: bool = True,
) -> Iterator[tuple[str, dict[str, Float[Tensor, "tok d_model"]]]]:
    """Yield ``(pair_id, {"prompt": T, "chosen": T, "rejected": T})`` with per-token activations.

    Only ``chunk_pairs`` pairs' tokens are in memory at a time, so memory does
    not grow with the dataset. Each ``T`` is ``Tensor[n_span_tokens, d_model]``.
    """
    bar = tqdm(total=len(pairs), desc=f"stream {hook}", disable=not progress)
    for lo, tok, per_seq in _iter_token_chunks(
        model, pairs, [hook], batch_tokens=batch_tokens, padding_side=padding_side,
        chunk_pairs=chunk_pairs, start=0, end=len(pairs),
    ):
        for j, item in enumerate(tok):
            c, r = per_seq[2 * j][hook], per_seq[2 * j + 1][hook]
            cm, rm = item["chosen"], item["rejected"]
            yield item["id"], {
                "prompt": c[torch.tensor(cm["prompt_mask"])],
                "chosen": c[torch.tensor(cm["response_mask"])],
                "rejected": r[torch.tensor(rm["response_mask"])],
            }
        bar.update(len(tok))
    bar.close()


def _manifest(model, n_pairs, hooks, pooling, dtype, shard_size, ids_digest) -> dict:
    return {
        "model": getattr(model.cfg, "model_name", None),
        "n_pairs": n_pairs,
        "hooks": list(hooks),
        "pooling": list(pooling),
        "dtype": str(dtype).replace("torch.", ""),
        "shard_size": shard_size,
        "ids_digest": ids_digest,
    }


def _ids_digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def cache_pairs(
    model,
    pairs: Sequence[dict],
    hooks: str | Sequence[str],
    *,
    pooling: Sequence[str] = POOLINGS,
    batch_tokens: int = 4096,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    out_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    shard_size: int = 256,
    padding_side: str = "right",
    on_shard_done: Callable[[int, int], None] | None = None,
    progress: bool = True,
) -> PairActivations:
    """Pool each pair's activations per span; optionally shard them to disk, resumably.

    Args:
        model: a ``TransformerBridge`` (``load_model``).
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``.
        hooks: hook name(s), e.g. ``"blocks.15.hook_resid_post"``.
        pooling: any of ``"mean"``, ``"max"``, ``"last"`` (over each span's tokens).
        batch_tokens: max padded tokens per forward batch.
        batch_size: max sequences per forward batch (default: only ``batch_tokens`` limits).
        dtype: storage dtype of the pooled tensors (default ``torch.float32``).
        out_dir: write shards here as they finish; a rerun skips finished shards.
        shard: ``(i, n)``: compute only the i-th of n contiguous slices of ``pairs``.
        shard_size: pairs per shard file.
        padding_side: ``"right"`` or ``"left"`` (results are the same).
        on_shard_done: called with ``(start, end)`` after each shard is finished.

    Returns:
        ``PairActivations`` over all pairs (or over the slice, with ``shard``).
        ``get(hook, span, pooling)`` is a ``Tensor[n_pairs, d]``.
    """
    hooks = (hooks,) if isinstance(hooks, str) else tuple(hooks)
    pooling = tuple(pooling)
    for p in pooling:
        if p not in POOLINGS:
            raise ValueError(f"pooling {p!r} is not one of {POOLINGS}")
    dtype = dtype or torch.float32
    n = len(pairs)
    ids = [str(pairs[i].get("id", i)) for i in range(n)]
    lo, hi = 0, n
    if shard is not None:
        i, k = shard
        if not (0 <= i < k):
            raise ValueError(f"shard=(i, n) needs 0 <= i < n, got {shard}")
        lo, hi = n * i // k, n * (i + 1) // k
    bounds = [(a, min(a + shard_size, hi)) for a in range(lo, hi, shard_size)]

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        manifest = _manifest(model, n, hooks, pooling, dtype, shard_size, _ids_digest(ids))
        _check_or_write_manifest(out, manifest)

    def shard_path(a: int, b: int) -> Path:
        return out / f"shard-{a:07d}-{b:07d}.safetensors"

    todo = [(a, b) for a, b in bounds if out is None or not shard_path(a, b).exists()]
    tensors: dict[str, list[Tensor]] = {}
    bar = tqdm(total=sum(b - a for a, b in todo), desc="cache_pairs", disable=not progress)
    for a, b in todo:
        shard_tensors = _pool_shard(model, pairs, hooks, pooling, dtype, a, b, batch_tokens, padding_side, batch_size)
        if out is not None:
            tmp = shard_path(a, b).with_suffix(".tmp")
            save_file(shard_tensors, str(tmp), metadata={"ids": json.dumps(ids[a:b])})
            tmp.rename(shard_path(a, b))
        else:
            for key, t in shard_tensors.items():
                tensors.setdefault(key, []).append(t)
        bar.update(b - a)
        if on_shard_done is not None:
            on_shard_done(a, b)
    bar.close()
    if out is not None:
        return PairActivations(ids[lo:hi], hooks, pooling, out_dir=out,
                               shard_files=tuple(shard_path(a, b) for a, b in bounds))
    return PairActivations(ids[lo:hi], hooks, pooling, tensors={k: torch.cat(v) for k, v in tensors.items()})


def _pool_shard(model, pairs, hooks, pooling, dtype, a, b, batch_tokens, padding_side, batch_size):
    rows: dict[str, list[Tensor]] = {_key(h, s, p): [] for h in hooks for s in SPANS for p in pooling}
    for _, tok, per_seq in _iter_token_chunks(
        model, pairs, hooks, batch_tokens=batch_tokens, padding_side=padding_side,
        chunk_pairs=b - a, start=a, end=b, batch_size=batch_size,
    ):
        for j, item in enumerate(tok):
            spans = {
                "prompt": (per_seq[2 * j], item["chosen"]["prompt_mask"]),
                "chosen": (per_seq[2 * j], item["chosen"]["response_mask"]),
                "rejected": (per_seq[2 * j + 1], item["rejected"]["response_mask"]),
            }
            for span, (acts, mask) in spans.items():
                m = torch.tensor(mask, device=acts[hooks[0]].device)
                for h in hooks:
                    for p, v in _pool(acts[h], m, pooling, dtype).items():
                        rows[_key(h, span, p)].append(v.cpu())
    return {k: torch.stack(v).contiguous() for k, v in rows.items()}


def _check_or_write_manifest(out: Path, manifest: dict) -> None:
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
            raise ValueError(
                f"{out} holds a cache made with other settings {diff}; "
                "use another out_dir or delete it"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {MANIFEST}; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1))


def load_pair_activations(out_dir: str | Path) -> PairActivations:
    """Open a cache directory lazily; all shards of the manifest must be present."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    files = sorted(out.glob("shard-*.safetensors"))
    ids: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            ids += json.loads(f.metadata()["ids"])
    if len(ids) != manifest["n_pairs"]:
        raise ValueError(
            f"{out}: shards cover {len(ids)} of {manifest['n_pairs']} pairs; "
            "run the missing shards (cache_pairs with the same out_dir) first"
        )
    return PairActivations(ids, tuple(manifest["hooks"]), tuple(manifest["pooling"]),
                           out_dir=out, shard_files=tuple(files))
