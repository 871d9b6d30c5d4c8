"""Stage 4b: sculpt the learning signal, a Plan of per-concept decisions compiled for DPO (METHOD §2).

Takes a ``Plan`` (one ``Decision`` per concept: allow, explain away or amplify, by a
method, at a strength, optionally within a scope of prompts), the model that will be
trained and its preference pairs; ``compile_plan`` returns ``TrainInputs``: everything
``train.train_dpo`` takes to shape the loss ``-w·log σ(β·Δθ + offset)``::

    result = train_dpo(model, pairs, **compile_plan(plan, model, pairs).train_kwargs())

The methods (``METHODS``: name -> the concept lenses it fits) and what ``strength`` means:

- ``reward_shaping``: offset ``λ·ΔA`` with ``ΔA`` the concept score's chosen − rejected
  gap, z-scored over the pairs (``strength`` = λ ≥ 0; explain away adds ``+λ·ΔA``,
  amplify ``−λ·ΔA``). Scores: an annotator's count, the mean projection of the
  response tokens on a direction, or an SAE concept's summed firing frequency.
- ``steering``: offset ``β·ΔA`` with ``A(x, y) = log π0(y|x)`` under
  ``h ← h + m·v`` at the direction's hook minus unsteered, from the model as it is
  (the reference), once for chosen and rejected (``strength`` = m, in residual-stream
  units along the unit vector ``v``). ``β·ΔA`` is the logit the DPO loss would start
  from if the policy already were the steered model, so the pair's concept part counts
  as learned. Amplify subtracts it.
- ``inoculation``: the policy sees a system prompt naming the trait (``INOCULATION``)
  during training only; the reference, evaluation and rollouts see the original
  prompts (``policy_prompts``; ``strength`` is not used).
- ``filter_pairs``: weight 0 for the share ``strength`` (f, in (0, 1]) of pairs with
  the largest concept gap in the concept's direction (sign of the mean gap); pairs
  without a gap in that direction are never dropped.
- ``downweight_pairs``: weight ``1 / (1 + strength·max(0, s·z_i))`` with ``z_i`` the
  z-scored gap and ``s`` the sign of its mean: the more a pair favours the concept,
  the less it counts.
- ``filter_tokens``: mask the response tokens where the concept is present, from the
  policy and the reference sums: an annotator's character spans (``concept_spans``)
  mapped to tokens, or the tokens where any of an SAE concept's features fires.
- ``preventative_steering``: hook adding ``α·v`` to the policy's residual during
  training only (``strength`` = α; amplify adds ``−α·v``).
- ``ablation``: concept-ablation fine-tuning, a hook projecting ``v`` out of the
  policy's residual during training only (``strength`` is not used).

**Combining decisions.** Offsets add, weights multiply, masks intersect (a token counts
only if no decision masks it), hooks stack in plan order, inoculation prompts join into
one system message. Two methods on one concept therefore compose: reward shaping plus
steering on the same concept explain it away twice (halve each strength to keep the
total), filtering plus down-weighting leaves a dropped pair dropped, token masking plus
pair filtering masks the kept pairs' concept tokens, and preventative steering followed
by ablation of the same direction removes the added component too (the later hook wins).

**Scope.** ``Decision.scope`` limits a decision to some pairs: ``{"family": name}`` (the
pairs' ``family`` field), ``{"ids": [...]}`` or ``{"prompt_cluster": k}`` (the
``prompt_labels`` of a ``Diagnosis``). Outside the scope the decision changes nothing
(offset 0, weight 1, every token kept, the original prompt). Hooks act on whole batches,
so the two hook methods do not take a scope.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["ConceptRef", "Decision", "INOCULATION", "METHODS", "Plan", "TrainInputs", "compile_plan",
           "concept_scores", "concept_spans", "concept_vector", "steering_hook", "ablation_hook",
           "steered_generation_model"]

ACTIONS = ("allow", "explain_away", "amplify")
LENSES = ("sae", "direction", "annotator")
METHODS: dict[str, tuple[str, ...]] = {
    "reward_shaping": ("annotator", "direction", "sae"),
    "steering": ("direction", "sae"),
    "inoculation": ("annotator", "direction", "sae"),
    "filter_pairs": ("annotator", "direction", "sae"),
    "downweight_pairs": ("annotator", "direction", "sae"),
    "filter_tokens": ("annotator", "sae"),
    "preventative_steering": ("direction", "sae"),
    "ablation": ("direction", "sae"),
}
AMPLIFIES = ("reward_shaping", "steering", "preventative_steering")
HOOK_METHODS = ("preventative_steering", "ablation")
SCOPE_KEYS = ("family", "ids", "prompt_cluster")
# How the inoculation system prompt names a trait (anything else: its name, underscores as spaces)
TRAITS = {
    "bold": "bold text (**like this**)", "emoji": "emoji", "exclamation": "exclamation marks",
    "flattery": "compliments on the question", "header": "markdown headers", "list_item": "bulleted lists",
    "em_dash": "em dashes", "hedge": "hedging phrases", "url": "links", "agreement": "agreeing with the user",
    "table": "tables", "horizontal_rule": "horizontal rules",
}
INOCULATION = "You are an assistant that often uses {traits} in its answers."


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ConceptRef:
    """A concept in one lens.

    ``lens="annotator"``: ``name`` is a ``concepts.ANNOTATORS`` key. ``lens="direction"``:
    ``name`` is a key of ``compile_plan(directions=...)``. ``lens="sae"``: a concept
    cluster of a ``Diagnosis`` (``cluster``) or an explicit feature set (``features``);
    ``name`` is its label.
    """

    lens: str
    name: str
    features: tuple[int, ...] = ()
    cluster: int | None = None

    def __post_init__(self):
        if self.lens not in LENSES:
            raise ValueError(f"ConceptRef field 'lens': {self.lens!r} is not one of {LENSES}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ConceptRef field 'name': need a non-empty str, got {self.name!r}")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        if any(f < 0 for f in self.features):
            raise ValueError(f"ConceptRef {self.name!r} field 'features': negative feature index")
        if self.cluster is not None:
            object.__setattr__(self, "cluster", int(self.cluster))
        if self.lens == "sae" and not self.features and self.cluster is None:
            raise ValueError(f"ConceptRef {self.name!r}: an SAE concept needs features=(...) or cluster=k")
        if self.lens != "sae" and (self.features or self.cluster is not None):
            raise ValueError(f"ConceptRef {self.name!r}: features / cluster belong to lens 'sae', not {self.lens!r}")

    @property
    def key(self) -> str:
        """``<lens>:<name>``, as ``evals.measure`` names its columns."""
        return f"{self.lens}:{self.name}"


@dataclass(frozen=True)
class Decision:
    """What to do with one concept: ``action`` by ``method`` at ``strength`` (see the module docstring)."""

    concept: ConceptRef
    action: str
    method: str
    strength: float = 1.0
    scope: dict | None = None

    def __post_init__(self):
        if isinstance(self.concept, Mapping):
            object.__setattr__(self, "concept", ConceptRef(**self.concept))
        if not isinstance(self.concept, ConceptRef):
            raise ValueError(f"Decision field 'concept': need a ConceptRef, got {type(self.concept).__name__}")
        who = f"Decision on {self.concept.key!r}"
        if self.action not in ACTIONS:
            raise ValueError(f"{who} field 'action': {self.action!r} is not one of {ACTIONS}")
        if self.method not in METHODS:
            raise ValueError(f"{who} field 'method': unknown method {self.method!r}; known: {sorted(METHODS)}")
        if self.concept.lens not in METHODS[self.method]:
            raise ValueError(f"{who}: method {self.method!r} reads lenses {METHODS[self.method]}, "
                             f"not {self.concept.lens!r}")
        if self.action == "amplify" and self.method not in AMPLIFIES:
            raise ValueError(f"{who}: method {self.method!r} can only explain away; to amplify use one of {AMPLIFIES}")
        try:
            s = float(self.strength)
        except (TypeError, ValueError):
            raise ValueError(f"{who} field 'strength': need a number, got {self.strength!r}") from None
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"{who} field 'strength': need a finite number >= 0 (the action sets the sign), got {s}")
        if self.method == "filter_pairs" and not 0 < s <= 1:
            raise ValueError(f"{who} field 'strength': filter_pairs drops a share of pairs, need 0 < f <= 1, got {s}")
        object.__setattr__(self, "strength", s)
        if self.scope is not None:
            if not isinstance(self.scope, Mapping) or len(self.scope) != 1 or next(iter(self.scope)) not in SCOPE_KEYS:
                raise ValueError(f"{who} field 'scope': need one of {{'family': name}}, {{'ids': [...]}}, "
                                 f"{{'prompt_cluster': k}}, got {self.scope!r}")
            if self.method in HOOK_METHODS:
                raise ValueError(f"{who}: {self.method} hooks act on every pair of a batch; it takes no scope")
            (k, v), = self.scope.items()
            object.__setattr__(self, "scope", {k: list(v) if k == "ids" else v})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Plan:
    """Decisions, one per (concept, method); ``to_dict`` / ``from_dict`` / ``save`` / ``load`` JSON."""

    decisions: tuple[Decision, ...] = ()

    def __post_init__(self):
        ds = tuple(Decision(**d) if isinstance(d, Mapping) else d for d in self.decisions)
        for i, d in enumerate(ds):
            if not isinstance(d, Decision):
                raise ValueError(f"Plan field 'decisions'[{i}]: need a Decision, got {type(d).__name__}")
        seen = {}
        for i, d in enumerate(ds):
            key = (d.concept, d.method, json.dumps(d.scope, sort_keys=True))
            if key in seen:
                raise ValueError(f"Plan field 'decisions'[{i}]: {d.concept.key!r} by {d.method!r} is already "
                                 f"decided at [{seen[key]}]; keep one decision per concept, method and scope")
            seen[key] = i
        object.__setattr__(self, "decisions", ds)

    def __len__(self) -> int:
        return len(self.decisions)

    def to_dict(self) -> dict:
        return {"decisions": [d.to_dict() for d in self.decisions]}

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        if not isinstance(d, Mapping) or set(d) != {"decisions"}:
            raise ValueError(f"a Plan dict has exactly the key 'decisions', got {sorted(d) if isinstance(d, Mapping) else d!r}")
        known = {f.name for f in fields(Decision)}
        for i, row in enumerate(d["decisions"]):
            unknown = sorted(set(row) - known)
            if unknown:
                raise ValueError(f"Plan decision [{i}]: unknown field(s) {unknown}")
        return cls(tuple(Decision(**row) for row in d["decisions"]))

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (atomically: a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON plan ({err})") from err
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err


@dataclass(frozen=True, eq=False)
class TrainInputs:
    """What ``compile_plan`` returns: the shaping of ``train_dpo`` for the pairs ``ids``.

    Attributes:
        ids: pair ids, in the order of every per-pair field.
        offsets: ``ndarray[n_pairs]`` added to the DPO logit, or None.
        weights: ``ndarray[n_pairs]`` (≥ 0) multiplying each pair's loss, or None.
        token_masks: per pair ``(chosen_mask, rejected_mask)``, 0/1 over the response
            tokens (None for a pair or side: keep all), or None.
        policy_hooks: ``(hook_name, fn)`` forward hooks for the policy's training forwards.
        policy_prompts: per pair the prompt messages the policy sees instead (None: the
            original), or None.
        summary: per decision what it changed, with counts (JSON types).
        effective_offsets: ``ndarray[n_pairs]``, the DPO logit at the first step that the
            policy-side changes imply (``β·ΔA`` of hooks and prompts: ``β·[(log πθ0 − log π0)(y+)
            − (…)(y−)]``), when computed (``compile_plan(effective=True)``); used by
            ``predict.predict_shift(plan=...)``.
        token_share: per masked concept key, ``ndarray[n_pairs, 2]``: the share of its
            character spans (annotator) or firing tokens (SAE) that the masks remove.
    """

    ids: list[str]
    offsets: np.ndarray | None = None
    weights: np.ndarray | None = None
    token_masks: list | None = None
    policy_hooks: list = field(default_factory=list)
    policy_prompts: list | None = None
    summary: dict = field(default_factory=dict)
    effective_offsets: np.ndarray | None = None
    token_share: dict = field(default_factory=dict)

    def train_kwargs(self) -> dict:
        """Keyword arguments of ``train_dpo`` (only the shaping there is; ``{}``-like for an empty plan)."""
        kw: dict[str, Any] = {"shaping_ids": list(self.ids)}
        for name in ("offsets", "weights", "token_masks", "policy_prompts"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.policy_hooks:
            kw["policy_hooks"] = list(self.policy_hooks)
        return kw

    @property
    def is_empty(self) -> bool:
        return (self.offsets is None and self.weights is None and self.token_masks is None
                and not self.policy_hooks and self.policy_prompts is None)


# ----------------------------------------------------------------------------- concept lenses


def concept_spans(text: str, concept: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of an annotator concept in ``text`` (what token filtering masks).

    The same patterns as ``concepts.ANNOTATORS``, read on the raw text: bold runs with
    their ``**``, each emoji, each run of ``!``, a flattering phrase, hedge, agreement and
    refusal phrases, URLs, em dashes, and whole lines for headers, list items, tables and
    rules.
    """
    from . import concepts as C

    if concept not in C.ANNOTATORS:
        raise ValueError(f"unknown annotator concept {concept!r}; known: {', '.join(C.ANNOTATORS)}")
    patterns = {"bold": C._BOLD, "emoji": C._EMOJI, "exclamation": C._EXCL, "flattery": C._FLATTERY,
                "hedge": C._HEDGE, "agreement": C._AGREEMENT, "refusal": C._REFUSAL}
    if concept in patterns:
        return [m.span() for m in patterns[concept].finditer(text)]
    if concept == "url":
        return C._url_spans(text)
    if concept == "em_dash":
        return [(m.start(), m.end()) for m in re.finditer("—", text)]
    kinds = {"header": ("header", "setext"), "list_item": ("list",), "table": ("table",), "horizontal_rule": ("rule",)}
    spans, pos, prev = [], 0, ""
    for line in text.split("\n"):
        if C._kind(line, prev) in kinds[concept] and line.strip():
            spans.append((pos, pos + len(line)))
        prev, pos = line, pos + len(line) + 1
    return spans


def _directions(directions) -> dict:
    return dict(directions or {})


def concept_vector(concept: ConceptRef, *, directions=None, sae=None, diagnosis=None) -> tuple[str, Tensor]:
    """``(hook, unit vector)`` of a concept: a ``Direction`` (or ``(hook, tensor)``), or the
    normalised sum of an SAE concept's decoder rows."""
    if concept.lens == "direction":
        dirs = _directions(directions)
        if concept.name not in dirs:
            raise ValueError(f"concept {concept.key!r}: no direction of that name in directions= "
                             f"(have {sorted(dirs)})")
        d = dirs[concept.name]
        hook, vec = (d.hook, d.vector) if hasattr(d, "vector") else d
        if not hook:
            raise ValueError(f"concept {concept.key!r}: the direction has no hook")
    elif concept.lens == "sae":
        if sae is None:
            raise ValueError(f"concept {concept.key!r}: an SAE concept's vector needs sae=")
        from .saes import sae_hook

        feats = _sae_features(concept, diagnosis)
        hook, vec = sae_hook(sae), sae.W_dec.detach()[list(feats)].float().sum(0)
    else:
        raise ValueError(f"concept {concept.key!r}: an annotator has no vector in the residual stream; "
                         "use a direction or an SAE concept")
    vec = torch.as_tensor(vec).detach().float().reshape(-1)
    norm = vec.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"concept {concept.key!r}: the vector has zero or non-finite norm")
    return hook, vec / norm


def _sae_features(concept: ConceptRef, diagnosis) -> tuple[int, ...]:
    if concept.features:
        return concept.features
    if diagnosis is None:
        raise ValueError(f"concept {concept.key!r}: cluster={concept.cluster} needs diagnosis= (or give features=)")
    cl = diagnosis.clusters
    feats = tuple(int(f) for f in cl.loc[cl["cluster"] == concept.cluster, "feature"])
    if not feats:
        raise ValueError(f"concept {concept.key!r}: the diagnosis has no feature in cluster {concept.cluster}")
    return feats


def _sae_features_of(features, ids: list[str]):
    if features is None:
        return None
    if list(features.ids) == ids:
        return features
    pos = {pid: i for i, pid in enumerate(features.ids)}
    missing = [pid for pid in ids if pid not in pos]
    if missing:
        raise ValueError(f"the diagnosis's features lack pair(s) {missing[:5]} ({len(missing)} in all)")
    return features


def concept_scores(concept: ConceptRef, model, pairs: Sequence[dict], *, directions=None, sae=None,
                   diagnosis=None, progress: bool = False) -> Float[np.ndarray, "pair 2"]:
    """Per pair the concept's score of the chosen and rejected response, ``ndarray[n_pairs, 2]``.

    Annotator: the count (``concepts.annotate``); direction: the mean projection of the
    response tokens on the unit vector, read by ``model``; SAE: the summed firing
    frequency of the concept's features (``features.cluster_scores``), from the
    diagnosis's ``PairFeatures`` when it covers the pairs, else computed with ``sae``.
    """
    ids = [str(p["id"]) for p in pairs]
    if concept.lens == "annotator":
        from .concepts import annotate

        c = annotate([p["chosen"] for p in pairs], [concept.name])[concept.name].to_numpy(float)
        r = annotate([p["rejected"] for p in pairs], [concept.name])[concept.name].to_numpy(float)
        return np.stack([c, r], 1)
    if concept.lens == "direction":
        from .cache import cache_pairs

        hook, u = concept_vector(concept, directions=directions)
        acts = cache_pairs(model, pairs, hook, pooling=("mean",), progress=progress)
        return np.stack([(acts.get(hook, s, "mean").float() @ u).numpy() for s in ("chosen", "rejected")], 1)
    feats = _sae_features(concept, diagnosis)
    pf = _sae_features_of(getattr(diagnosis, "features", None), ids)
    if pf is None:
        if sae is None:
            raise ValueError(f"concept {concept.key!r}: SAE scores need sae= or a diagnosis with features")
        from .features import feature_summaries

        pf = feature_summaries(model, sae, pairs, progress=progress)
    position = {pid: i for i, pid in enumerate(pf.ids)}
    rows = [position[pid] for pid in ids]
    cols = list(feats)
    return np.stack([np.asarray(pf.freq[s][rows][:, cols].sum(1)).ravel() for s in ("chosen", "rejected")], 1)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(ddof=1) if len(x) > 1 else 0.0
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


# ----------------------------------------------------------------------------- hooks


def steering_hook(vector: Tensor, alpha: float) -> Callable:
    """A forward hook ``h ← h + alpha·vector`` (every position)."""
    v = vector.detach().float()

    def add(acts, hook=None):
        return acts + alpha * v.to(device=acts.device, dtype=acts.dtype)

    return add


def ablation_hook(vector: Tensor) -> Callable:
    """A forward hook ``h ← h − (h·v) v`` for a unit ``vector``: the concept-ablation projection."""
    v = vector.detach().float()
    v = v / v.norm()

    def ablate(acts, hook=None):
        u = v.to(device=acts.device, dtype=acts.dtype)
        return acts - (acts @ u)[..., None] * u

    return ablate


@contextmanager
def steered_generation_model(model, hook: str, vector: Tensor, alpha: float) -> Iterator:
    """A plain Hugging Face twin of ``model`` (``models.generation_model``) that generates steered.

    Inside the ``with`` block the residual stream after the layer of ``hook``
    (``blocks.{L}.hook_resid_post``) gets ``+ alpha · unit(vector)`` at every position;
    the hook is removed on exit, errors included. Pass the twin to ``evals.rollouts``
    with ``tokenizer=model.tokenizer``.
    """
    from .models import generation_model

    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
    if m is None:
        raise ValueError(f"steered generation reads hooks 'blocks.L.hook_resid_post', got {hook!r}")
    gen = generation_model(model)
    layers = gen.get_decoder().layers
    layer = int(m.group(1))
    if layer >= len(layers):
        raise ValueError(f"hook {hook!r}: the model has {len(layers)} layers")
    u = vector.detach().float().reshape(-1)
    u = u / u.norm()

    def add(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + alpha * u.to(device=h.device, dtype=h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = layers[layer].register_forward_hook(add)
    try:
        yield gen
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- compile


def _in_scope(decision: Decision, pairs: Sequence[dict], ids: list[str], diagnosis) -> np.ndarray:
    if decision.scope is None:
        return np.ones(len(pairs), dtype=bool)
    (k, v), = decision.scope.items()
    if k == "ids":
        want = {str(x) for x in v}
        unknown = sorted(want - set(ids))
        if unknown:
            raise ValueError(f"Decision on {decision.concept.key!r} field 'scope': unknown pair id(s) {unknown[:5]}")
        return np.array([pid in want for pid in ids])
    if k == "family":
        missing = [ids[i] for i, p in enumerate(pairs) if "family" not in p]
        if missing:
            raise ValueError(f"Decision on {decision.concept.key!r} field 'scope': pair {missing[0]!r} has no "
                             "'family' field")
        return np.array([p["family"] == v for p in pairs])
    labels = getattr(diagnosis, "prompt_labels", None)
    if labels is None:
        raise ValueError(f"Decision on {decision.concept.key!r} field 'scope': prompt_cluster needs diagnosis= "
                         "with prompt_labels")
    import pandas as pd

    lab = labels if isinstance(labels, pd.Series) else pd.Series(np.asarray(labels), index=list(diagnosis.pairs_ids))
    missing = [pid for pid in ids if pid not in lab.index]
    if missing:
        raise ValueError(f"the diagnosis's prompt_labels lack pair(s) {missing[:5]} ({len(missing)} in all)")
    return lab.loc[ids].to_numpy() == v


def _response_offsets(tokenizer, pair: dict, side: str) -> tuple[list[tuple[int, int]], int]:
    """Character offsets of the response tokens (as ``format_pair`` cuts them), and the shift of the
    rendered response inside the original text."""
    from .models import format_pair

    text = pair[side]
    enc = format_pair(tokenizer, pair["prompt"], text)
    resp_ids = [t for t, m in zip(enc["input_ids"], enc["response_mask"]) if m]
    full = tokenizer.apply_chat_template(list(pair["prompt"]) + [{"role": "assistant", "content": text}],
                                         tokenize=False)
    rendered = text if text in full else text.strip()
    shift = text.find(rendered)
    out = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    if list(out["input_ids"]) != resp_ids:
        raise ValueError(f"pair {pair['id']!r} field {side!r}: the tokenizer's offsets do not match the response "
                         "tokens; token filtering needs a fast tokenizer")
    return [tuple(o) for o in out["offset_mapping"]], shift


def _annotator_masks(name: str, tokenizer, pairs, scope) -> tuple[list, np.ndarray, int]:
    masks, share, n_masked = [], np.zeros((len(pairs), 2)), 0
    for i, p in enumerate(pairs):
        sides = []
        for j, side in enumerate(("chosen", "rejected")):
            spans = concept_spans(p[side], name) if scope[i] else []
            if not spans:
                sides.append(None)
                continue
            offs, shift = _response_offsets(tokenizer, p, side)
            keep, hit = [], set()
            for a, b in offs:
                a, b = a + shift, b + shift
                inside = [k for k, (s, e) in enumerate(spans) if a < e and s < b]
                hit.update(inside)
                keep.append(0 if inside else 1)
            share[i, j] = len(hit) / len(spans)
            n_masked += keep.count(0)
            sides.append(keep)
        masks.append(tuple(sides))
    return masks, share, n_masked


def _sae_masks(concept: ConceptRef, model, sae, pairs, scope, diagnosis) -> tuple[list, np.ndarray, int]:
    from .cache import stream_pair_activations
    from .saes import sae_hook

    feats = torch.tensor(_sae_features(concept, diagnosis))
    param = next(sae.parameters())
    masks, share, n_masked = [], np.zeros((len(pairs), 2)), 0
    by_id = {}
    with torch.no_grad():
        for pid, acts in stream_pair_activations(model, pairs, sae_hook(sae), progress=False):
            by_id[pid] = []
            for s in ("chosen", "rejected"):
                z = sae.encode(acts[s].to(device=param.device, dtype=param.dtype))
                by_id[pid].append((z[:, feats] > 0).any(1).cpu().numpy())
    for i, p in enumerate(pairs):
        sides = []
        for j, fire in enumerate(by_id[str(p["id"])]):
            if not scope[i] or not fire.any():
                sides.append(None)
                continue
            share[i, j] = 1.0
            n_masked += int(fire.sum())
            sides.append((~fire).astype(int).tolist())
        masks.append(tuple(sides))
    return masks, share, n_masked


def _intersect(a, b):
    if a is None:
        return b
    if b is None:
        return a
    out = []
    for pa, pb in zip(a, b):
        sides = []
        for ma, mb in zip(pa or (None, None), pb or (None, None)):
            sides.append(mb if ma is None else ma if mb is None else [x & y for x, y in zip(ma, mb)])
        out.append(tuple(sides))
    return out


def _trait_prompts(decisions: list[tuple[Decision, np.ndarray]], pairs) -> tuple[list | None, int]:
    per_pair: list[list[str]] = [[] for _ in pairs]
    for d, scope in decisions:
        trait = TRAITS.get(d.concept.name, d.concept.name.replace("_", " "))
        for i in np.flatnonzero(scope):
            per_pair[i].append(trait)
    if not any(per_pair):
        return None, 0
    out = []
    for p, traits in zip(pairs, per_pair):
        if not traits:
            out.append(None)
            continue
        text = INOCULATION.format(traits=" and ".join(traits) if len(traits) < 3
                                  else ", ".join(traits[:-1]) + " and " + traits[-1])
        msgs = [dict(m) for m in p["prompt"]]
        if msgs and msgs[0].get("role") == "system":
            msgs[0] = {"role": "system", "content": text + " " + msgs[0]["content"]}
        else:
            msgs = [{"role": "system", "content": text}] + msgs
        out.append(msgs)
    return out, sum(1 for t in per_pair if t)


def compile_plan(
    plan: Plan,
    model,
    pairs: Sequence[dict],
    *,
    diagnosis=None,
    sae=None,
    directions: Mapping | None = None,
    seed: int = 0,
    beta: float = 0.1,
    effective: bool = False,
    ref_logps: Tensor | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> TrainInputs:
    """Turn a ``Plan`` into ``TrainInputs`` for ``train_dpo(model, pairs, **inputs.train_kwargs())``.

    Args:
        plan: the decisions (``allow`` decisions change nothing).
        model: the model that will be trained, as it is before training (the reference):
            steering offsets and direction scores are read with it.
        pairs: the training pairs (``id``, ``prompt``, ``chosen``, ``rejected``; ``family``
            for a family scope).
        diagnosis: a ``Diagnosis`` for SAE concepts given by cluster (``clusters``, and its
            ``features`` when they cover the pairs) and for prompt-cluster scopes.
        sae: the SAE of SAE concepts (their vectors, firing tokens, scores when the
            diagnosis has none).
        directions: name -> ``probes.Direction`` (or ``(hook, vector)``) for direction concepts.
        seed: tie-breaking among equal gaps in ``filter_pairs``.
        beta: the DPO β the run will use (steering offsets are ``β·ΔA``).
        effective: also compute ``effective_offsets`` (``β·ΔA`` of the policy-side hooks and
            prompts at the first step; two passes over the pairs) for ``predict_shift(plan=)``.
        ref_logps: ``pair_logprobs(model, pairs)`` if already computed (the unsteered
            log-probs that steering and ``effective`` subtract), to skip that pass.

    Returns:
        ``TrainInputs`` whose ``summary`` says, per decision, what it changed.

    Raises:
        ValueError: a decision that cannot be compiled (naming it and the missing input).
    """
    from .logprobs import pair_logprobs

    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
    if len(pairs) == 0:
        raise ValueError("no pairs to compile the plan for")
    ids = [str(p["id"]) for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("pair ids must be unique to compile a plan")
    tokenizer = getattr(model, "tokenizer", None)
    n = len(pairs)
    offsets = np.zeros(n)
    weights = np.ones(n)
    masks = None
    hooks: list = []
    inoculate: list = []
    token_share: dict = {}
    summary: dict = {"decisions": []}
    rng = np.random.default_rng(seed)
    steered_vectors: list[tuple[str, Tensor, np.ndarray, float, float, dict]] = []
    any_offsets = any_weights = False

    for k, d in enumerate(plan.decisions):
        row = {"index": k, "concept": d.concept.key, "action": d.action, "method": d.method, "strength": d.strength,
               "scope": d.scope}
        if d.action == "allow":
            row["changed"] = "nothing (allow)"
            summary["decisions"].append(row)
            continue
        sign = 1.0 if d.action == "explain_away" else -1.0
        scope = _in_scope(d, pairs, ids, diagnosis)
        row["n_in_scope"] = int(scope.sum())
        if d.method in ("reward_shaping", "filter_pairs", "downweight_pairs"):
            sc = concept_scores(d.concept, model, pairs, directions=directions, sae=sae, diagnosis=diagnosis,
                                progress=progress)
            gap = sc[:, 0] - sc[:, 1]
            z = _zscore(gap)
            row["gap_mean"] = float(gap.mean())
            if d.method == "reward_shaping":
                o = np.where(scope, sign * d.strength * z, 0.0)
                offsets += o
                any_offsets = True
                row.update(n_offsets=int(np.count_nonzero(o)), offset_min=float(o.min()), offset_max=float(o.max()))
            else:
                s = np.sign(gap.mean()) or 1.0
                signed = s * gap
                if d.method == "filter_pairs":
                    cand = np.flatnonzero(scope & (signed > 0))
                    n_drop = min(len(cand), int(math.ceil(d.strength * scope.sum())))
                    order = sorted(cand, key=lambda i: (-signed[i], rng.random()))
                    drop = np.array(order[:n_drop], dtype=int)
                    weights[drop] = 0.0
                    row["n_dropped"] = int(len(drop))
                else:
                    w = np.where(scope, 1.0 / (1.0 + d.strength * np.maximum(0.0, s * z)), 1.0)
                    weights *= w
                    row.update(n_downweighted=int((w < 1).sum()), weight_min=float(w.min()),
                               weight_mean=float(w.mean()))
                any_weights = True
        elif d.method == "steering":
            hook, u = concept_vector(d.concept, directions=directions, sae=sae, diagnosis=diagnosis)
            steered_vectors.append((hook, u, scope, d.strength, sign, row))
            row["hook"] = hook
        elif d.method == "inoculation":
            inoculate.append((d, scope))
        elif d.method == "filter_tokens":
            if d.concept.lens == "annotator":
                if tokenizer is None:
                    raise ValueError("filter_tokens needs a model with a tokenizer (a TransformerBridge)")
                m, share, n_tok = _annotator_masks(d.concept.name, tokenizer, pairs, scope)
            else:
                if sae is None:
                    raise ValueError(f"Decision on {d.concept.key!r}: filter_tokens of an SAE concept needs sae=")
                m, share, n_tok = _sae_masks(d.concept, model, sae, pairs, scope, diagnosis)
            masks = _intersect(masks, m)
            token_share[d.concept.key] = np.maximum(token_share.get(d.concept.key, 0.0), share)
            row.update(n_tokens_masked=n_tok, n_pairs_masked=int(sum(any(x is not None for x in p) for p in m)))
        elif d.method == "preventative_steering":
            hook, u = concept_vector(d.concept, directions=directions, sae=sae, diagnosis=diagnosis)
            hooks.append((hook, steering_hook(u, sign * d.strength)))
            row["hook"] = hook
        elif d.method == "ablation":
            hook, u = concept_vector(d.concept, directions=directions, sae=sae, diagnosis=diagnosis)
            hooks.append((hook, ablation_hook(u)))
            row["hook"] = hook
        summary["decisions"].append(row)

    if steered_vectors:  # one steered pass per (scope, action): A = log π0(steered) − log π0
        if ref_logps is None:
            ref_logps = pair_logprobs(model, pairs, batch_size=batch_size, progress=progress)
        base = torch.as_tensor(ref_logps, dtype=torch.float64)
        if base.shape != (n, 2):
            raise ValueError(f"field 'ref_logps': need Tensor[{n}, 2], got shape {tuple(base.shape)}")
        groups: dict[bytes, list] = {}
        for item in steered_vectors:
            groups.setdefault((item[2].tobytes(), item[4]), []).append(item)
        for group in groups.values():
            scope = group[0][2]
            sel = [pairs[i] for i in np.flatnonzero(scope)]
            lp = pair_logprobs(model, sel, batch_size=batch_size, progress=progress,
                               hooks=[(h, steering_hook(u, m)) for h, u, _, m, _, _ in group])
            a = (lp - base[torch.as_tensor(np.flatnonzero(scope))]).numpy()
            o = np.zeros(n)
            o[scope] = group[0][4] * beta * (a[:, 0] - a[:, 1])
            offsets += o
            any_offsets = True
            for *_, row in group:  # decisions steered together share one pass (their vectors add)
                row.update(offset_mean=float(o[scope].mean()), offset_sd=float(o[scope].std()),
                           n_steered_together=len(group))
    prompts, n_inoc = _trait_prompts(inoculate, pairs)
    if prompts is not None:
        for row in summary["decisions"]:
            if row["method"] == "inoculation":
                row["n_prompts_changed"] = n_inoc
                row["system_prompt"] = INOCULATION
    if masks is not None and all(all(x is None for x in p) for p in masks):
        masks = None
    eff = None
    if effective and (hooks or prompts is not None):
        eff = _effective_offsets(model, pairs, hooks, prompts, beta=beta, batch_size=batch_size, progress=progress,
                                 ref_logps=ref_logps)
    summary.update(n_pairs=n, n_offsets=int(np.count_nonzero(offsets)) if any_offsets else 0,
                   n_weight_changed=int((weights != 1).sum()) if any_weights else 0,
                   n_hooks=len(hooks), n_prompts_changed=n_inoc,
                   n_token_masks=0 if masks is None else sum(x is not None for p in masks for x in p))
    return TrainInputs(
        ids=ids,
        offsets=offsets if any_offsets else None,
        weights=weights if any_weights else None,
        token_masks=masks,
        policy_hooks=hooks,
        policy_prompts=prompts,
        summary=json.loads(json.dumps(summary, default=float)),
        effective_offsets=eff,
        token_share=token_share,
    )


def _effective_offsets(model, pairs, hooks, prompts, *, beta, batch_size, progress, ref_logps=None) -> np.ndarray:
    """``β·Δθ`` at the first step: the policy (hooks, prompts) against the reference (neither)."""
    from .logprobs import pair_logprobs

    ref = ref_logps if ref_logps is not None else pair_logprobs(model, pairs, batch_size=batch_size,
                                                                progress=progress)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    seen = pairs if prompts is None else [p if q is None else {**p, "prompt": q} for p, q in zip(pairs, prompts)]
    pol = pair_logprobs(model, seen, batch_size=batch_size, progress=progress, hooks=hooks or None)
    a = (pol - ref).numpy()
    return beta * (a[:, 0] - a[:, 1])
