"""How long a control of the review app takes to update, on the organism's 2,270 pairs.

Side by side in one run: the app as shipped (each decision's preview compiled once by
`compile_plan` and cached; offsets, weights and filters read from the diagnosis's features)
against the obvious alternative, compiling the whole plan again on every control change.

    python benchmarks/bench_review.py                      # a diagnosis-shaped stand-in (seeded)
    python benchmarks/bench_review.py --diagnosis DIR      # a saved Diagnosis of the organism

Without --diagnosis, the stand-in has the organism's 2,270 train pairs (texts), 200 SAE
concepts of 2-3 features each, seeded sparse firing frequencies and a table of 200 global and
40 prompt-conditioned rows (tests/review_fixtures.py): the app's work depends on these sizes,
not on what the concepts mean. Prints one line per control: median and max seconds over
repeats, and the ratio to the alternative; writes results/bench_review.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn, repeats):
    out = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diagnosis", help="a saved Diagnosis directory (Diagnosis.save) of the organism's pairs")
    ap.add_argument("--concepts", type=int, default=200, help="concepts of the stand-in diagnosis")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_review.json"))
    args = ap.parse_args(argv)

    from anatomy import load_preferences
    from anatomy.interventions import Plan, compile_plan
    from anatomy.review import review

    pairs = load_preferences("organism", split="train").to_list()
    if args.diagnosis:
        from anatomy.diagnose import Diagnosis

        diagnosis = Diagnosis.load(args.diagnosis)
        what = f"saved Diagnosis {args.diagnosis}"
    else:
        from review_fixtures import small_diagnosis

        diagnosis = small_diagnosis(pairs, n_concepts=args.concepts, n_prompt_rows=40)
        what = f"stand-in diagnosis: {args.concepts} SAE concepts (seeded)"
    t0 = time.perf_counter()
    app = review(diagnosis, pairs=pairs)
    build = time.perf_counter() - t0
    keys = list(app.rows["key"])
    print(f"{len(pairs)} pairs, {len(keys)} rows ({what}); the app builds in {build:.2f} s")

    res = {}
    strengths = [0.5 + 0.05 * i for i in range(args.repeats)]

    def select(r):
        app.select(keys[(r + 1) % len(keys)])

    res["select a row"] = timed(select, args.repeats)
    app.select(keys[0])
    res["decide: explain away (reward_shaping)"] = timed(
        lambda r: (app.set_decision("allow"), app.set_decision("explain_away", "reward_shaping")), args.repeats)
    res["strength slider, new value"] = timed(lambda r: setattr(app._strength, "value", strengths[r]), args.repeats)
    res["strength slider, a value seen before"] = timed(lambda r: setattr(app._strength, "value", strengths[r]),
                                                        args.repeats)
    app.select(keys[1])
    app.set_decision("explain_away", "filter_pairs", 0.1)
    res["filter_pairs share, new value"] = timed(lambda r: setattr(app._strength, "value", 0.05 + 0.01 * r),
                                                 args.repeats)
    res["filter: significant only"] = timed(lambda r: setattr(app._filter_sig, "value", r % 2 == 0), args.repeats)
    res["sort by |effect| / rank"] = timed(lambda r: setattr(app._sort, "value", "|effect|" if r % 2 else "rank"),
                                           args.repeats)
    res["more examples"] = timed(lambda r: app._more.click(), args.repeats)

    plan = app.plan

    def recompile(r):  # the alternative: the whole plan compiled on every change
        compile_plan(plan, None, pairs, diagnosis=diagnosis)

    alt = timed(recompile, args.repeats)
    alt_med = statistics.median(alt)
    report = {"pairs": len(pairs), "rows": len(keys), "diagnosis": what, "build_s": round(build, 3),
              "alternative_recompile_plan_s": round(alt_med, 4), "controls": {}}
    print(f"{'control':40} {'median s':>9} {'max s':>7}  vs recompiling the plan ({alt_med:.3f} s)")
    for name, ts in res.items():
        med = statistics.median(ts)
        report["controls"][name] = {"median_s": round(med, 4), "max_s": round(max(ts), 4),
                                    "ratio_alternative": round(alt_med / med, 2) if med else None}
        print(f"{name:40} {med:9.3f} {max(ts):7.3f}  {alt_med / med:6.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
