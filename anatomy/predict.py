"""Stage 5b: predicted vs observed shift per concept (METHOD §4).

Takes per-pair concept scores of the preference data read by the pre-DPO model
(``anatomy.features.cluster_scores(..., span="chosen")`` / ``span="rejected"``, annotator
counts of the chosen and rejected texts, direction projections) and per-rollout
scores of the policy before and after DPO (``evals.measure``); returns

- ``predict_shift``: one number per concept, the data's chosen-minus-rejected
  signal (the paper's signed disparity ``u``, or a z-scored gap);
  ``predict_shift_from_features``: the paper's ``u`` averaged over each cluster's
  member features, from ``anatomy.features.PairFeatures``;
- ``observed_shift``: per concept, the rollouts' activity before and after and
  the shift with a bootstrap CI that resamples prompts;
- ``noise_ceiling``: how reliable the observed shifts are across concepts (split halves of
  the prompts, and of the samples per prompt, Spearman–Brown corrected), and so the largest
  R² that even a perfect prediction could reach against them;
- ``compare``: how well the prediction explains the observation (R², Pearson,
  Spearman, slope ± SE) and a labelled scatter (plotly);
- ``recovery``: how much of plain DPO's shift a shaped run undoes, per concept, with a
  prompt-bootstrap CI (METHOD §5: 0 = the plain-DPO rate, 100 = the pre-DPO rate), and
  the shaped run's change against plain DPO for untargeted concepts.

``predict_shift(..., plan=inputs)`` predicts the *shaped* shift from the
``interventions.TrainInputs`` a plan compiles to (see its docstring).

Concepts are matched by name: prefix the predicted Series to match ``measure``'s
``<lens>:<concept>`` columns (``predict_shift(..., prefix="sae:")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["compare", "noise_ceiling", "observed_shift", "predict_shift", "predict_shift_from_features",
           "recovery"]


def _check_finite(df: pd.DataFrame, what: str, key: pd.Index | None = None) -> None:
    bad = ~np.isfinite(df.to_numpy(dtype=float))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        where = f"row {df.index[r]!r}" if key is None else f"{key.name or 'row'} {key[r]!r}"
        raise ValueError(f"{what}: concept {df.columns[c]!r} has a non-finite value at {where} "
                         f"({int(bad.sum())} in all); drop or fill those rows first")


def _rollout_values(df: pd.DataFrame, concepts: Sequence, prompt_col: str, stat: str, tau: float,
                    name: str) -> pd.DataFrame:
    """``[rollouts, concepts]`` of what a shift averages: ``1[x > tau]`` (``stat="rate"``) or ``x``
    (``"mean"``); a non-finite score is refused, naming the concept and the prompt."""
    x = df[list(concepts)].astype(float)
    _check_finite(x, name, pd.Index(df[prompt_col].to_numpy(), name=prompt_col))
    return (x > tau).astype(float) if stat == "rate" else x


def _sums(values: pd.DataFrame, keys, order: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Per group of ``keys`` (one key per rollout), in the order of ``order``: the sum of ``values``
    ``[groups, concepts]`` and the number of rollouts ``[groups]`` (0 for a group with none)."""
    g = values.groupby(keys)
    return (g.sum().reindex(order).fillna(0.0).to_numpy(),
            g.size().reindex(order).fillna(0).to_numpy(dtype=float))


def predict_shift(
    chosen_scores: pd.DataFrame,
    rejected_scores: pd.DataFrame,
    *,
    method: Literal["u", "z_gap"] = "u",
    tau: float = 0.01,
    prefix: str = "",
    plan=None,
) -> pd.Series:
    """The data's chosen-minus-rejected signal per concept: what DPO is predicted to teach.

    Both tables are ``[pairs, concepts]`` with the same index (pair ids, in the
    same order) and the same columns, e.g. ``anatomy.features.cluster_scores(features,
    clusters, span="chosen")`` and ``span="rejected"``.

    - ``"u"``: the frequency-based signed disparity, mean over pairs of
      ``1[chosen > tau] - 1[rejected > tau]``, in [-1, 1]: the share of pairs where
      only the chosen response shows the concept minus the share where only the
      rejected one does. (The paper averages the indicator over a cluster's member
      features first: ``predict_shift_from_features``; here it is taken on the
      cluster's score.)
    - ``"z_gap"``: ``mean(chosen - rejected) / s_pooled`` with
      ``s_pooled = sqrt((var(chosen) + var(rejected)) / 2)`` (sample variances,
      ddof 1; Cohen's d of the two sides). A concept constant on both sides gives
      0 if the gap is 0, else ±inf.

    With ``plan`` (``interventions.TrainInputs`` from ``compile_plan`` for these pairs,
    in the same order) the prediction is of the shaped run, to first order in the
    DPO gradient at the first step: pair i's gradient is scaled by
    ``g_i = w_i · 2σ(−o_i)`` (``σ(−z)`` is the DPO gradient weight at logit ``z``,
    ``1/2`` unshaped) with ``w`` the weights and ``o`` the offsets plus the
    ``effective_offsets`` of the policy hooks and prompts; the concept's scores are
    scaled by the share of its tokens the masks keep (``token_share``, matched by the
    column's name to the concept key's name). Each pair's indicator (``"u"``) or gap
    (``"z_gap"``) is then averaged with the weights ``g_i`` over all pairs (a dropped
    pair adds 0). An empty plan gives the unshaped prediction. A concept explained
    away by a strong offset gets ``g_i → 0`` on the pairs that carry it: predicted ≈ 0.

    Args:
        prefix: prepended to the concept names (e.g. ``"sae:"`` to match ``evals.sae_scorer``).
        plan: ``TrainInputs`` (a compiled plan) or None.

    Returns:
        Series indexed by concept (``prefix + str(column)`` when a prefix is given),
        named ``method``; ``attrs["n_pairs"]``.

    Raises:
        ValueError: the tables' columns or index differ (naming the difference),
            they are empty, hold non-finite values, or ``method`` is unknown.
    """
    if method not in ("u", "z_gap"):
        raise ValueError(f"method must be 'u' or 'z_gap', got {method!r}")
    for name, df in (("chosen_scores", chosen_scores), ("rejected_scores", rejected_scores)):
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"`{name}` must be a pandas DataFrame (pairs x concepts), got {type(df).__name__}")
    c, r = chosen_scores, rejected_scores
    only_c = [x for x in c.columns if x not in set(r.columns)]
    only_r = [x for x in r.columns if x not in set(c.columns)]
    if only_c or only_r:
        raise ValueError(f"chosen and rejected scores have different concepts: only in chosen {only_c[:10]}, "
                         f"only in rejected {only_r[:10]}")
    if len(c) == 0 or len(c.columns) == 0:
        raise ValueError(f"no scores to compare ({len(c)} pairs, {len(c.columns)} concepts)")
    if not c.index.equals(r.index):
        raise ValueError("chosen and rejected scores must have the same pair index, in the same order "
                         f"(first chosen ids {list(c.index[:3])}, first rejected ids {list(r.index[:3])})")
    r = r[c.columns]
    _check_finite(c, "chosen_scores")
    _check_finite(r, "rejected_scores")
    cv, rv = c.to_numpy(dtype=float), r.to_numpy(dtype=float)
    g = np.ones(len(c))
    if plan is not None:
        g, cv, rv = _shaped(plan, c, cv, rv)
    if method == "u":
        values = (g[:, None] * ((cv > tau).astype(float) - (rv > tau).astype(float))).mean(0)
    else:
        gap = (g[:, None] * (cv - rv)).mean(0)
        ddof = 1 if len(cv) > 1 else 0
        pooled = np.sqrt((cv.var(0, ddof=ddof) + rv.var(0, ddof=ddof)) / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(pooled > 0, gap / np.where(pooled > 0, pooled, 1), np.sign(gap) * np.inf)
    index = pd.Index([f"{prefix}{x}" for x in c.columns] if prefix else c.columns, name="concept")
    out = pd.Series(values, index=index, name=method)
    out.attrs["n_pairs"] = len(c)
    if plan is not None:
        out.attrs["gradient_weight_mean"] = float(g.mean())
    return out


def _shaped(plan, c: pd.DataFrame, cv: np.ndarray, rv: np.ndarray):
    """Per-pair gradient weights ``g`` and the masked scores of a compiled plan (see ``predict_shift``)."""
    if not hasattr(plan, "train_kwargs"):
        raise TypeError(f"plan must be the TrainInputs of compile_plan(plan, model, pairs), got {type(plan).__name__}"
                        " (compile a Plan first)")
    ids = [str(x) for x in plan.ids]
    if ids != [str(x) for x in c.index]:
        raise ValueError(f"plan was compiled for other pairs than the scores' index ({len(ids)} vs {len(c)} pairs; "
                         f"first plan ids {ids[:3]}, first score ids {list(c.index[:3])})")
    o = np.zeros(len(c))
    for extra in (plan.offsets, plan.effective_offsets):
        if extra is not None:
            o = o + np.asarray(extra, dtype=float)
    w = np.ones(len(c)) if plan.weights is None else np.asarray(plan.weights, dtype=float)
    g = w * 2.0 / (1.0 + np.exp(o))  # w · 2σ(−o)
    cv, rv = cv.copy(), rv.copy()
    for key, share in (plan.token_share or {}).items():
        name = key.split(":", 1)[-1]
        for j, col in enumerate(c.columns):
            if str(col) == name:
                cv[:, j] *= 1 - share[:, 0]
                rv[:, j] *= 1 - share[:, 1]
    return g, cv, rv


def recovery(
    before: pd.DataFrame,
    plain: pd.DataFrame,
    shaped: pd.DataFrame,
    *,
    concepts: Sequence[str],
    prompt_col: str = "prompt_id",
    stat: Literal["rate", "mean"] = "rate",
    tau: float = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """How much of plain DPO's shift a shaped run undoes, per concept, with a prompt-bootstrap CI.

    ``recovery = (plain − shaped) / (plain − before) × 100`` on the rollouts' rates
    (``stat="rate"``: share of rollouts with score > ``tau``) or means: 0 = the
    shaped run shows the concept as much as plain DPO, 100 = as little as the
    pre-DPO model. ``change = shaped − plain`` is the run's off-target effect for
    concepts it did not target. The CI resamples prompts (all samples of a drawn
    prompt) with the same draw in the three frames; a replicate where plain DPO did
    not move the concept (``plain = before``) gives no recovery and is left out
    (``n_boot_used``).

    Args:
        before, plain, shaped: ``evals.measure`` outputs of the pre-DPO model, plain DPO
            and the shaped run on the same prompts.
        concepts: the score columns to read.

    Returns:
        DataFrame indexed by concept: ``before``, ``plain``, ``shaped``, ``recovery``,
        ``ci_low``, ``ci_high``, ``n_boot_used``, ``change``, ``change_ci_low``,
        ``change_ci_high``.
    """
    if stat not in ("rate", "mean"):
        raise ValueError(f"stat must be 'rate' or 'mean', got {stat!r}")
    frames = {"before": before, "plain": plain, "shaped": shaped}
    concepts = list(concepts)
    sets = {}
    for name, df in frames.items():
        missing = [c for c in [prompt_col, *concepts] if c not in df.columns]
        if missing:
            raise ValueError(f"`{name}` lacks column(s) {missing[:10]}")
        sets[name] = set(df[prompt_col])
    if not sets["before"] == sets["plain"] == sets["shaped"]:
        raise ValueError("before, plain and shaped must cover the same prompts")
    prompts = pd.Index(sorted(sets["before"], key=str))

    S = {k: _sums(_rollout_values(v, concepts, prompt_col, stat, tau, k), v[prompt_col].to_numpy(), prompts)
         for k, v in frames.items()}
    mean = {k: s.sum(0) / n.sum() for k, (s, n) in S.items()}
    rng = np.random.default_rng(seed)
    P = len(prompts)
    W = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(float)
    boot = {k: (W @ s) / (W @ n)[:, None] for k, (s, n) in S.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = (mean["plain"] - mean["shaped"]) / (mean["plain"] - mean["before"]) * 100
        rec_b = (boot["plain"] - boot["shaped"]) / (boot["plain"] - boot["before"]) * 100
    rec = np.where(np.isfinite(rec), rec, np.nan)
    rec_b = np.where(np.isfinite(rec_b), rec_b, np.nan)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    lo, hi, used = [], [], []
    for j in range(len(concepts)):
        col = rec_b[:, j][~np.isnan(rec_b[:, j])]
        used.append(len(col))
        a, b = np.quantile(col, q) if len(col) else (np.nan, np.nan)
        lo.append(a)
        hi.append(b)
    change_b = boot["shaped"] - boot["plain"]
    c_lo, c_hi = np.quantile(change_b, q, axis=0)
    out = pd.DataFrame({
        "before": mean["before"], "plain": mean["plain"], "shaped": mean["shaped"], "recovery": rec,
        "ci_low": lo, "ci_high": hi, "n_boot_used": used, "change": mean["shaped"] - mean["plain"],
        "change_ci_low": c_lo, "change_ci_high": c_hi,
    }, index=pd.Index(concepts, name="concept"))
    out.attrs.update({"stat": stat, "tau": tau, "n_boot": n_boot, "ci": ci, "seed": seed, "n_prompts": P})
    return out


def predict_shift_from_features(features, clusters: pd.DataFrame, *, tau: float = 0.01,
                                prefix: str = "sae:") -> pd.Series:
    """The paper's signed disparity per cluster (METHOD §3.4), from per-feature firing frequencies.

    ``u_m = mean over pairs i of mean over g in T_m of (1[freq_chosen_ig > tau] - 1[freq_rejected_ig > tau])``.

    Args:
        features: ``anatomy.features.PairFeatures`` (``freq["chosen"]``, ``freq["rejected"]``).
        clusters: ``anatomy.features.cluster_features`` output (``feature``, ``cluster``; -1 = none).

    Returns:
        Series indexed ``prefix + cluster`` for clusters ``0 .. max`` (named ``"u"``).
    """
    from .features import _check_spans, membership_matrix

    if isinstance(clusters, pd.DataFrame) and "cluster" in clusters and not (clusters["cluster"] >= 0).any():
        raise ValueError("clusters has no feature in a cluster (all cluster ids are -1)")
    if len(features) == 0:
        raise ValueError("features has no pairs")
    _check_spans(features, ("chosen", "rejected"))
    M, sizes = membership_matrix(clusters, features.freq["chosen"].shape[1])
    n_clusters = M.shape[1]

    def fired(span):
        m = features.freq[span].tocsr().copy()
        m.data = (m.data > tau).astype(np.float64)
        return m

    per_pair = (fired("chosen") - fired("rejected")) @ M  # [n_pairs, n_clusters]: sum over members
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.asarray(per_pair.mean(0)).ravel() / sizes
    index = pd.Index([f"{prefix}{c}" for c in range(n_clusters)], name="concept")
    out = pd.Series(u, index=index, name="u")
    out.attrs["n_pairs"] = len(features)
    return out


def _concept_columns(before: pd.DataFrame, after: pd.DataFrame, prompt_col: str,
                     concepts: Sequence[str] | None) -> list:
    if concepts is None:
        def numeric(df):
            return [c for c in df.columns if c not in (prompt_col, "sample")
                    and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
        concepts = numeric(before)
        extra = [c for c in numeric(after) if c not in set(concepts)]
        if extra:
            raise ValueError(f"concept column(s) {extra[:10]} are in `after` but not in `before`")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("no concept columns to compare")
    for name, df in (("before", before), ("after", after)):
        missing = [c for c in concepts if c not in df.columns]
        if missing:
            raise ValueError(f"concept column(s) {missing[:10]} missing from `{name}`")
    return concepts


def _before_after(before: pd.DataFrame, after: pd.DataFrame, prompt_col: str, stat: str,
                  concepts: Sequence[str] | None) -> tuple[list, pd.Index]:
    """The checks every before-vs-after reading shares: ``stat``, the prompt column, non-empty
    frames, the concept columns (``_concept_columns``) and the same prompts on both sides.
    Returns the concept columns and the prompts (sorted as strings)."""
    if stat not in ("rate", "mean"):
        raise ValueError(f"stat must be 'rate' or 'mean', got {stat!r}")
    for name, df in (("before", before), ("after", after)):
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"`{name}` must be a pandas DataFrame (evals.measure output), got {type(df).__name__}")
        if prompt_col not in df.columns:
            raise ValueError(f"`{name}` has no prompt column {prompt_col!r}; columns: {list(df.columns)[:10]}")
        if len(df) == 0:
            raise ValueError(f"`{name}` has no rollouts")
    concepts = _concept_columns(before, after, prompt_col, concepts)
    pb, pa = set(before[prompt_col]), set(after[prompt_col])
    if pb != pa:
        raise ValueError(f"before and after cover different prompts: only before {sorted(pb - pa, key=str)[:5]}, "
                         f"only after {sorted(pa - pb, key=str)[:5]} ({len(pb - pa)} and {len(pa - pb)} in all)")
    return concepts, pd.Index(sorted(pb, key=str), name=prompt_col)


def observed_shift(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    prompt_col: str = "prompt_id",
    stat: Literal["rate", "mean"] = "rate",
    tau: float = 0.01,
    concepts: Sequence[str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per concept, the rollouts' activity before and after training, and the shift with a prompt-bootstrap CI.

    Each rollout's score ``x`` becomes ``1[x > tau]`` (``stat="rate"``: the share
    of rollouts showing the concept; ``tau=0.01`` reads SAE firing frequencies as
    in ``predict_shift`` and counts as "at least one") or stays ``x``
    (``stat="mean"``). ``before`` / ``after`` are the means over all rollouts
    (equal to the mean of per-prompt means when every prompt has the same number
    of samples); the shift ``effect = after - before``.

    The CI is a percentile cluster bootstrap over prompts: each replicate draws
    ``n_prompts`` prompts with replacement and takes *all* samples of each drawn
    prompt, in ``before`` and in ``after`` alike (the same draw for both), so the
    interval reflects prompt-to-prompt variation and the pairing of before and
    after on the same prompt. Both frames must cover the same prompts.

    Args:
        before, after: ``evals.measure`` outputs (one row per rollout with ``prompt_col``).
        concepts: columns to compare; default every numeric column of ``before``
            except ``prompt_col`` and ``sample`` (``after`` must have the same ones).
        n_boot: bootstrap replicates; ``ci``: the interval's coverage; ``seed``: the bootstrap's seed.

    Returns:
        DataFrame indexed by concept: ``before``, ``after``, ``effect`` (the shift),
        ``ci_low``, ``ci_high``, ``se`` (bootstrap standard deviation of the shift),
        ``n_prompts``, ``n_before``, ``n_after`` (rollouts); ``attrs`` holds the settings.

    Raises:
        ValueError: missing columns, different prompt sets (naming some), NaN
            scores (naming the concept and prompt), or bad settings.
    """
    if not 0 < ci < 1 or n_boot < 1:
        raise ValueError(f"need 0 < ci < 1 and n_boot >= 1 (got ci={ci}, n_boot={n_boot})")
    concepts, prompts = _before_after(before, after, prompt_col, stat, concepts)
    Sb, Nb = _sums(_rollout_values(before, concepts, prompt_col, stat, tau, "before"), before[prompt_col].to_numpy(),
                   prompts)
    Sa, Na = _sums(_rollout_values(after, concepts, prompt_col, stat, tau, "after"), after[prompt_col].to_numpy(),
                   prompts)
    b_mean, a_mean = Sb.sum(0) / Nb.sum(), Sa.sum(0) / Na.sum()
    rng = np.random.default_rng(seed)
    P = len(prompts)
    W = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(float)  # [n_boot, P] prompt draw counts
    boot = (W @ Sa) / (W @ Na)[:, None] - (W @ Sb) / (W @ Nb)[:, None]
    lo, hi = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    out = pd.DataFrame({
        "before": b_mean, "after": a_mean, "effect": a_mean - b_mean, "ci_low": lo, "ci_high": hi,
        "se": boot.std(0, ddof=1) if n_boot > 1 else np.nan,
        "n_prompts": P, "n_before": len(before), "n_after": len(after),
    }, index=pd.Index(concepts, name="concept"))
    out.attrs.update({"stat": stat, "tau": tau, "n_boot": n_boot, "ci": ci, "seed": seed})
    return out


def noise_ceiling(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    prompt_col: str = "prompt_id",
    sample_col: str = "sample",
    stat: Literal["rate", "mean"] = "rate",
    tau: float = 0.01,
    concepts: Sequence[str] | None = None,
    n_splits: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """How reliable the observed shifts are across concepts: the R² a perfect prediction could reach.

    ``compare`` correlates a predicted shift with the shift ``observed_shift`` measures on a
    finite set of rollouts. The measured shift is the true shift plus rollout noise, so even
    a prediction equal to the true shift explains only part of its variance across concepts:
    ``R²_max = var(true) / var(observed)``, the reliability of the observed shift. A lens whose
    R² is near this ceiling predicts as well as the rollouts can show; one far below it does not.

    How it is computed. Inputs, ``stat``, ``tau`` and ``concepts`` are those of
    ``observed_shift`` (pass the same frames and settings, e.g. the same standardised columns:
    the reliability depends on each concept's units). Per concept the shift of a set of rollouts
    is ``after − before`` of the per-rollout values (``1[x > tau]`` or ``x``), each side pooled
    over its rollouts, as in ``observed_shift``.

    - ``split="prompts"``: ``n_splits`` times, the prompts are drawn into two random halves
      (``floor(P/2)`` and the rest; the same halves for before and after); each half gives a
      vector of shifts over the concepts; ``r`` is the Pearson correlation of the two vectors.
      A split whose half-vectors are constant (no variance across concepts) gives no ``r`` and
      is left out (``n_splits`` counts the splits used). This reliability covers all the noise
      of the measurement: which prompts were drawn and which samples each gave.
    - ``split="samples"``: the same with every prompt kept in both halves and, per prompt, its
      sample ids drawn into two halves (``floor(k/2)`` and the rest; sample ``s`` before and
      sample ``s`` after go to the same half: ``evals.rollouts`` gives them the same random
      draws). Only when every prompt has at least 2 samples on each side; otherwise the row is
      NaN with ``n_splits = 0``. It covers the sampling noise on these prompts only, so it is
      at least as high as the prompts' row, up to split noise.

    ``r_half`` is the mean of ``r`` over the splits, ``reliability`` its Spearman–Brown
    correction to the full set of rollouts, ``2 r_half / (1 + r_half)`` (a half has half the
    rollouts); ``split_low`` / ``split_high`` are the 2.5th and 97.5th percentiles of the
    per-split ``2r / (1 + r)`` (how much the estimate depends on the random split, not a
    sampling CI). ``ceiling_r2 = reliability`` clipped to [0, 1]: the expected R² of a perfect
    predictor. (A prediction with noise of its own can reach at most ``ceiling_r2`` times its
    own reliability.) The prompts' row is the ceiling to report beside ``compare``'s R². Both
    are estimates from the same rollouts: with few concepts an R² can exceed its ceiling by chance.

    Args:
        before, after: ``evals.measure`` outputs of the same prompts (one row per rollout, with
            ``prompt_col`` and, for the sample split, ``sample_col``).
        n_splits: random splits per row; ``seed``: their seed (the prompt and sample splits
            draw from separate streams, so either row is the same whether or not the other
            can be computed).

    Returns:
        DataFrame indexed by ``split`` ("prompts", "samples"): ``r_half``, ``reliability``,
        ``split_low``, ``split_high``, ``ceiling_r2``, ``n`` (concepts), ``n_splits`` (splits
        used), ``n_prompts``, ``n_samples`` (the fewest samples of a prompt on either side);
        ``attrs`` holds the settings.

    Raises:
        ValueError: fewer than 2 prompts or 3 concepts, ``n_splits < 1``, and everything
            ``observed_shift`` refuses (missing columns, different prompts, NaN scores).
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ValueError(f"n_splits must be an integer >= 1, got {n_splits!r}")
    concepts, prompts = _before_after(before, after, prompt_col, stat, concepts)
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 prompts to split them into halves, got {len(prompts)}")
    if len(concepts) < 3:
        raise ValueError(f"need at least 3 concepts to correlate shifts across concepts, got {len(concepts)}")
    values = {name: _rollout_values(df, concepts, prompt_col, stat, tau, name)
              for name, df in (("before", before), ("after", after))}
    frames = {"before": before, "after": after}

    def prompt_sums(name):
        return _sums(values[name], frames[name][prompt_col].to_numpy(), prompts)

    rows = {"prompts": _split_half_r(prompt_sums("before"), prompt_sums("after"),
                                     _prompt_halves(len(prompts), n_splits, np.random.default_rng(seed)))}
    has_samples = all(sample_col in df.columns for df in frames.values())
    n_samples = min(int(df.groupby(prompt_col)[sample_col].nunique().min()) for df in frames.values()) \
        if has_samples else 0
    if n_samples >= 2:  # (prompt, sample) units, each in one half, before and after alike
        units = pd.MultiIndex.from_frame(
            pd.concat([df[[prompt_col, sample_col]] for df in frames.values()]).drop_duplicates()
            .sort_values([prompt_col, sample_col], key=lambda c: c.astype(str)))

        def unit_sums(name):
            df = frames[name]
            return _sums(values[name], [df[prompt_col].to_numpy(), df[sample_col].to_numpy()], units)

        halves = _sample_halves(units.get_level_values(0), n_splits, np.random.default_rng([seed, 1]))
        rows["samples"] = _split_half_r(unit_sums("before"), unit_sums("after"), halves)
    out = []
    for split in ("prompts", "samples"):
        r = rows.get(split, np.array([]))
        r_half = float(r.mean()) if len(r) else np.nan
        lo, hi = np.quantile(r, [0.025, 0.975]) if len(r) else (np.nan, np.nan)
        rel = _spearman_brown(r_half)
        out.append({"split": split, "r_half": r_half, "reliability": rel, "split_low": _spearman_brown(lo),
                    "split_high": _spearman_brown(hi),
                    "ceiling_r2": np.nan if np.isnan(rel) else float(np.clip(rel, 0.0, 1.0)),
                    "n": len(concepts), "n_splits": len(r), "n_prompts": len(prompts), "n_samples": n_samples})
    table = pd.DataFrame(out).set_index("split")
    table.attrs.update({"stat": stat, "tau": tau, "n_splits": n_splits, "seed": seed})
    return table


def _spearman_brown(r: float) -> float:
    """The reliability of the full set from the correlation of its two halves: ``2r / (1 + r)``
    (``-inf`` at ``r = -1``, NaN for NaN)."""
    r = float(r)
    if not np.isfinite(r):
        return np.nan
    return 2 * r / (1 + r) if r > -1 else -np.inf


def _prompt_halves(n_prompts: int, n_splits: int, rng: np.random.Generator) -> np.ndarray:
    """``bool[n_splits, n_prompts]``: per split, a random ``floor(n/2)`` of the prompts (half A)."""
    halves = np.zeros((n_splits, n_prompts), dtype=bool)
    for k in range(n_splits):
        halves[k, rng.permutation(n_prompts)[: n_prompts // 2]] = True
    return halves


def _sample_halves(prompt_of_unit, n_splits: int, rng: np.random.Generator) -> np.ndarray:
    """``bool[n_splits, n_units]``: per split and prompt, a random ``floor(k/2)`` of the prompt's
    ``k`` (prompt, sample) units in half A; every prompt is in both halves."""
    codes = pd.factorize(np.asarray(prompt_of_unit), sort=False)[0]
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    halves = np.zeros((n_splits, len(codes)), dtype=bool)
    for k in range(n_splits):
        order = np.lexsort((rng.random(len(codes)), codes))  # grouped by prompt, shuffled within
        rank = np.arange(len(codes)) - starts[codes[order]]
        halves[k, order] = rank < sizes[codes[order]] // 2
    return halves


def _split_half_r(before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray],
                  halves: np.ndarray) -> np.ndarray:
    """Per split, the Pearson r across concepts of the two halves' shifts.

    ``before`` / ``after``: ``(sums [units, concepts], counts [units])``; ``halves``:
    ``bool[n_splits, units]`` (True: half A). A shift is ``after − before``, each side pooled
    over its rollouts in the half. Splits with a constant half-vector (or an empty side) are
    dropped. Returns ``r[n_used]``.
    """
    H = halves.astype(float)

    def shift(W):
        (Sb, Nb), (Sa, Na) = before, after
        with np.errstate(divide="ignore", invalid="ignore"):
            return (W @ Sa) / (W @ Na)[:, None] - (W @ Sb) / (W @ Nb)[:, None]

    a, b = shift(H), shift(1.0 - H)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a * b).sum(1) / den
    return r[np.isfinite(r) & (den > 1e-24)]


def compare(
    predicted: pd.Series,
    observed: pd.DataFrame | pd.Series,
    *,
    labels: Mapping | pd.Series | None = None,
    title: str | None = None,
):
    """How well the predicted shift explains the observed shift, across concepts.

    Args:
        predicted: ``predict_shift`` output (Series by concept).
        observed: ``observed_shift`` output (uses ``effect`` and, for error bars,
            ``ci_low`` / ``ci_high``) or a Series of shifts.
        labels: concept -> text shown beside its point (default: the concept name).

    Returns:
        ``(stats, fig)``. ``stats``: ``n`` (concepts); ``r2``: R² of the
        least-squares line ``observed = a + b * predicted`` (= Pearson r²);
        ``r2_origin``: ``1 - Σ(y - b0 x)² / Σ(y - ȳ)²`` for the best zero-intercept
        line ``y = b0 x`` (centred, so comparable with ``r2`` and negative when a
        line through the origin fits worse than the mean; it asks whether
        "no signal in the data" means "no shift"); ``pearson_r``, ``pearson_p``,
        ``spearman_rho``, ``spearman_p`` (two-sided); ``slope``, ``slope_se``,
        ``intercept``, ``intercept_se`` (OLS, ``scipy.stats.linregress``);
        ``slope_origin``. ``fig``: a plotly scatter, observed vs predicted, with
        the observed CIs as error bars, text labels and the fitted line. An
        observed shift that is the same for every concept (nothing moved) has no
        correlation to explain: ``r2`` and the correlations are then NaN.

    Raises:
        ValueError: concepts present on one side only (named), fewer than 3
            concepts, non-finite values, or a constant prediction.
    """
    import plotly.graph_objects as go
    from scipy import stats as st

    if not isinstance(predicted, pd.Series):
        raise ValueError(f"`predicted` must be a pandas Series by concept, got {type(predicted).__name__}")
    if not isinstance(observed, (pd.Series, pd.DataFrame)):
        raise ValueError(f"`observed` must be a pandas DataFrame (observed_shift output) or Series, "
                         f"got {type(observed).__name__}")
    obs = observed.to_frame("effect") if isinstance(observed, pd.Series) else observed
    if "effect" not in obs.columns:
        raise ValueError(f"observed needs an 'effect' column (observed_shift output); columns: {list(obs.columns)}")
    only_p = [c for c in predicted.index if c not in set(obs.index)]
    only_o = [c for c in obs.index if c not in set(predicted.index)]
    if only_p or only_o:
        raise ValueError(f"predicted and observed cover different concepts: only predicted {only_p[:10]}, "
                         f"only observed {only_o[:10]} ({len(only_p)} and {len(only_o)} in all); "
                         "select the same concepts (a prefix such as 'sae:' may be missing)")
    concepts = list(predicted.index)
    x = predicted.to_numpy(dtype=float)
    y = obs.loc[concepts, "effect"].to_numpy(dtype=float)
    for name, v in (("predicted", x), ("observed", y)):
        if not np.isfinite(v).all():
            raise ValueError(f"{name} shift is not finite for concept(s) "
                             f"{[c for c, ok in zip(concepts, np.isfinite(v)) if not ok][:10]}")
    if len(concepts) < 3:
        raise ValueError(f"need at least 3 concepts to fit and test a line, got {len(concepts)}")
    if np.ptp(x) == 0:
        raise ValueError("the predicted shift is the same for every concept: no line can be fitted")

    fit = st.linregress(x, y)
    pr = st.pearsonr(x, y)
    sr = st.spearmanr(x, y)
    b0 = float(x @ y / (x @ x))
    sst = float(((y - y.mean()) ** 2).sum())
    r2_origin = 1 - float(((y - b0 * x) ** 2).sum()) / sst if sst > 0 else float("nan")
    stats = {
        "n": len(concepts), "r2": float(fit.rvalue ** 2), "r2_origin": r2_origin,
        "pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue),
        "slope": float(fit.slope), "slope_se": float(fit.stderr),
        "intercept": float(fit.intercept), "intercept_se": float(fit.intercept_stderr),
        "slope_origin": b0,
    }

    lab = labels if labels is not None else {}
    text = [str(lab.get(c, c)) for c in concepts]
    error_y = None
    if {"ci_low", "ci_high"} <= set(obs.columns):
        lo, hi = obs.loc[concepts, "ci_low"].to_numpy(float), obs.loc[concepts, "ci_high"].to_numpy(float)
        error_y = dict(type="data", symmetric=False, array=np.maximum(hi - y, 0), arrayminus=np.maximum(y - lo, 0),
                       thickness=1)
    xs = np.linspace(x.min(), x.max(), 50)
    fig = go.Figure([
        go.Scatter(x=x, y=y, mode="markers+text", text=text, textposition="top center", error_y=error_y,
                   customdata=np.asarray(concepts, dtype=object), name="concepts",
                   hovertemplate="%{customdata}<br>predicted %{x:.3g}<br>observed %{y:.3g}<extra></extra>"),
        go.Scatter(x=xs, y=fit.intercept + fit.slope * xs, mode="lines", name=f"fit: slope {fit.slope:.3g}",
                   line=dict(dash="dash")),
    ])
    method = getattr(predicted, "name", None) or "predicted"
    fig.update_layout(
        title=title or (f"Predicted vs observed shift: R² = {stats['r2']:.2f}, "
                        f"Spearman ρ = {stats['spearman_rho']:.2f} (n = {stats['n']})"),
        xaxis_title=f"predicted shift ({method})", yaxis_title="observed shift (after − before)",
        template="plotly_white", showlegend=True,
    )
    fig.add_hline(y=0, line_width=1, line_color="grey")
    fig.add_vline(x=0, line_width=1, line_color="grey")
    return stats, fig
