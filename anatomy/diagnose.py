"""Stage 4, the diagnosis in one call: from preference pairs to ranked, labelled hypotheses.

``diagnose(pairs)`` runs the whole recipe that the package's measured results describe and
returns a ``Diagnosis``:

  1. features: the SAE's per-span summaries of every pair (`feature_summaries`; with
     ``cache_dir`` reused only for the same pair texts, model weights, SAE and hook);
  2. gate: a feature counts as firing in a span only where its span max reaches half of its
     largest over all responses (`gate_weak_firing`, ``gate=0.5``);
  3. clusters: concept clusters of co-firing response features (`cluster_features`: each
     feature joined to its 15 highest-NMI partners, Leiden; a feature with no partner above
     METHOD's top-1% NMI cut is a concept of its own), at the smallest Leiden resolution of
     1, 2, 4, ..., 64 whose largest cluster holds at most 5% of the clustered features
     (`choose_resolution`: cluster sizes only, no ground truth); the same for the prompt span;
  4. hypotheses: the global view (signed disparity u, data clusters by spherical k-means with
     k = round(sqrt(n / 2)), in-vs-out tests, dataset-wide rows adjusted for the length gap,
     one ranking by impact with a duplicate cut at |r| >= 0.8: `rank_hypotheses`) and the
     prompt-conditioned view (`prompt_clusters`, `prompt_conditioned_hypotheses`);
  5. length: the dataset-wide length gap as a finding of its own (`length_finding`);
  6. labels: offline navigation labels of the top concept clusters (`label_clusters`).

The defaults of ``DiagnoseConfig`` are that recipe; every setting is recorded in
``Diagnosis.settings`` and saved with it. Discovery reads only the pairs' ids, prompts and
responses (never metadata such as a ground-truth column); scoring a diagnosis against a known
answer is `anatomy.organism.score_diagnosis`.

``Diagnosis.save(dir)`` writes JSON, parquet and npz files with a manifest (never pickle);
``Diagnosis.load(dir)`` reads them back exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import types
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["DiagnoseConfig", "DiagnoseError", "Diagnosis", "choose_resolution", "feature_cache_key", "cluster_size_profile",
           "covariate_matrix", "default_k", "diagnose", "discover", "discovery_view", "label_top_clusters",
           "length_finding", "prompt_keys", "rank_global"]

RESOLUTION_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
COVARIATES = ("length", "length+mean_disparity", "none")  # the dataset-wide rows' adjustment
GRAPHS = ("knn", "threshold")
FORMAT = "anatomy.Diagnosis"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("clusters", "prompt_concepts", "global_rows", "ranked", "prompt_rows", "bad_rows")


class DiagnoseError(ValueError):
    """The input cannot be diagnosed (too few pairs, an SAE that does not fit the model, a bad
    saved diagnosis); the message says what and why in one line."""


# ============================================================================ config
@dataclass(frozen=True)
class DiagnoseConfig:
    """Every knob of `diagnose`; the defaults are the shipped recipe.

    gate: `gate_weak_firing`'s rho (0: METHOD's plain firing).
    isolates: a feature with no partner above METHOD's top-1% NMI cut is a concept of its own.
    graph, n_neighbors: the feature graph of `cluster_features` ("knn": each feature's
        ``n_neighbors`` highest-NMI partners; "threshold": METHOD's top 1% of feature pairs).
    covariate: the dataset-wide rows' adjustment, one of COVARIATES ("length": u adjusted for
        `length_gap`; "length+mean_disparity": also for the pair's mean u; "none").
    resolution: a fixed Leiden resolution, or None for the size rule (`choose_resolution` on
        ``resolution_grid`` with ``max_cluster_share``).
    k_data, k_prompt: data / prompt clusters; None: round(sqrt(n / 2)) of pairs / distinct prompts.
    tau, min_size, n_boot, alpha: u's firing threshold, the smallest data cluster tested, the
        bootstrap resamples of the dataset-wide CIs, the q cut for a passing row.
    redundancy: `rank_hypotheses`' duplicate cut (|Pearson r| of u), None for none.
    rank_by: `rank_hypotheses`' ordering key (one of `anatomy.hypotheses.RANK_KEYS`).
    seed: every seeded step (clustering, k-means, split halves, bootstrap, label sample).
    n_label_pairs: pairs streamed for the offline labels (0: no labels); label_top: the
        concept clusters of the first ``label_top`` rows of each view are labelled;
        label_contexts: top-activating contexts kept per cluster.
    """

    gate: float = 0.5
    isolates: bool = True
    graph: str = "knn"
    n_neighbors: int = 15
    covariate: str = "length"
    resolution: float | None = None
    resolution_grid: tuple[float, ...] = RESOLUTION_GRID
    max_cluster_share: float = 0.05
    k_data: int | None = None
    k_prompt: int | None = None
    tau: float = 0.01
    min_size: int = 10
    n_boot: int = 1000
    alpha: float = 0.05
    redundancy: float | None = 0.8
    rank_by: str = "impact"
    seed: int = 0
    n_label_pairs: int = 200
    label_top: int = 20
    label_contexts: int = 6

    def __post_init__(self):
        from .hypotheses import RANK_KEYS

        object.__setattr__(self, "resolution_grid", tuple(float(r) for r in self.resolution_grid))

        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"DiagnoseConfig.{name} must be an integer >= {low}, got {v!r}")

        if not (isinstance(self.gate, (int, float)) and 0 <= self.gate < 1):
            raise ValueError(f"DiagnoseConfig.gate must be in [0, 1) (a share of each feature's largest max), "
                             f"got {self.gate!r}")
        if not isinstance(self.isolates, bool):
            raise ValueError(f"DiagnoseConfig.isolates must be True or False, got {self.isolates!r}")
        if self.graph not in GRAPHS:
            raise ValueError(f"DiagnoseConfig.graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.covariate not in COVARIATES:
            raise ValueError(f"DiagnoseConfig.covariate must be one of {COVARIATES}, got {self.covariate!r}")
        if self.rank_by not in RANK_KEYS:
            raise ValueError(f"DiagnoseConfig.rank_by must be one of {RANK_KEYS}, got {self.rank_by!r}")
        if self.resolution is not None and not self.resolution > 0:
            raise ValueError(f"DiagnoseConfig.resolution must be > 0 or None, got {self.resolution!r}")
        grid = self.resolution_grid
        if not grid or any(not (r > 0 and math.isfinite(r)) for r in grid) or list(grid) != sorted(set(grid)):
            raise ValueError(f"DiagnoseConfig.resolution_grid must be increasing positive numbers, got {grid!r}")
        if not 0 < self.max_cluster_share <= 1:
            raise ValueError(f"DiagnoseConfig.max_cluster_share must be in (0, 1], got {self.max_cluster_share!r}")
        for name in ("k_data", "k_prompt"):
            if getattr(self, name) is not None:
                integer(name, 2)
        if not self.tau >= 0:
            raise ValueError(f"DiagnoseConfig.tau must be >= 0, got {self.tau!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"DiagnoseConfig.alpha must be in (0, 1), got {self.alpha!r}")
        if self.redundancy is not None and not 0 < self.redundancy <= 1:
            raise ValueError(f"DiagnoseConfig.redundancy must be in (0, 1] or None, got {self.redundancy!r}")
        for name, low in (("n_neighbors", 1), ("min_size", 1), ("n_boot", 0), ("seed", 0), ("n_label_pairs", 0),
                          ("label_top", 0), ("label_contexts", 1)):
            integer(name, low)

    def to_dict(self) -> dict:
        """Plain JSON types (tuples become lists): ``from_dict(json round trip)`` is equal."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> DiagnoseConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DiagnoseConfig fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DiagnoseConfig:
        """A config from a JSON file of (some of) its fields; the others keep their defaults."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DiagnoseError(f"{path}: cannot read a DiagnoseConfig ({err})") from None
        if not isinstance(d, dict):
            raise DiagnoseError(f"{path}: a DiagnoseConfig file holds a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)


# ============================================================================ small rules
def discovery_view(pair: dict) -> dict:
    """What discovery may read of a pair: its id, prompt and the two responses."""
    return {k: pair[k] for k in ("id", "prompt", "chosen", "rejected")}


def prompt_keys(pairs: Sequence[dict]) -> list[str]:
    """One key per pair: its prompt messages as JSON (pairs of one prompt are coupled)."""
    return [json.dumps(p["prompt"], sort_keys=True) for p in pairs]


def default_k(n: int) -> int:
    """The rule of thumb k = round(sqrt(n / 2)), at least 2."""
    return max(2, int(round(math.sqrt(n / 2))))


def covariate_matrix(name: str, lg: pd.Series, md: pd.Series) -> np.ndarray | None:
    """The dataset-wide rows' covariates for adjustment ``name`` (one of COVARIATES):
    columns of length gap and mean disparity, or None for no adjustment."""
    if name not in COVARIATES:
        raise ValueError(f"covariate must be one of {COVARIATES}, got {name!r}")
    columns = {"none": [], "length": [lg], "length+mean_disparity": [lg, md]}[name]
    return np.column_stack(columns) if columns else None


def cluster_size_profile(clusters: pd.DataFrame) -> dict:
    """Sizes of the clusters of a `cluster_features` table: count, clustered features, min /
    median / max size, and the largest cluster's share of the clustered features."""
    member = clusters[clusters["cluster"] >= 0]
    sizes = member.groupby("cluster").size()
    return {"clusters": int(len(sizes)), "clustered_features": int(sizes.sum()),
            "size_min": int(sizes.min()) if len(sizes) else 0,
            "size_median": float(sizes.median()) if len(sizes) else 0.0,
            "size_max": int(sizes.max()) if len(sizes) else 0,
            "max_share": float(sizes.max() / sizes.sum()) if len(sizes) else 1.0}


def choose_resolution(features, *, grid: Sequence[float] = RESOLUTION_GRID, max_share: float = 0.05,
                      graph: str = "knn", n_neighbors: int = 15, isolates: bool = True,
                      seed: int = 0) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """The smallest resolution on ``grid`` whose largest cluster holds <= ``max_share`` of the
    clustered features: no catch-all cluster that mixes unrelated features (resolution 1 gives
    one on the shipped SAE), chosen from cluster sizes alone. One NMI graph for the whole grid
    (`cluster_features_sweep`); when no resolution is fine enough, the finest.

    Returns (resolution, the clusters at it, the size profile of every resolution tried).
    """
    from .features import cluster_features_sweep

    sweep = cluster_features_sweep(features, list(grid), graph=graph, n_neighbors=n_neighbors,
                                   isolates=isolates, seed=seed)
    rows, chosen = [], None
    for r, cl in sweep.items():
        prof = cluster_size_profile(cl)
        rows.append({"resolution": r, **prof})
        if prof["max_share"] <= max_share:
            chosen = (r, cl)
            break
    if chosen is None:
        chosen = (grid[-1], cl)
    return chosen[0], chosen[1], pd.DataFrame(rows)


def length_finding(features, keys: Sequence[str] | None = None, *, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """The dataset-wide length gap, as a finding of its own.

    Response length = the tokens of each response that the SAE read (``features.n_tokens``).
    Returns median tokens of chosen and of rejected responses; ``median_gap``, the median of the
    per-pair gap (chosen − rejected) with a percentile-bootstrap CI over pairs (``n_boot``,
    ``seed``); ``effect``, the mean per-pair gap (`paired_stats`' effect, the one ``p`` and ``q``
    test; ``ci_low`` / ``ci_high`` belong to ``median_gap``); ``share_chosen_longer`` / ``share_rejected_longer``; ``p`` the
    Wilcoxon signed-rank test of the gap and ``q`` its Benjamini–Hochberg q (`paired_stats`,
    one test: q = p); ``direction`` (the side that is longer, "chosen" / "rejected" / "none");
    ``log_ratio_mean``, the mean of `length_gap` (the covariate the ranking adjusts for).
    Pairs that share a prompt are not independent: ``n_prompts`` is reported beside ``n``.
    """
    from .contrast import paired_stats
    from .hypotheses import length_gap

    c = np.asarray(features.n_tokens["chosen"], dtype=np.float64)
    r = np.asarray(features.n_tokens["rejected"], dtype=np.float64)
    gap = c - r
    n = len(gap)
    if n == 0:
        raise DiagnoseError("no pairs: the length gap is undefined")
    stats = paired_stats(pd.DataFrame({"length": c}), pd.DataFrame({"length": r}), n_boot=0, seed=seed).iloc[0]
    lo = hi = float("nan")
    if n_boot:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        medians = np.median(gap[idx], axis=1)
        lo, hi = (float(v) for v in np.percentile(medians, [2.5, 97.5]))
    med = float(np.median(gap))
    return {"n": int(n), "n_prompts": int(len(set(keys))) if keys is not None else None,
            "median_chosen": float(np.median(c)), "median_rejected": float(np.median(r)),
            "median_gap": med, "ci_low": lo, "ci_high": hi, "ci_method": f"bootstrap ({n_boot}) of the median gap",
            "effect": float(gap.mean()), "share_chosen_longer": float((gap > 0).mean()),
            "share_rejected_longer": float((gap < 0).mean()),
            "p": float(stats["p"]), "q": float(stats["q"]), "test": "wilcoxon signed-rank",
            "direction": "chosen" if med > 0 else "rejected" if med < 0 else "none",
            "log_ratio_mean": float(length_gap(features).mean())}


# ============================================================================ Diagnosis
def _plain(x):
    """``x`` with numpy scalars / arrays and tuples turned into plain JSON values."""
    from .saes import _json_default

    return json.loads(json.dumps(x, default=_json_default))


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """What `diagnose` found, and everything that made it.

    pairs_ids: the pairs in row order. features: the gated `PairFeatures` discovery read.
    clusters / prompt_concepts: `cluster_features` tables (feature -> concept cluster) of the
        response spans / the prompt span. u: signed disparity [pairs x concept clusters].
    data_labels / prompt_labels: data clusters B_k / prompt clusters A_k per pair (-1 silent).
    global_rows: the data-cluster in-vs-out tests; ranked: the global ranking (dataset-wide
        and data-cluster rows, one per concept, `rank_hypotheses`); prompt_rows: the
        prompt-conditioned view (`prompt_conditioned_hypotheses`).
    labels: concept cluster -> offline label; label_details: per labelled cluster its member
        features, enriched tokens and strongest snippets (for highlighting).
    length: `length_finding`. settings: the config and what the rules chose (resolution, k,
        cluster sizes), the model, SAE and hook. timings: seconds per stage.
    source: what was read; bad_rows: the rows `load_preferences` skipped (id, index, field,
        reason), when `diagnose` loaded the data itself.
    """

    pairs_ids: list[str]
    features: object
    clusters: pd.DataFrame
    prompt_concepts: pd.DataFrame
    u: pd.DataFrame
    data_labels: np.ndarray
    prompt_labels: np.ndarray
    global_rows: pd.DataFrame
    ranked: pd.DataFrame
    prompt_rows: pd.DataFrame
    labels: dict = field(default_factory=dict)
    label_details: dict = field(default_factory=dict)
    length: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    bad_rows: pd.DataFrame | None = None
    config: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    # in memory only (never saved): what examples() and report() read by default
    pairs: list | None = field(default=None, repr=False)
    model: object = field(default=None, repr=False)
    sae: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.pairs_ids)

    @property
    def prompt_keys(self) -> list[str]:
        """Per pair the prompt key the split halves grouped by (needs the pairs in memory)."""
        return prompt_keys(self._pairs())

    # ------------------------------------------------------------------ reading
    def table(self, top: int | None = 20, *, n_examples: int = 5) -> pd.DataFrame:
        """One tidy table of both views (`hypotheses_table`): the first ``top`` rows of the global
        ranking, then of the prompt-conditioned view, with labels (None: all rows).

        Columns: view ("global" / "prompt"), rank, scope, group, concept, label, direction,
        effect, ci_low, ci_high, ci_method, test, p, q, d, delta_min, replicated, n, examples.
        """
        from .hypotheses import hypotheses_table

        return hypotheses_table(self.u, self.ranked, self.prompt_rows, data_labels=self.data_labels,
                                prompt_labels=self.prompt_labels, concept_labels=self.labels, top=top,
                                n_examples=n_examples)

    def rerank(self, *, one_per_concept: bool = True, **changes) -> pd.DataFrame:
        """The global ranking again under other ranking settings (``changes``: DiagnoseConfig fields
        such as ``covariate``, ``rank_by``, ``n_boot``, ``redundancy``), on this diagnosis' u, data
        clusters and data-cluster rows (`rank_global`; needs the pairs in memory for the prompt
        keys). With no changes it is ``ranked``. one_per_concept=False keeps every row."""
        return rank_global(self.features, self.u, self.data_labels, self.global_rows, self.prompt_keys,
                           replace(self.config, **changes), one_per_concept=one_per_concept)

    def concept_features(self, concept: int) -> list[int]:
        """The SAE features of concept cluster ``concept``."""
        members = self.clusters.loc[self.clusters["cluster"] == int(concept), "feature"]
        if not len(members):
            raise KeyError(f"concept cluster {concept} does not exist (clusters 0..{int(self.clusters['cluster'].max())})")
        return [int(f) for f in members]

    def examples(self, concept: int, n: int = 3, pairs=None, *, view: str | None = None, highlight: bool = True,
                 model=None, sae=None):
        """Up to ``n`` pairs of concept cluster ``concept``'s best row, chosen | rejected side by side,
        the concept's tokens highlighted (`anatomy.show_examples`).

        The pairs are those of the row's scope (all pairs or its data / prompt cluster) with the
        largest u towards the row's direction. ``view``: "global" or "prompt" (default: the
        global row, else the prompt row). ``pairs``: the diagnosed pairs (default: those held in
        memory by `diagnose`; needed after `Diagnosis.load`). highlight: mark each token by the
        summed SAE activation of the concept's features (one forward per example pair, with the
        model and SAE `diagnose` used, or ``model`` / ``sae``). Returns ``IPython.display.HTML``.
        """
        from . import show_examples

        table = self.table(top=None, n_examples=n)
        rows = table[table["concept"] == int(concept)]
        if view is not None:
            rows = rows[rows["view"] == view]
        if not len(rows):
            raise KeyError(f"concept cluster {concept} has no {view or 'global or prompt'} row in this diagnosis")
        row = rows.iloc[0]
        pairs = self._pairs(pairs)
        by_id = {str(p["id"]): p for p in pairs}
        ids = [str(i) for i in row["examples"]]
        marks = None
        if highlight and ids:
            from .hypotheses import token_feature_scores

            model, sae = self._model_sae(model, sae)
            marks = token_feature_scores(model, sae, [by_id[i] for i in ids], self.concept_features(concept),
                                         hook=self.settings.get("hook"))
        label = self.labels.get(int(concept), "")
        title = (f"concept {int(concept)}{' · ' + label if label else ''}: {row['scope']}, more in {row['direction']} "
                 f"(effect {row['effect']:+.3f}, q {row['q']:.2g})")
        return show_examples(list(by_id[i] for i in ids), ids, highlight=marks, title=title)

    def report(self, path: str | os.PathLike, *, pairs=None, **options) -> Path:
        """Write the self-contained HTML audit report (`anatomy.report.write_report`; ``options``
        are its knobs: top, n_example_rows, n_examples, highlight)."""
        from .report import write_report

        return write_report(self, path, pairs=pairs if pairs is not None else self.pairs, **options)

    def _pairs(self, pairs=None) -> list:
        pairs = pairs if pairs is not None else self.pairs
        if pairs is None:
            raise DiagnoseError("this diagnosis holds no pairs (it was loaded from disk): pass pairs=, "
                                "the pairs it was made from")
        pairs = _as_pairs(pairs)
        ids = [str(p["id"]) for p in pairs]
        if ids != self.pairs_ids:
            raise DiagnoseError(f"pairs= are not the diagnosed pairs ({len(ids)} given, {len(self.pairs_ids)} "
                                "diagnosed, or another order)")
        return pairs

    def _model_sae(self, model=None, sae=None):
        """The model and SAE to highlight with: given, held in memory, or loaded by the names the
        diagnosis recorded, and then checked against its weights fingerprints."""
        from .fingerprint import weights_fingerprint

        model = model if model is not None else self.model
        sae = sae if sae is not None else self.sae
        if model is None:
            from .models import load_model

            model = load_model(self.settings.get("model_arg"))
        if sae is None:
            sae = _resolve_sae(self.settings.get("sae_arg"))
        for name, obj in (("model", model), ("sae", sae)):
            want = self.settings.get(f"{name}_fingerprint")
            if want and weights_fingerprint(obj) != want:
                raise DiagnoseError(f"the {name} at hand is not the one this diagnosis was made with (weights "
                                    f"fingerprint {weights_fingerprint(obj)} != {want}): pass {name}=")
        return model, sae

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the diagnosis to ``out_dir``: ``diagnosis.json`` (pair ids, labels, length
        finding, settings, timings, source, config, cluster attributes), ``tables/<name>.parquet``,
        ``arrays.npz`` (u, data and prompt labels), ``features/`` (`PairFeatures.save`) and
        ``manifest.json`` (format, version, a sha256 per file), written last. Refuses a non-empty
        directory that holds no saved diagnosis; an existing diagnosis is replaced only with
        ``overwrite=True``. Never pickles."""
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            if not (out / MANIFEST).exists():
                raise DiagnoseError(f"{out} is not empty and holds no saved diagnosis; refusing to write into it")
            if not overwrite:
                raise DiagnoseError(f"{out} already holds a saved diagnosis; pass overwrite=True to replace it")
            (out / MANIFEST).unlink()  # an interrupted rewrite is then not a valid diagnosis
        (out / "tables").mkdir(parents=True, exist_ok=True)
        files = []
        for name in TABLES:
            df = getattr(self, name)
            if df is None:
                continue
            _atomic(out / "tables" / f"{name}.parquet", lambda p, df=df: df.to_parquet(p, index=True))
            files.append(f"tables/{name}.parquet")
        u = self.u
        _atomic(out / "arrays.npz", lambda p: np.savez_compressed(
            p, u=u.to_numpy(), u_index=np.asarray(u.index, dtype=str), u_columns=np.asarray(u.columns),
            data_labels=np.asarray(self.data_labels), prompt_labels=np.asarray(self.prompt_labels)), suffix=".npz")
        files.append("arrays.npz")
        self.features.save(out / "features")
        files += ["features/features.npz", "features/features.json"]
        info = {"pairs_ids": list(self.pairs_ids), "labels": {str(k): v for k, v in self.labels.items()},
                "label_details": {str(k): v for k, v in self.label_details.items()}, "length": self.length,
                "settings": self.settings, "timings": self.timings, "source": self.source,
                "config": self.config.to_dict(),
                "u": {"index_name": u.index.name, "columns_name": u.columns.name},
                "attrs": {name: _plain(getattr(self, name).attrs) for name in ("clusters", "prompt_concepts")}}
        text = json.dumps(info, indent=1, allow_nan=True)
        _atomic(out / "diagnosis.json", lambda p: Path(p).write_text(text, encoding="utf-8"))
        files.append("diagnosis.json")
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "n_pairs": len(self),
                    "files": {f: _sha256(out / f) for f in files}}
        _atomic(out / MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
        return out

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Diagnosis:
        """Read a diagnosis written by `save`; every file's checksum is verified first."""
        from .features import PairFeatures

        out = Path(out_dir)
        try:
            manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DiagnoseError(f"{out}: no {MANIFEST}: not a saved diagnosis (or its save did not finish)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DiagnoseError(f"{out / MANIFEST}: unreadable ({err})") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise DiagnoseError(f"{out}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                                f"expected {FORMAT!r} version {FORMAT_VERSION}")
        for name, digest in manifest["files"].items():
            path = out / name
            if not path.exists():
                raise DiagnoseError(f"{out}: {name} is missing")
            if _sha256(path) != digest:
                raise DiagnoseError(f"{out}: {name} does not match its checksum in {MANIFEST} (edited or damaged)")
        info = json.loads((out / "diagnosis.json").read_text(encoding="utf-8"))
        tables = {name: pd.read_parquet(out / "tables" / f"{name}.parquet")
                  if f"tables/{name}.parquet" in manifest["files"] else None for name in TABLES}
        for name in ("clusters", "prompt_concepts"):
            tables[name].attrs = dict(info["attrs"][name])
        z = np.load(out / "arrays.npz", allow_pickle=False)
        u = pd.DataFrame(z["u"], index=pd.Index(z["u_index"].astype(object), name=info["u"]["index_name"]),
                         columns=pd.Index(z["u_columns"], name=info["u"]["columns_name"]))
        if isinstance(u.columns, pd.Index) and len(u.columns) and np.array_equal(
                np.asarray(u.columns), np.arange(len(u.columns))):
            u.columns = pd.RangeIndex(len(u.columns), name=info["u"]["columns_name"])
        return cls(pairs_ids=info["pairs_ids"], features=PairFeatures.load(out / "features"),
                   clusters=tables["clusters"], prompt_concepts=tables["prompt_concepts"], u=u,
                   data_labels=z["data_labels"], prompt_labels=z["prompt_labels"], global_rows=tables["global_rows"],
                   ranked=tables["ranked"], prompt_rows=tables["prompt_rows"],
                   labels={int(k): v for k, v in info["labels"].items()},
                   label_details={int(k): v for k, v in info["label_details"].items()}, length=info["length"],
                   settings=info["settings"], timings=info["timings"], source=info["source"],
                   bad_rows=tables["bad_rows"], config=DiagnoseConfig.from_dict(info["config"]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic(path: Path, write, suffix: str = "") -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp" + suffix)
    write(tmp)
    os.replace(tmp, path)


# ============================================================================ discovery
@contextmanager
def _stage(name: str, timings: dict, progress: bool):
    """One stage: a progress bar that completes when the stage does, and its seconds in ``timings``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=name, disable=not progress, leave=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t, 3)
        bar.update(1)
        bar.close()


def discover(features, keys: Sequence[str], *, config: DiagnoseConfig | None = None,
             progress: bool = False, timings: dict | None = None) -> Diagnosis:
    """Steps 2-5 of `diagnose` on features already computed: gate, clusters, both views, the
    length finding. Reads only the activations and one prompt key per pair (`prompt_keys`).

    features: `PairFeatures` of the pairs (before the gate). Returns a `Diagnosis` without
    labels (`label_top_clusters` adds them) whose ``features`` are the gated ones.
    """
    from .features import cluster_features, gate_weak_firing
    from .hypotheses import (data_clusters, global_hypotheses, prompt_clusters, prompt_conditioned_hypotheses,
                             signed_disparity, symmetric_activity)

    cfg = config or DiagnoseConfig()
    keys = list(keys)
    n = len(features)
    if len(keys) != n:
        raise DiagnoseError(f"{len(keys)} prompt keys for {n} pairs")
    check_enough_pairs(n, cfg)
    timings = {} if timings is None else timings
    with _stage("gate", timings, progress):
        gated = gate_weak_firing(features, cfg.gate)
    with _stage("clusters", timings, progress):
        graph = dict(graph=cfg.graph, n_neighbors=cfg.n_neighbors, isolates=cfg.isolates, seed=cfg.seed)
        if cfg.resolution is None:
            resolution, clusters, profile = choose_resolution(gated, grid=cfg.resolution_grid,
                                                              max_share=cfg.max_cluster_share, **graph)
            rule = (f"smallest of {list(cfg.resolution_grid)} with largest cluster <= {cfg.max_cluster_share:.0%} "
                    "of clustered features")
        else:
            resolution = cfg.resolution
            clusters = cluster_features(gated, resolution=resolution, **graph)
            profile = pd.DataFrame([{"resolution": resolution, **cluster_size_profile(clusters)}])
            rule = "given (config.resolution)"
        if not (clusters["cluster"] >= 0).any():
            raise DiagnoseError(f"no concept cluster formed from {n} pairs: too few pairs (or too few features "
                                "firing) to cluster; diagnose more pairs")
        prompt_concepts = cluster_features(gated, span="prompt", resolution=resolution, **graph)
        if not (prompt_concepts["cluster"] >= 0).any():  # a handful of prompts: NMI ties leave no edge
            prompt_concepts = clusters
    with _stage("hypotheses", timings, progress):
        n_prompts = len(set(keys))
        k_data = cfg.k_data or default_k(n)
        k_prompt = cfg.k_prompt or default_k(n_prompts)
        groups = np.asarray(keys, dtype=object)
        try:
            data_labels = data_clusters(symmetric_activity(gated, clusters), k=k_data, seed=cfg.seed)
            u = signed_disparity(gated, clusters, tau=cfg.tau)
            global_rows = global_hypotheses(u, data_labels, min_size=cfg.min_size, groups=groups, seed=cfg.seed)
            ranked = rank_global(gated, u, data_labels, global_rows, keys, cfg)
            prompt_labels = prompt_clusters(gated, prompt_concepts, k=k_prompt, seed=cfg.seed)
            prompt_rows = prompt_conditioned_hypotheses(u, prompt_labels, min_size=cfg.min_size, groups=groups,
                                                        seed=cfg.seed)
        except ValueError as err:
            if "cannot form" in str(err) or "non-silent pairs" in str(err):
                raise DiagnoseError(f"{n} pairs ({n_prompts} prompts) are too few to cluster: {err}") from None
            raise
    with _stage("length", timings, progress):
        length = length_finding(features, keys, n_boot=cfg.n_boot, seed=cfg.seed)
    settings = {**cfg.to_dict(), "resolution": resolution, "resolution_rule": rule, "k_data": k_data,
                "k_prompt": k_prompt,
                "k_rule": "round(sqrt(n / 2)), n = pairs (data) or distinct prompts (prompt clusters)",
                "n_isolates": clusters.attrs.get("n_isolates", 0), "n_pairs": n, "n_prompts": n_prompts,
                "concept_clusters": cluster_size_profile(clusters),
                "prompt_concept_clusters": cluster_size_profile(prompt_concepts),
                "resolution_profile": profile.to_dict(orient="records"),
                "hook": features.hook, "d_sae": features.d_sae}
    return Diagnosis(pairs_ids=list(features.ids), features=gated, clusters=clusters, prompt_concepts=prompt_concepts,
                     u=u, data_labels=data_labels, prompt_labels=prompt_labels, global_rows=global_rows,
                     ranked=ranked, prompt_rows=prompt_rows, length=length, settings=_plain(settings),
                     timings=timings, config=cfg)


def rank_global(features, u: pd.DataFrame, data_labels: np.ndarray, global_rows: pd.DataFrame,
                keys: Sequence[str], config: DiagnoseConfig, *, one_per_concept: bool = True) -> pd.DataFrame:
    """The global ranking (`rank_hypotheses`) of the data-cluster rows ``global_rows`` and the
    dataset-wide rows of ``u``, adjusted by ``config.covariate`` (`covariate_matrix` of the
    gated ``features``' `length_gap` and u's `mean_disparity`) and ordered by ``config.rank_by``."""
    from .hypotheses import length_gap, mean_disparity, rank_hypotheses

    lg, md = length_gap(features), mean_disparity(u)
    ranked = rank_hypotheses(u, data_labels, conditional=global_rows,
                             covariates=covariate_matrix(config.covariate, lg, md), min_size=config.min_size,
                             groups=np.asarray(list(keys), dtype=object), seed=config.seed, n_boot=config.n_boot,
                             alpha=config.alpha, redundancy=config.redundancy, by=config.rank_by,
                             one_per_concept=one_per_concept)
    if "duplicate_of" in ranked:
        ranked["duplicate_of"] = ranked["duplicate_of"].astype(np.int64)
    return ranked


def check_enough_pairs(n: int, config: DiagnoseConfig) -> None:
    """Raise DiagnoseError when ``n`` pairs cannot give two data clusters of ``min_size`` pairs."""
    need = max(2 * config.min_size, 2 * (config.k_data or 2))
    if n < need:
        raise DiagnoseError(f"{n} pairs are too few to cluster: the diagnosis needs at least {need} "
                            f"(two data clusters of min_size={config.min_size})")


def label_top_clusters(model, sae, pairs: Sequence[dict], diagnosis: Diagnosis, *, top: int = 20,
                       n_pairs: int = 200, top_k: int = 6, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Offline labels (`label_clusters`) of the concept clusters in the first ``top`` rows of both
    views, from ``n_pairs`` seeded pairs. Navigation only: nothing ranks or scores by them."""
    from .features import label_clusters

    ids = list(dict.fromkeys([int(c) for c in diagnosis.ranked["concept"].head(top)]
                             + [int(c) for c in diagnosis.prompt_rows["concept"].head(top)]))
    idx = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:min(n_pairs, len(pairs))])
    return label_clusters(model, sae, [discovery_view(pairs[i]) for i in idx], diagnosis.clusters,
                          cluster_ids=ids, top_k=top_k, progress=progress)


# ============================================================================ the one call
def _as_pairs(pairs) -> list[dict]:
    import datasets

    if isinstance(pairs, datasets.Dataset):
        return pairs.to_list()
    if isinstance(pairs, pd.DataFrame):
        return pairs.to_dict("records")
    return [dict(p) for p in pairs]


def _resolve_sae(sae):
    """None: the shipped SAE; "RELEASE:ID" (a SAELens release) or a name / directory (`load_sae`)."""
    from .saes import load_sae

    if sae is None or isinstance(sae, (str, os.PathLike)):
        name = None if sae is None else str(sae)
        if name and ":" in name and not Path(name).exists():
            release, sae_id = name.split(":", 1)
            return load_sae(release=release, sae_id=sae_id)
        return load_sae(name)
    return sae


def feature_cache_key(model, sae, pairs: Sequence[dict], hook: str) -> str:
    """The name of the subdirectory of a ``cache_dir`` that `diagnose` keeps these pairs' features in:
    a digest of the pair texts, the model's and the SAE's weights fingerprints and the hook.
    Other data or weights get another subdirectory, so a stale cache is never read (and
    `feature_summaries` re-checks the same key in its manifest)."""
    from .fingerprint import digest, pairs_digest, weights_fingerprint

    return "features-" + digest(pairs_digest(pairs), weights_fingerprint(model), weights_fingerprint(sae), hook)


def _compute_features(model, sae, pairs, *, hook, cache_dir, progress):
    from .features import feature_summaries

    view = [discovery_view(p) for p in pairs]
    if cache_dir is None:
        return feature_summaries(model, sae, view, hook=hook, progress=progress), None
    sub = Path(cache_dir) / feature_cache_key(model, sae, view, hook)
    return feature_summaries(model, sae, view, hook=hook, cache_dir=sub, progress=progress), sub


def diagnose(pairs, *, model=None, sae=None, config: DiagnoseConfig | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool = True, split: str | None = None,
             limit: int | None = None) -> Diagnosis:
    """Diagnose preference pairs: the whole recipe (module docstring), one call.

    pairs: any `load_preferences` source: a ``datasets.Dataset``, a list of dicts, a DataFrame, or
        a path / name string (read with ``split``, ``limit`` and ``strict=False``: bad rows are
        skipped and listed in ``Diagnosis.bad_rows``).
    model: a `load_model` model or a model id (default: the embedded model).
    sae: a SAELens SAE, a `load_sae` name or directory, or "RELEASE:ID" (default: the shipped SAE).
    config: `DiagnoseConfig` (default: the shipped recipe).
    cache_dir: reuse / save the feature summaries there, in a subdirectory named after the pair
        texts, model weights, SAE and hook (`feature_cache_key`; `feature_summaries(cache_dir=...)`
        writes it in resumable shards): features are reused only for the same four.
    progress: a progress bar per stage (and per pair while computing features).

    Returns a `Diagnosis` (it keeps the pairs, model and SAE in memory for ``examples`` and
    ``report``). Raises DiagnoseError for too few pairs or an SAE that does not fit the model,
    `anatomy.data.PreferenceDataError` / FileNotFoundError for unreadable data.
    """
    from .data import load_preferences
    from .fingerprint import pairs_digest, weights_fingerprint
    from .models import load_model
    from .saes import check_sae_fits, sae_hook

    cfg = config or DiagnoseConfig()
    timings: dict = {}
    t_all = time.perf_counter()
    bad_rows = None
    with _stage("load", timings, progress):
        if isinstance(pairs, (str, os.PathLike)):
            ds, bad_rows = load_preferences(pairs, split=split, limit=limit, strict=False)
            source = {"source": str(pairs), "split": split, "limit": limit, "n_read": len(ds) + len(bad_rows),
                      "n_kept": len(ds), "n_skipped": len(bad_rows)}
            rows = ds.to_list()
        else:
            rows = _as_pairs(pairs)
            if limit is not None:
                rows = rows[:limit]
            source = {"source": type(pairs).__name__, "split": split, "limit": limit, "n_read": len(rows),
                      "n_kept": len(rows), "n_skipped": 0}
        source["pairs_digest"] = pairs_digest(rows)
        if not rows and bad_rows is not None and len(bad_rows):
            first = bad_rows.iloc[0]
            raise DiagnoseError(f"{pairs}: no readable pair in {len(bad_rows)} rows (row {first['index']}, field "
                                f"{first['field']!r}: {first['reason']})")
        check_enough_pairs(len(rows), cfg)
        model_arg = model if isinstance(model, str) or model is None else None
        model = load_model(model) if model is None or isinstance(model, str) else model
        sae_arg = sae if sae is None or isinstance(sae, (str, os.PathLike)) else None
        sae = _resolve_sae(sae)
        hook = sae_hook(sae)
        try:
            check_sae_fits(sae, model, hook)
        except ValueError as err:
            raise DiagnoseError(f"the SAE does not fit the model: {err}") from None
    with _stage("features", timings, progress):
        raw, feature_dir = _compute_features(model, sae, rows, hook=hook, cache_dir=cache_dir, progress=progress)
    diagnosis = discover(raw, prompt_keys(rows), config=cfg, progress=progress, timings=timings)
    labels, details = {}, {}
    if cfg.n_label_pairs and cfg.label_top:
        with _stage("labels", timings, progress):
            table = label_top_clusters(model, sae, rows, diagnosis, top=cfg.label_top, n_pairs=cfg.n_label_pairs,
                                       top_k=cfg.label_contexts, seed=cfg.seed, progress=False)
            labels = {int(r["cluster"]): str(r["label"]) for _, r in table.iterrows()}
            details = {int(r["cluster"]): _plain({k: r[k] for k in ("size", "features", "feature_labels", "top_tokens",
                                                                   "snippets")}) for _, r in table.iterrows()}
    timings["total"] = round(time.perf_counter() - t_all, 3)
    settings = {**diagnosis.settings, "model": getattr(model.cfg, "model_name", None), "model_arg": model_arg,
                "model_fingerprint": weights_fingerprint(model), "sae_arg": None if sae_arg is None else str(sae_arg),
                "sae_fingerprint": weights_fingerprint(sae), "hook": hook,
                "features_cache": None if feature_dir is None else str(feature_dir)}
    return replace(diagnosis, labels=labels, label_details=details, settings=_plain(settings), timings=timings,
                   source=_plain(source), bad_rows=bad_rows, pairs=rows, model=model, sae=sae)


class _CallableModule(types.ModuleType):
    """``import anatomy.diagnose`` binds ``anatomy.diagnose`` to this module, which shadows the
    function re-exported under the same name; calling the module calls the function, so
    ``anatomy.diagnose(pairs)`` works whichever of the two the name holds."""

    def __call__(self, *args, **kwargs) -> Diagnosis:
        return diagnose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
