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
    features: object
    clusters: pd.DataFrame
    u: pd.DataFrame
    data_labels: np.ndarray
    prompt_labels: np.ndarray
    labels: dict
    label_details: dict
    rows: pd.DataFrame
    pairs: list | None = None

    def table(self, top=20):
        if top is None:
            return self.rows.copy()
        return self.rows.groupby("view", sort=False).head(top).reset_index(drop=True)


def small_diagnosis(pairs: list[dict], *, n_concepts: int = 6, n_prompt_rows: int = 2,
                    seed: int = 0) -> SmallDiagnosis:
    """n_concepts SAE-lens concepts (clusters 0..n-1 of two or three member features each) with
    seeded sparse firing frequencies (`PairFeatures`), u read from them; one global row per
    concept (the last two scoped to data cluster 1) and one prompt-conditioned row (prompt
    cluster 0) for the first ``n_prompt_rows``; q alternates between significant and not."""
    import scipy.sparse as sp

    from anatomy.features import PairFeatures

    rng = np.random.default_rng(seed)
    ids = [str(p["id"]) for p in pairs]
    n = len(ids)
    feats, clus = [], []
    for c in range(n_concepts):
        for j in range(2 + c % 2):
            feats.append(10 * c + j)
            clus.append(c)
    d_sae = max(feats) + 1
    freq = {}
    for side in ("chosen", "rejected"):
        dense = np.zeros((n, d_sae))
        for f in feats:
            on = rng.random(n) < (0.45 if (side == "chosen") == (f // 10 % 2 == 0) else 0.2)
            dense[on, f] = rng.uniform(0.02, 0.3, on.sum())
        freq[side] = sp.csr_matrix(dense)
    pf = PairFeatures(ids=ids, max={s: m.copy() for s, m in freq.items()}, freq=freq,
                      n_tokens={s: np.full(n, 40) for s in freq}, hook="blocks.12.hook_resid_post", d_sae=d_sae)
    clusters = pd.DataFrame({"feature": feats, "cluster": clus})
    score = {s: np.stack([np.asarray(freq[s][:, [f for f, k in zip(feats, clus) if k == c]].sum(1)).ravel()
                          for c in range(n_concepts)], 1) for s in freq}
    u = pd.DataFrame((score["chosen"] > 0.01).astype(float) - (score["rejected"] > 0.01), index=ids,
                     columns=list(range(n_concepts)))
    words = ["great", "sorry", "here", "bold", "link", "table", "maybe", "wow"]
    labels = {c: f"{words[c % 8]} · {words[(c + 3) % 8]}" for c in range(n_concepts)}
    details = {c: {"size": 2 + c % 2, "features": [f for f, k in zip(feats, clus) if k == c],
                   "feature_labels": [f"f{f} {words[f % 8]}" for f, k in zip(feats, clus) if k == c],
                   "top_tokens": [[f" {words[c % 8]}", 3.5], [f" {words[(c + 3) % 8]}", 2.1]],  # as Diagnosis.load gives them
                   "snippets": []} for c in range(n_concepts)}
    data_labels = np.arange(n) % 3 - 1
    prompt_labels = np.arange(n) % 2
    recs = []
    for view, concepts in (("global", range(n_concepts)), ("prompt", range(min(n_prompt_rows, n_concepts)))):
        for rank, c in enumerate(concepts, start=1):
            group = -1 if view == "global" and c < n_concepts - 2 else (1 if view == "global" else 0)
            members = (np.ones(n, bool) if group == -1 else
                       (data_labels == group if view == "global" else prompt_labels == group))
            eff = float(u[c][members].mean())
            scope = ("all pairs" if group == -1 else
                     f"data cluster {group}" if view == "global" else f"prompt cluster {group}")
            recs.append({"view": view, "rank": rank, "scope": scope, "group": group, "concept": c, "label": labels[c],
                         "direction": "chosen" if eff >= 0 else "rejected", "effect": eff,
                         "ci_low": eff - 0.1, "ci_high": eff + 0.1, "p": 0.001 if c % 2 == 0 else 0.4,
                         "q": 0.004 if c % 2 == 0 else 0.6, "d": eff, "replicated": c % 2 == 0,
                         "n": int(members.sum()),
                         "examples": list(u[c][members].sort_values(ascending=eff < 0).index[:5])})
    return SmallDiagnosis(pairs_ids=ids, features=pf, clusters=clusters, u=u, data_labels=data_labels,
                          prompt_labels=prompt_labels, labels=labels, label_details=details,
                          rows=pd.DataFrame(recs), pairs=pairs)
