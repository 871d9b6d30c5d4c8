"""Stage 2b: from SAE latents to concepts: per-span feature summaries, concept clusters, labels.

Takes a model (``load_model``), preference pairs (``load_preferences``) and an SAE
(``anatomy.saes.load_sae``); returns

- ``PairFeatures``: per pair and span (``prompt`` / ``chosen`` / ``rejected``) each
  feature's max activation and firing frequency, as ``scipy.sparse.csr_matrix``
  of shape ``[n_pairs, d_sae]`` (``feature_summaries``, streamed: memory stays flat
  in the number of pairs; with ``cache_dir`` written in resumable, checksummed shards
  keyed by the pair texts, the model and SAE weights, the hook and the settings, which
  ``load_pair_features`` merges);
- concept clusters of co-firing features, a DataFrame ``feature -> cluster``
  (``cluster_features``: NMI of binary firing, top 1% of feature pairs as a graph,
  Leiden), and per-pair cluster scores (``cluster_scores``);
- navigation labels from top-activating contexts (``label_features``,
  ``label_clusters``).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .cache import (
    SPANS,
    check_or_write_manifest,
    finished_shard,
    load_shard_records,
    pair_ids,
    shard_bounds,
    shard_path,
    stream_pair_activations,
    tokenize_pairs,
    write_shard,
)
from .fingerprint import pairs_digest, weights_fingerprint
from .saes import MAX_NORM_RATIO, _json_default, check_sae_fits, sae_hook, typical_tokens


# ----------------------------------------------------------------------------- per-span summaries


@dataclass(frozen=True)
class PairFeatures:
    """Per pair and span, each SAE feature's max activation and firing frequency.

    ``max[span]`` and ``freq[span]`` are ``scipy.sparse.csr_matrix`` of shape
    ``[n_pairs, d_sae]`` (freq = share of the span's tokens where the feature
    fires); ``n_tokens[span]`` is ``np.ndarray[n_pairs]``; rows follow ``ids``.
    """

    ids: list[str]
    max: dict[str, sp.csr_matrix]
    freq: dict[str, sp.csr_matrix]
    n_tokens: dict[str, np.ndarray]
    hook: str | None = None
    d_sae: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def spans(self) -> tuple[str, ...]:
        return tuple(self.max)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``features.npz`` (all matrices) and ``features.json`` (ids, hook, shapes)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "features.npz", **self._arrays())
        (out / "features.json").write_text(json.dumps(
            {"ids": self.ids, "spans": list(self.max), "hook": self.hook, "d_sae": self.d_sae, "meta": self.meta},
            default=_json_default))
        return out

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for stat, mats in (("max", self.max), ("freq", self.freq)):
            for span, m in mats.items():
                m = m.tocsr()
                arrays[f"{stat}/{span}/data"] = m.data
                arrays[f"{stat}/{span}/indices"] = m.indices
                arrays[f"{stat}/{span}/indptr"] = m.indptr
        for span, a in self.n_tokens.items():
            arrays[f"n_tokens/{span}"] = a
        return arrays

    @classmethod
    def _from_arrays(cls, z, ids: list[str], spans, hook, d_sae: int, meta: dict | None = None) -> PairFeatures:
        shape = (len(ids), d_sae)
        mats = {"max": {}, "freq": {}}
        for stat in mats:
            for span in spans:
                mats[stat][span] = sp.csr_matrix(
                    (z[f"{stat}/{span}/data"], z[f"{stat}/{span}/indices"], z[f"{stat}/{span}/indptr"]), shape=shape)
        n_tokens = {span: z[f"n_tokens/{span}"] for span in spans}
        return cls(list(ids), mats["max"], mats["freq"], n_tokens, hook, d_sae, dict(meta or {}))

    @classmethod
    def load(cls, out_dir: str | Path) -> PairFeatures:
        out = Path(out_dir)
        info = json.loads((out / "features.json").read_text())
        z = np.load(out / "features.npz")
        return cls._from_arrays(z, info["ids"], info["spans"], info["hook"], info["d_sae"], info.get("meta", {}))


def concat_features(parts: Sequence[PairFeatures]) -> PairFeatures:
    """Rows of several ``PairFeatures`` (same SAE, hook and spans) stacked in order."""
    first = parts[0]
    spans = first.spans
    return PairFeatures(
        [pid for p in parts for pid in p.ids],
        {s: sp.vstack([p.max[s] for p in parts]).tocsr() for s in spans},
        {s: sp.vstack([p.freq[s] for p in parts]).tocsr() for s in spans},
        {s: np.concatenate([p.n_tokens[s] for p in parts]) for s in spans},
        first.hook, first.d_sae, dict(first.meta))


class _CSRBuilder:
    """Append sparse rows; memory is the nonzeros only."""

    def __init__(self, d: int):
        self.d, self.data, self.indices, self.indptr = d, [], [], [0]

    def add(self, idx: np.ndarray, val: np.ndarray) -> None:
        self.indices.append(idx.astype(np.int32))
        self.data.append(val.astype(np.float32))
        self.indptr.append(self.indptr[-1] + len(idx))

    def build(self) -> sp.csr_matrix:
        data = np.concatenate(self.data) if self.data else np.zeros(0, np.float32)
        ind = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32)
        return sp.csr_matrix((data, ind, np.asarray(self.indptr, dtype=np.int64)), shape=(len(self.indptr) - 1, self.d))


@torch.no_grad()
def span_summary(z: Float[Tensor, "tok d_sae"]) -> tuple[Tensor, Tensor, Tensor]:
    """``(features, max, freq)`` of one span's latents: the features that fire, their max and share of tokens."""
    if len(z) == 0:
        e = torch.zeros(0)
        return e.long(), e, e
    active = z > 0
    count = active.sum(0)
    idx = torch.nonzero(count, as_tuple=True)[0]
    return idx, z[:, idx].max(0).values, count[idx].double().div(len(z)).float()


@torch.no_grad()
def encode_span(sae, x: Float[Tensor, "tok d_model"], max_norm_ratio: float | None = MAX_NORM_RATIO
                ) -> tuple[Tensor, Tensor, Tensor, int]:
    """One span's summary: ``span_summary`` of the SAE latents of its typical tokens.

    Tokens outside the SAE's training data (``anatomy.saes.typical_tokens``: in
    practice the first prompt token, an attention sink) are left out first.

    Returns:
        ``(features, max, freq, n_tokens)``: the firing features, their max and share
        of the kept tokens, and the number of tokens kept.
    """
    param = next(sae.parameters())
    x = x[typical_tokens(sae, x, max_norm_ratio)]
    z = sae.encode(x.to(device=param.device, dtype=param.dtype)) if len(x) else x.new_zeros(0, sae.cfg.d_sae)
    return (*span_summary(z), len(x))


@torch.no_grad()
def feature_summaries(
    model,
    sae,
    pairs: Sequence[dict],
    *,
    hook: str | None = None,
    batch_tokens: int = 4096,
    chunk_pairs: int = 64,
    max_norm_ratio: float | None = MAX_NORM_RATIO,
    cache_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    shard_size: int = 256,
    on_shard_done: Callable[[int, int], None] | None = None,
    progress: bool = True,
) -> PairFeatures:
    """Encode every pair's tokens with the SAE and keep per-span summaries only.

    Streams per-token activations (``stream_pair_activations``), encodes each
    span with ``sae.encode`` and keeps, per pair and span, each firing feature's
    max activation and firing frequency (share of the span's tokens where its
    latent is > 0). Sparse rows are appended as pairs go, so memory stays flat
    in the number of pairs apart from the (sparse) result.

    Args:
        hook: the hook to read (default ``sae.cfg.metadata.hook_name``).
        max_norm_ratio: tokens outside the SAE's training data are left out
            (``encode_span``: in practice the first prompt token, an attention
            sink); ``n_tokens`` counts the tokens kept. ``None`` keeps all.
        cache_dir: write the summaries here in shards of ``shard_size`` pairs, each
            atomically as soon as it is done, with a checksummed record; a rerun skips
            finished shards and recomputes a corrupt one (named in a warning). The
            directory's manifest holds a digest of the pair texts, the weights
            fingerprints of the model and the SAE, the hook, ``max_norm_ratio`` and
            ``shard_size``; a rerun that differs in any of them is refused with a
            ``CacheError`` saying which changed. Batching (``batch_tokens``,
            ``chunk_pairs``) is not part of the key: it changes values at rounding level only.
        shard: ``(i, n)``: compute only the i-th of n contiguous slices of ``pairs``
            (one process or array task each, all with the same ``cache_dir``); merge with
            ``load_pair_features(cache_dir)``.
        on_shard_done: called with ``(start, end)`` after each shard file is written.

    Returns:
        ``PairFeatures`` with ``max`` / ``freq`` ``csr_matrix[n_pairs, d_sae]`` per span,
        over all pairs, or over the slice with ``shard``.
    """
    hook = hook or sae_hook(sae)
    check_sae_fits(sae, model, hook)
    ids = pair_ids(pairs)
    lo, hi = shard_bounds(len(pairs), shard)
    if cache_dir is None:
        return _summaries(model, sae, pairs, lo, hi, hook=hook, batch_tokens=batch_tokens, chunk_pairs=chunk_pairs,
                          max_norm_ratio=max_norm_ratio, progress=progress)
    out = Path(cache_dir)
    manifest = _features_manifest(model, sae, pairs, hook, max_norm_ratio, shard_size)
    check_or_write_manifest(out, manifest)
    bounds = [(a, min(a + shard_size, hi)) for a in range(lo, hi, shard_size)]
    digests = {(a, b): pairs_digest(pairs[i] for i in range(a, b)) for a, b in bounds}
    todo = [(a, b) for a, b in bounds if not finished_shard(shard_path(out, a, b, ".npz"), manifest, start=a, end=b,
                                                            digest_of_pairs=digests[a, b])]
    for a, b in tqdm(todo, desc="feature shards", disable=not progress or len(todo) < 2):
        part = _summaries(model, sae, pairs, a, b, hook=hook, batch_tokens=batch_tokens, chunk_pairs=chunk_pairs,
                          max_norm_ratio=max_norm_ratio, progress=progress and len(todo) < 2)
        write_shard(shard_path(out, a, b, ".npz"), lambda p: _save_npz(p, part._arrays()), start=a, end=b,
                    ids=ids[a:b], digest_of_pairs=digests[a, b], manifest=manifest)
        if on_shard_done is not None:
            on_shard_done(a, b)
    if shard is None:
        return load_pair_features(out)
    return _read_feature_shards(out, [{"file": shard_path(out, a, b, ".npz").name, "ids": ids[a:b]}
                                      for a, b in bounds], manifest)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary name
        np.savez(f, **arrays)


def _features_manifest(model, sae, pairs, hook, max_norm_ratio, shard_size) -> dict:
    return {
        "kind": "feature_summaries",
        "model": getattr(model.cfg, "model_name", None),
        "model_weights": weights_fingerprint(model),
        "sae_weights": weights_fingerprint(sae),
        "d_sae": int(sae.cfg.d_sae),
        "hook": hook,
        "n_pairs": len(pairs),
        "pairs_digest": pairs_digest(pairs[i] for i in range(len(pairs))),
        "max_norm_ratio": max_norm_ratio,
        "spans": list(SPANS),
        "shard_size": shard_size,
    }


def _read_feature_shards(out: Path, records: Sequence[dict], manifest: dict) -> PairFeatures:
    parts = []
    for r in records:
        with np.load(out / r["file"]) as z:
            parts.append(PairFeatures._from_arrays(z, r["ids"], manifest["spans"], manifest["hook"], manifest["d_sae"]))
    if not parts:
        empty = {s: sp.csr_matrix((0, manifest["d_sae"]), dtype=np.float32) for s in manifest["spans"]}
        return PairFeatures([], dict(empty), dict(empty), {s: np.zeros(0, np.int64) for s in manifest["spans"]},
                            manifest["hook"], manifest["d_sae"])
    return concat_features(parts)


def load_pair_features(cache_dir: str | Path) -> PairFeatures:
    """Merge the shards of a ``feature_summaries(cache_dir=...)`` directory into one ``PairFeatures``.

    Every shard's sha256 is verified against its record and every shard must have been
    made under the directory's manifest (same pairs, model and SAE weights, hook and
    settings); the shards must cover the pairs exactly once. Otherwise a ``CacheError``
    names the corrupt, foreign, overlapping or missing shards.
    """
    out = Path(cache_dir)
    manifest, records = load_shard_records(out, "feature_summaries")
    return _read_feature_shards(out, records, manifest)


@torch.no_grad()
def _summaries(model, sae, pairs, lo, hi, *, hook, batch_tokens, chunk_pairs, max_norm_ratio, progress) -> PairFeatures:
    """``feature_summaries`` of rows ``[lo, hi)``, in memory."""
    d_sae = sae.cfg.d_sae
    mx = {s: _CSRBuilder(d_sae) for s in SPANS}
    fq = {s: _CSRBuilder(d_sae) for s in SPANS}
    ntok = {s: [] for s in SPANS}
    ids = []
    rows = _Rows(pairs, lo, hi)
    for pid, spans in stream_pair_activations(model, rows, hook, batch_tokens=batch_tokens,
                                              chunk_pairs=chunk_pairs, progress=progress):
        ids.append(pid)
        for s in SPANS:
            idx, vmax, vfreq, n = encode_span(sae, spans[s], max_norm_ratio)
            mx[s].add(idx.cpu().numpy(), vmax.cpu().numpy())
            fq[s].add(idx.cpu().numpy(), vfreq.cpu().numpy())
            ntok[s].append(n)
    return PairFeatures(ids, {s: mx[s].build() for s in SPANS}, {s: fq[s].build() for s in SPANS},
                        {s: np.asarray(ntok[s], dtype=np.int64) for s in SPANS}, hook, d_sae)


class _Rows(Sequence):
    """Rows ``[lo, hi)`` of ``pairs`` as a sequence; a pair without an id keeps its index in ``pairs``."""

    def __init__(self, pairs, lo: int, hi: int):
        self.pairs, self.lo, self.hi = pairs, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[self.lo + i]
        return pair if "id" in pair else {**pair, "id": str(self.lo + i)}


# ----------------------------------------------------------------------------- concept clusters


def gate_weak_firing(features: PairFeatures, rho: float = 0.5,
                     reference: Sequence[str] = ("chosen", "rejected")) -> PairFeatures:
    """Count a feature as firing in a span only where it fires clearly.

    theta_g = ``rho`` x feature g's largest span max over the ``reference`` spans of all pairs.
    In every span, an entry whose max is below theta_g gets max = freq = 0; the others are
    kept as they are. Latents that are barely positive are where an SAE feature is least
    specific: in the organism, a hedge feature peaks at a median of 27 on planted hedges
    and 4.9 elsewhere, a "!" feature at 36 and 1.9 (``benchmarks/dev_protocol.md``, stop 18).

    rho: in [0, 1); 0 returns ``features`` unchanged.
    Returns a new ``PairFeatures`` (the input is not edited); ``meta["gate_rho"]`` = rho.
    """
    if not 0 <= rho < 1:
        raise ValueError(f"rho must be in [0, 1) (a share of each feature's largest max), got {rho}")
    if rho == 0:
        return features
    missing = [s for s in reference if s not in features.max]
    if missing:
        raise ValueError(f"reference spans {missing} are not in the features (spans: {features.spans})")
    top = np.zeros(features.d_sae or next(iter(features.max.values())).shape[1])
    for s in reference:
        top = np.maximum(top, features.max[s].max(axis=0).toarray().ravel())
    theta = rho * top
    mx, fq = {}, {}
    for s in features.spans:
        m = features.max[s].tocsr()
        keep = m.copy()
        keep.data = (m.data >= theta[m.indices]).astype(m.dtype)
        keep.eliminate_zeros()
        mx[s] = m.multiply(keep).tocsr()
        fq[s] = features.freq[s].tocsr().multiply(keep).tocsr()
    return PairFeatures(list(features.ids), mx, fq, dict(features.n_tokens), features.hook, features.d_sae,
                        {**features.meta, "gate_rho": rho})


def _as_span_tuple(span: str | Sequence[str]) -> tuple[str, ...]:
    return (span,) if isinstance(span, str) else tuple(span)


def _check_spans(features: PairFeatures, spans: Sequence[str]) -> None:
    """ValueError naming the first span that is not in ``features``."""
    for s in spans:
        if s not in features.freq:
            raise ValueError(f"span {s!r} is not in the features (spans: {features.spans})")


def membership_matrix(clusters: pd.DataFrame, d_sae: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``[d_sae, n_clusters]`` 0/1 membership of features in clusters, and the cluster sizes.

    ``clusters``: `cluster_features` output (columns feature, cluster; -1 = in no cluster,
    dropped). Columns are the cluster ids 0 .. max. Raises ValueError for a table without
    those columns or a feature id outside ``0 .. d_sae - 1``.
    """
    if not isinstance(clusters, pd.DataFrame) or not {"feature", "cluster"} <= set(clusters.columns):
        raise ValueError("`clusters` must be a pandas DataFrame with columns 'feature' and 'cluster' "
                         "(anatomy.features.cluster_features)")
    member = clusters[clusters["cluster"] >= 0]
    feat = member["feature"].to_numpy(dtype=np.int64)
    if len(feat) and (feat.min() < 0 or feat.max() >= d_sae):
        bad = int(feat[(feat < 0) | (feat >= d_sae)][0])
        raise ValueError(f"`clusters` names feature {bad}, outside the SAE's 0..{d_sae - 1}")
    n_clusters = int(member["cluster"].max()) + 1 if len(member) else 0
    M = sp.csr_matrix((np.ones(len(member)), (feat, member["cluster"].to_numpy(dtype=np.int64))),
                      shape=(d_sae, n_clusters))
    return M, np.asarray(M.sum(axis=0)).ravel()


def firing_matrix(features: PairFeatures, span: str | Sequence[str] = ("chosen", "rejected")) -> sp.csr_matrix:
    """Binary firing ``[n_pairs * n_spans, d_sae]`` (freq > 0), spans stacked vertically."""
    mats = []
    _check_spans(features, _as_span_tuple(span))
    for s in _as_span_tuple(span):
        m = features.freq[s].tocsr().copy()
        m.data = (m.data > 0).astype(np.float32)
        m.eliminate_zeros()
        mats.append(m)
    return sp.vstack(mats).tocsr()


def _xlogx_ratio(p_ab: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = p_ab * np.log(p_ab / (p_a * p_b))
    return np.where(p_ab > 0, t, 0.0)


def nmi_matrix(binary: sp.spmatrix | np.ndarray, *, block: int = 1024) -> np.ndarray:
    """Normalised mutual information between all pairs of binary columns, from co-occurrence counts.

    For columns i, j with counts ``n_i``, ``n_j`` and co-occurrence ``c_ij`` over
    ``N`` rows, the 2x2 contingency table is ``(c, n_i - c, n_j - c, N - n_i - n_j + c)``;
    NMI = MI / mean(H_i, H_j) (scikit-learn's ``normalized_mutual_info_score``
    with ``average_method="arithmetic"``). A column with zero entropy has NMI 0
    with every other column.

    Returns:
        ``np.ndarray[n_cols, n_cols]`` (float32); the diagonal is 1 where the entropy is > 0, else 0.
    """
    B = sp.csr_matrix(binary, dtype=np.float64)
    N = B.shape[0]
    n = np.asarray(B.sum(0)).ravel()
    p = n / N
    H = -(_xlogx_ratio(p, np.ones_like(p), np.ones_like(p)) + _xlogx_ratio(1 - p, np.ones_like(p), np.ones_like(p)))
    Bt = B.T.tocsr()
    m = B.shape[1]
    out = np.zeros((m, m), dtype=np.float32)
    for a in range(0, m, block):
        b = min(a + block, m)
        c = np.asarray((Bt[a:b] @ B).todense())  # co-occurrence counts [b - a, m]
        pi, pj = p[a:b, None], p[None, :]
        p11 = c / N
        p10 = pi - p11
        p01 = pj - p11
        p00 = 1 - pi - pj + p11
        mi = (_xlogx_ratio(p11, pi, pj) + _xlogx_ratio(p10, pi, 1 - pj)
              + _xlogx_ratio(p01, 1 - pi, pj) + _xlogx_ratio(p00, 1 - pi, 1 - pj))
        denom = (H[a:b, None] + H[None, :]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            nmi = np.where(denom > 0, mi / denom, 0.0)
        out[a:b] = np.clip(nmi, 0.0, 1.0)
    return out


def _knn_edges(nmi: np.ndarray, k: int, *, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union-symmetrised k-nearest-neighbour edges of a similarity matrix [n, n].

    Each row keeps its ``k`` largest off-diagonal entries that are > 0; an edge (i, j),
    i < j, is kept when j is among i's neighbours or i among j's. Returns (i, j, weight).
    """
    n = nmi.shape[0]
    k = min(k, n - 1)
    nbr = np.empty((n, k), dtype=np.int64)
    for a in range(0, n, block):  # a block of rows at a time: no second n x n matrix
        sim = nmi[a:a + block].copy()
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf
        nbr[a:a + block] = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    cols = nbr.ravel()
    w = nmi[rows, cols]  # the diagonal is never among the k picked (k <= n - 1, set to -inf above)
    ok = w > 0
    i, j = np.minimum(rows[ok], cols[ok]), np.maximum(rows[ok], cols[ok])
    key = np.unique(i.astype(np.int64) * n + j)
    i, j = key // n, key % n
    return i, j, nmi[i, j]


def cluster_features(
    features: PairFeatures,
    *,
    span: str | Sequence[str] = ("chosen", "rejected"),
    top_percentile: float = 99.0,
    graph: str = "threshold",
    n_neighbors: int = 15,
    min_size: int = 4,
    min_fires: int = 5,
    resolution: float = 1.0,
    isolates: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Group co-firing features into concept clusters (NMI graph + Leiden).

    1. Binary firing per pair-span (``freq > 0``) over ``span``.
    2. NMI between every two features firing in at least ``min_fires`` pair-spans
       (and not in all of them), vectorised from co-occurrence counts (``nmi_matrix``).
    3. A weighted graph (weight = NMI). ``graph="threshold"`` (METHOD §3.3, the default):
       the top ``100 - top_percentile`` % of feature pairs by NMI. ``graph="knn"``: each
       feature's ``n_neighbors`` highest-NMI partners, union-symmetrised, so that a few
       hub features with many strong partners cannot take every edge around them.
    4. Leiden (``leidenalg.RBConfigurationVertexPartition``, ``resolution``, ``seed``)
       finds communities; clusters smaller than ``min_size`` are dropped.
    ``isolates=True``: before step 3, a feature whose best NMI partner is at or below the
    ``top_percentile`` cut (no edge in the threshold graph) leaves the graph and becomes a
    cluster of its own, numbered after the communities and exempt from ``min_size``: a
    concept the SAE gives one feature (after `gate_weak_firing`, the organism's "!").

    Returns:
        DataFrame with one row per feature (``d_sae`` rows): ``feature``,
        ``cluster`` (0, 1, ... by decreasing size; -1 unclustered), ``n_fires``,
        ``cluster_size`` (0 if unclustered). ``attrs["nmi_threshold"]`` holds the
        edge threshold (the smallest kept NMI for ``"knn"``), ``attrs["n_candidates"]``
        the features considered, ``attrs["graph"]`` and ``attrs["n_edges"]`` the graph, ``attrs["n_isolates"]``.
    """
    return cluster_features_sweep(features, [resolution], span=span, top_percentile=top_percentile, graph=graph,
                                  n_neighbors=n_neighbors, min_size=min_size, min_fires=min_fires,
                                  isolates=isolates, seed=seed)[resolution]


def cluster_features_sweep(
    features: PairFeatures,
    resolutions: Sequence[float],
    *,
    span: str | Sequence[str] = ("chosen", "rejected"),
    top_percentile: float = 99.0,
    graph: str = "threshold",
    n_neighbors: int = 15,
    min_size: int = 4,
    min_fires: int = 5,
    isolates: bool = False,
    seed: int = 0,
) -> dict[float, pd.DataFrame]:
    """`cluster_features` at several Leiden resolutions from one NMI graph (the NMI, not
    Leiden, is the expensive step). Returns {resolution: the `cluster_features` DataFrame}."""
    import igraph as ig
    import leidenalg

    if graph not in ("threshold", "knn"):
        raise ValueError(f"graph must be 'threshold' or 'knn', got {graph!r}")
    if graph == "knn" and n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    B = firing_matrix(features, span)
    n_rows, d_sae = B.shape
    n_fires = np.asarray(B.sum(0)).ravel().astype(np.int64)
    cand = np.flatnonzero((n_fires >= min_fires) & (n_fires < n_rows))
    threshold, n_edges, g = float("nan"), 0, None
    isolated = np.zeros(0, dtype=np.int64)
    n_candidates = len(cand)
    if len(cand) >= 2:
        nmi = nmi_matrix(B[:, cand])
        if graph == "threshold" or isolates:  # METHOD's cut: the top 100 - top_percentile % of feature pairs
            iu, ju = np.triu_indices(len(cand), k=1)
            threshold = float(np.percentile(nmi[iu, ju], top_percentile))
            del iu, ju
        if isolates:  # no partner above the cut: a concept of its own, out of the graph
            np.fill_diagonal(nmi, 0.0)  # (nothing below reads the diagonal)
            alone = nmi.max(axis=1) <= threshold
            isolated, cand = cand[alone], cand[~alone]
            nmi = nmi[np.ix_(~alone, ~alone)]
        if graph == "threshold":
            iu, ju = np.triu_indices(len(cand), k=1)
            vals = nmi[iu, ju]
            keep = (vals > threshold) & (vals > 0)  # threshold 0: fewer pairs than asked carry any information
            iu, ju, vals = iu[keep], ju[keep], vals[keep]
        else:
            iu, ju, vals = (_knn_edges(nmi, n_neighbors) if len(cand) >= 2  # isolates may leave fewer
                            else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)))
            threshold = float(vals.min()) if len(vals) else float("nan")
        del nmi
        n_edges = int(len(vals))
        g = ig.Graph(n=len(cand), edges=np.column_stack([iu, ju]).tolist())
        g.es["weight"] = vals.astype(float).tolist()
    out = {}
    for resolution in resolutions:
        cluster = np.full(d_sae, -1, dtype=np.int64)
        if g is not None and g.vcount():  # isolates can leave no feature in the graph
            part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                            resolution_parameter=resolution, seed=seed)
            memb = np.asarray(part.membership)
            sizes = np.bincount(memb)
            big = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] >= min_size]
            remap = {c: i for i, c in enumerate(big)}
            cluster[cand] = [remap.get(c, -1) for c in memb]
        if len(isolated):
            cluster[isolated] = cluster.max() + 1 + np.arange(len(isolated))
        sizes = np.bincount(cluster[cluster >= 0], minlength=max(0, cluster.max() + 1))
        df = pd.DataFrame({"feature": np.arange(d_sae), "cluster": cluster, "n_fires": n_fires,
                           "cluster_size": np.where(cluster >= 0, sizes[np.maximum(cluster, 0)] if len(sizes) else 0, 0)})
        df.attrs.update({"nmi_threshold": threshold, "n_candidates": int(n_candidates), "graph": graph,
                         "n_edges": n_edges, "span": list(_as_span_tuple(span)), "n_isolates": int(len(isolated))})
        out[resolution] = df
    return out


def cluster_scores(
    features: PairFeatures,
    clusters: pd.DataFrame,
    *,
    stat: str = "freq",
    span: str | Sequence[str] = ("chosen", "rejected"),
) -> pd.DataFrame:
    """Per pair and cluster, the sum of the member features' ``stat`` (``freq`` or ``max``).

    With several spans the sums are added over them (for chosen + rejected:
    METHOD §3.4's symmetric activity ``s_im``); pass one span for per-span scores.

    Returns:
        DataFrame ``[n_pairs, n_clusters]``, index ``features.ids``, columns the cluster ids.
    """
    if stat not in ("freq", "max"):
        raise ValueError(f"stat {stat!r} is not 'freq' or 'max'")
    mats = getattr(features, stat)
    _check_spans(features, _as_span_tuple(span))
    M, _ = membership_matrix(clusters, next(iter(mats.values())).shape[1])
    n_clusters = M.shape[1]
    total = None
    for s in _as_span_tuple(span):
        part = mats[s] @ M
        total = part if total is None else total + part
    return pd.DataFrame(np.asarray(total.todense()), index=pd.Index(features.ids, name="id"),
                        columns=pd.RangeIndex(n_clusters, name="cluster"))


# ----------------------------------------------------------------------------- labels


@torch.no_grad()
def _top_contexts(model, sae, pairs, feature_ids, *, top_k, window, hook, batch_tokens, progress):
    """One streaming pass: per feature a heap of its ``top_k`` (pair, span) maxima with windows,
    and the corpus token counts."""
    hook = hook or sae_hook(sae)
    check_sae_fits(sae, model, hook)
    fids = torch.as_tensor(np.asarray(feature_ids, dtype=np.int64))
    F = len(fids)
    heaps: list[list] = [[] for _ in range(F)]
    floor = np.zeros(F)  # smallest kept max per feature once its heap is full
    vocab = len(model.tokenizer)
    corpus = np.zeros(vocab, dtype=np.int64)
    tok = {}
    counter = 0
    dtype = next(sae.parameters()).dtype
    for i, (pid, spans) in enumerate(stream_pair_activations(model, pairs, hook, batch_tokens=batch_tokens,
                                                             progress=progress)):
        pair = pairs[i]
        enc_c = tokenize_pairs(model, [pair])[0]
        ids_c = np.asarray(enc_c["chosen"]["input_ids"])
        ids_r = np.asarray(enc_c["rejected"]["input_ids"])
        tok = {"prompt": ids_c[np.asarray(enc_c["chosen"]["prompt_mask"])],
               "chosen": ids_c[np.asarray(enc_c["chosen"]["response_mask"])],
               "rejected": ids_r[np.asarray(enc_c["rejected"]["response_mask"])]}
        for s in SPANS:
            x = spans[s]
            if len(x) == 0:
                continue
            corpus += np.bincount(tok[s], minlength=vocab)[:vocab]
            z = sae.encode(x.to(dtype))[:, fids] * typical_tokens(sae, x)[:, None]  # [tok, F]; no sink maxima
            vals, pos = z.max(0)
            vals = vals.numpy()
            for f in np.flatnonzero((vals > 0) & (vals > floor)):
                p = int(pos[f])
                a, b = max(0, p - window), min(len(x), p + window + 1)
                entry = (float(vals[f]), counter, pid, s, p - a, tok[s][a:b].tolist(), z[a:b, f].tolist())
                counter += 1
                if len(heaps[f]) < top_k:
                    heapq.heappush(heaps[f], entry)
                else:
                    heapq.heappushpop(heaps[f], entry)
                if len(heaps[f]) == top_k:
                    floor[f] = heaps[f][0][0]
    return [sorted(h, reverse=True) for h in heaps], corpus


def _enriched_tokens(window_counts: np.ndarray, corpus: np.ndarray, tokenizer, n: int = 3,
                     prior: float = 10.0) -> list[tuple[str, float]]:
    """Tokens most over-represented in the windows vs the corpus: log-odds z-scores with an
    informative Dirichlet prior (Monroe et al. 2008) of total mass ``prior`` x vocabulary share."""
    nw, nc = window_counts.sum(), corpus.sum()
    if nw == 0:
        return []
    cand = np.flatnonzero(window_counts)
    alpha0 = prior * len(cand)
    a = alpha0 * (corpus[cand] + 1) / (nc + len(corpus))
    y, c = window_counts[cand], corpus[cand]
    lw = np.log((y + a) / (nw + alpha0 - y - a))
    lc = np.log((c + a) / (nc + alpha0 - c - a))
    var = 1.0 / (y + a) + 1.0 / (c + a)
    z = (lw - lc) / np.sqrt(var)
    order = np.argsort(-z)[:n]
    return [(tokenizer.decode([int(cand[o])]), float(z[o])) for o in order]


def _snippets(entries, tokenizer) -> list[dict]:
    return [{"pair_id": pid, "span": s, "max": v, "argmax": j,
             "tokens": [tokenizer.decode([t]) for t in toks], "acts": [round(float(x), 4) for x in acts]}
            for v, _, pid, s, j, toks, acts in entries]


def _label_prompt(snippets: list[dict]) -> str:
    lines = ["These text snippets all strongly activate one feature of a language model; the most "
             "activating token is marked with [[ ]]. Give a short label (a few words) for what the feature detects.",
             ""]
    for sn in snippets:
        t = list(sn["tokens"])
        t[sn["argmax"]] = f"[[{t[sn['argmax']]}]]"
        lines.append(f"- ({sn['span']}) " + "".join(t).replace("\n", "\\n"))
    return "\n".join(lines)


def _label(top: list[tuple[str, float]], snippets: list[dict], labeler: Callable[[str], str] | None) -> str:
    """The enriched tokens joined, or ``labeler``'s answer on the snippets when one is given."""
    if labeler is not None and snippets:
        return str(labeler(_label_prompt(snippets))).strip()
    return " · ".join(t.strip() or repr(t) for t, _ in top) if top else "(never fires)"


def label_features(
    model,
    sae,
    pairs: Sequence[dict],
    feature_ids: Sequence[int],
    *,
    top_k: int = 8,
    window: int = 4,
    labeler: Callable[[str], str] | None = None,
    hook: str | None = None,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> pd.DataFrame:
    """Navigation labels for features from their top-activating contexts (offline by default).

    Streams the pairs once, keeping for each feature its ``top_k`` strongest
    (pair, span) maxima with ``window`` tokens either side. The label is the
    three tokens most enriched in those windows relative to all tokens streamed
    (log-odds with an informative Dirichlet prior); with ``labeler`` (a callable
    prompt -> label, e.g. an LLM endpoint) the label is its answer instead.
    Labels are for navigation only.

    Returns:
        DataFrame, one row per feature: ``feature``, ``label``, ``top_tokens``
        (list of (token, z)), ``max_act``, ``n_examples``, ``snippets`` (list of
        ``{"pair_id", "span", "max", "argmax", "tokens", "acts"}`` for highlighting).
    """
    df = _label_table(model, sae, pairs, feature_ids, top_k=top_k, window=window, labeler=labeler, hook=hook,
                      batch_tokens=batch_tokens, progress=progress)
    corpus = df.attrs["corpus_counts"]
    df = df.drop(columns="window_tokens")
    df.attrs["corpus_counts"] = corpus
    return df


def _label_table(model, sae, pairs, feature_ids, *, top_k, window, labeler, hook, batch_tokens, progress):
    feature_ids = [int(f) for f in feature_ids]
    heaps, corpus = _top_contexts(model, sae, pairs, feature_ids, top_k=top_k, window=window, hook=hook,
                                  batch_tokens=batch_tokens, progress=progress)
    vocab = len(corpus)
    rows = []
    for f, entries in zip(feature_ids, heaps):
        wt = np.concatenate([np.asarray(e[5], dtype=np.int64) for e in entries]) if entries else np.zeros(0, np.int64)
        top = _enriched_tokens(np.bincount(wt, minlength=vocab), corpus, model.tokenizer)
        snips = _snippets(entries, model.tokenizer)
        rows.append({"feature": f, "label": _label(top, snips, labeler), "top_tokens": top,
                     "max_act": entries[0][0] if entries else 0.0, "n_examples": len(entries), "snippets": snips,
                     "window_tokens": wt})
    df = pd.DataFrame(rows, columns=["feature", "label", "top_tokens", "max_act", "n_examples", "snippets",
                                     "window_tokens"])
    df.attrs["corpus_counts"] = corpus
    return df


def label_clusters(
    model,
    sae,
    pairs: Sequence[dict],
    clusters: pd.DataFrame,
    *,
    cluster_ids: Sequence[int] | None = None,
    top_k: int = 8,
    window: int = 4,
    labeler: Callable[[str], str] | None = None,
    hook: str | None = None,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> pd.DataFrame:
    """Navigation labels for concept clusters: the member features' contexts pooled.

    One streaming pass over ``pairs`` (``label_features`` on every member of the
    selected clusters); a cluster's label is the tokens most enriched in the
    windows of all its members, or ``labeler``'s answer on its strongest snippets.

    Returns:
        DataFrame, one row per cluster: ``cluster``, ``label``, ``size``,
        ``top_tokens``, ``features``, ``feature_labels``, ``snippets`` (the
        ``top_k`` strongest over members).
    """
    member = clusters[clusters["cluster"] >= 0]
    if cluster_ids is not None:
        member = member[member["cluster"].isin(list(cluster_ids))]
    feats = _label_table(model, sae, pairs, member["feature"].tolist(), top_k=top_k, window=window,
                         labeler=None, hook=hook, batch_tokens=batch_tokens, progress=progress)
    corpus = feats.attrs["corpus_counts"]
    by_f = feats.set_index("feature")
    rows = []
    for c, grp in member.groupby("cluster"):
        fs = grp["feature"].tolist()
        counts = np.bincount(np.concatenate([by_f.loc[f, "window_tokens"] for f in fs]), minlength=len(corpus))
        snips = sorted((s for f in fs for s in by_f.loc[f, "snippets"]), key=lambda s: -s["max"])[:top_k]
        top = _enriched_tokens(counts, corpus, model.tokenizer)
        rows.append({"cluster": int(c), "label": _label(top, snips, labeler), "size": len(fs), "top_tokens": top, "features": fs,
                     "feature_labels": [by_f.loc[f, "label"] for f in fs], "snippets": snips})
    return pd.DataFrame(rows)
