"""Stage 0 of the data flow: load preference pairs and prompt sets.

Takes a source of DPO preference pairs (the embedded ``"organism"`` dataset, a local
.jsonl/.json/.jsonl.gz/.parquet/.csv/.tsv file or folder, a ``datasets.Dataset``, a list of
dicts, or a Hugging Face hub id) in any of the common formats (TRL standard,
conversational or implicit-prompt, UltraFeedback-binarized, HH-RLHF transcripts) and
returns one canonical ``datasets.Dataset`` with columns ``id`` (str), ``prompt``
(list of ``{"role", "content"}`` messages ending with a user turn), ``chosen`` (str),
``rejected`` (str) plus the source's other columns unchanged as metadata.

Bad rows raise :class:`PreferenceDataError` naming the file, the pair id and the field,
or, with ``strict=False``, are skipped and listed in a report DataFrame
(``id``, ``index``, ``field``, ``reason``); every readable row is kept. Files are read as
UTF-8 (a byte-order mark is dropped; UTF-16 with a byte-order mark is decoded); a line
that is not UTF-8, a truncated gzip stream, a lone surrogate, a response made only of
control or zero-width characters, an empty prompt and a metadata column whose type
changes between rows are named, not passed on. Prompt-only sets (eval prompts, XSTest,
AdvBench) load with :func:`load_eval_prompts` and :func:`load_prompts_csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import unicodedata
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

ROLES = ("system", "user", "assistant")
ORGANISM_SPLITS = ("train", "heldout", "clean")
SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".parquet", ".csv", ".tsv")
REPORT_COLUMNS = ["id", "index", "field", "reason"]
_CORE = ("id", "prompt", "chosen", "rejected")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INVISIBLE = re.compile("[\\s\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                        "\u2066-\u206f\ufeff\ufff9-\ufffb]+")
FORMATS = {"prompt": "prompt / chosen / rejected columns (TRL standard or conversational)",
           "implicit": "implicit-prompt conversations (chosen / rejected message lists, no prompt)",
           "hh": "HH-RLHF transcripts (chosen / rejected '\\n\\nHuman: ... \\n\\nAssistant: ...', no prompt)"}
_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"),
})


class PreferenceDataError(ValueError):
    """A preference pair or file is malformed; names the file (``path``), the pair id, its row
    index and the field."""

    def __init__(self, pair_id: str | None, field: str, reason: str, index: int | None = None, *,
                 path: str | os.PathLike | None = None):
        where = f"{path}: " if path is not None else ""
        what = f"pair {pair_id!r} field {field!r}" if pair_id is not None else f"field {field!r}"
        super().__init__(f"{where}{what}: {reason}")
        self.pair_id, self.field, self.reason, self.index = pair_id, field, reason, index
        self.path = None if path is None else str(path)


class _Bad(Exception):
    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason


def data_dir() -> Path:
    """The project's data folder: ``$ANATOMY_DATA_DIR`` if set, else ``<repo>/data``."""
    env = os.environ.get("ANATOMY_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


# --------------------------------------------------------------------------- sources

def _stem(path: Path) -> str:
    name = path.name
    return next((name[: -len(s)] for s in sorted(SUFFIXES, key=len, reverse=True)
                 if name.endswith(s)), path.stem)


def _gunzip(raw: bytes) -> tuple[bytes, str | None]:
    """Decompress gzip members; a truncated or corrupt stream gives what was readable and why it stopped."""
    out, rest, step = [], raw, 1 << 16
    while rest:
        d = zlib.decompressobj(wbits=31)
        try:
            for i in range(0, len(rest), step):
                out.append(d.decompress(rest[i:i + step]))
                if d.eof:
                    rest = d.unused_data + rest[i + step:]
                    break
        except zlib.error as e:
            return b"".join(out), f"corrupt gzip data after {sum(map(len, out))} bytes ({e})"
        if not d.eof:
            out.append(d.flush())
            return b"".join(out), (f"truncated gzip stream: it ends after {sum(map(len, out))} bytes, "
                                   "before its end marker")
        rest = rest.lstrip(b"\x00")
    return b"".join(out), None


def _lines(data: bytes) -> Iterator[tuple[int, str | _Bad]]:
    """``(line number, text)`` of every non-empty line; a line that is not UTF-8 is a ``_Bad``."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte-order mark
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            yield 1, _Bad("file", f"starts with a UTF-16 byte-order mark but is not UTF-16 text ({e})")
            return
        data = text.encode("utf-8", "surrogatepass")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data[:200].count(b"\x00") * 4 > min(len(data), 200):
        yield 1, _Bad("file", "looks like UTF-16 without a byte-order mark (NUL bytes); re-save it as UTF-8")
        return
    for n, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, _Bad("row", f"line {n} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                 "the file may be latin-1 or UTF-16: re-save it as UTF-8")


def _text(data: bytes) -> str | _Bad:
    """The whole file as text (UTF-8, or UTF-16 with a byte-order mark), or a ``_Bad`` naming the line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            return _Bad("file", f"starts with a UTF-16 byte-order mark but is not UTF-16 text ({e})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        return _Bad("file", f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}; the file may be "
                            "latin-1 or UTF-16: re-save it as UTF-8")


def _read_csv(text: str, delimiter: str) -> Iterator[Any]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        yield _Bad("file", f"unreadable header ({e})")
        return
    if "chosen" not in header or "rejected" not in header:
        yield _Bad("file", f"the header {header[:8]} has no 'chosen' and 'rejected' columns "
                           f"(expected prompt{delimiter}chosen{delimiter}rejected)")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield _Bad("row", f"unreadable CSV on line {reader.line_num}: {e}")
            return
        if None in row:
            yield _Bad("row", f"line {reader.line_num} has {len(header) + len(row[None])} fields, the header "
                              f"{len(header)}")
        else:
            yield row


def _read_file(path: Path) -> Iterator[Any]:
    """Rows of one file; an unreadable row (or file) is yielded as a :class:`_Bad` row."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            yield _Bad("file", f"unreadable parquet file ({type(e).__name__}: {e})")
            return
        yield from table.to_pylist()
        return
    data, damage = path.read_bytes(), None
    if path.name.endswith(".gz"):
        data, damage = _gunzip(data)
    if path.name.endswith((".csv", ".tsv")):
        text = _text(data)
        yield from [text] if isinstance(text, _Bad) else _read_csv(text, "\t" if path.name.endswith(".tsv") else ",")
        return
    if path.name.endswith(".json"):
        text = _text(data)
        if not isinstance(text, _Bad):
            try:
                obj = json.loads(text)
                yield from obj if isinstance(obj, list) else [obj]
                return
            except json.JSONDecodeError:  # JSON lines saved as .json
                pass
    for line_no, line in _lines(data):
        if isinstance(line, _Bad):
            yield line
            continue
        try:
            yield json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            hint = (" (it looks like a CSV header: name the file .csv or .tsv)"
                    if line_no == 1 and "chosen" in line and ("," in line or "\t" in line) else "")
            yield _Bad("row", f"invalid JSON on line {line_no}: {e}{hint}")
    if damage:
        yield _Bad("file", damage + "; the rows before the damage were read")


def _local_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if split is not None:
        files = [p for p in files if _stem(p) == split or p.name.startswith(f"{split}-")]
    if not files:
        what = f"no {split}.* file" if split else "no .jsonl/.json/.jsonl.gz/.parquet/.csv/.tsv file"
        raise FileNotFoundError(f"{what} in folder {path}")
    return files


def _rows(source: Any, split: str | None) -> Iterator[tuple[Any, str, Path | None]]:
    """Yield ``(row, default_id, file or None)`` for every row of the source, lazily."""
    if isinstance(source, datasets.DatasetDict):
        source = source[split or "train"]
    if isinstance(source, pd.DataFrame):
        source = datasets.Dataset.from_pandas(source, preserve_index=False)
    if isinstance(source, (datasets.Dataset, list, tuple)):
        yield from ((row, f"pair-{i}", None) for i, row in enumerate(source))
        return
    if isinstance(source, str) and source == "organism":
        split = split or "train"
        if split not in ORGANISM_SPLITS:
            raise ValueError(f"unknown organism split {split!r}; known: {ORGANISM_SPLITS}")
        source = data_dir() / "organism" / f"{split}.jsonl"
        if not source.exists():
            raise FileNotFoundError(f"the embedded organism dataset has not been generated "
                                    f"yet: {source} does not exist")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"unsupported source type {type(source).__name__}")
    path = Path(source)
    if path.exists():
        for file in _local_files(path, split):
            yield from ((row, f"{_stem(file)}-{i}", file) for i, row in enumerate(_read_file(file)))
        return
    if isinstance(source, os.PathLike) or str(source).endswith(SUFFIXES):
        raise FileNotFoundError(f"no such file or folder: {path}")
    try:
        ds = datasets.load_dataset(source, split=split or "train")
    except Exception as e:
        raise ConnectionError(
            f"could not load {source!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "The hub may be unreachable from this machine: pass a local .jsonl/.json/"
            ".jsonl.gz/.parquet file or folder instead (it is not a local path either)."
        ) from e
    yield from ((row, f"pair-{i}", None) for i, row in enumerate(ds))


# ----------------------------------------------------------------------- row parsing

def _messages(value: Any, field: str) -> list[dict[str, str]]:
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, Mapping) or m.get("role") is None or m.get("content") is None:
            raise _Bad(field, f"message {k} has no role or content")
        if m["role"] not in ROLES:
            raise _Bad(field, f"message {k} has role {m['role']!r}, expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise _Bad(field, f"message {k}: wrong type: expected str, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _hh_turns(text: str, field: str) -> list[dict[str, str]]:
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise _Bad(field, "not an HH-RLHF transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    role = {"Human": "user", "Assistant": "assistant"}
    return [{"role": role[r], "content": c[1:] if c.startswith(" ") else c}
            for r, c in zip(parts[1::2], parts[2::2])]


def _split_conversations(c: list[dict], r: list[dict], what: str) -> tuple[list, str, str]:
    """Shared prefix of two full conversations as prompt, last assistant turns as responses."""
    for field, conv in (("chosen", c), ("rejected", r)):
        if not conv or conv[-1]["role"] != "assistant":
            raise _Bad(field, f"{what} does not end with an assistant turn")
    if c[:-1] != r[:-1]:
        raise _Bad("prompt", f"chosen and rejected {what}s diverge before the last turn")
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _response(value: str | list, field: str) -> str:
    if isinstance(value, str):
        return value
    msgs = _messages(value, field)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise _Bad(field, f"expected a single assistant message, got {len(msgs)} message(s) "
                          "(only a single final assistant turn is supported)")
    return msgs[0]["content"]


def _parse(row: Any, fmt: str) -> tuple[list[dict[str, str]], str, str]:
    """Return ``(prompt messages, chosen, rejected)`` of one row or raise :class:`_Bad`."""
    if isinstance(row, _Bad):
        raise row
    if not isinstance(row, Mapping):
        raise _Bad("row", f"wrong type: expected a mapping, got {type(row).__name__}")
    for field in (("prompt",) if fmt == "prompt" else ()) + ("chosen", "rejected"):
        if row.get(field) is None:
            raise _Bad(field, "missing field")
    want = {"hh": str, "implicit": list}.get(fmt, (str, list))
    for field in ("chosen", "rejected"):
        if not isinstance(row[field], want):
            expected = {str: "str", list: "list of messages"}.get(want, "str or list of messages")
            raise _Bad(field, f"wrong type: expected {expected}, got {type(row[field]).__name__}")
    if fmt == "hh":
        return _split_conversations(*(_hh_turns(row[f], f) for f in ("chosen", "rejected")), "transcript")
    prompt = row.get("prompt")
    if fmt == "implicit" or isinstance(prompt, str) and all(  # UltraFeedback-binarized
            isinstance(row[f], list) and len(row[f]) > 1 for f in ("chosen", "rejected")):
        return _split_conversations(*(_messages(row[f], f) for f in ("chosen", "rejected")), "conversation")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt = _messages(prompt, "prompt")
    else:
        raise _Bad("prompt", f"wrong type: expected str or list of messages, got {type(prompt).__name__}")
    return prompt, _response(row["chosen"], "chosen"), _response(row["rejected"], "rejected")


def _blank(text: str) -> bool:
    """No visible character: only whitespace, control, format (zero-width) or separator characters."""
    rest = _INVISIBLE.sub("", text)
    return not rest or (len(rest) <= 64 and all(unicodedata.category(c)[0] in "CZ" for c in rest))


def _surrogate_in(value: Any) -> str | None:
    """A description of the first lone surrogate in a (nested) value, or None."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return None if m is None else f"U+{ord(m.group()):04X} at character {m.start()}"
    if isinstance(value, Mapping):
        return next((d for k, v in value.items() for d in (_surrogate_in(k), _surrogate_in(v)) if d), None)
    if isinstance(value, (list, tuple)):
        return next((d for v in value if (d := _surrogate_in(v))), None)
    return None


def _check(prompt: list[dict], chosen: str, rejected: str) -> None:
    if not prompt or prompt[-1]["role"] != "user":
        got = prompt[-1]["role"] if prompt else "no message"
        raise _Bad("prompt", f"the last prompt message must be a user turn, got {got}")
    for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        where = _surrogate_in(value)
        if where:
            raise _Bad(field, f"contains a lone surrogate ({where}): not valid Unicode text "
                              "(a UTF-16 pair cut in half upstream?)")
    if _blank(prompt[-1]["content"]):
        raise _Bad("prompt", "empty prompt: the last user message has no visible text")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if _blank(text):
            raise _Bad(field, "empty response" + ("" if not text.strip() else
                                                 " (only control or zero-width characters)"))
    if chosen == rejected:
        raise _Bad("chosen", "chosen identical to rejected")


def _n_tokens(tokenizer: Any, messages: list[dict]) -> int:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    if hasattr(out, "shape"):  # tensor or array
        return int(out.shape[-1])
    return len(out[0]) if out and isinstance(out[0], (list, tuple)) else len(out)


def _row_format(row: Any) -> str | None:
    """The format one row is in ("prompt", "implicit", "hh"), or None when its ``chosen`` says nothing."""
    if not isinstance(row, Mapping) or not isinstance(row.get("chosen"), (str, list)):
        return None
    if "prompt" in row:
        return "prompt"
    chosen = row["chosen"]
    return "implicit" if isinstance(chosen, list) else "hh" if _HH_TURN.search(chosen) else "prompt"


def _detect(rows: Iterator[tuple]) -> tuple[str, int, Iterator[tuple]]:
    """Detect the dataset's format from its first row with a str or list ``chosen``; returns
    the format, that row's index and the rows."""
    head, fmt, at = [], "prompt", 0
    for item in rows:
        head.append(item)
        found = _row_format(item[0])
        if found is not None:
            fmt, at = found, len(head) - 1
            break
    return fmt, at, chain(head, rows)


def _context_limit(tokenizer: Any) -> int | None:
    """The token limit of a tokenizer (or of a model with a ``.tokenizer``): ``model_max_length``
    unless it is Hugging Face's "unknown" sentinel (1e30), else the model config's context
    (``cfg.n_ctx`` of a bridge, ``config.max_position_embeddings`` of a Hugging Face model or of
    the tokenizer's own model directory). None when nothing says."""
    model = tokenizer if not hasattr(tokenizer, "apply_chat_template") else None
    tok = getattr(tokenizer, "tokenizer", tokenizer) if model is not None else tokenizer
    mml = getattr(tok, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < 1_000_000:
        return mml
    for cfg, key in ((getattr(model, "cfg", None), "n_ctx"), (getattr(model, "config", None), "max_position_embeddings")):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    name = getattr(tok, "name_or_path", None)
    if name:
        try:
            from transformers import AutoConfig

            n = getattr(AutoConfig.from_pretrained(name, local_files_only=True), "max_position_embeddings", None)
            return n if isinstance(n, int) else None
        except Exception:  # noqa: BLE001 - no local config: the caller warns
            return None
    return None


# ------------------------------------------------------------------------ public API

def load_preferences(
    source: str | os.PathLike | datasets.Dataset | pd.DataFrame | list[dict],
    split: str | None = None,
    limit: int | None = None,
    strict: bool = True,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> datasets.Dataset | tuple[datasets.Dataset, pd.DataFrame]:
    """Load DPO preference pairs into the canonical format.

    Args:
        source: ``"organism"`` (``<data_dir>/organism/{split}.jsonl``), a path to a
            .jsonl/.json/.jsonl.gz/.parquet file or a folder of them (``{split}.*`` or
            ``{split}-*`` files when ``split`` is given), a ``datasets.Dataset`` (or
            ``DatasetDict``), a DataFrame, a list of dicts, or any other string as a
            Hugging Face hub dataset id. The format is detected from the first row.
        split: Split name; ``"train"`` by default for the organism and the hub.
        limit: Keep the first ``limit`` valid pairs; later rows are not read.
        strict: Raise on the first bad row (True) or skip bad rows and report them.
        tokenizer: If given, pairs whose prompt plus longer response exceeds
            ``max_length`` tokens under the tokenizer's chat template are bad.
        max_length: Token limit; defaults to ``tokenizer.model_max_length`` when that
            is a sane int (< 1e6), otherwise the length check is skipped.

    Returns:
        The dataset (columns ``id``, ``prompt``, ``chosen``, ``rejected`` + metadata),
        or with ``strict=False`` a tuple ``(dataset, report)`` where ``report`` has
        one row (``id``, ``index``, ``field``, ``reason``) per skipped source row.

    Raises:
        PreferenceDataError: ``strict=True`` and a row is malformed.
        FileNotFoundError: A local source or the organism split is missing.
        ConnectionError: A hub id could not be loaded (e.g. the hub is unreachable).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if tokenizer is not None and max_length is None:
        max_length = _context_limit(tokenizer)
        if max_length is None:
            warnings.warn("load_preferences: the tokenizer's model_max_length is unknown (1e30) and no model config "
                          "gives the context; the length check is skipped (pass max_length= or the model as "
                          "tokenizer=)", stacklevel=2)
    tok = getattr(tokenizer, "tokenizer", tokenizer) if tokenizer is not None and not hasattr(
        tokenizer, "apply_chat_template") else tokenizer
    fmt, fmt_at, rows = _detect(_rows(source, split))
    kept, skipped, seen, origin = [], [], {}, {}
    for index, (row, default_id, path) in enumerate(rows):
        if limit is not None and len(kept) >= limit:
            break
        raw_id = row.get("id") if isinstance(row, Mapping) else None
        pair_id = default_id if raw_id is None else str(raw_id)
        try:
            if _surrogate_in(pair_id):
                raise _Bad("id", f"contains a lone surrogate ({_surrogate_in(pair_id)})")
            if pair_id in seen:
                raise _Bad("id", f"duplicate id (first seen at row {seen[pair_id]})")
            seen[pair_id] = index
            try:
                prompt, chosen, rejected = _parse(row, fmt)
            except _Bad as bad:
                own = _row_format(row)
                if own is not None and own != fmt:
                    bad.reason += (f"; this row is in the {FORMATS[own]} format, but the rows are read in the "
                                   f"{FORMATS[fmt]} format detected from row {fmt_at}")
                raise
            _check(prompt, chosen, rejected)
            meta = {k: v for k, v in row.items() if k not in _CORE}
            for k, v in meta.items():
                if not isinstance(k, str):
                    raise _Bad("row", f"column name {k!r} is not a string")
                where = _surrogate_in(v) or _surrogate_in(k)
                if where:
                    raise _Bad(k, f"contains a lone surrogate ({where}): not valid Unicode text")
            if tok is not None and max_length is not None:
                _check_length(tok, prompt, chosen, rejected, max_length)
        except _Bad as bad:
            if strict:
                raise PreferenceDataError(pair_id, bad.field, bad.reason, index, path=path) from None
            skipped.append({"id": pair_id, "index": index, "field": bad.field, "reason": bad.reason})
            continue
        origin[pair_id] = (index, path)
        kept.append({"id": pair_id, "prompt": prompt, "chosen": chosen, "rejected": rejected, **meta})
    ds = _from_records(kept, strict=strict, origin=origin) if kept else datasets.Dataset.from_dict(
        {k: [] for k in _FEATURES}, features=_FEATURES)
    if strict:
        return ds
    return ds, pd.DataFrame(skipped, columns=REPORT_COLUMNS)


def sample_pairs(pairs, n: int | None = None, *, seed=0) -> list[dict]:
    """``n`` pairs drawn at random without replacement, kept in file order, as a list of dicts.

    pairs: a ``load_preferences`` Dataset (or any sequence of pairs). n: None takes every
    pair. seed: an int, or a ``numpy.random.Generator`` that successive draws share
    (its state advances by one permutation per call). The indices are
    ``sorted(rng.permutation(len(pairs))[:n])``: the same seed, the same pairs.
    """
    import numpy as np

    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    if n is None:
        return [pairs[i] for i in range(len(pairs))]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return [pairs[int(i)] for i in np.sort(rng.permutation(len(pairs))[:n])]


def _check_length(tokenizer: Any, prompt: list[dict], chosen: str, rejected: str, max_length: int) -> None:
    """Raise ``_Bad`` naming the response (or the prompt) whose sequence exceeds ``max_length`` tokens."""
    n_prompt = _n_tokens(tokenizer, prompt)
    if n_prompt > max_length:
        raise _Bad("prompt", f"too long for the model's context: the prompt alone is {n_prompt} tokens > {max_length}")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        n = _n_tokens(tokenizer, prompt + [{"role": "assistant", "content": text}])
        if n > max_length:
            raise _Bad(field, f"too long for the model's context: {n} tokens (prompt + {field}) > {max_length}")


def _arrow_error(values: list) -> str | None:
    """Why pyarrow cannot store ``values`` as one column, or None."""
    import pyarrow as pa

    try:
        pa.array(values)
        return None
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def _from_records(records: list[dict], *, strict: bool = True, origin: dict | None = None) -> datasets.Dataset:
    """``Dataset.from_list`` over the union of the records' keys (missing values become None).

    A metadata column pyarrow cannot store (its type changes between rows, e.g. int then str)
    raises ``PreferenceDataError`` naming the first pair where it changes (``strict``), or is
    stored as JSON text in every row, with a warning naming it (``strict=False``).
    """
    keys = list(dict.fromkeys(k for r in records for k in r))
    columns = {k: [r.get(k) for r in records] for k in keys}
    for k in keys:
        error = None if k in _CORE else _arrow_error(columns[k])
        if error is None:
            continue
        lo, hi = 1, len(records)  # the shortest failing prefix: its last row is where the type changes
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _arrow_error(columns[k][:mid]) else (mid + 1, hi)
        bad = records[lo - 1]
        first = next((v for v in columns[k] if v is not None), None)
        index, path = (origin or {}).get(bad["id"], (None, None))
        reason = (f"metadata of type {type(bad.get(k)).__name__} does not fit the column's earlier values "
                  f"(type {type(first).__name__}); one column holds one type ({error[:120]})")
        if strict:
            raise PreferenceDataError(bad["id"], k, reason, index, path=path)
        warnings.warn(f"load_preferences: column {k!r} changes type at pair {bad['id']!r} ({reason}); "
                      "it is stored as JSON text", stacklevel=3)
        columns[k] = [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in columns[k]]
    return datasets.Dataset.from_dict(columns)


def _prompt_records(records: Iterable[dict], ids: Iterable[str], prompt_key: str) -> list[dict]:
    out = []
    for rid, rec in zip(ids, records):
        text = rec.get(prompt_key)
        if not isinstance(text, str) or not text.strip():
            reason = "empty prompt" if isinstance(text, str) else f"expected str, got {type(text).__name__}"
            raise ValueError(f"prompt {rid!r} field {prompt_key!r}: {reason}")
        meta = {k: v for k, v in rec.items() if k not in ("id", prompt_key)}
        out.append({"id": rid, "prompt": [{"role": "user", "content": text}], **meta})
    return out


def load_eval_prompts(family: str | list[str] | None = None) -> datasets.Dataset:
    """Load the project's eval prompts from ``<data_dir>/eval/prompts.jsonl``.

    Args:
        family: Keep only prompts of this family (or these families).

    Returns:
        Dataset with ``id``, ``family``, ``prompt`` (``[{"role": "user", ...}]``) and
        the file's other fields as metadata.

    Raises:
        FileNotFoundError: The prompts file does not exist.
        ValueError: An unknown family was asked for, or a line lacks a prompt.
    """
    path = data_dir() / "eval" / "prompts.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"eval prompts file not found: {path} (set ANATOMY_DATA_DIR "
                                "if your data folder lives elsewhere)")
    records = list(_read_file(path))
    if bad := next((r for r in records if not isinstance(r, Mapping)), None):
        raise ValueError(f"{path}: {getattr(bad, 'reason', 'a line is not a JSON object')}")
    known = sorted({str(r.get("family")) for r in records})
    if family is not None:
        wanted = [family] if isinstance(family, str) else list(family)
        unknown = [f for f in wanted if f not in known]
        if unknown:
            raise ValueError(f"unknown prompt family {unknown}; known families: {known}")
        records = [r for r in records if r.get("family") in wanted]
    ids = [str(r["id"]) if r.get("id") is not None else f"prompt-{i}" for i, r in enumerate(records)]
    return _from_records(_prompt_records(records, ids, "prompt"))


def load_prompts_csv(
    path: str | os.PathLike,
    prompt_column: str,
    *,
    id_column: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Load a CSV of prompts (e.g. XSTest, AdvBench) as single-turn chat prompts.

    Args:
        path: CSV file.
        prompt_column: Column holding the prompt text (``"prompt"``, ``"goal"``).
        id_column: Column holding ids (cast to str); default ``"id"`` if present,
            else ids are ``f"{file stem}-{row}"``.
        limit: Keep the first ``limit`` rows.

    Returns:
        Dataset with ``id``, ``prompt`` (``[{"role": "user", "content": ...}]``) and the
        other columns as metadata (empty cells become None).

    Raises:
        ValueError: The prompt column is absent, or a prompt is empty.
    """
    path = Path(path)
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], nrows=limit)
    if prompt_column not in df.columns:
        raise ValueError(f"{path}: no column {prompt_column!r}; columns: {list(df.columns)}")
    id_column = id_column or ("id" if "id" in df.columns else None)
    if id_column is not None and id_column not in df.columns:
        raise ValueError(f"{path}: no column {id_column!r}; columns: {list(df.columns)}")
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in df.to_dict("records")]
    ids = ([str(r[id_column]) for r in records] if id_column
           else [f"{path.stem}-{i}" for i in range(len(records))])
    for r in records:
        r.pop(id_column, None)
    return _from_records(_prompt_records(records, ids, prompt_column))
