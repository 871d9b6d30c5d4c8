"""Explain away five planted concepts with each method, measure what each recovers (`make reproduce-sculpt`).

On the organism, with the seed and dose of `make reproduce-predict`'s headline at half its pairs
(the first 128 of its 256 training pairs, 2 epochs at lr 4e-5: the same
lr × steps; β 0.1; the same 64 held-out prompts × 2 samples × 64 tokens at T 0.7;
``--n-train 256 --lr 2e-5`` is the headline size, ~3 h), train plain DPO and one run per
method of ``anatomy.interventions.METHODS``, each explaining away bold, list_item, emoji,
exclamation and flattery at once (planted off-target traits that string search reads
exactly: three style traits with rates of 20-40%, two tone traits at 10%; why these, in
``benchmarks/dev_protocol.md``). Then, with the pre-DPO model as the lens, on the held-out
prompts:

- % recovery per targeted concept, ``(plain − method) / (plain − pre-DPO) × 100`` on the
  rollouts' rates, with a bootstrap CI over prompts (``predict.recovery``);
- off-target change: the method's rate minus plain DPO's for the untargeted planted concepts;
- intended learning kept: the method's gain in mean margin on held-out clean pairs as a
  share of plain DPO's;
- coherence: distinct-2 and the perplexity of the rollouts under the pre-DPO model, as
  ratios to the pre-DPO model's own rollouts;
- time per run (compiling the plan + training);
- predicted (``predict_shift(plan=...)``) vs observed shift across methods and concepts.

Strengths come from ``calibrate``, on a development setting disjoint from the reported
one (other training pairs, the clean split's prompts) by the rule in
``benchmarks/dev_protocol.md`` (predicted recovery, no training). Each run writes
``<run-dir>/<method>.json``; a rerun skips the runs whose settings match; the same seed
gives the same numbers. Writes ``results/sculpt.json`` (``--quick``:
``results/sculpt_quick.json``) and ``figures/08_recovery.html``,
``figures/08_predicted_vs_observed.html``.

Processes started on the same ``--run-dir`` share the work: a run in progress holds
``<method>.lock`` and the others pass it by; each writes the tables of the runs done
when it ends, so the last to end writes the full table.

Usage: python benchmarks/reproduce_sculpt.py [--quick] [--threads 2] [--methods plain reward_shaping ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_predict import CONCEPTS, _heldout_prompts  # noqa: E402  (the same prompts and concept list)

TARGETS = ("bold", "list_item", "emoji", "exclamation", "flattery")
UNTARGETED = tuple(c for c in CONCEPTS if c not in TARGETS)
LENS_OF = {"reward_shaping": "annotator", "steering": "direction", "inoculation": "annotator",
           "filter_pairs": "annotator", "downweight_pairs": "annotator", "filter_tokens": "annotator",
           "preventative_steering": "direction", "ablation": "direction"}
GRIDS = {"reward_shaping": [0.5, 1.0, 2.0, 4.0, 8.0], "filter_pairs": [0.1, 0.2, 0.3, 0.4, 0.6],
         "downweight_pairs": [1.0, 2.0, 4.0, 8.0, 16.0], "steering": [0.5, 1.0, 2.0, 4.0]}
QUICK_STEERING_GRID = [0.5, 1.0, 2.0]
# steering and preventative steering: strength = c × the concept's own mean shift at the hook (the length of its
# difference of means before normalising; benchmarks/dev_protocol.md, 2026-12-02)
STEERED = ("steering", "preventative_steering")
STEERING_UNIT = "mean_shift"
METHOD_ORDER = ["plain", "reward_shaping", "filter_tokens", "filter_pairs", "downweight_pairs", "inoculation",
                "steering", "preventative_steering", "ablation"]


def select_pairs(n_train: int, n_clean: int, seed: int):
    """The training pairs and clean pairs of reproduce_predict (the same draws of the same seed)."""
    from anatomy.data import load_preferences

    train_ds = load_preferences("organism", split="train")
    rng = np.random.default_rng(seed)
    idx = sorted(rng.permutation(len(train_ds))[:n_train].tolist())
    clean_ds = load_preferences("organism", split="clean")
    clean = [clean_ds[i] for i in sorted(rng.permutation(len(clean_ds))[:n_clean].tolist())]
    return [train_ds[i] for i in idx], clean, set(idx), train_ds


def dev_setting(train_ds, exclude: set, n_dev: int, n_prompts: int, seed: int):
    """Development pairs (training pairs not in the reported run) and prompts (the clean split's)."""
    from anatomy.data import load_preferences

    rest = [i for i in range(len(train_ds)) if i not in exclude]
    rng = np.random.default_rng(seed + 1)
    dev = [train_ds[i] for i in sorted(rng.choice(rest, size=min(n_dev, len(rest)), replace=False).tolist())]
    clean_ds = load_preferences("organism", split="clean")
    first = {}
    for row in clean_ds:
        first.setdefault(row["prompt_id"], {"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                                            "family": row["family"]})
    prompts = sorted(first.values(), key=lambda r: r["prompt_id"])
    keep = sorted(rng.permutation(len(prompts))[:n_prompts].tolist())
    return dev, [prompts[i] for i in keep]


def presence(pairs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annotator presence (count > 0) of every concept in chosen and rejected, indexed by pair id."""
    from anatomy.concepts import annotate

    ids = pd.Index([str(p["id"]) for p in pairs], name="id")
    c = (annotate([p["chosen"] for p in pairs], CONCEPTS) > 0).astype(float).set_axis(ids)
    r = (annotate([p["rejected"] for p in pairs], CONCEPTS) > 0).astype(float).set_axis(ids)
    return c, r


def label_directions(model, pairs, hook: str) -> tuple[dict, dict]:
    """``probes.annotator_directions`` of the targets: ``{concept: (hook, unit vector)}`` and each one's
    mean shift (the unit of the steering strengths); every target must have a contrast."""
    from anatomy.probes import annotator_directions

    out, norms = annotator_directions(model, pairs, hook, TARGETS)
    missing = [c for c in TARGETS if c not in out]
    if missing:
        raise SystemExit(f"no {missing} contrast among the {len(pairs)} pairs' responses to read a direction on; "
                         "use more pairs (--n-direction-pairs, --n-dev)")
    return out, norms


def _held(lock: Path) -> bool:
    """A run's lock file names a live process other than this one (parallel processes share the run dir)."""
    if not lock.exists():
        return False
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def make_plan(method: str, strength: float, units: dict | None = None):
    """Explain away every target with ``method``; a steering strength is ``strength`` × the concept's unit."""
    from anatomy.interventions import ConceptRef, Decision, Plan

    if method == "plain":
        return Plan(())
    scale = units if method in STEERED else {}
    return Plan(tuple(Decision(ConceptRef(LENS_OF[method], c), "explain_away", method, strength * scale.get(c, 1.0))
                      for c in TARGETS))


def predicted_recovery(inputs, pres_c, pres_r) -> dict:
    """Per target, 1 − (shaped predicted u) / (plain predicted u), and the mean gradient weight."""
    from anatomy.predict import predict_shift

    plain = predict_shift(pres_c[list(TARGETS)], pres_r[list(TARGETS)], method="u", tau=0.5)
    shaped = predict_shift(pres_c[list(TARGETS)], pres_r[list(TARGETS)], method="u", tau=0.5, plan=inputs)
    rec = {c: float(1 - shaped[c] / plain[c]) if plain[c] else float("nan") for c in TARGETS}
    return {"recovery": rec, "mean": float(np.nanmean(list(rec.values()))),
            "gradient_weight_mean": shaped.attrs.get("gradient_weight_mean", 1.0)}


def calibrate(lens, dev_pairs, directions, units: dict, args) -> dict:
    """The strength of each tunable method, by the dev-protocol rule (predicted recovery on dev pairs)."""
    from anatomy.interventions import compile_plan
    from anatomy.logprobs import pair_logprobs

    pres_c, pres_r = presence(dev_pairs)
    ref = pair_logprobs(lens, dev_pairs, batch_size=args.batch_size)
    out = {"steering_unit": STEERING_UNIT, "units": units, "n_dev_pairs": len(dev_pairs), "grids": {}, "chosen": {}}
    for method, grid in GRIDS.items():
        if method == "steering" and args.quick:
            grid = QUICK_STEERING_GRID
        rows = []
        for c in grid:
            inputs = compile_plan(make_plan(method, c, units), lens, dev_pairs, directions=directions,
                                  beta=args.beta, ref_logps=ref, seed=args.seed)
            pr = predicted_recovery(inputs, pres_c, pres_r)
            rows.append({"grid": c, **pr})
            print(json.dumps({"calibrate": method, **rows[-1]}), flush=True)
        ok = [r for r in rows if r["mean"] >= args.target_recovery]
        pick = ok[0] if ok else max(rows, key=lambda r: r["mean"])
        out["grids"][method] = rows
        out["chosen"][method] = pick["grid"]
    out["chosen"]["preventative_steering"] = out["chosen"]["steering"]  # the same first-order prediction
    return out


def settings_digest(args, method: str, strength) -> str:
    from anatomy.fingerprint import digest

    keep = {k: v for k, v in vars(args).items() if k not in ("threads", "methods", "out", "run_dir")}
    return digest(keep, method, strength, STEERING_UNIT if method in (*STEERED, "calibration") else None)


def evaluate(policy, lens, prompts, clean, scorers, roll_kw, margins_before=None) -> dict:
    from anatomy.evals import distinct_n, measure, perplexity, rollouts
    from anatomy.logprobs import preference_margins

    t0 = time.time()
    roll = rollouts(policy, prompts, **roll_kw)
    m = measure(roll, scorers)
    ppl = perplexity(lens, roll)
    margins = preference_margins(policy, clean)
    return {
        "rollouts": roll[["prompt_id", "sample", "response", "n_tokens", "finished"]].to_dict("records"),
        "measure": m.to_dict("records"),
        "distinct2": distinct_n(roll["response"], 2),
        "perplexity": ppl,
        "clean_margin_mean": float(margins.margin.mean()),
        "eval_seconds": round(time.time() - t0, 1),
    }


def run_method(method: str, strength, lens, pairs, prompts, clean, directions, units, ref, scorers, roll_kw,
               args) -> dict:
    from anatomy.interventions import compile_plan
    from anatomy.models import load_model
    from anatomy.train import train_dpo

    policy = load_model()
    plan = make_plan(method, strength if strength is not None else 1.0, units)
    t0 = time.time()
    inputs = compile_plan(plan, lens, pairs, directions=directions, beta=args.beta, ref_logps=ref, seed=args.seed,
                          effective=True)
    compile_s = time.time() - t0
    t0 = time.time()
    result = train_dpo(policy, pairs, beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, progress=False,
                       ref_logps=None if inputs.token_masks is not None else ref, **inputs.train_kwargs())
    train_s = time.time() - t0
    left = [name for name, h in policy.hook_dict.items() if h._forward_hooks]
    if left:
        raise RuntimeError(f"policy hooks survived training at {left}")
    ev = evaluate(policy, lens, prompts, clean, scorers, roll_kw)
    arr = lambda a: None if a is None else [float(x) for x in np.asarray(a)]  # noqa: E731
    return {
        "method": method, "strength": strength, "plan": plan.to_dict(), "summary": inputs.summary,
        "shaping": {"offsets": arr(inputs.offsets), "weights": arr(inputs.weights),
                    "effective_offsets": arr(inputs.effective_offsets),
                    "token_share": {k: np.asarray(v).tolist() for k, v in inputs.token_share.items()}},
        "training": {"final_loss": float(result.history.loss.tail(3).mean()), "steps": len(result.history)},
        "compile_seconds": round(compile_s, 1), "train_seconds": round(train_s, 1),
        "run_seconds": round(compile_s + train_s, 1), **ev,
    }


def aggregate(before: dict, runs: dict, pairs, args) -> dict:
    """The tables: recovery and off-target change per (method, concept), intended learning, coherence, R²."""
    from types import SimpleNamespace

    from anatomy.predict import compare, predict_shift, recovery

    mb = pd.DataFrame(before["measure"])
    cols = [f"annotator_present:{c}" for c in CONCEPTS]
    plain = runs["plain"]
    mp = pd.DataFrame(plain["measure"])
    pres_c, pres_r = presence(pairs)
    gain_plain = plain["clean_margin_mean"] - before["clean_margin_mean"]
    table, off_rows, method_rows, pred_rows = [], [], [], []
    for method, run in runs.items():
        ms = pd.DataFrame(run["measure"])
        shaping = run["shaping"]
        inputs = SimpleNamespace(ids=[str(p["id"]) for p in pairs], train_kwargs=None,
                                 offsets=shaping["offsets"], weights=shaping["weights"],
                                 effective_offsets=shaping["effective_offsets"],
                                 token_share={k: np.asarray(v) for k, v in shaping["token_share"].items()})
        pred = predict_shift(pres_c, pres_r, method="u", tau=0.5, plan=inputs)
        for c in CONCEPTS:
            obs = float(ms[f"annotator_present:{c}"].mean() - mb[f"annotator_present:{c}"].mean())
            pred_rows.append({"method": method, "concept": c, "predicted": float(pred[c]), "observed": obs})
        if method != "plain":
            rec = recovery(mb, mp, ms, concepts=cols, n_boot=args.n_boot, seed=args.seed)
            for c in CONCEPTS:
                r = rec.loc[f"annotator_present:{c}"]
                row = {"method": method, "concept": c, "targeted": c in TARGETS,
                       **{k: (None if pd.isna(r[k]) else round(float(r[k]), 4)) for k in rec.columns}}
                (table if c in TARGETS else off_rows).append(row)
        gain = run["clean_margin_mean"] - before["clean_margin_mean"]
        method_rows.append({
            "method": method, "strength": run["strength"],
            "intended_learning_kept": round(gain / gain_plain, 4) if gain_plain else None,
            "clean_margin_gain": round(gain, 3),
            "distinct2_ratio": round(run["distinct2"] / before["distinct2"], 4),
            "perplexity": round(run["perplexity"], 3),
            "perplexity_ratio": round(run["perplexity"] / before["perplexity"], 4),
            "coherence": round(min(run["distinct2"] / before["distinct2"], before["perplexity"] / run["perplexity"]),
                               4),
            "run_seconds": run["run_seconds"], "compile_seconds": run["compile_seconds"],
            "train_seconds": run["train_seconds"], "eval_seconds": run["eval_seconds"],
        })
    pr = pd.DataFrame(pred_rows)
    pr["key"] = pr["method"] + "/" + pr["concept"]
    r2 = {}
    for name, sel in (("plain", pr.method == "plain"), ("shaped", pr.method != "plain"), ("all", pr.index >= 0)):
        sub = pr[sel].set_index("key")
        try:
            stats, fig = compare(sub["predicted"], sub["observed"],
                                 title=f"Predicted vs observed shift under each plan ({name})")
            r2[name] = {"r2": round(stats["r2"], 4), "n": stats["n"], "slope": round(stats["slope"], 4)}
            if name == "all":
                r2["_fig"] = fig
        except ValueError as err:
            r2[name] = {"skipped": str(err)}
    return {"recovery": table, "off_target": off_rows, "methods": method_rows, "predicted_vs_observed": pred_rows,
            "r2": r2}


def recovery_figure(table: list[dict]):
    import plotly.graph_objects as go

    df = pd.DataFrame(table)
    fig = go.Figure()
    for c in TARGETS:
        sub = df[df.concept == c]
        fig.add_bar(name=c, x=sub["method"], y=sub["recovery"],
                    error_y=dict(type="data", symmetric=False,
                                 array=(sub["ci_high"] - sub["recovery"]).clip(lower=0).fillna(0),
                                 arrayminus=(sub["recovery"] - sub["ci_low"]).clip(lower=0).fillna(0)))
    fig.add_hline(y=100, line_dash="dot", annotation_text="pre-DPO")
    fig.add_hline(y=0, line_color="grey", annotation_text="plain DPO")
    fig.update_layout(barmode="group", title="% recovery of each explained-away concept (95% prompt-bootstrap CI)",
                      yaxis_title="% recovery", template="plotly_white")
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--n-clean", type=int, default=64)
    ap.add_argument("--n-dev", type=int, default=128, help="development pairs for the strength calibration")
    ap.add_argument("--target-recovery", type=float, default=0.9, help="the calibration rule's predicted recovery")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHOD_ORDER)
    ap.add_argument("--n-direction-pairs", type=int, default=None,
                    help="training-split pairs the steering directions are read on (default: the training pairs); "
                         "the training pairs come first")
    ap.add_argument("--quick", action="store_true",
                    help="24 pairs x 2 epochs at lr 1e-4, 12 prompts x 2 x 32 tokens, 8 clean pairs, 32 dev pairs, "
                         "directions read on 48 pairs, steering grid 0.5-2")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.epochs, args.lr, args.n_prompts = 24, 2, 1e-4, 12
        args.max_new_tokens, args.n_clean, args.n_dev, args.n_direction_pairs = 32, 8, 32, 48
    tag = "sculpt_quick" if args.quick else "sculpt"
    run_dir = Path(args.run_dir or ROOT / "results" / f"{tag}_runs")
    out_path = Path(args.out or ROOT / "results" / f"{tag}.json")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(what: str) -> None:
        print(f"[{time.time() - t_start:7.0f} s] {what}", flush=True)

    from anatomy.evals import annotator_scorer
    from anatomy.logprobs import pair_logprobs
    from anatomy.models import load_model
    from anatomy.saes import load_sae, sae_hook
    from anatomy.viz import save_figure

    lens = load_model()  # the pre-DPO model: reads, scores and is never trained
    hook = sae_hook(load_sae())  # the lens layer of the diagnosis (layer 12)
    pairs, clean, used, train_ds = select_pairs(args.n_train, args.n_clean, args.seed)
    prompts = _heldout_prompts(args.n_prompts, args.seed)
    roll_kw = dict(n_samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                   seed=args.seed, batch_size=32, progress=False)
    scorers = [annotator_scorer(CONCEPTS)]

    # ---- strengths, on the development setting
    cal_path = run_dir / "calibration.json"
    cal_key = settings_digest(args, "calibration", None)
    dev_pairs, dev_prompts = dev_setting(train_ds, used, args.n_dev, args.n_prompts, args.seed)
    n_dir = max(args.n_direction_pairs or 0, len(pairs))
    extra = [train_ds[i] for i in np.random.default_rng(args.seed + 2).permutation(len(train_ds)).tolist()
             if i not in used][: n_dir - len(pairs)]
    directions, units = {}, {}  # read when a run first needs them

    def get_directions() -> dict:
        if not directions:
            d, u = label_directions(lens, pairs + extra, hook)
            directions.update(d)
            units.update(u)
            log(f"directions (mean shifts {json.dumps({c: round(v, 2) for c, v in u.items()})})")
        return directions
    tunable = [m for m in args.methods if m in GRIDS or m in STEERED]
    if cal_path.exists() and json.loads(cal_path.read_text()).get("key") == cal_key:
        cal = json.loads(cal_path.read_text())
    elif not tunable:  # these methods have no strength to calibrate
        cal = {"chosen": {}}
    else:
        t0 = time.time()
        dev_dirs, dev_units = label_directions(lens, dev_pairs, hook)
        cal = {"key": cal_key, **calibrate(lens, dev_pairs, dev_dirs, dev_units, args),
               "seconds": round(time.time() - t0, 1)}
        cal_path.write_text(json.dumps(cal, indent=1))
    log("calibration")
    strengths = {m: cal["chosen"].get(m) for m in args.methods}
    print(json.dumps({"strengths": strengths}), flush=True)

    # ---- the pre-DPO model, and the reference log-probs every untouched-mask run shares
    ref_path = run_dir / "ref_logps.pt"
    before_path = run_dir / "before.json"
    before_key = settings_digest(args, "before", None)
    if before_path.exists() and json.loads(before_path.read_text()).get("key") == before_key:
        before = json.loads(before_path.read_text())
    else:
        before = None
    if ref_path.exists() and before is not None:
        ref = torch.load(ref_path)
    else:  # the reference log-probs are recomputed whenever missing (they are not kept with the results)
        ref = pair_logprobs(lens, pairs, batch_size=args.batch_size)
        torch.save(ref, ref_path)
    if before is None:
        before = {"key": before_key, **evaluate(lens, lens, prompts, clean, scorers, roll_kw)}
        before_path.write_text(json.dumps(before))
    log("pre-DPO rollouts")

    runs = {}
    for method in args.methods:
        path = run_dir / f"{method}.json"
        key = settings_digest(args, method, strengths.get(method))
        if path.exists() and json.loads(path.read_text()).get("key") == key:
            runs[method] = json.loads(path.read_text())
            print(f"[{method}] done before, skipped", flush=True)
            continue
        lock = run_dir / f"{method}.lock"
        if _held(lock):
            log(f"{method} is running in process {lock.read_text().strip()}; left to it")
            continue
        lock.write_text(str(os.getpid()))
        try:
            t0 = time.time()
            dirs = get_directions() if LENS_OF.get(method) == "direction" else {}
            run = run_method(method, strengths.get(method), lens, pairs, prompts, clean, dirs, units, ref, scorers,
                             roll_kw, args)
            run["key"] = key
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(run))
            tmp.replace(path)
        finally:
            lock.unlink(missing_ok=True)
        runs[method] = run
        log(f"{method} ({time.time() - t0:.0f} s)")

    for method in METHOD_ORDER:  # runs that other processes finished meanwhile
        path = run_dir / f"{method}.json"
        if method in args.methods and method not in runs and path.exists():
            run = json.loads(path.read_text())
            if run.get("key") == settings_digest(args, method, strengths.get(method)):
                runs[method] = run
    runs = {m: runs[m] for m in METHOD_ORDER if m in runs}
    missing = [m for m in args.methods if m not in runs]
    if "plain" not in runs:
        raise SystemExit("the tables need the plain run (--methods plain ...)")
    if missing:
        log(f"tables without {missing} (running elsewhere; rerun to include them)")
    agg = aggregate(before, runs, pairs, args)
    fig_pvo = agg["r2"].pop("_fig", None)
    save_figure(recovery_figure(agg["recovery"]), "08_recovery")
    if fig_pvo is not None:
        save_figure(fig_pvo, "08_predicted_vs_observed")
    out = {
        **agg,
        "targets": list(TARGETS), "untargeted": list(UNTARGETED),
        "strengths": {m: r["strength"] for m, r in runs.items()},
        "calibration": {k: v for k, v in cal.items() if k != "key"},
        "before": {k: before[k] for k in ("distinct2", "perplexity", "clean_margin_mean")},
        "rollouts": {m: r["rollouts"][:8] for m, r in {"before": before, **runs}.items()},
        "settings": {k: v for k, v in vars(args).items()},
        "total_seconds": round(time.time() - t_start, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"methods": agg["methods"], "r2": agg["r2"]}, default=str))
    return out


if __name__ == "__main__":
    main()
