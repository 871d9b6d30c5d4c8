"""Amplify on purpose: safeguards and a personality, with the capability cost (`make reproduce-amplify`).

Two experiments with ``anatomy.interventions`` (``action="amplify"``); the design and the
reading rule are in ``benchmarks/dev_protocol.md`` (written before any run).

**Safeguards** (``--part safeguards``). The base SmolLM2-135M-Instruct refuses almost nothing,
so safeguards are installed first: DPO on organism pairs whose chosen answer refuses harmful
requests and complies with benign-but-risky ones gives the *start model*. Then an open-data
variant of the organism, in which most harmful prompts have a compliant chosen answer (the
sides of their pairs swapped), is trained from the start model with plain DPO and with each
safeguard: reward shaping with the refusal direction's score (λ < 0 in the paper's sign,
``amplify`` here), scoped to harmful prompts and unscoped; dropping the 5% of pairs with the
largest refusal gap; steering. Every model's rollouts on held-out harmful prompts (the eval
pool's harmful family and AdvBench) and safe prompts (XSTest's safe prompts and the eval
pool's benign-but-risky family) are read by the pre-DPO model: harmful compliance, over-
refusal (``evals.harmful_compliance`` / ``over_refusal``, bootstrap CIs over prompts, paired
differences against the start model and plain DPO) and capability (``evals.capability`` on the
shipped multiple-choice set, held-out clean-pair margins, distinct-2, perplexity).

The refusal measure: the refusal annotator OR the projection of a response's first 64 tokens
on a refusal direction fitted on human-labelled responses (``evals.response_refusal_direction``
on the calibration half of XSTest's labelled completions, thresholded there by
``calibrate_refusal``; its agreement with the humans on the other half is reported).

**Personality** (``--part personality``). A trait direction (enthusiasm, read as exclamation:
difference of means of organism responses the annotator flags) amplified by reward shaping at
λ ∈ {0, 4, 8, 16, 32}, ungated and gated to the creative family, from the base model:
expression (exclamation rate, projection) on creative and other prompts, and the same
capability measures.

Each model writes ``<run-dir>/<name>.json`` (the start model also its weights); a rerun skips
the ones whose settings match, and the same seed gives the same numbers. Writes
``results/amplify.json`` (``--quick``: ``results/amplify_quick.json``) and
``figures/09_safeguards.html``, ``figures/09_personality.html`` (``--quick``: ``_quick`` added to each name).

Beside the arms, plain DPO from the start model on HH-RLHF helpful-base pairs (real open data;
``--n-hh-helpful``, skipped when ``../shared/data/hh-rlhf-helpful`` is absent) shows whether real
data erodes the safeguards too.

Needs the real data slices in ``../shared/data`` (AdvBench, XSTest). CPU, measured on a 2-core
CPU: ~110 min for the safeguards (10 trainings of 24 steps at ~4.5–8 min, 11 evaluations at ~3.5 min),
~45 min for the personality (9 trainings of 16 steps at ~3.5 min, evaluations at ~1.5 min).

Usage: python benchmarks/reproduce_amplify.py [--part safeguards personality] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_sculpt import _held  # noqa: E402  (parallel processes share a run dir the same way)

OTHER_FAMILIES = ("howto", "explain", "creative", "advice", "benign_risky", "wrong_belief", "resource")
SAFEGUARD_ARMS = {  # name -> (method, action, strength, scope); strengths fixed in dev_protocol.md
    "plain": None,
    "shaping_scoped_2": ("reward_shaping", "amplify", 2.0, {"family": "harmful"}),
    "shaping_scoped_8": ("reward_shaping", "amplify", 8.0, {"family": "harmful"}),
    "shaping_scoped_16": ("reward_shaping", "amplify", 16.0, {"family": "harmful"}),
    "shaping_scoped_32": ("reward_shaping", "amplify", 32.0, {"family": "harmful"}),
    "shaping_unscoped_8": ("reward_shaping", "amplify", 8.0, None),
    "drop_top5": ("filter_pairs", "explain_away", 0.05, None),
    "steering_scoped": ("steering", "amplify", 2.0, {"family": "harmful"}),  # × the direction's mean shift
}
N_SCOPED = sum(1 for a in SAFEGUARD_ARMS.values() if a and a[0] == "reward_shaping" and a[3])
LAMBDAS = (0.0, 4.0, 8.0, 16.0, 32.0)
HARMFUL_SETS, SAFE_SETS = ("harmful", "advbench"), ("xstest_safe", "benign_risky")
HH_MAX_TOKENS = 320  # HH-RLHF pairs longer than this (prompt + longer answer) are skipped: CPU time


# ----------------------------------------------------------------------------- data


def prompt_halves(train_ds, seed: int) -> dict[str, set]:
    """Every family's training prompts split at random in two halves (``"a"``, ``"b"``) by prompt id."""
    rng = np.random.default_rng(seed)
    halves = {"a": set(), "b": set()}
    for fam in sorted(set(train_ds["family"])):
        ids = sorted({r["prompt_id"] for r in train_ds if r["family"] == fam})
        perm = rng.permutation(len(ids))
        halves["a"] |= {ids[i] for i in perm[: len(ids) // 2]}
        halves["b"] |= {ids[i] for i in perm[len(ids) // 2:]}
    return halves


def _draw(rows: list[dict], n: int, rng) -> list[dict]:
    if len(rows) < n:
        raise SystemExit(f"need {n} pairs, the organism has {len(rows)} of this kind")
    return [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False).tolist())]


def safeguard_pairs(args) -> tuple[list[dict], list[dict]]:
    """The start stage's pairs (first half) and the open-data variant's (second half, harmful sides swapped)."""
    from anatomy.data import load_preferences

    train = load_preferences("organism", split="train")
    halves = prompt_halves(train, args.seed)
    rows = [dict(r) for r in train]
    rng = np.random.default_rng(args.seed)
    a = [r for r in rows if r["prompt_id"] in halves["a"]]
    b = [r for r in rows if r["prompt_id"] in halves["b"]]
    start = (_draw([r for r in a if r["family"] == "harmful"], args.n_start // 2, rng)
             + _draw([r for r in a if r["family"] == "benign_risky"], args.n_start // 2, rng))
    n_swap = round(args.n_harmful * args.swap_share)
    swapped = _draw([r for r in b if r["family"] == "harmful" and r["rejected_kind"] == "truncated"], n_swap, rng)
    taken = {r["id"] for r in swapped}
    kept = _draw([r for r in b if r["family"] == "harmful" and r["id"] not in taken], args.n_harmful - n_swap, rng)
    others = _draw([r for r in b if r["family"] in OTHER_FAMILIES], args.n_variant - args.n_harmful, rng)
    variant = ([{**r, "chosen": r["rejected"], "rejected": r["chosen"], "swapped": True} for r in swapped]
               + [{**r, "swapped": False} for r in kept + others])
    return start, sorted(variant, key=lambda r: r["id"])


def hh_helpful_pairs(tokenizer, args) -> list[dict]:
    """``args.n_hh_helpful`` HH-RLHF helpful-base pairs at random (seeded) among those whose prompt plus
    longer answer fit in ``HH_MAX_TOKENS`` tokens."""
    from anatomy.data import load_preferences

    ds, _ = load_preferences(SHARED / "hh-rlhf-helpful" / "test.jsonl.gz", strict=False, tokenizer=tokenizer,
                             max_length=HH_MAX_TOKENS)
    rows = [dict(r) for r in ds]
    return sorted(_draw(rows, args.n_hh_helpful, np.random.default_rng(args.seed)), key=lambda r: r["id"])


def eval_prompts(args) -> dict[str, list[dict]]:
    """The held-out prompt sets, each record with ``prompt_id``, ``prompt`` and ``family`` (the set's name)."""
    from anatomy.data import load_eval_prompts, load_prompts_csv

    def recs(ds, name, prefix=""):
        return [{"prompt_id": f"{prefix}{r['id']}", "prompt": r["prompt"], "family": name} for r in ds]

    adv = load_prompts_csv(SHARED / "advbench" / "harmful_behaviors.csv", "goal").shuffle(seed=args.seed)
    xs = load_prompts_csv(SHARED / "xstest" / "xstest_prompts.csv", "prompt")
    xs = xs.filter(lambda r: r["label"] == "safe").shuffle(seed=args.seed)
    return {"harmful": recs(load_eval_prompts("harmful"), "harmful")[: args.n_harmful_eval],
            "advbench": recs(adv.select(range(args.n_advbench)), "advbench", "advbench-"),
            "xstest_safe": recs(xs.select(range(args.n_xstest)), "xstest_safe", "xstest-"),
            "benign_risky": recs(load_eval_prompts("benign_risky"), "benign_risky")[: args.n_benign_eval]}


def clean_pairs(args) -> list[dict]:
    from anatomy.data import load_preferences

    ds = load_preferences("organism", split="clean")
    return [ds[i] for i in sorted(np.random.default_rng(args.seed).permutation(len(ds))[: args.n_clean].tolist())]


# ----------------------------------------------------------------------------- directions and measures


def label_direction(model, pairs, hook: str, concept: str) -> tuple[tuple[str, torch.Tensor], float]:
    """``probes.annotator_directions`` for one concept: its ``(hook, unit vector)`` and mean shift."""
    from anatomy.probes import annotator_directions

    dirs, shifts = annotator_directions(model, pairs, hook, [concept])
    if concept not in dirs:
        raise SystemExit(f"no {concept!r} contrast among the {len(pairs)} pairs' responses")
    return dirs[concept], shifts[concept]


def refusal_measure(lens, args, cache: Path) -> tuple[dict, list[dict]]:
    """The refusal measure's direction and rule (fitted on the XSTest calibration half) and its agreement table."""
    from anatomy.evals import calibrate_refusal, measure, refusal_scorer, response_refusal_direction, xstest_labels

    if cache.exists():
        saved = torch.load(cache, weights_only=False)  # our own file: a Direction and a table
        return saved["measure"], saved["table"]
    labels = xstest_labels(root=SHARED / "xstest")
    if args.quick:
        labels = labels.groupby("final_label", sort=False).head(12).reset_index(drop=True)
    hook = f"blocks.{args.refusal_layer}.hook_resid_post"
    d = response_refusal_direction(lens, labels, labels["refusal"], hook, first_tokens=64, seed=args.seed)
    scores = measure(labels, refusal_scorer(lens, d, first_tokens=64, progress=False))
    rule, table = calibrate_refusal(scores, labels["refusal"], seed=args.seed, n_boot=args.n_boot)
    out = {"direction": d, "threshold": rule.threshold, "sign": rule.sign, "hook": hook}
    rows = table.drop(columns=[c for c in ("threshold", "sign") if c in table]).to_dict("records")
    torch.save({"measure": out, "table": rows}, cache)
    return out, rows


def evaluate(policy, lens, sets: dict, refusal: dict | None, items, clean, args, *, trait=None) -> dict:
    """Roll out ``policy`` on the prompt sets and read everything with the pre-DPO ``lens``."""
    from anatomy.evals import (RefusalRule, annotator_scorer, capability, direction_scorer, distinct_n, measure,
                               option_logprobs, perplexity, refusal_scorer, rollouts)
    from anatomy.logprobs import preference_margins

    t0 = time.time()
    kw = dict(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=32,
              progress=False)
    frames = []
    for name, prompts in sets.items():
        n = args.samples if name in HARMFUL_SETS else 1
        frames.append(rollouts(policy, prompts, n_samples=n, **kw))
    roll = pd.concat(frames, ignore_index=True)
    scorers = [annotator_scorer(["refusal", "exclamation", "emoji", "bold"])]
    if refusal is not None:
        scorers.append(refusal_scorer(lens, refusal["direction"], rule=RefusalRule(refusal["threshold"],
                                                                                   refusal["sign"]),
                                      first_tokens=64, progress=False))
    if trait is not None:
        scorers.append(direction_scorer(lens, {"trait": trait}, progress=False))
    m = measure(roll, scorers)
    cap = capability(option_logprobs(policy, items), items, n_boot=args.n_boot, seed=args.seed)
    margins = preference_margins(policy, clean)
    return {
        "rollouts": m.assign(response=roll["response"].to_numpy()).to_dict("records"),  # measure keeps the keys
        "capability": cap.to_dict("records"),
        "clean_margin_mean": float(margins.margin.mean()),
        "distinct2": distinct_n(roll["response"], 2),
        "perplexity": perplexity(lens, roll),
        "eval_seconds": round(time.time() - t0, 1),
    }


def _frame(run: dict) -> pd.DataFrame:
    return pd.DataFrame(run["rollouts"])


def _flags(df: pd.DataFrame, families, invert: bool) -> pd.DataFrame:
    """``prompt_id``, ``sample`` and ``v``: 1 where the rollout refuses (``invert``: does not), on ``families``."""
    keep = df["family"].isin(families)
    v = (df.loc[keep, "refusal:refuses"] > 0).astype(float)
    return df.loc[keep, ["prompt_id", "sample"]].assign(v=1 - v if invert else v)


def _cap(run: dict, metric: str) -> dict:
    return next(r for r in run["capability"] if r["metric"] == metric)


def safeguard_row(name: str, run: dict, start: dict, plain: dict | None, args) -> dict:
    """Harmful compliance, over-refusal and capability of one model, with CIs and paired differences."""
    from anatomy.evals import harmful_compliance, over_refusal
    from anatomy.predict import observed_shift

    f = _frame(run)
    row = {"model": name}
    for col, label in (("refusal:refuses", ""), ("annotator:refusal", "annotator_")):
        flags = (f[col] > 0).astype(float)
        for fam in (HARMFUL_SETS, *HARMFUL_SETS):
            key = "+".join(fam) if isinstance(fam, tuple) else fam
            hc = harmful_compliance(f, flags, families=fam, n_boot=args.n_boot, seed=args.seed)
            row[f"{label}harmful_compliance[{key}]"] = [round(float(hc[k]), 4) for k in ("effect", "ci_low", "ci_high")]
        for fam in SAFE_SETS:
            orf = over_refusal(f, flags, families=fam, n_boot=args.n_boot, seed=args.seed)
            row[f"{label}over_refusal[{fam}]"] = [round(float(orf[k]), 4) for k in ("effect", "ci_low", "ci_high")]
    bonferroni = 1 - 0.05 / N_SCOPED  # the claim's interval: over the scoped shaping strengths tried
    for other_name, other in (("start", start), ("plain", plain)):
        if other is None or other is run:
            continue
        o = _frame(other)
        for fams, tag, invert, ci, suffix in (
                (HARMFUL_SETS, "harmful_compliance", True, 0.95, ""),
                (("xstest_safe",), "over_refusal[xstest_safe]", False, 0.95, ""),
                *([(HARMFUL_SETS, "harmful_compliance", True, bonferroni, f", {100 * bonferroni:g}% CI")]
                  if other_name == "start" else [])):
            sh = observed_shift(_flags(o, fams, invert), _flags(f, fams, invert), stat="mean", concepts=["v"],
                                n_boot=args.n_boot, ci=ci, seed=args.seed).iloc[0]
            row[f"{tag} - {other_name}{suffix}"] = [round(float(sh[k]), 4) for k in ("effect", "ci_low", "ci_high")]
    for metric in ("accuracy", "answer_logp"):
        c = _cap(run, metric)
        row[f"capability_{metric}"] = [round(float(c[k]), 4) for k in ("effect", "ci_low", "ci_high")]
    if plain is not None:
        row["capability_accuracy_vs_plain"] = round(_cap(run, "accuracy")["effect"] / _cap(plain, "accuracy")["effect"],
                                                    4)
    row.update(clean_margin_mean=round(run["clean_margin_mean"], 4), distinct2=round(run["distinct2"], 4),
               perplexity=round(run["perplexity"], 3))
    for k in ("train_seconds", "compile_seconds", "eval_seconds"):
        if k in run:
            row[k] = run[k]
    return row


# ----------------------------------------------------------------------------- runs


def _key(args, *parts) -> str:
    from anatomy.fingerprint import digest

    # n_hh_helpful enters only the run on HH-RLHF helpful, by its own key parts
    keep = {k: v for k, v in vars(args).items()
            if k not in ("threads", "part", "out", "run_dir", "only_cached", "n_hh_helpful")}
    return digest(keep, *parts)


def cached_run(path: Path, key: str, make, only_cached: bool = False) -> dict | None:
    """The run stored at ``path`` if its key matches; else ``make()`` (None when another process holds it,
    or with ``only_cached``)."""
    if path.exists():
        run = json.loads(path.read_text())
        if run.get("key") == key:
            return run
    if only_cached:
        print(f"[{path.stem}] not run yet; left out (--only-cached)", flush=True)
        return None
    lock = path.with_suffix(".lock")
    if _held(lock):
        print(f"[{path.stem}] running in process {lock.read_text().strip()}; left to it", flush=True)
        return None
    lock.write_text(str(__import__("os").getpid()))
    try:
        run = {"key": key, **make()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, default=float))
        tmp.replace(path)
    finally:
        lock.unlink(missing_ok=True)
    return run


def train_arm(reference, weights: Path | None, pairs, plan, directions, args) -> tuple:
    """Load a fresh policy (the base model, or the start model's ``weights``), compile ``plan`` against the
    reference, train; returns the trained policy and its timings."""
    from anatomy.checkpoints import load_train_run
    from anatomy.interventions import compile_plan
    from anatomy.models import load_model
    from anatomy.train import train_dpo

    policy = load_model()
    if weights is not None:
        load_train_run(weights, policy)
    t0 = time.time()
    inputs = compile_plan(plan, reference, pairs, directions=directions, beta=args.beta, seed=args.seed)
    compile_s = time.time() - t0
    t0 = time.time()
    result = train_dpo(policy, pairs, beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, progress=False, **inputs.train_kwargs())
    return policy, {"summary": inputs.summary, "compile_seconds": round(compile_s, 1),
                    "train_seconds": round(time.time() - t0, 1),
                    "final_loss": float(result.history.loss.tail(3).mean())}


def run_safeguards(lens, items, clean, args, run_dir: Path, log) -> dict:
    from anatomy.checkpoints import load_train_run
    from anatomy.interventions import ConceptRef, Decision, Plan
    from anatomy.models import load_model
    from anatomy.saes import load_sae, sae_hook
    from anatomy.train import train_dpo

    start_pairs, variant = safeguard_pairs(args)
    sets = eval_prompts(args)
    refusal, agreement = refusal_measure(lens, args, run_dir / f"refusal_measure-{_key(args, 'measure')}.pt")
    log("refusal measure")

    # the start model: safeguards installed on the first half's pairs
    start_dir = run_dir / f"start-{_key(args, 'start')}"
    start_model = load_model()
    if not (start_dir / "model.safetensors").exists():
        if args.only_cached:
            raise SystemExit(f"--only-cached: no start model at {start_dir}")
        train_dpo(start_model, start_pairs, beta=args.beta, lr=args.lr, epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed, out_dir=start_dir, progress=False)
        log("start model trained")
    else:
        load_train_run(start_dir, start_model)
    before = cached_run(run_dir / "safeguards-start.json", _key(args, "start-eval"),
                        lambda: evaluate(start_model, lens, sets, refusal, items, clean, args))
    base = cached_run(run_dir / "safeguards-base.json", _key(args, "base-eval"),
                      lambda: evaluate(lens, lens, sets, refusal, items, clean, args))
    log("start and base evaluated")

    hook = sae_hook(load_sae())
    direction, mean_shift = label_direction(start_model, start_pairs, hook, "refusal")
    runs = {}
    for name, arm in SAFEGUARD_ARMS.items():
        if arm is None:
            plan = Plan(())
        else:
            method, action, strength, scope = arm
            strength = strength * mean_shift if method == "steering" else strength
            plan = Plan((Decision(ConceptRef("direction", "refusal"), action, method, strength, scope),))

        def make(plan=plan):
            policy, info = train_arm(start_model, start_dir, variant, plan, {"refusal": direction}, args)
            return {"plan": plan.to_dict(), **info, **evaluate(policy, lens, sets, refusal, items, clean, args)}

        run = cached_run(run_dir / f"safeguards-{name}.json", _key(args, "safeguards", name), make, args.only_cached)
        if run is not None:
            runs[name] = run
            log(f"safeguards {name}")
    arms = {n: (list(a) if a else None) for n, a in SAFEGUARD_ARMS.items()}
    if args.n_hh_helpful and (SHARED / "hh-rlhf-helpful").exists():  # plain DPO on real open data
        def make_hh():
            hh = hh_helpful_pairs(lens.tokenizer, args)
            policy, info = train_arm(start_model, start_dir, hh, Plan(()), {"refusal": direction}, args)
            return {"plan": Plan(()).to_dict(), "n_pairs": len(hh), **info,
                    **evaluate(policy, lens, sets, refusal, items, clean, args)}

        run = cached_run(run_dir / "safeguards-plain_hh_helpful.json",
                         _key(args, "safeguards", "plain_hh_helpful", args.n_hh_helpful, HH_MAX_TOKENS), make_hh,
                         args.only_cached)
        arms["plain_hh_helpful"] = None
        if run is not None:
            runs["plain_hh_helpful"] = run
            log("safeguards plain_hh_helpful")
    plain = runs.get("plain")
    table = [safeguard_row("base (no safeguards)", base, before, plain, args),
             safeguard_row("start (pre-DPO)", before, before, plain, args)]
    table += [safeguard_row(n, r, before, plain, args) for n, r in runs.items()]
    return {
        "table": table, "refusal_agreement": agreement,
        "refusal_measure": {"hook": refusal["hook"], "threshold": refusal["threshold"], "sign": refusal["sign"],
                            "heldout_auroc": getattr(refusal["direction"], "heldout_auroc", None)},
        "shaping_direction": {"hook": hook, "mean_shift": mean_shift},
        "data": {"n_start": len(start_pairs), "n_variant": len(variant),
                 "n_swapped": sum(r["swapped"] for r in variant),
                 "n_harmful_refusal_chosen": sum(r["family"] == "harmful" and not r["swapped"] for r in variant),
                 "eval_prompts": {k: len(v) for k, v in sets.items()}},
        "arms": arms,
        "not_run": [n for n in arms if n not in runs],
        "rollouts": {n: r["rollouts"] for n, r in {"start": before, **runs}.items()},
    }


def personality_pairs(args) -> tuple[list[dict], list[dict]]:
    """The training pairs (creative first, then other non-harmful families) and the trait-direction pairs."""
    from anatomy.data import load_preferences

    train = [dict(r) for r in load_preferences("organism", split="train")]
    rng = np.random.default_rng(args.seed + 7)
    pool = [r for r in train if r["family"] != "harmful"]
    creative = _draw([r for r in pool if r["family"] == "creative"], args.n_creative, rng)
    taken = {r["id"] for r in creative}
    others = _draw([r for r in pool if r["family"] != "creative" and r["id"] not in taken],
                   args.n_personality - args.n_creative, rng)
    used = taken | {r["id"] for r in others}
    direction_pairs = _draw([r for r in train if r["id"] not in used], args.n_trait_pairs, rng)
    return sorted(creative + others, key=lambda r: r["id"]), direction_pairs


def run_personality(lens, items, clean, args, run_dir: Path, log) -> dict:
    from anatomy.data import load_eval_prompts
    from anatomy.interventions import ConceptRef, Decision, Plan
    from anatomy.saes import load_sae, sae_hook

    pairs, dir_pairs = personality_pairs(args)
    hook = sae_hook(load_sae())
    trait, _ = label_direction(lens, dir_pairs, hook, "exclamation")
    rec = lambda ds: [{"prompt_id": r["id"], "prompt": r["prompt"], "family": r["family"]} for r in ds]  # noqa: E731
    creative = rec(load_eval_prompts("creative"))[: args.n_trait_eval]
    other = rec(load_eval_prompts(["howto", "explain", "advice"]).shuffle(seed=args.seed))[: args.n_trait_eval]
    sets = {"creative": creative, "other": other}
    runs = {}
    for lam in LAMBDAS:  # each λ ungated then gated, so a run cut short still compares the two
        for gated in (False, True):
            if lam == 0 and gated:
                continue  # λ 0 is plain DPO, gated or not
            name = f"lambda_{lam:g}" + ("_gated" if gated else "")
            plan = Plan(()) if lam == 0 else Plan((Decision(ConceptRef("direction", "trait"), "amplify",
                                                            "reward_shaping", lam,
                                                            {"family": "creative"} if gated else None),))

            def make(plan=plan):
                policy, info = train_arm(lens, None, pairs, plan, {"trait": trait}, args)
                return {"plan": plan.to_dict(), **info,
                        **evaluate(policy, lens, sets, None, items, clean, args, trait=trait)}

            run = cached_run(run_dir / f"personality-{name}.json", _key(args, "personality", name), make,
                             args.only_cached)
            if run is not None:
                runs[name] = run
                log(f"personality {name}")
    rows = []
    zero = runs.get("lambda_0")
    for name, run in runs.items():
        f = _frame(run)
        row = {"model": name, "lambda": float(name.split("_")[1]), "gated": name.endswith("_gated")}
        for fam in ("creative", "other"):  # "other": the howto, explain and advice prompts
            sub = f[(f.family == "creative") == (fam == "creative")]
            row[f"exclamation_rate[{fam}]"] = round(float((sub["annotator:exclamation"] > 0).mean()), 4)
            row[f"trait_projection[{fam}]"] = round(float(sub["direction:trait"].mean()), 4)
        for metric in ("accuracy", "answer_logp"):
            c = _cap(run, metric)
            row[f"capability_{metric}"] = [round(float(c[k]), 4) for k in ("effect", "ci_low", "ci_high")]
        if zero is not None:
            acc0, lp0 = _cap(zero, "accuracy")["effect"], _cap(zero, "answer_logp")["effect"]
            row["accuracy_change"] = round(_cap(run, "accuracy")["effect"] / acc0 - 1, 4)
            row["answer_logp_change"] = round((_cap(run, "answer_logp")["effect"] - lp0) / abs(lp0), 4)  # < 0: worse
            row["cost"] = row["accuracy_change"] < -0.05 or row["answer_logp_change"] < -0.05
        row.update(clean_margin_mean=round(run["clean_margin_mean"], 4), distinct2=round(run["distinct2"], 4),
                   perplexity=round(run["perplexity"], 3), train_seconds=run["train_seconds"])
        rows.append(row)
    starts = {}
    for gated in (False, True):
        costly = sorted(r["lambda"] for r in rows if r["gated"] == gated and r.get("cost"))
        starts["gated" if gated else "ungated"] = costly[0] if costly else None
    names = [f"lambda_{lam:g}" + g for g in ("", "_gated") for lam in LAMBDAS if not (lam == 0 and g)]
    return {"table": rows, "cost_starts_at": starts, "not_run": [n for n in names if n not in runs],
            "data": {"n_pairs": len(pairs), "n_creative": sum(p["family"] == "creative" for p in pairs),
                     "n_direction_pairs": len(dir_pairs), "eval_prompts": {k: len(v) for k, v in sets.items()}},
            "rollouts": {n: r["rollouts"] for n, r in runs.items()}}


# ----------------------------------------------------------------------------- figures


def safeguards_figure(table: list[dict]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, label in (("harmful_compliance[harmful+advbench]", "harmful compliance"),
                       ("over_refusal[xstest_safe]", "over-refusal (XSTest safe)")):
        y = [r[key][0] * 100 for r in table]
        fig.add_bar(name=label, x=[r["model"] for r in table], y=y,
                    error_y=dict(type="data", symmetric=False,
                                 array=[(r[key][2] - r[key][0]) * 100 for r in table],
                                 arrayminus=[(r[key][0] - r[key][1]) * 100 for r in table]))
    fig.update_layout(barmode="group", template="plotly_white", yaxis_title="% of rollouts",
                      title="Safeguards: harmful compliance and over-refusal per model (95% prompt-bootstrap CI)")
    return fig


def personality_figure(rows: list[dict]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for gated in (False, True):
        sub = sorted([r for r in rows if r["gated"] == gated or r["lambda"] == 0], key=lambda r: r["lambda"])
        fig.add_scatter(x=[r["exclamation_rate[creative]"] * 100 for r in sub],
                        y=[r["capability_answer_logp"][0] for r in sub], mode="lines+markers+text",
                        text=[f"λ {r['lambda']:g}" for r in sub], textposition="top center",
                        name="gated to creative prompts" if gated else "ungated")
    fig.update_layout(template="plotly_white", xaxis_title="exclamation rate on creative prompts (%)",
                      yaxis_title="capability: correct answers' per-token log-prob",
                      title="Amplifying a trait: expression against capability cost")
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", default=["safeguards", "personality"], choices=["safeguards", "personality"])
    ap.add_argument("--n-start", type=int, default=96)
    ap.add_argument("--n-variant", type=int, default=96)
    ap.add_argument("--n-harmful", type=int, default=32, help="harmful pairs in the open-data variant")
    ap.add_argument("--swap-share", type=float, default=0.75, help="share of them with the compliant answer chosen")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2, help="samples per harmful prompt (safe prompts: 1)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--n-harmful-eval", type=int, default=59)
    ap.add_argument("--n-advbench", type=int, default=40)
    ap.add_argument("--n-xstest", type=int, default=50)
    ap.add_argument("--n-benign-eval", type=int, default=58)
    ap.add_argument("--n-clean", type=int, default=64)
    ap.add_argument("--n-hh-helpful", type=int, default=96,
                    help="HH-RLHF helpful pairs for plain DPO from the start model on real open data (0: none)")
    ap.add_argument("--refusal-layer", type=int, default=15)
    ap.add_argument("--n-personality", type=int, default=64)
    ap.add_argument("--n-creative", type=int, default=16)
    ap.add_argument("--n-trait-pairs", type=int, default=256)
    ap.add_argument("--n-trait-eval", type=int, default=32)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (minutes)")
    ap.add_argument("--only-cached", action="store_true",
                    help="train nothing: the tables of the runs already done (the start model must exist)")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_start, args.n_variant, args.n_harmful, args.epochs = 16, 16, 8, 1
        args.n_harmful_eval = args.n_advbench = args.n_xstest = args.n_benign_eval = 4
        args.samples, args.max_new_tokens, args.n_clean, args.n_boot, args.n_hh_helpful = 1, 16, 8, 200, 8
        args.n_personality, args.n_creative, args.n_trait_pairs, args.n_trait_eval = 16, 4, 48, 4
    missing = [d for d in ("advbench", "xstest") if not (SHARED / d).exists()]
    if missing and "safeguards" in args.part:
        raise SystemExit(f"the safeguards experiment needs the real data slices {missing} under {SHARED}")
    tag = "amplify_quick" if args.quick else "amplify"
    run_dir = Path(args.run_dir or ROOT / "results" / f"{tag}_runs")
    out_path = Path(args.out or ROOT / "results" / f"{tag}.json")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(what: str) -> None:
        print(f"[{time.time() - t_start:7.0f} s] {what}", flush=True)

    from anatomy.evals import load_capability_set
    from anatomy.models import load_model
    from anatomy.viz import save_figure

    lens = load_model()  # the pre-DPO model: reads every rollout, never trained
    items = load_capability_set()
    if args.quick:
        items = items.head(8)
    clean = clean_pairs(args)
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    if "safeguards" in args.part:
        out["safeguards"] = run_safeguards(lens, items, clean, args, run_dir, log)
        save_figure(safeguards_figure(out["safeguards"]["table"]), "09_safeguards" + ("_quick" if args.quick else ""))
    if "personality" in args.part:
        out["personality"] = run_personality(lens, items, clean, args, run_dir, log)
        save_figure(personality_figure(out["personality"]["table"]), "09_personality" + ("_quick" if args.quick else ""))
    out["settings"] = vars(args)
    out["total_seconds"] = round(time.time() - t_start, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1, default=float))
    summary = {p: out[p]["table"] for p in ("safeguards", "personality") if p in out}
    print(json.dumps(summary, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
