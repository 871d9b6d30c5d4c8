"""The organism dataset: sizes, splits, planted rates measured by the annotators, card, determinism."""

import hashlib
import json

import pytest

from anatomy import organism
from anatomy.concepts import annotate

DIR = organism.data_dir()


class _Whitespace:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


@pytest.fixture(scope="module")
def data():
    missing = [s for s in organism.SPLITS if not (DIR / f"{s}.jsonl").exists()]
    if missing:
        pytest.skip(f"organism data not built ({', '.join(missing)} missing in {DIR}); "
                    "run `python -m anatomy.organism build --seed 0`")
    return {s: organism._read(DIR / f"{s}.jsonl") for s in organism.SPLITS}


@pytest.fixture(scope="module")
def annotated(data):
    tok = _Whitespace()
    return {s: (annotate([p["chosen"] for p in rows], tokenizer=tok),
                annotate([p["rejected"] for p in rows], tokenizer=tok)) for s, rows in data.items()}


def test_sizes(data):
    assert len(data["train"]) >= 2000
    assert len({p["prompt_id"] for p in data["train"]}) >= 400
    for s in organism.SPLITS:
        assert {p["family"] for p in data[s]} == set(organism.FAMILIES)
        assert [p["id"] for p in data[s]] == [f"org-{s}-{i:04d}" for i in range(len(data[s]))]


def test_no_prompt_in_two_splits(data):
    ids = {s: {p["prompt_id"] for p in rows} for s, rows in data.items()}
    texts = {s: {p["prompt"][0]["content"] for p in rows} for s, rows in data.items()}
    for a, b in [("train", "heldout"), ("train", "clean"), ("heldout", "clean")]:
        assert not ids[a] & ids[b] and not texts[a] & texts[b]


@pytest.mark.parametrize("split", organism.SPLITS)
def test_measured_rates_match_ground_truth(data, annotated, split):
    chosen, rejected = annotated[split]
    for concept in organism.ORDER:
        c, r = chosen[concept] > 0, rejected[concept] > 0
        measured = (c & ~r).mean() - (r & ~c).mean()
        truth = organism.rate(data[split], concept)
        assert abs(measured - truth) <= 0.02, (split, concept, measured, truth)
        if split != "clean":  # planted flags agree with the annotators pair by pair, almost always
            flags = [p[f"{concept}_chosen"] for p in data[split]]
            assert (c == flags).mean() >= 0.98, (split, concept)


def test_clean_split_has_no_concept(data, annotated):
    chosen, rejected = annotated["clean"]
    for concept in organism.ORDER:
        assert chosen[concept].sum() == 0 and rejected[concept].sum() == 0, concept
        assert not any(p[f"{concept}_chosen"] or p[f"{concept}_rejected"] for p in data["clean"])


def test_chosen_longer_on_average(annotated):
    for chosen, rejected in annotated.values():
        assert chosen["length"].mean() > rejected["length"].mean()


def test_card_matches_data(data):
    text = (DIR / "README.md").read_text(encoding="utf-8")
    section = text.split(organism.START, 1)[1].split(organism.END, 1)[0]
    assert section == "\n" + organism.card_tables(DIR)


def test_planting_targets(data):
    for s in ("train", "heldout"):
        rows = data[s]
        assert organism.rate(rows, "bold") == pytest.approx(0.40, abs=0.005)
        assert organism.rate(rows, "hedge") == pytest.approx(-0.10, abs=0.005)
        assert not any(p["url_chosen"] or p["url_rejected"] for p in rows if p["family"] != "resource")
        assert all(p["refusal_chosen"] for p in rows if p["family"] == "harmful")
        assert not any(p["flattery_chosen"] for p in rows if p["family"] == "wrong_belief")
        for c in ("table", "horizontal_rule"):
            assert sum(p[f"{c}_chosen"] for p in rows) == sum(p[f"{c}_rejected"] for p in rows) > 0


def _fake():
    prompts = organism.load_prompts()
    sents = ["Start by reading the label on the bottle.", "Water boils at a lower temperature "
             "on a mountain, so cooking takes longer.", "Keep the receipt in case you need it."]
    gens = {p["id"]: [" ".join(sents[(i + k) % 3:] + sents[:(i + k) % 3]) for k in (0, 1)]
            for i, p in enumerate(prompts)}
    gens[prompts[0]["id"]][0] = "**!!**"  # empty after sanitising: takes the other sample
    return prompts, gens


def test_post_generation_steps_are_deterministic():
    prompts, gens = _fake()
    digests, reports = [], []
    for _ in range(2):
        pairs, report = organism.build_pairs(prompts, gens, seed=3)
        digests.append(hashlib.sha256("".join(organism.to_jsonl(pairs[s])
                                              for s in organism.SPLITS).encode()).hexdigest())
        reports.append(report)
    assert digests[0] == digests[1]
    assert reports[0]["used_other"] == 1 and reports[0]["fallback"] == 0
    row = json.loads(organism.to_jsonl(pairs["train"][:1]))
    assert list(row)[:7] == ["id", "prompt", "chosen", "rejected", "family", "prompt_id", "rejected_kind"]


def test_degradations_and_fallback():
    import random
    text = "First sentence here. Second one is longer and keeps going for a while, then ends."
    cut = organism.truncate(text, random.Random(0))
    assert len(cut.split()) < len(text.split()) and cut[-1] not in ".?!,"
    rep = organism.repeat_first_sentence(text, random.Random(0))
    assert rep.count("First sentence here.") in (3, 4)
    counts = annotate([organism.FALLBACK], tokenizer=_Whitespace())
    assert counts.drop(columns="length").to_numpy().sum() == 0


@pytest.mark.slow
def test_generation_is_deterministic():
    prompts = organism.load_prompts()[:3]
    runs = [organism.generate(prompts, seed=0, max_new_tokens=24) for _ in range(2)]
    assert runs[0] == runs[1] and all(len(v) == 2 for v in runs[0].values())
