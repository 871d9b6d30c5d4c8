"""Small Diagnosis-shaped objects for the review app's tests (the attributes `review` reads:
``table(top=None)``, ``u``, ``clusters``, ``labels``, ``pairs_ids``), built on real organism
pairs with a seeded random u, so the app's tests need neither a model nor a diagnosis run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def organism_pairs(n: int | None = 40) -> list[dict]:
    rows = []
    with open(ROOT / "data" / "organism" / "train.jsonl") as f:
        for line in f:
            rows.append(json.loads(line))
            if n is not None and len(rows) >= n:
                break
    return rows


@dataclass
class SmallDiagnosis:
    pairs_ids: list
    u: pd.DataFrame
    clusters: pd.DataFrame
    labels: pd.DataFrame
    rows: pd.DataFrame

    def table(self, top=20):
        if top is None:
            return self.rows.copy()
        return self.rows.groupby("view", sort=False).head(top).reset_index(drop=True)


def small_diagnosis(pairs: list[dict], *, n_concepts: int = 6, seed: int = 0) -> SmallDiagnosis:
    """n_concepts SAE-lens concepts (clusters 0..n-1, two or three member features each), u
    sparse and seeded; one global row per concept and one prompt-conditioned row for the
    first two; q alternates between significant and not."""
    rng = np.random.default_rng(seed)
    ids = [str(p["id"]) for p in pairs]
    u = pd.DataFrame(rng.normal(0, 1, (len(ids), n_concepts)) * (rng.random((len(ids), n_concepts)) < 0.4),
                     index=ids, columns=list(range(n_concepts)))
    feats, clus = [], []
    for c in range(n_concepts):
        for j in range(2 + c % 2):
            feats.append(10 * c + j)
            clus.append(c)
    clusters = pd.DataFrame({"feature": feats, "cluster": clus})
    words = ["great", "sorry", "here", "bold", "link", "table", "maybe", "wow"]
    labels = pd.DataFrame({"cluster": list(range(n_concepts)),
                           "label": [f"{words[c % 8]} · {words[(c + 3) % 8]}" for c in range(n_concepts)],
                           "top_tokens": [[words[c % 8], words[(c + 3) % 8]] for c in range(n_concepts)],
                           "features": [[f for f, k in zip(feats, clus) if k == c] for c in range(n_concepts)],
                           "feature_labels": [[f"f{f} {words[f % 8]}" for f, k in zip(feats, clus) if k == c]
                                              for c in range(n_concepts)]})
    recs = []
    for view, concepts in (("global", range(n_concepts)), ("prompt", range(min(2, n_concepts)))):
        for rank, c in enumerate(concepts, start=1):
            eff = float(u[c].mean())
            recs.append({"view": view, "rank": rank, "scope": "all pairs" if view == "global" else "prompt cluster 0",
                         "group": -1 if view == "global" else 0, "concept": c, "label": labels.label[c],
                         "direction": "chosen" if eff >= 0 else "rejected", "effect": eff,
                         "ci_low": eff - 0.1, "ci_high": eff + 0.1, "p": 0.001 if c % 2 == 0 else 0.4,
                         "q": 0.004 if c % 2 == 0 else 0.6, "d": eff, "replicated": c % 2 == 0,
                         "n": len(ids) if view == "global" else len(ids) // 2,
                         "examples": list(u[c].sort_values(ascending=eff < 0).index[:5])})
    return SmallDiagnosis(pairs_ids=ids, u=u, clusters=clusters, labels=labels, rows=pd.DataFrame(recs))
