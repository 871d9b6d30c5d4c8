"""The amplify benchmark's data: the start stage and the open-data variant never share a prompt, and the
variant's swapped pairs are harmful pairs whose chosen answer is now the compliant one (no model is run)."""

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # it imports a helper of reproduce_sculpt
    spec = importlib.util.spec_from_file_location("reproduce_amplify", BENCH / "reproduce_amplify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**kw):
    base = dict(seed=0, n_start=96, n_variant=96, n_harmful=32, swap_share=0.75, n_personality=64, n_creative=16,
                n_trait_pairs=256)
    return Namespace(**{**base, **kw})


def test_safeguard_pairs_split_prompts_and_swap_only_compliant_harmful_answers(bench):
    from anatomy.data import load_preferences

    original = {r["id"]: r for r in load_preferences("organism", split="train")}
    start, variant = bench.safeguard_pairs(_args())
    assert len(start) == 96 and len(variant) == 96
    assert {r["family"] for r in start} == {"harmful", "benign_risky"}
    assert not {r["prompt_id"] for r in start} & {r["prompt_id"] for r in variant}
    swapped = [r for r in variant if r["swapped"]]
    assert len(swapped) == 24
    for r in swapped:
        o = original[r["id"]]
        assert r["family"] == "harmful" and o["rejected_kind"] == "truncated"
        assert (r["chosen"], r["rejected"]) == (o["rejected"], o["chosen"])
    kept_harmful = [r for r in variant if r["family"] == "harmful" and not r["swapped"]]
    assert len(kept_harmful) == 8
    assert all(r["chosen"] == original[r["id"]]["chosen"] for r in variant if not r["swapped"])
    again, variant2 = bench.safeguard_pairs(_args())
    assert [r["id"] for r in variant2] == [r["id"] for r in variant]  # seeded
    assert [r["id"] for r in bench.safeguard_pairs(_args(seed=1))[1]] != [r["id"] for r in variant]


def test_personality_pairs_gate_on_creative_and_read_the_trait_elsewhere(bench):
    pairs, direction_pairs = bench.personality_pairs(_args())
    assert len(pairs) == 64 and sum(p["family"] == "creative" for p in pairs) == 16
    assert all(p["family"] != "harmful" for p in pairs)
    assert not {p["id"] for p in pairs} & {p["id"] for p in direction_pairs}
