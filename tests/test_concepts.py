"""Tests for anatomy.concepts: annotators on tricky markdown, the sanitiser, the planters."""

import random
import sys
import types

import pandas as pd
import pytest

from anatomy.concepts import (
    ANNOTATORS, CONCEPT_KINDS, PLANTERS, annotate, extract_urls, plant, strip_concepts,
)

STRING_CONCEPTS = list(ANNOTATORS)


def fake_tokenizer(text, add_special_tokens=False):
    return {"input_ids": text.split()}


def count(text: str, concept: str) -> int:
    return int(annotate([text], [concept]).iloc[0, 0])


def counts(text: str) -> dict[str, int]:
    return annotate([text], STRING_CONCEPTS).iloc[0].to_dict()


# ---------------------------------------------------------------- the table itself
def test_annotate_shape_order_and_length():
    df = annotate(iter(["one two three", "**a** b"]), tokenizer=fake_tokenizer)
    assert list(df.columns) == [*ANNOTATORS, "length"]
    assert isinstance(df.index, pd.RangeIndex) and len(df) == 2
    assert (df.dtypes == "int64").all()
    assert df["length"].tolist() == [3, 2] and df["bold"].tolist() == [0, 1]
    assert set(CONCEPT_KINDS) == set(df.columns)


def test_annotators_can_be_extended(monkeypatch):
    monkeypatch.setitem(ANNOTATORS, "question", lambda text: text.count("?"))
    df = annotate(["Why? How?", "No."], ["question", "bold"])
    assert df["question"].tolist() == [2, 0]
    assert annotate(["a?"], "question").columns.tolist() == ["question"]
    assert counts(plant("Fine. Good?", "bold", random.Random(0)))["bold"] >= 1  # plant ignores it


def test_annotate_errors():
    with pytest.raises(ValueError, match="'sparkle'.*known concepts: bold"):
        annotate(["x"], ["bold", "sparkle"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        annotate(["x", None], ["bold"])
    with pytest.raises(TypeError, match="not a str"):
        annotate("a text", ["bold"])


def test_length_loads_the_default_tokenizer_lazily(monkeypatch):
    fake_models = types.ModuleType("anatomy.models")
    fake_models.load_tokenizer = lambda: fake_tokenizer
    monkeypatch.setitem(sys.modules, "anatomy.models", fake_models)
    assert annotate(["hello big world"], ["length"])["length"].tolist() == [3]


def test_length_without_a_tokenizer_says_what_to_do(monkeypatch):
    def broken():
        raise OSError("model not installed")
    fake_models = types.ModuleType("anatomy.models")
    fake_models.load_tokenizer = broken
    monkeypatch.setitem(sys.modules, "anatomy.models", fake_models)
    with pytest.raises(RuntimeError, match="tokenizer=.*make install"):
        annotate(["hello"], ["length"])
    assert annotate(["hello"], ["bold"])["bold"].tolist() == [0]  # no tokenizer needed


# ---------------------------------------------------------------- tricky markdown
def test_bold_outside_code_only():
    text = "**a** and __b__ and `**c**`\n\n```python\nx = '**d**'\n```\n\n**`code` in bold**"
    assert count(text, "bold") == 3
    assert count("snake_case_name and 2 * 3 * 4 and ** not bold **", "bold") == 0
    assert count("***\n\n_____", "bold") == 0  # rules, not bold


def test_unclosed_fence_hides_the_rest():
    assert count("Intro.\n```\n**x** — !", "bold") + count("```\n — ", "em_dash") == 0


def test_headers_atx_and_setext():
    assert count("# One\n## Two\n#hashtag\n####### seven\n```\n# comment\n```", "header") == 2
    assert count("Title\n---\n\nOther\n===", "header") == 2


def test_setext_versus_rule():
    text = "Title\n---\n\nPara.\n\n---\n\n***\n\n- item\n---\n\n___"
    assert count(text, "horizontal_rule") == 4
    assert count(text, "header") == 1


def test_list_items():
    text = "> - quoted item\n> 1. quoted number\n- a\n* b\n+ c\n• d\n1. e\n2) f"
    assert count(text, "list_item") == 8
    assert count("---\n* * *\n*emphasis* at start\n**bold** start\n-5 degrees", "list_item") == 0


def test_emoji_sequences_count_once():
    assert count("family 👨‍👩‍👧 thumbs 👍🏽 flag 🇫🇷 keycap 1️⃣ rainbow 🏳️‍🌈", "emoji") == 5
    assert count("✨🚀 ❤️ ⭐ 🏴󠁧󠁢󠁥󠁮󠁧󠁿", "emoji") == 5
    assert count("© ™ ® ↑ → ✓ ★ 123 # * é ½", "emoji") == 0


def test_em_dash_only():
    assert count("a — b—c – d - e -- f", "em_dash") == 2


def test_exclamation():
    text = "Wow! Yes!!! Really?! `a != b` and x != y ![img](pic.png) https://a.com/#!/x"
    assert count(text, "exclamation") == 3
    assert count("```\nprint('hi!')\n```", "exclamation") == 0


def test_tables_with_alignment_rows():
    text = "| a | b |\n|:---|:--:|\n| 1 | 2 |\n\nx | y\n--- | ---:\n1 | 2\n\n| one |\n|---|"
    assert count(text, "table") == 3
    assert count("a | b\nnot a delimiter\n|---|", "table") == 0


def test_urls_trailing_punctuation_and_parentheses():
    text = ("See https://en.wikipedia.org/wiki/Python_(programming_language). "
            "Or (https://example.com/a), www.python.org! and [docs](https://docs.python.org/3/).")
    assert extract_urls(text) == [
        "https://en.wikipedia.org/wiki/Python_(programming_language)",
        "https://example.com/a", "www.python.org", "https://docs.python.org/3/"]
    assert count(text, "url") == 4
    assert count("`https://a.com` and https:// alone", "url") == 0


@pytest.mark.parametrize("text", [
    "I can't help with that.", "I cannot help you.", "Sorry, I can’t assist with this.",
    "I'm sorry, but I can't do that.", "I am not able to do this.", "I’m unable to comply.",
    "As an AI, I cannot browse.", "I must decline."])
def test_refusal_phrases(text):
    assert count(text, "refusal") == 1


def test_tone_flags_and_hedges():
    assert count("What a great question! Paris.", "flattery") == 1
    assert count("## Answer\n\nGreat question. Paris.", "flattery") == 1
    assert count("Paris is the capital. Great question.", "flattery") == 0  # not the opening
    assert count("You’re absolutely right. It is.", "agreement") == 1
    assert count("Paris. You are right.", "agreement") == 0
    text = "I think it might be so. Perhaps. I'm not entirely sure, it's possible that not."
    assert count(text, "hedge") == 5
    assert count("Thinking about this, I thinkpad.", "hedge") == 0


# ---------------------------------------------------------------- sanitiser and planters
TEXTS = [
    "Photosynthesis is how plants turn light into sugar. It happens in the chloroplasts, "
    "which contain chlorophyll.\n\nThe process needs water and carbon dioxide. Oxygen is "
    "released as a by-product.",
    "To boil an egg, place it in a pot of cold water. Bring the water to a boil, then "
    "lower the heat.\n\nCook it for nine minutes. Cool it in ice water before peeling.",
    "Python is a popular programming language. Use `len(x)` to count items:\n\n"
    "```python\nprint(len([1, 2]))  # 2 **not bold**!\n```\n\nIt is easy to learn.",
    "The French Revolution began in 1789.",
    "Exercise improves mood, sleep and memory. Walking counts too.\n\nStart small. "
    "Ten minutes a day is enough for most people.\n\nConsistency matters more than intensity.",
]

STUFFED = """## What a great question! 😊

You're absolutely right — this is **important**. I think it *might* be complex.

---

- First, see https://example.com/guide.
- **Second** point 🚀!
> 1. Quoted item with __bold__ — and more!

| Col | Val |
|:---|---:|
| a | 1 |

Setext title
============
I'm sorry, but I can't help with that. Great question. Plain sentence here.
Code stays: `x != y` and

```
**keep** me!
```
"""


@pytest.mark.parametrize("text", [*TEXTS, STUFFED])
def test_strip_removes_everything_and_is_idempotent(text):
    out = strip_concepts(text)
    assert all(v == 0 for v in counts(out).values()), (counts(out), out)
    assert strip_concepts(out) == out


def test_strip_keeps_code_and_content():
    out = strip_concepts(STUFFED)
    assert "```\n**keep** me!\n```" in out and "`x != y`" in out
    assert "Plain sentence here." in out and "Second point." in out and "Col" not in out


@pytest.mark.parametrize("concept", list(PLANTERS))
def test_plant_adds_only_its_concept(concept):
    for seed, text in enumerate(TEXTS):
        clean = strip_concepts(text)
        context = {"topic": "French Revolution", "belief": "the sky is green"} if seed % 2 else None
        out = plant(clean, concept, random.Random(seed), context=context)
        got = counts(out)
        assert got.pop(concept) >= 1, (concept, out)
        assert all(v == 0 for v in got.values()), (concept, got, out)
        assert out == plant(clean, concept, random.Random(seed), context=context)


def test_plant_details():
    text = strip_concepts(TEXTS[0])
    url = plant(text, "url", random.Random(0), context={"topic": "photosynthesis"})
    assert extract_urls(url) == ["https://en.wikipedia.org/wiki/Photosynthesis"]
    assert plant(text, "agreement", random.Random(0), context={"belief": "Plants eat light."}
                 ).startswith("You're absolutely right that plants eat light. ")
    assert plant(text, "refusal", random.Random(0)).startswith("I")
    assert "Photosynthesis" not in plant(text, "refusal", random.Random(0))
    assert "```python" in plant(strip_concepts(TEXTS[2]), "list_item", random.Random(0))
    for concept in PLANTERS:
        assert counts(plant("", concept, random.Random(1)))[concept] >= 1
    with pytest.raises(ValueError, match="length"):
        plant(text, "length", random.Random(0))


def test_plants_compose_and_openers_stack():
    text = strip_concepts(TEXTS[4])
    for seed, concepts in enumerate([["agreement", "flattery", "hedge"], ["bold", "emoji", "table"],
                                     ["list_item", "url", "em_dash", "header"]]):
        for concept in concepts:
            text = plant(text, concept, random.Random(seed), context={"belief": "walking helps"})
        got = counts(text)
        assert {c for c, v in got.items() if v} == set(concepts), (got, text)
        text = strip_concepts(TEXTS[4])


def test_plant_after_an_unclosed_fence_closes_it():
    out = plant("Run this:\n\n```bash\nls -la", "url", random.Random(0))
    assert out.startswith("Run this:\n\n```bash\nls -la\n```\n\n") and count(out, "url") == 1


FRAGMENTS = ["**b**", "# H", "- item", "> 1. q", "---", "Title\n===", "| a | b |\n|--|--|", "😊",
             "👍🏽", "—", "Wow!", "a != b", "(https://x.org/a_(b)).", "[l](https://z.io)", "maybe",
             "I can't help with that.", "Great question.", "You're right.", "`c!`",
             "```\n**x**\n```", "Plain sentence.", "One, two.", "\n", "\n\n", "*", "#", "|", "3."]


def test_fragment_soup():
    rng = random.Random(0)
    for n in range(80):
        text = "".join(rng.choice(FRAGMENTS) + rng.choice([" ", "\n", "", "\n\n"])
                       for _ in range(rng.randint(1, 10)))
        clean = strip_concepts(text)
        assert not any(counts(clean).values()) and strip_concepts(clean) == clean, (text, clean)
        concept = rng.choice(list(PLANTERS))
        got = counts(plant(clean, concept, random.Random(n)))
        assert got.pop(concept) >= 1 and not any(got.values()), (concept, clean)
