"""Stage 2b: directions and probes, a second lens beside SAEs.

Takes activations (``Tensor[n, d]`` pooled by ``cache_pairs``, or per-token spans
from ``stream_pair_activations``) or a model plus prompts, and returns concept
directions: unit vectors in the residual stream with the AUROC they reach on a
held-out split. Several sources, each returning a ``Direction``:

- ``direction_from_labels``: pooled activations split by an annotator's label
  (e.g. ``concepts.annotate`` flags), by difference of means or a linear probe;
- ``contrastive_prompt_direction``: persona-vector style, from responses generated
  under a trait-eliciting system prompt and under its opposite, scored without
  the system prompt;
- ``refusal_direction``: harmful minus harmless prompts at the last prompt token;
- ``annotator_directions``: the same for several annotator concepts at once, as the
  ``(hook, vector)`` pairs ``interventions.compile_plan`` takes, with each concept's mean shift;
- ``cluster_directions`` / ``decoder_directions``: one per SAE concept cluster, labelled by
  the cluster's own activity, or the sum of its features' decoder vectors (no labels at all).

``project`` / ``project_spans`` turn a direction into per-token or per-span scores
(a DataFrame per pair, streamed so memory does not grow with the data);
``fit_probe`` wraps scikit-learn's ``LogisticRegressionCV`` into a ``Probe``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .cache import _forward_sequences, stream_pair_activations
from .models import format_pair, format_prompt, generation_model

Reduce = Literal["max", "mean"] | None


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe. ``X @ direction + bias`` has the sign of ``score(X)``.

    ``direction`` is unit-norm in the original activation space (the standardising
    step folded in); ``bias`` is the decision threshold in the same units as
    ``X @ direction``; ``cv_auroc`` is the mean AUROC of the whole pipeline
    (scaler + ``LogisticRegressionCV``) over outer cross-validation folds.
    """

    direction: Float[Tensor, "d"] = field(repr=False)
    bias: float
    cv_auroc: float
    estimator: Any = field(repr=False)

    def score(self, X: Float[Tensor, "n d"] | np.ndarray) -> np.ndarray:
        """The fitted pipeline's decision function, ``ndarray[n]``."""
        return self.estimator.decision_function(_np(X))


@dataclass(frozen=True)
class Direction:
    """A unit concept direction at ``hook`` with its AUROC on train and held-out splits.

    ``source`` is ``"labels"``, ``"contrastive_prompts"`` or ``"refusal"``;
    ``n_train`` / ``n_test`` count examples of both classes.
    """

    name: str
    hook: str | None
    vector: Float[Tensor, "d"] = field(repr=False)
    source: str
    train_auroc: float
    heldout_auroc: float
    n_train: int
    n_test: int


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=float)


def _unit(v: Tensor) -> Tensor:
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction has zero (or non-finite) norm")
    return v / norm


def diff_of_means(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "m d"], *, normalize: bool = True
) -> Float[Tensor, "d"]:
    """``mean(pos) - mean(neg)``, scaled to unit norm when ``normalize``."""
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"diff_of_means needs both groups non-empty (got {len(pos)} and {len(neg)})")
    v = pos.float().mean(0) - neg.float().mean(0)
    return _unit(v) if normalize else v


def fit_probe(
    X: Float[Tensor, "n d"] | np.ndarray, y: Sequence[int] | np.ndarray | Tensor, *,
    cv: int = 5, Cs: int | Sequence[float] = 10, seed: int = 0,
) -> Probe:
    """Standardise then fit ``LogisticRegressionCV`` (AUROC-scored, stratified folds).

    ``cv`` is capped by the smaller class's size. ``cv_auroc`` is nested: the
    whole pipeline, including its choice of C, is refitted on each outer fold.

    Raises:
        ValueError: ``X`` and ``y`` differ in length, or ``y`` has one class.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _np(X), _np(y).astype(int).ravel()
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) != 2:
        raise ValueError(f"y needs exactly two classes, got {classes.tolist()}")
    k = min(cv, int(counts.min()))
    if k < 2:
        raise ValueError(f"each class needs at least 2 examples for cross-validation (counts {counts.tolist()})")
    folds = StratifiedKFold(k, shuffle=True, random_state=seed)
    Cs = Cs if isinstance(Cs, int) else list(Cs)

    new_api = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters  # sklearn >= 1.8
    extra = {"l1_ratios": (0.0,), "use_legacy_attributes": False} if new_api else {}

    def make():
        return make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=Cs, cv=folds, scoring="roc_auc", max_iter=2000, **extra))

    cv_auroc = float(cross_val_score(make(), X, y, cv=folds, scoring="roc_auc").mean())
    est = make().fit(X, y)
    scaler, lr = est[0], est[-1]
    w = lr.coef_[0] / scaler.scale_
    b = float(lr.intercept_[0] - w @ scaler.mean_)
    norm = float(np.linalg.norm(w))
    direction = torch.tensor(w / norm if norm > 0 else w, dtype=torch.float32)
    return Probe(direction=direction, bias=b / norm if norm > 0 else b, cv_auroc=cv_auroc, estimator=est)


def project(
    acts: Float[Tensor, "tok d"] | Float[Tensor, "n d"] | Sequence[Float[Tensor, "tok d"]],
    direction: Float[Tensor, "d"], *, reduce: Reduce = None,
) -> Tensor | list[Tensor]:
    """Projection ``acts @ unit(direction)``: one value per row, or reduced over the rows.

    A tensor gives ``Tensor[n]`` (``reduce=None``) or a 0-d tensor (``"max"`` /
    ``"mean"``; NaN for zero rows). A list of per-token span tensors gives a list
    of ``Tensor[tok]`` (``reduce=None``) or ``Tensor[n_spans]``, one value per span.
    """
    if reduce not in (None, "max", "mean"):
        raise ValueError(f"reduce must be None, 'max' or 'mean', got {reduce!r}")
    if not isinstance(acts, Tensor):
        out = [project(a, direction, reduce=reduce) for a in acts]
        return out if reduce is None else torch.stack(out) if out else torch.empty(0)
    u = _unit(direction.to(device=acts.device, dtype=acts.dtype))
    p = acts @ u
    if reduce is None:
        return p
    if p.numel() == 0:
        return torch.tensor(float("nan"), dtype=p.dtype)
    return p.max() if reduce == "max" else p.mean()


def project_spans(
    model, pairs: Sequence[dict], hook: str, direction: Float[Tensor, "d"], *,
    reduce: Literal["max", "mean"] = "mean", spans: Sequence[str] = ("chosen", "rejected"),
    progress: bool = True, **stream_kwargs,
) -> pd.DataFrame:
    """Project each pair's per-token activations on ``direction``, reduced per span.

    Streams pairs through ``stream_pair_activations`` (extra keyword arguments go
    there), so memory is flat in the number of pairs. Returns a DataFrame indexed
    by pair id with one column per span, plus ``gap`` = chosen − rejected when
    both are among ``spans``.
    """
    rows, ids = [], []
    for pid, acts in stream_pair_activations(model, pairs, hook, progress=progress, **stream_kwargs):
        ids.append(pid)
        rows.append({s: float(project(acts[s], direction, reduce=reduce)) for s in spans})
    df = pd.DataFrame(rows, index=pd.Index(ids, name="id"), columns=list(spans))
    if "chosen" in spans and "rejected" in spans:
        df["gap"] = df["chosen"] - df["rejected"]
    return df


def auroc(scores, labels) -> float | np.ndarray:
    """AUROC of each score column for each binary label column (Mann–Whitney U; ties count half).

    scores: ``[n]`` or ``[n, m]``; labels: ``[n]`` or ``[n, L]`` (0/1 or bool; a DataFrame's
    columns are label columns). The ranks are taken once and shared by every label, so a
    matrix of clusters x concepts costs one sort. Equals ``sklearn.metrics.roc_auc_score``
    column by column. Returns a float (1-D both), ``[m]`` (one label) or ``[m, L]``; NaN where
    a label column has no positive or no negative.
    """
    from scipy.stats import rankdata

    s = _np(scores).astype(np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    ranks = rankdata(s.reshape(len(s), -1), axis=0)
    ys = y.reshape(len(y), -1)
    out = np.full((ranks.shape[1], ys.shape[1]), np.nan)
    for j in range(ys.shape[1]):
        pos = ys[:, j]
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            out[:, j] = (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    if s.ndim == 1 and y.ndim == 1:
        return float(out[0, 0])
    return out[:, 0] if y.ndim == 1 else (out[0] if s.ndim == 1 else out)


def heldout_auroc(scores_pos, scores_neg) -> float:
    """AUROC of scores separating positives from negatives (`auroc` of the two groups)."""
    pos, neg = _np(scores_pos).ravel(), _np(scores_neg).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both groups non-empty (got {len(pos)} and {len(neg)})")
    return auroc(np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))])


def evaluate_direction(
    direction: Float[Tensor, "d"], pos_test: Float[Tensor, "n d"], neg_test: Float[Tensor, "m d"]
) -> float:
    """AUROC of the projections of ``pos_test`` vs ``neg_test`` on ``direction``."""
    return heldout_auroc(project(pos_test, direction), project(neg_test, direction))


def _split(n: int, test_frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """Random (train, test) index split of ``range(n)``, both non-empty."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    if n < 2:
        raise ValueError(f"need at least 2 examples per group to split, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * test_frac)), n - 1)
    return perm[n_test:], perm[:n_test]


def _fit_and_score(name, hook, source, pos, neg, splits, method="diff_of_means", seed=0) -> Direction:
    """Fit on the train rows of ``splits = (train_pos, test_pos, train_neg, test_neg)``, score both."""
    tr_p, te_p, tr_n, te_n = splits
    if method == "diff_of_means":
        vector = diff_of_means(pos[tr_p], neg[tr_n])
    elif method == "probe":
        X = torch.cat([pos[tr_p], neg[tr_n]])
        y = np.r_[np.ones(len(tr_p)), np.zeros(len(tr_n))]
        vector = fit_probe(X, y, seed=seed).direction
    else:
        raise ValueError(f"method must be 'diff_of_means' or 'probe', got {method!r}")
    return Direction(
        name=name, hook=hook, vector=vector, source=source,
        train_auroc=evaluate_direction(vector, pos[tr_p], neg[tr_n]),
        heldout_auroc=evaluate_direction(vector, pos[te_p], neg[te_n]),
        n_train=len(tr_p) + len(tr_n), n_test=len(te_p) + len(te_n),
    )


def direction_from_labels(
    acts_pos: Float[Tensor, "n d"], acts_neg: Float[Tensor, "m d"], *, name: str = "labels",
    hook: str | None = None, test_frac: float = 0.3, seed: int = 0,
    method: Literal["diff_of_means", "probe"] = "diff_of_means",
) -> Direction:
    """A direction from labelled activations (e.g. pooled responses a concept flags vs not).

    Each group is split at random (``seed``) into train and test; the vector is
    fitted on train by ``diff_of_means`` or ``fit_probe``; ``train_auroc`` and
    ``heldout_auroc`` are the AUROCs of projections on each split.
    """
    splits = (*_split(len(acts_pos), test_frac, seed), *_split(len(acts_neg), test_frac, seed + 1))
    return _fit_and_score(name, hook, "labels", acts_pos.float(), acts_neg.float(), splits, method, seed)


def annotator_directions(
    model, pairs: Sequence[dict], hook: str, concepts: Sequence[str], *, batch_tokens: int = 4096,
) -> tuple[dict[str, tuple[str, Tensor]], dict[str, float]]:
    """Per concept, the unit difference of means at ``hook`` of the pairs' responses its annotator
    flags minus the rest (chosen and rejected, mean-pooled response tokens read by ``model``).

    Returns ``({concept: (hook, unit vector)}, {concept: mean shift})``: the directions as
    ``interventions.compile_plan`` and ``evals.direction_scorer`` take them, and each one's length
    before normalising (the concept's own mean shift, the unit of steering strengths). A concept
    no response shows, or every response shows, has no contrast and is left out of both.
    """
    from .cache import cache_pairs
    from .concepts import annotate

    concepts = list(concepts)
    texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    flags = annotate(texts, concepts) > 0
    acts = cache_pairs(model, pairs, hook, pooling=("mean",), batch_tokens=batch_tokens, progress=False)
    x = torch.cat([acts.get(hook, "chosen", "mean"), acts.get(hook, "rejected", "mean")])
    out, shifts = {}, {}
    for c in concepts:
        lab = torch.tensor(flags[c].to_numpy(bool))
        if 0 < int(lab.sum()) < len(lab):
            raw = diff_of_means(x[lab], x[~lab], normalize=False)
            out[c], shifts[c] = (hook, raw / raw.norm()), float(raw.norm())
    return out, shifts


def cluster_directions(
    scores_chosen: pd.DataFrame, scores_rejected: pd.DataFrame,
    acts_chosen: Float[Tensor, "pair d"], acts_rejected: Float[Tensor, "pair d"], *,
    hook: str, prefix: str = "cluster:", min_group: int = 6, test_frac: float = 0.3, seed: int = 0,
) -> dict[str, Direction]:
    """Per concept cluster, a direction labelled by the cluster's own activity: no human labels.

    The responses of the pairs (chosen and rejected, pooled as ``cache_pairs`` pools them)
    whose cluster score (``features.cluster_scores(..., span=...)``, one column per cluster,
    rows aligned with the activations) exceeds that cluster's median over all responses are
    the positives, the rest the negatives; ``direction_from_labels`` (difference of means,
    held-out AUROC) turns them into a direction. For a sparse cluster the median is 0, so the
    positives are the responses where it fires. A cluster with fewer than ``min_group``
    positives or negatives is left out.

    Returns:
        ``{f"{prefix}{cluster}": Direction}`` in column order.
    """
    if list(scores_chosen.columns) != list(scores_rejected.columns):
        raise ValueError("scores_chosen and scores_rejected must have the same cluster columns")
    n = len(scores_chosen)
    if not (len(scores_rejected) == len(acts_chosen) == len(acts_rejected) == n):
        raise ValueError(f"rows differ: scores {n}/{len(scores_rejected)}, "
                         f"activations {len(acts_chosen)}/{len(acts_rejected)}")
    x = torch.cat([acts_chosen, acts_rejected]).float()
    out = {}
    for k in scores_chosen.columns:
        s = np.r_[scores_chosen[k].to_numpy(float), scores_rejected[k].to_numpy(float)]
        pos = s > np.median(s)
        if pos.sum() < min_group or (~pos).sum() < min_group:
            continue
        mask = torch.as_tensor(pos)
        out[f"{prefix}{k}"] = direction_from_labels(x[mask], x[~mask], name=f"{prefix}{k}", hook=hook,
                                                    test_frac=test_frac, seed=seed)
    return out


def decoder_directions(sae, clusters: pd.DataFrame, *, hook: str, prefix: str = "decoder:") -> dict[str, Direction]:
    """Per concept cluster, the unit sum of its member features' unit decoder vectors.

    ``clusters`` is a ``feature -> cluster`` table (``features.cluster_features``;
    ``cluster`` -1 = none). The AUROC fields are NaN: nothing was held out.
    """
    W = sae.W_dec.detach().float()
    W = W / W.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    member = clusters[clusters["cluster"] >= 0]
    out = {}
    for k, rows in member.groupby("cluster"):
        v = W[torch.as_tensor(rows["feature"].to_numpy(np.int64))].sum(0)
        out[f"{prefix}{int(k)}"] = Direction(name=f"{prefix}{int(k)}", hook=hook, vector=_unit(v), source="sae_decoder",
                                             train_auroc=float("nan"), heldout_auroc=float("nan"),
                                             n_train=0, n_test=0)
    return out


def _prompt_list(prompts) -> list[list[dict]]:
    """Strings, message lists, or a Dataset / rows with a ``prompt`` field → message lists."""
    prompts = prompts["prompt"] if hasattr(prompts, "column_names") else prompts
    prompts = [p["prompt"] if isinstance(p, dict) else p for p in prompts]
    return [[{"role": "user", "content": p}] if isinstance(p, str) else [dict(m) for m in p] for p in prompts]


def last_token_activations(model, prompts, hook: str, *, batch_tokens: int = 4096) -> Float[Tensor, "n d"]:
    """Activations at ``hook`` on the last token of ``format_prompt`` (the assistant header)."""
    seqs = [format_prompt(model.tokenizer, m) for m in _prompt_list(prompts)]
    out: list[Tensor | None] = [None] * len(seqs)
    for i, acts in _forward_sequences(model, seqs, [hook], batch_tokens, "right"):
        out[i] = acts[hook][-1].float().cpu()
    return torch.stack(out)


def refusal_direction(
    model, harmful_prompts, harmless_prompts, hook: str, *, test_frac: float = 0.3, seed: int = 0,
    name: str = "refusal",
) -> Direction:
    """Harmful minus harmless mean activation at the last prompt token, with held-out AUROC.

    Prompts are strings, message lists, or a Dataset with a ``prompt`` column
    (``load_prompts_csv``).
    """
    pos = last_token_activations(model, harmful_prompts, hook)
    neg = last_token_activations(model, harmless_prompts, hook)
    splits = (*_split(len(pos), test_frac, seed), *_split(len(neg), test_frac, seed + 1))
    return _fit_and_score(name, hook, "refusal", pos, neg, splits)


@torch.no_grad()
def _generate(model, message_lists, *, max_new_tokens, batch_size, do_sample, temperature, seed) -> list[str]:
    tok, hf = model.tokenizer, generation_model(model)  # the bridge's components ignore the KV cache
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(hf.parameters()).device
    texts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for lo in tqdm(range(0, len(message_lists), batch_size), desc="generate", leave=False):
            seqs = [format_prompt(tok, m) for m in message_lists[lo : lo + batch_size]]
            width = max(map(len, seqs))
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
            kw = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              pad_token_id=pad, top_p=None, top_k=None, **kw)
            texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def contrastive_prompt_direction(
    model, prompts, trait_system_prompt: str, opposite_system_prompt: str, hook: str, *,
    name: str = "trait", max_new_tokens: int = 48, seed: int = 0, test_frac: float = 0.3,
    batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
) -> tuple[Direction, pd.DataFrame]:
    """A persona-vector style trait direction from contrastive system prompts.

    Each prompt is answered twice by ``models.generation_model(model).generate`` (greedy,
    or sampling seeded by ``seed`` when ``do_sample``), under the trait system
    prompt and under the opposite one, in shared left-padded batches of
    ``batch_size``. Each response is then re-read after the user turn alone (system
    messages in ``prompts`` are dropped; the chat template may add its default
    one) and its mean response-token activation at ``hook`` is taken. Prompts are
    split into train / test (``seed``); the vector is trait minus opposite by
    difference of means on train, the AUROCs compare trait vs opposite responses.

    Returns:
        ``(direction, texts)``: ``texts`` has one row per prompt and condition with
        ``prompt_index``, ``prompt``, ``condition`` ("trait" / "opposite"),
        ``response``, ``n_tokens``, ``split`` ("train" / "test"), ``skipped`` (why
        a response was left out, e.g. an empty generation; else None) and
        ``projection`` (of its mean activation on the direction; NaN if skipped).
    """
    users = [[m for m in msgs if m.get("role") != "system"] for msgs in _prompt_list(prompts)]
    tr, te = _split(len(users), test_frac, seed)
    split = {int(i): "train" for i in tr} | {int(i): "test" for i in te}
    conditions = (("trait", trait_system_prompt), ("opposite", opposite_system_prompt))
    msgs = [[{"role": "system", "content": system}] + u for _, system in conditions for u in users]
    texts = _generate(model, msgs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      do_sample=do_sample, temperature=temperature, seed=seed)
    rows, seqs = [], []
    for c, (cond, _) in enumerate(conditions):
        for i, u in enumerate(users):
            text = texts[c * len(users) + i]
            row = {"prompt_index": i, "prompt": u[-1]["content"], "condition": cond, "response": text,
                   "n_tokens": 0, "split": split[i], "skipped": None}
            try:
                if not text.strip():
                    raise ValueError("empty generation")
                enc = format_pair(model.tokenizer, u, text)
                row["n_tokens"] = sum(enc["response_mask"])
                seqs.append((len(rows), enc))
            except ValueError as err:
                row["skipped"] = str(err)
            rows.append(row)
    X = torch.full((len(rows), model.cfg.d_model), float("nan"))  # NaN rows: skipped responses
    for j, a in _forward_sequences(model, [enc["input_ids"] for _, enc in seqs], [hook], 4096, "right"):
        r, enc = seqs[j]
        X[r] = a[hook][torch.tensor(enc["response_mask"], device=a[hook].device)].float().mean(0).cpu()
    df = pd.DataFrame(rows)
    ok = df.skipped.isna()
    splits = tuple(torch.tensor(df.index[ok & (df.condition == c) & (df.split == p)].tolist(), dtype=torch.long)
                   for c in ("trait", "opposite") for p in ("train", "test"))
    direction = _fit_and_score(name, hook, "contrastive_prompts", X, X, splits)
    df["projection"] = project(X, direction.vector).tolist()
    return direction, df
