"""A test double of `anatomy.interventions`' interface (ConceptRef, Decision, Plan, TrainInputs,
METHODS, compile_plan) for the review app's tests while the real module is not importable.

Only the data-shaping methods are computed (reward_shaping: offsets from the concept's u;
downweight_pairs: weights; filter_pairs: drops the pairs most towards the concept); the
tests use the real module whenever `anatomy.interventions` imports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

METHODS = {"reward_shaping": ("sae", "direction", "annotator"), "downweight_pairs": ("sae", "direction", "annotator"),
           "filter_pairs": ("sae", "direction", "annotator"), "steering": ("sae", "direction"),
           "ablation": ("sae",)}


@dataclass(frozen=True)
class ConceptRef:
    lens: str
    name: str
    features: tuple = ()
    cluster: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))


@dataclass(frozen=True)
class Decision:
    concept: ConceptRef
    action: str
    method: str
    strength: float
    scope: dict | None = None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(concept=ConceptRef(**d["concept"]), action=d["action"], method=d["method"],
                   strength=float(d["strength"]), scope=d.get("scope"))


@dataclass(frozen=True)
class Plan:
    decisions: tuple = ()

    def to_dict(self):
        return {"decisions": [d.to_dict() for d in self.decisions]}

    @classmethod
    def from_dict(cls, d):
        return cls(decisions=tuple(Decision.from_dict(x) for x in d["decisions"]))

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class TrainInputs:
    ids: list
    offsets: np.ndarray | None = None
    weights: np.ndarray | None = None
    token_masks: list | None = None
    policy_hooks: list = field(default_factory=list)
    policy_prompts: list | None = None
    summary: dict = field(default_factory=dict)

    def train_kwargs(self):
        return {"offsets": self.offsets, "weights": self.weights, "token_masks": self.token_masks,
                "policy_hooks": self.policy_hooks or None}


def compile_plan(plan, model, pairs, *, diagnosis=None, sae=None, directions=None, seed=0):
    ids = [str(p["id"]) for p in pairs]
    offsets = np.zeros(len(ids))
    weights = np.ones(len(ids))
    keep = np.ones(len(ids), bool)
    summary = {}
    for d in plan.decisions:
        u = diagnosis.u.reindex(ids)[int(d.concept.name) if d.concept.name.isdigit() else d.concept.name]
        u = np.nan_to_num(np.asarray(u, float))
        sign = -1.0 if d.action == "explain_away" else 1.0
        if d.method == "reward_shaping":
            offsets += sign * d.strength * u
            summary[d.concept.name] = {"pairs_offset": int(np.sum(u != 0))}
        elif d.method == "downweight_pairs":
            hit = np.abs(u) > 0
            weights[hit] *= max(0.0, 1.0 - d.strength / 2)
            summary[d.concept.name] = {"pairs_weighted": int(hit.sum())}
        elif d.method == "filter_pairs":
            cut = np.quantile(u, 1 - min(1.0, d.strength / 4)) if d.strength > 0 else np.inf
            drop = (u >= cut) & (u > 0)
            keep &= ~drop
            summary[d.concept.name] = {"pairs_dropped": int(drop.sum())}
        else:
            raise NotImplementedError(f"the test double does not compile {d.method!r}")
    return TrainInputs(ids=[i for i, k in zip(ids, keep) if k], offsets=offsets[keep], weights=weights[keep],
                       summary=summary)
