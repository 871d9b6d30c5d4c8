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
written atomically as soon as it is done (``shard-<start>-<end>.safetensors`` and
its record ``shard-<start>-<end>.json``: ids, a digest of the shard's pair texts,
the sha256 of the file) beside a ``manifest.json`` keyed by content: a digest of
every pair text, the model's weights fingerprint, the hooks and the settings. A
rerun skips finished shards and recomputes a corrupt one, naming it; a directory
made from other pairs, weights, hooks or settings is refused with a message saying
which of them changed. ``shard=(i, n)`` computes only the i-th of n contiguous
slices, so that n machines can share the work and write into one directory;
loading (``load_pair_activations``) verifies every checksum and refuses
overlapping or missing shards, naming them. The same shard store
(``check_or_write_manifest``, ``write_shard``, ``finished_shard``,
``load_shard_records``) backs ``anatomy.features.feature_summaries(cache_dir=...)``.
``stream_pair_activations`` yields each pair's per-token activations instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from .fingerprint import pairs_digest, weights_fingerprint
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


def tokenize_pairs(model, pairs: Sequence[dict], *, start: int = 0) -> list[dict]:
    """Run ``format_pair`` on every pair: ``[{"id", "chosen": enc, "rejected": enc}, ...]``.

    A pair without an ``id`` is named by its index (``start`` + its position).
    Raises ``ValueError`` naming the pair and field when a sequence is longer
    than the model's context (``model.cfg.n_ctx``).
    """
    n_ctx = getattr(model.cfg, "n_ctx", None)
    out = []
    for i, pair in enumerate(pairs, start):
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
        tok = tokenize_pairs(model, [pairs[i] for i in range(lo, hi)], start=lo)
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
    check_hooks(model, [hook])
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


# ----------------------------------------------------------------------------- shard store


class CacheError(ValueError):
    """A cache directory that cannot be used as it is; the message names the file or shard and why."""


# manifest field -> what a user is told changed
CHANGED = {"kind": "cache kind", "model": "model", "model_weights": "model weights", "sae_weights": "SAE",
           "d_sae": "SAE", "hook": "hook", "hooks": "hooks", "n_pairs": "pairs", "pairs_digest": "pairs"}


def pair_ids(pairs: Sequence[dict]) -> list[str]:
    """The pairs' ids (a pair without one is named by its index); duplicates are refused, named."""
    ids = [str(pairs[i].get("id", i)) for i in range(len(pairs))]
    if len(set(ids)) < len(ids):
        seen, dup = set(), []
        for i, pid in enumerate(ids):
            if pid in seen and pid not in dup:
                dup.append(pid)
            seen.add(pid)
        raise ValueError(f"pair ids must be unique; repeated: {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    return ids


def check_hooks(model, hooks: Iterable[str]) -> None:
    """Refuse hook names the model does not have, naming them and the model's layer count."""
    names = getattr(model, "hook_dict", None)
    if names is None:
        return
    bad = [h for h in hooks if h not in names]
    if bad:
        n_layers = getattr(model.cfg, "n_layers", "?")
        raise KeyError(f"hook(s) {bad} are not hooks of the model ({n_layers} layers: blocks.0 to "
                       f"blocks.{n_layers - 1 if isinstance(n_layers, int) else '?'}; e.g. "
                       f"'blocks.0.hook_resid_post')")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, make it 0644, then rename it onto ``path``:
    a reader (or a rerun after a kill) sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1)))


def read_manifest(out: str | Path) -> dict:
    """The manifest of a cache directory; a missing or unreadable one is a ``CacheError`` naming the file."""
    path = Path(out) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{Path(out)} has no {MANIFEST}: not a cache directory, or nothing was written yet") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is not a valid manifest ({err}); delete the directory and rerun") from None
    if not isinstance(manifest, dict):
        raise CacheError(f"{path} is not a valid manifest (a JSON object was expected); delete the directory and rerun")
    return manifest


def changed_fields(old: dict, new: dict) -> tuple[list[str], dict]:
    """What differs between two manifests: the named groups (``CHANGED``: pairs, model weights,
    SAE, hook(s), settings, ...) and ``{field: (old, new)}``."""
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    groups = list(dict.fromkeys(CHANGED.get(k, "settings") for k in diff))
    return groups, diff


def _ours(path: Path) -> bool:
    return path.name.startswith(("shard-", ".shard-", f".{MANIFEST}"))


def check_or_write_manifest(out: str | Path, manifest: dict) -> None:
    """Write ``manifest`` into a new cache directory, or check it against the one there.

    Safe when several processes start at once (the first complete manifest wins; the
    others compare against it). A directory holding other files and no manifest is
    refused; a manifest that differs raises ``CacheError`` naming what changed.
    """
    out = Path(out)
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(not _ours(p) for p in out.iterdir()):
            raise CacheError(f"{out} is not empty and has no {MANIFEST}; refusing to write into it")
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)  # fails if another process was first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    old = read_manifest(out)
    if old != manifest:
        if "pairs_digest" not in old:
            raise CacheError(f"{out} holds a cache written without a digest of its pair texts and weights (an "
                             "older format): it cannot be checked against these pairs; delete it and rerun")
        groups, diff = changed_fields(old, manifest)
        raise CacheError(f"{out} holds a cache made with other {', '.join(groups)} (changed: {diff}); "
                         "use another directory or delete it")


def shard_path(out: str | Path, a: int, b: int, ext: str) -> Path:
    """``out/shard-<a>-<b><ext>``, the data file of rows ``[a, b)``; its record is the same name with ``.json``."""
    return Path(out) / f"shard-{a:07d}-{b:07d}{ext}"


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def write_shard(path: Path, write: Callable[[Path], None], *, start: int, end: int, ids: list[str],
                digest_of_pairs: str, manifest: dict) -> dict:
    """Write a shard's data file (``write(tmp)``, atomically), then its record: rows, ids, the
    digest of its pair texts, the manifest it was made under and the sha256 of the data file.
    A shard is finished once its record exists."""
    write_atomic(path, write)
    record = {"file": path.name, "start": start, "end": end, "ids": ids, "pairs_digest": digest_of_pairs,
              "sha256": file_sha256(path), "manifest": manifest}
    _write_json(_record_path(path), record)
    return record


def _shard_problem(path: Path, manifest: dict, start: int | None = None, end: int | None = None,
                   digest_of_pairs: str | None = None) -> tuple[str | None, dict | None]:
    """``(None, record)`` for a sound finished shard, else ``(what is wrong, record or None)``;
    ``"absent"`` when it was never finished."""
    rec_path = _record_path(path)
    if not rec_path.exists():
        return "absent", None
    try:
        record = json.loads(rec_path.read_text())
        assert isinstance(record, dict) and {"start", "end", "ids", "sha256", "manifest"} <= set(record)
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        return f"its record {rec_path.name} is unreadable", None
    if not path.exists():
        return "its data file is missing", record
    if record["manifest"] != manifest:
        groups, diff = changed_fields(record["manifest"], manifest)
        return f"it was made with other {', '.join(groups)} (changed: {diff})", record
    if (start, end) != (None, None) and (record["start"], record["end"]) != (start, end):
        return f"its record says rows {record['start']}-{record['end']}", record
    if digest_of_pairs is not None and record.get("pairs_digest") != digest_of_pairs:
        return "its pair texts changed", record
    got = file_sha256(path)
    if got != record["sha256"]:
        return (f"checksum mismatch (sha256 {got[:12]}, recorded {record['sha256'][:12]}): "
                "the file is corrupt or truncated"), record
    return None, record


def finished_shard(path: Path, manifest: dict, *, start: int, end: int, digest_of_pairs: str) -> bool:
    """True when the shard at ``path`` is finished and sound. A bad one (corrupt, truncated, from
    other pairs) is named in a warning and ``False`` is returned, so the caller recomputes it."""
    problem, _ = _shard_problem(path, manifest, start, end, digest_of_pairs)
    if problem is None:
        return True
    if problem != "absent":
        warnings.warn(f"{path}: {problem}; recomputing it", stacklevel=3)
    return False


def load_shard_records(out: str | Path, kind: str) -> tuple[dict, list[dict]]:
    """The manifest and the records of a cache directory's shards, in row order, all verified.

    Raises ``CacheError`` naming the shard when one is corrupt, truncated or was made with
    another model, SAE, hook, data or settings, when shards overlap, and when rows are
    not covered by any shard.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest.get("kind", "pair_activations") != kind:
        raise CacheError(f"{out} holds a {manifest.get('kind')!r} cache, not {kind!r}")
    records = []
    for rec_path in sorted(out.glob("shard-*.json")):
        try:  # the data file's name is in the record
            data = out / json.loads(rec_path.read_text())["file"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CacheError(f"{rec_path}: unreadable shard record; delete it and rerun to recompute the shard") from None
        problem, record = _shard_problem(data, manifest)
        if problem is not None:
            raise CacheError(f"{out}: shard {data.name}: {problem}; rerun with the same directory to recompute it"
                             if "made with other" not in problem else
                             f"{out}: shard {data.name}: {problem}; it does not belong in this directory")
        records.append(record)
    records.sort(key=lambda r: (r["start"], r["end"]))
    n = manifest["n_pairs"]
    overlaps = [(p["file"], r["file"]) for p, r in zip(records, records[1:]) if r["start"] < p["end"]]
    if overlaps:
        raise CacheError(f"{out}: shards overlap: " + "; ".join(f"{a} and {b}" for a, b in overlaps)
                         + ". Shards of one directory must come from one split of the pairs; delete the extra ones")
    gaps, at = [], 0
    for r in records:
        if r["start"] > at:
            gaps.append((at, r["start"]))
        at = max(at, r["end"])
    if at < n:
        gaps.append((at, n))
    if gaps:
        covered = sum(r["end"] - r["start"] for r in records)
        unrecorded = sorted(p.name for p in out.glob("shard-*") if p.suffix != ".json"
                            and not _record_path(p).exists())
        raise CacheError(f"{out}: shards cover {covered} of {n} pairs; missing rows "
                         + ", ".join(f"{a}-{b}" for a, b in gaps)
                         + (f"; {unrecorded[:3]} have no record (unfinished)" if unrecorded else "")
                         + " (run the missing shards with the same directory first)")
    return manifest, records


# ----------------------------------------------------------------------------- cache_pairs


def _manifest(model, pairs, n_pairs, hooks, pooling, dtype, shard_size) -> dict:
    return {
        "kind": "pair_activations",
        "model": getattr(model.cfg, "model_name", None),
        "model_weights": weights_fingerprint(model),
        "n_pairs": n_pairs,
        "pairs_digest": pairs_digest(pairs[i] for i in range(n_pairs)),
        "hooks": list(hooks),
        "pooling": list(pooling),
        "dtype": str(dtype).replace("torch.", ""),
        "shard_size": shard_size,
    }


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
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``; ids must be unique.
        hooks: hook name(s), e.g. ``"blocks.15.hook_resid_post"``.
        pooling: any of ``"mean"``, ``"max"``, ``"last"`` (over each span's tokens).
        batch_tokens: max padded tokens per forward batch.
        batch_size: max sequences per forward batch (default: only ``batch_tokens`` limits).
        dtype: storage dtype of the pooled tensors (default ``torch.float32``).
        out_dir: write shards here as they finish; a rerun skips finished shards. The
            directory is keyed by the pair texts, the weights, the hooks and the settings
            (batching is not part of the key: it changes values at rounding level only).
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
    check_hooks(model, hooks)
    dtype = dtype or torch.float32
    n = len(pairs)
    ids = pair_ids(pairs)
    lo, hi = shard_bounds(n, shard)
    bounds = [(a, min(a + shard_size, hi)) for a in range(lo, hi, shard_size)]

    out = Path(out_dir) if out_dir is not None else None
    digests = {}
    if out is not None:
        manifest = _manifest(model, pairs, n, hooks, pooling, dtype, shard_size)
        check_or_write_manifest(out, manifest)
        digests = {(a, b): pairs_digest(pairs[i] for i in range(a, b)) for a, b in bounds}

    def path_of(a: int, b: int) -> Path:
        return shard_path(out, a, b, ".safetensors")

    todo = [(a, b) for a, b in bounds
            if out is None or not finished_shard(path_of(a, b), manifest, start=a, end=b, digest_of_pairs=digests[a, b])]
    tensors: dict[str, list[Tensor]] = {}
    bar = tqdm(total=sum(b - a for a, b in todo), desc="cache_pairs", disable=not progress)
    for a, b in todo:
        shard_tensors = _pool_shard(model, pairs, hooks, pooling, dtype, a, b, batch_tokens, padding_side, batch_size)
        if out is not None:
            write_shard(path_of(a, b), lambda p: save_file(shard_tensors, str(p), metadata={"ids": json.dumps(ids[a:b])}),
                        start=a, end=b, ids=ids[a:b], digest_of_pairs=digests[a, b], manifest=manifest)
        else:
            for key, t in shard_tensors.items():
                tensors.setdefault(key, []).append(t)
        bar.update(b - a)
        if on_shard_done is not None:
            on_shard_done(a, b)
    bar.close()
    if out is not None:
        return PairActivations(ids[lo:hi], hooks, pooling, out_dir=out,
                               shard_files=tuple(path_of(a, b) for a, b in bounds))
    return PairActivations(ids[lo:hi], hooks, pooling, tensors={k: torch.cat(v) for k, v in tensors.items()})


def shard_bounds(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of the i-th of n contiguous slices of ``n`` pairs (all rows for ``None``)."""
    if shard is None:
        return 0, n
    try:
        i, k = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (i, n), got {shard!r}") from None
    if not (0 <= i < k):
        raise ValueError(f"shard=(i, n) needs 0 <= i < n, got {shard}")
    return n * i // k, n * (i + 1) // k


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


def load_pair_activations(out_dir: str | Path) -> PairActivations:
    """Open a cache directory lazily, after verifying it.

    Every shard's sha256 is checked against its record, and the shards must cover the
    pairs exactly once; a corrupt, truncated, foreign, overlapping or missing shard is a
    ``CacheError`` that names it.
    """
    out = Path(out_dir)
    manifest, records = load_shard_records(out, "pair_activations")
    ids = [pid for r in records for pid in r["ids"]]
    return PairActivations(ids, tuple(manifest["hooks"]), tuple(manifest["pooling"]),
                           out_dir=out, shard_files=tuple(out / r["file"] for r in records))
