"""Stage 5a: rollouts and what they show.

Takes a policy (a ``TransformerBridge`` from ``load_model`` or a plain Hugging Face
causal LM) and held-out prompts (``load_eval_prompts()``, pair records, or message
lists); returns

- ``rollouts``: a DataFrame of sampled responses, one row per (prompt, sample),
  reproducible from ``seed`` and independent of ``batch_size`` (each row draws
  from its own random stream, keyed by seed, prompt id and sample index);
- ``measure``: per-rollout concept scores from *scorers*, one column
  ``<lens>:<concept>`` each. Scorer builders: ``annotator_scorer`` (string
  search, ``concepts.annotate``), ``direction_scorer`` (projection of the
  response tokens on ``probes.Direction`` vectors) and ``sae_scorer`` (SAE
  concept clusters, the lens that predicted the shift);
- health metrics over a corpus of responses: ``distinct_n``, ``repetition_rate`` and
  ``perplexity`` (of the rollouts under a fixed model, e.g. the pre-DPO one: a policy
  that drifts into gibberish gets a high perplexity even when its n-grams are varied).

The scores feed ``predict.observed_shift`` (before vs after DPO) and
``predict.compare`` (predicted vs observed, METHOD §4).

**Scorers read with the pre-DPO lens.** ``direction_scorer`` and ``sae_scorer``
keep a reference to the model they are built with and forward every rollout
through *it*, whichever policy produced the rollout. Rollouts of the trained
policy must be scored by the same, untrained model that read the preference data
(otherwise "before" and "after" are measured with different rulers). If you train
the policy in place, build the scorers on a separate instance (a second
``load_model()``, or ``copy.deepcopy(model)`` before training). The scorers
fingerprint the lens model's weights when built and raise ``RuntimeError`` if the
weights have changed by the time they are called.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .cache import _forward_sequences
from .fingerprint import weights_fingerprint
from .models import format_pair, format_prompt, generation_model

__all__ = ["annotator_scorer", "direction_scorer", "distinct_n", "measure", "perplexity", "repetition_rate",
           "rollouts", "sae_scorer"]

Scorer = Callable[[pd.DataFrame], pd.DataFrame]
KEY_COLUMNS = ("prompt_id", "sample")


# ----------------------------------------------------------------------------- prompts


def _prompt_records(prompts) -> list[tuple[str, list[dict], dict]]:
    """``(prompt_id, messages, metadata)`` per prompt; see ``rollouts`` for what is accepted."""
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Iterable):
        raise TypeError(
            f"prompts must be a Dataset or a list of prompt records, message lists or strings, "
            f"got {type(prompts).__name__}"
        )
    if isinstance(prompts, pd.DataFrame):
        items = prompts.to_dict("records")
    elif hasattr(prompts, "column_names"):  # a datasets.Dataset
        items = [prompts[i] for i in range(len(prompts))]
    else:
        items = list(prompts)
    if not items:
        raise ValueError("prompts is empty: nothing to roll out")
    out, seen = [], {}
    for i, item in enumerate(items):
        meta: dict = {}
        if isinstance(item, Mapping):
            if "prompt" not in item:
                raise ValueError(f"prompt record {i} has no 'prompt' field (keys: {sorted(item)})")
            pid = item.get("prompt_id") if item.get("prompt_id") is not None else item.get("id", i)
            messages = item["prompt"]
            if item.get("family") is not None:
                meta["family"] = item["family"]
        else:
            pid, messages = i, item
        pid = str(pid)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        elif isinstance(messages, Sequence) and messages and all(
                isinstance(m, Mapping) and "role" in m and "content" in m for m in messages):
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        else:
            raise TypeError(f"prompt {pid!r} field 'prompt': expected a string or a non-empty list of "
                            f"{{'role', 'content'}} messages, got {type(messages).__name__}")
        if pid in seen:
            raise ValueError(f"prompt id {pid!r} appears twice (rows {seen[pid]} and {i}); rollouts are "
                             "seeded and grouped by prompt id, so pass each prompt once (use n_samples)")
        seen[pid] = i
        out.append((pid, messages, meta))
    return out


def _row_seed(seed: int, prompt_id: str, sample: int) -> int:
    """A 63-bit seed for one rollout, a hash of (seed, prompt id, sample index)."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------- sampling


def _row_sampler(generators: list[torch.Generator], temperature: float):
    """A logits processor that samples each row from its own generator and keeps only that token.

    Inverse-CDF sampling at temperature ``temperature`` with one uniform draw per
    row and step; every other logit becomes ``-inf``, so greedy decoding then picks
    the sampled token. Rows never share random draws, so a row's text does not
    depend on which rows are batched with it.
    """
    from transformers import LogitsProcessor

    class _RowSampler(LogitsProcessor):
        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            probs = torch.softmax(scores.float() / temperature, dim=-1).double()
            cdf = probs.cumsum(-1)
            u = torch.stack([torch.rand((), generator=g, dtype=torch.float64, device=g.device)
                             for g in generators]).to(cdf.device)
            idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
            idx = idx.clamp(max=scores.shape[-1] - 1)
            out = torch.full_like(scores, -torch.inf)
            return out.scatter_(1, idx, 0.0)

    return _RowSampler()


def _eos_ids(hf, tokenizer) -> set[int]:
    eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def rollouts(
    model,
    prompts,
    *,
    n_samples: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    tokenizer=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Sample ``n_samples`` responses per prompt from the policy, reproducibly.

    Sampling runs ``generate`` on a plain Hugging Face model: under a bridge, its
    twin that shares the weights (``models.generation_model``: the bridge's
    components ignore the KV cache); a plain HF model as is. Left-padded, in
    batches of ``batch_size`` rows sorted by prompt length, in eval mode (the
    model's mode is restored afterwards). Plain temperature sampling over the full vocabulary (no
    top-k / top-p); ``temperature=0`` is greedy decoding.

    Reproducibility: every row (prompt, sample) draws from its own
    ``torch.Generator`` seeded by a hash of ``(seed, prompt_id, sample)``, so the
    same seed gives the same texts, whatever ``batch_size``, the order of the
    prompts or which other prompts are in the call. Across batch sizes the logits
    differ only by float rounding (padding changes the matmul shapes), which can
    flip a draw only when it lands within ~1e-6 of a token boundary. The same seed
    before and after training gives both policies the same random draws per row
    (common random numbers), which lowers the variance of the measured shift.

    Args:
        model: a ``TransformerBridge`` (``load_model``) or a Hugging Face causal LM
            (then pass ``tokenizer``).
        prompts: a ``datasets.Dataset``, DataFrame or list of records with a ``prompt`` field
            (messages or a string; ``load_eval_prompts()``, preference pairs), or a
            list of message lists, or a list of strings (one user turn each). The
            prompt id is the record's ``prompt_id``, else its ``id``, else its position.
        n_samples: responses per prompt.
        temperature: softmax temperature (> 0), or 0 for greedy decoding.
        max_new_tokens: generation budget per response.
        seed: the base seed.
        batch_size: rows per ``generate`` call (speed and memory only).
        tokenizer: the tokenizer with the chat template (default ``model.tokenizer``).

    Returns:
        DataFrame, one row per rollout, ordered by prompt then sample:
        ``prompt_id`` (str), ``sample`` (int), ``prompt`` (messages), ``response``
        (str, special tokens removed), ``n_tokens`` (generated tokens before the
        end-of-turn token), ``finished`` (the model ended its turn within
        ``max_new_tokens``) and ``family`` when the records have one.
        ``attrs`` holds the generation settings.

    Raises:
        TypeError: ``prompts`` (or one prompt) has the wrong type.
        ValueError: no prompts, a duplicated prompt id, or a bad setting.
    """
    if n_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_samples, max_new_tokens and batch_size must be >= 1 "
                         f"(got {n_samples}, {max_new_tokens}, {batch_size})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    records = _prompt_records(prompts)
    hf = getattr(model, "original_model", model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None or not hasattr(hf, "generate"):
        raise TypeError("model must be a TransformerBridge (load_model) or a Hugging Face causal LM "
                        "with tokenizer= passed")
    from transformers import LogitsProcessorList

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = _eos_ids(hf, tok)
    device = next(hf.parameters()).device

    encoded = [format_prompt(tok, messages) for _, messages, _ in records]
    rows = [(p, s) for p in range(len(records)) for s in range(n_samples)]
    order = sorted(range(len(rows)), key=lambda r: -len(encoded[rows[r][0]]))  # stable: longest first
    texts, n_tokens, finished = [""] * len(rows), [0] * len(rows), [False] * len(rows)
    gen_model = generation_model(model)
    was_training = hf.training
    hf.eval()
    bar = tqdm(total=len(rows), desc="rollouts", disable=not progress)
    try:
        for lo in range(0, len(order), batch_size):
            batch = order[lo: lo + batch_size]
            seqs = [encoded[rows[r][0]] for r in batch]
            width = max(map(len, seqs))
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
            kw: dict = {}
            if temperature > 0:
                gens = [torch.Generator(device=device).manual_seed(_row_seed(seed, records[p][0], s))
                        for p, s in (rows[r] for r in batch)]
                kw["logits_processor"] = LogitsProcessorList([_row_sampler(gens, temperature)])
            out = gen_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=pad, top_p=None, top_k=None,
                              temperature=None, **kw)
            for j, r in enumerate(batch):
                gen = out[j, width:].tolist()
                end = next((k for k, t in enumerate(gen) if t in eos), None)
                texts[r] = tok.decode(gen[:end], skip_special_tokens=True)
                n_tokens[r] = len(gen) if end is None else end
                finished[r] = end is not None
            bar.update(len(batch))
    finally:
        bar.close()
        hf.train(was_training)
    df = pd.DataFrame({
        "prompt_id": [records[p][0] for p, _ in rows],
        "sample": [s for _, s in rows],
        "prompt": [records[p][1] for p, _ in rows],
        "response": texts,
        "n_tokens": n_tokens,
        "finished": finished,
    })
    if any(meta for _, _, meta in records):
        df["family"] = [records[p][2].get("family") for p, _ in rows]
    df.attrs.update({"seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens,
                     "n_samples": n_samples})
    return df


# ----------------------------------------------------------------------------- measuring


def measure(rollouts: pd.DataFrame, scorers: Scorer | Sequence[Scorer]) -> pd.DataFrame:
    """Score every rollout with every scorer.

    Args:
        rollouts: a ``rollouts`` DataFrame (at least ``prompt_id``, ``sample``,
            ``prompt``, ``response``).
        scorers: one scorer or a list (``annotator_scorer``, ``direction_scorer``,
            ``sae_scorer``, or any callable ``DataFrame -> DataFrame`` returning one
            row per rollout, in order, with ``<lens>:<concept>`` columns).

    Returns:
        DataFrame with the rollouts' index: ``prompt_id``, ``sample`` (and
        ``family`` when the rollouts have it), then the scorers' columns in order.

    Raises:
        ValueError: a required column is missing, a scorer returns the wrong number
            of rows, or two scorers produce the same column.
    """
    missing = [c for c in (*KEY_COLUMNS, "prompt", "response") if c not in rollouts.columns]
    if missing:
        raise ValueError(f"rollouts lacks column(s) {missing}; columns: {list(rollouts.columns)}")
    scorers = [scorers] if callable(scorers) else list(scorers)
    if not scorers:
        raise ValueError("no scorers given")
    out = rollouts[[*KEY_COLUMNS, *(["family"] if "family" in rollouts.columns else [])]].copy()
    for scorer in scorers:
        name = getattr(scorer, "__name__", repr(scorer))
        scores = scorer(rollouts)
        if not isinstance(scores, pd.DataFrame) or len(scores) != len(rollouts):
            got = f"{len(scores)} rows" if isinstance(scores, pd.DataFrame) else type(scores).__name__
            raise ValueError(f"scorer {name} returned {got}; expected a DataFrame of {len(rollouts)} rows")
        if dup := sorted(set(scores.columns) & set(out.columns)):
            raise ValueError(f"scorer {name} produced column(s) already present: {dup}")
        out = pd.concat([out, scores.set_axis(rollouts.index)], axis=1)
    return out


def _named(fn, name: str):
    fn.__name__ = fn.__qualname__ = name
    return fn


def annotator_scorer(concepts: Iterable[str] | str | None = None, *, tokenizer=None,
                     present: bool = True) -> Scorer:
    """String-search concept counts (``concepts.annotate``) of each response.

    Columns ``annotator:<concept>`` hold the counts; with ``present``, columns
    ``annotator_present:<concept>`` hold ``1`` when the count is > 0 (every
    concept but ``length``). ``tokenizer`` is passed to ``annotate`` for ``length``.
    """
    from .concepts import annotate

    concepts = [concepts] if isinstance(concepts, str) else None if concepts is None else list(concepts)
    annotate([], concepts)  # unknown concept names fail now, not at scoring time

    def score(rollouts: pd.DataFrame) -> pd.DataFrame:
        counts = annotate(rollouts["response"].tolist(), concepts, tokenizer=tokenizer)
        out = counts.add_prefix("annotator:")
        if present:
            flags = (counts.drop(columns=["length"], errors="ignore") > 0).astype("int64")
            out = pd.concat([out, flags.add_prefix("annotator_present:")], axis=1)
        return out

    return _named(score, "annotator_scorer")


def _check_lens(model, fingerprint: str, name: str) -> None:
    if weights_fingerprint(model) != fingerprint:
        raise RuntimeError(
            f"{name}: the lens model's weights changed since the scorer was built (was the policy trained "
            "in place?). Scorers must read with the pre-DPO model: build them on a separate instance "
            "(a second load_model(), or copy.deepcopy(model) before training)."
        )


def _response_activations(model, rollouts: pd.DataFrame, hooks: Sequence[str], *, batch_tokens: int,
                          progress: bool, desc: str):
    """Yield ``(row position, {hook: Tensor[n_response_tokens, d_model]})`` for every rollout.

    Each (prompt, response) is re-tokenised with ``format_pair``, as the preference
    pairs were, and forwarded once (up to the deepest hook's layer).
    """
    seqs, masks = [], []
    for pos, (pid, sample, prompt, response) in enumerate(
            zip(rollouts["prompt_id"], rollouts["sample"], rollouts["prompt"], rollouts["response"])):
        try:
            enc = format_pair(model.tokenizer, [dict(m) for m in prompt], response)
        except ValueError as err:
            raise ValueError(f"rollout (prompt {pid!r}, sample {sample}) field 'response': {err}") from err
        seqs.append(enc["input_ids"])
        masks.append(torch.tensor(enc["response_mask"], dtype=torch.bool))
    bar = tqdm(total=len(seqs), desc=desc, disable=not progress)
    for i, acts in _forward_sequences(model, seqs, list(hooks), batch_tokens, "right"):
        yield i, {h: a[masks[i].to(a.device)] for h, a in acts.items()}
        bar.update(1)
    bar.close()


def direction_scorer(model, directions, *, pooling: Literal["mean", "max"] = "mean",
                     batch_tokens: int = 4096, progress: bool = True) -> Scorer:
    """Projection of the response tokens on concept directions, read by ``model`` (the pre-DPO lens).

    Args:
        model: the ``TransformerBridge`` that reads the rollouts: the pre-DPO model,
            a separate instance from a policy trained in place (see the module docstring).
        directions: a ``probes.Direction``, a list of them, or a mapping name -> Direction;
            each needs its ``hook``.
        pooling: ``"mean"`` or ``"max"`` of the per-token projections
            ``h_t · unit(vector)`` over the response tokens.

    Returns:
        a scorer giving ``direction:<name>`` per rollout; NaN for an empty response.
    """
    if pooling not in ("mean", "max"):
        raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
    if isinstance(directions, Mapping):
        items = list(directions.items())
    else:
        directions = [directions] if hasattr(directions, "vector") else list(directions)
        items = [(d.name, d) for d in directions]
    if not items:
        raise ValueError("no directions given")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"direction names must be unique, got {names}")
    for name, d in items:
        if getattr(d, "hook", None) is None:
            raise ValueError(f"direction {name!r} field 'hook': None; set the hook it was read at")
    hooks = sorted({d.hook for _, d in items})
    units = {name: (d.hook, (d.vector.detach().float() / d.vector.float().norm())) for name, d in items}
    fingerprint = weights_fingerprint(model)

    def score(rollouts: pd.DataFrame) -> pd.DataFrame:
        _check_lens(model, fingerprint, "direction_scorer")
        out = np.full((len(rollouts), len(items)), np.nan)
        for i, acts in _response_activations(model, rollouts, hooks, batch_tokens=batch_tokens,
                                             progress=progress, desc="direction scores"):
            for j, (name, (hook, u)) in enumerate(units.items()):
                a = acts[hook]
                if len(a):
                    p = a.float() @ u.to(a.device)
                    out[i, j] = float(p.mean() if pooling == "mean" else p.max())
        return pd.DataFrame(out, columns=[f"direction:{n}" for n in names])

    return _named(score, "direction_scorer")


def sae_scorer(model, sae, clusters: pd.DataFrame, *, stat: Literal["freq", "max", "active"] = "freq",
               tau: float = 0.01, hook: str | None = None, batch_tokens: int = 4096,
               progress: bool = True) -> Scorer:
    """SAE concept-cluster activity of each response, read by ``model`` + ``sae`` (the pre-DPO lens).

    Re-encodes each response's tokens at the SAE's hook and, per cluster, sums
    over member features their firing frequency on the response span (share of
    response tokens where the latent is > 0; ``stat="freq"``) or their max
    activation (``stat="max"``): the same quantity ``anatomy.features.cluster_scores`` gives
    for one span of a pair, so predicted and observed shifts are on one scale.
    ``stat="active"`` is the share of member features whose firing frequency
    exceeds ``tau``: the per-response quantity whose chosen-minus-rejected mean is
    the paper's signed disparity u (``predict.predict_shift_from_features``).

    Args:
        model: the ``TransformerBridge`` that reads the rollouts: the pre-DPO model,
            a separate instance from a policy trained in place (see the module docstring).
        sae: a SAELens SAE (``load_sae``).
        clusters: ``anatomy.features.cluster_features`` output (``feature``, ``cluster``; -1 = none).
        hook: default ``sae.cfg.metadata.hook_name``.

    Returns:
        a scorer giving ``sae:<cluster>`` per rollout (clusters ``0 .. max``);
        0 for an empty response.
    """
    from .saes import sae_hook

    if stat not in ("freq", "max", "active"):
        raise ValueError(f"stat must be 'freq', 'max' or 'active', got {stat!r}")
    for col in ("feature", "cluster"):
        if col not in clusters.columns:
            raise ValueError(f"clusters lacks column {col!r}; pass anatomy.features.cluster_features output")
    hook = hook or sae_hook(sae)
    member = clusters[clusters["cluster"] >= 0]
    if member.empty:
        raise ValueError("clusters has no feature in a cluster (all cluster ids are -1)")
    n_clusters = int(member["cluster"].max()) + 1
    d_sae = sae.cfg.d_sae
    if int(member["feature"].max()) >= d_sae:
        raise ValueError(f"clusters names feature {int(member['feature'].max())} but the SAE has d_sae={d_sae}")
    param = next(sae.parameters())
    M = torch.zeros(d_sae, n_clusters, dtype=torch.float32, device=param.device)
    M[torch.tensor(member["feature"].to_numpy()), torch.tensor(member["cluster"].to_numpy())] = 1.0
    fingerprint = weights_fingerprint(model)

    @torch.no_grad()
    def score(rollouts: pd.DataFrame) -> pd.DataFrame:
        _check_lens(model, fingerprint, "sae_scorer")
        out = np.zeros((len(rollouts), n_clusters))
        for i, acts in _response_activations(model, rollouts, [hook], batch_tokens=batch_tokens,
                                             progress=progress, desc="SAE scores"):
            x = acts[hook]
            if not len(x):
                continue
            z = sae.encode(x.to(device=param.device, dtype=param.dtype)).float()
            if stat == "max":
                per_feature = z.max(0).values.clamp(min=0)
            else:
                per_feature = (z > 0).float().mean(0)
                if stat == "active":
                    per_feature = (per_feature > tau).float()
            out[i] = (per_feature @ M).cpu().numpy()
        if stat == "active":
            out /= M.sum(0).clamp(min=1).cpu().numpy()
        return pd.DataFrame(out, columns=[f"sae:{c}" for c in range(n_clusters)])

    return _named(score, "sae_scorer")


# ----------------------------------------------------------------------------- health


def _tokens(texts, tokenizer) -> list[list]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, not a str; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    if (bad := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")
    if tokenizer is None:
        return [t.split() for t in texts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def distinct_n(texts: Iterable[str], n: int = 2, *, tokenizer=None) -> float:
    """Corpus-level distinct-n: unique n-grams / total n-grams over all responses.

    Tokens are whitespace-separated words (``str.split()``, case and punctuation
    kept) unless ``tokenizer`` is given (then its token ids). n-grams never cross
    from one response to the next; a response shorter than ``n`` tokens adds none.
    1.0 = no n-gram is ever repeated; a collapsed policy that says the same thing
    to every prompt tends to 0. NaN if no response has ``n`` tokens.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total, unique = 0, set()
    for toks in _tokens(texts, tokenizer):
        grams = [tuple(toks[i: i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else float("nan")


def _has_loop(toks: list, min_repeats: int, max_period: int, wordlike: list[bool]) -> bool:
    """True if some block of ``p <= max_period`` tokens, containing a word-like token,
    occurs ``min_repeats`` times back to back."""
    n = len(toks)
    for p in range(1, max_period + 1):
        need = (min_repeats - 1) * p  # consecutive positions with toks[k] == toks[k + p]
        if need + p > n:
            break
        run = 0
        for k in range(n - p):
            run = run + 1 if toks[k] == toks[k + p] else 0
            if run >= need:
                start = k - need + 1
                if any(wordlike[start: start + p]):
                    return True
    return False


def repetition_rate(texts: Iterable[str], *, min_repeats: int = 3, max_period: int = 16,
                    tokenizer=None) -> float:
    """Share of responses that contain a repetition loop.

    A response loops when some block of ``p`` consecutive tokens
    (``1 <= p <= max_period``) appears ``min_repeats`` or more times back to back
    (``t[i : i + p] == t[i + p : i + 2p] == ...``), and the block holds at least
    one word-like token (one with a letter or digit), so markdown table rows
    (``| --- | --- | --- |``) and ``. . .`` are not loops. Tokens as in
    ``distinct_n``: whitespace words by default (``"no no no"`` is a loop of
    period 1, ``"I agree. I agree. I agree."`` of period 2), else the tokenizer's
    tokens (then ``"!!!!"``-style runs inside one word can be caught too).
    """
    if min_repeats < 2 or max_period < 1:
        raise ValueError(f"need min_repeats >= 2 and max_period >= 1 (got {min_repeats}, {max_period})")
    flags = []
    for toks in _tokens(texts, tokenizer):
        if tokenizer is None:
            wordlike = [any(c.isalnum() for c in t) for t in toks]
        else:
            wordlike = [any(c.isalnum() for c in tokenizer.decode([t])) for t in toks]
        flags.append(_has_loop(toks, min_repeats, max_period, wordlike))
    return float(np.mean(flags))


def perplexity(model, rollouts: pd.DataFrame, *, batch_size: int = 16, per_rollout: bool = False,
               progress: bool = False) -> float | pd.DataFrame:
    """Perplexity of the rollouts' responses under ``model`` (read it with the pre-DPO model).

    ``exp(Σ NLL / Σ tokens)`` over every rollout's response and end-of-turn suffix given
    its prompt (``logprobs.sequence_logprobs``), i.e. the token-weighted corpus
    perplexity. Coherent text from the same family as the model's own stays near its
    own rollouts' value; degenerate or garbled output rises.

    Args:
        model: the scoring model (``TransformerBridge`` or a Hugging Face model with ``model.tokenizer``).
        rollouts: a ``rollouts`` DataFrame (``prompt``, ``response``).
        per_rollout: return the per-rollout DataFrame of ``sequence_logprobs`` (``logp``,
            ``n_tokens``, ``nll_per_token``, with the rollouts' index) instead.
    """
    from .logprobs import sequence_logprobs

    missing = [c for c in ("prompt", "response") if c not in rollouts.columns]
    if missing:
        raise ValueError(f"rollouts lacks column(s) {missing}; columns: {list(rollouts.columns)}")
    if len(rollouts) == 0:
        raise ValueError("rollouts is empty")
    df = sequence_logprobs(model, [[dict(m) for m in p] for p in rollouts["prompt"]], list(rollouts["response"]),
                           batch_size=batch_size, progress=progress).set_axis(rollouts.index)
    if per_rollout:
        return df
    return float(np.exp(-df["logp"].sum() / df["n_tokens"].sum()))
