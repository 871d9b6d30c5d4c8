"""The organism dataset: sizes, splits, planted rates measured by the annotators, card, determinism."""

import hashlib
import json

import numpy as np
import pandas as pd
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


# ----------------------------------------------------------------------- scoring a diagnosis
def scored_organism(n_prompts: int = 80, per_prompt: int = 5, seed: int = 0):
    """A synthetic organism whose features read two planted concepts: bold (features 0-5, in 40%
    of chosen responses) and hedge (6-11, in 10% of rejected ones); response topics (12-59) and
    prompt families (60-107, prompt span only) are unrelated to either; 108-119 are noise. The
    other concepts are in the chosen responses of 5% of pairs (the controls on both sides), and
    no feature reads them."""
    from test_hypotheses import make_features

    rng = np.random.default_rng(seed)
    n, d = n_prompts * per_prompt, 120
    prompt_id = np.repeat(np.arange(n_prompts), per_prompt)
    family = np.asarray(organism.FAMILIES)[prompt_id % len(organism.FAMILIES)]
    bold = rng.random(n) < 0.4
    hedge = rng.random(n) < 0.1
    topic = rng.integers(0, 8, n)
    freq = {s: np.zeros((n, d)) for s in ("prompt", "chosen", "rejected")}

    def fire(span, rows, cols):
        freq[span][np.ix_(rows, cols)] = rng.uniform(0.2, 0.5, (len(rows), len(cols))) * (
            rng.random((len(rows), len(cols))) < 0.9)

    for f in range(8):
        fire("prompt", np.flatnonzero(prompt_id % 8 == f), range(60 + 6 * f, 66 + 6 * f))
    for side in ("chosen", "rejected"):
        for t in range(8):
            fire(side, np.flatnonzero(topic == t), range(12 + 6 * t, 18 + 6 * t))
        freq[side][:, 108:] = rng.uniform(0, 0.1, (n, 12)) * (rng.random((n, 12)) < 0.2)
    fire("chosen", np.flatnonzero(bold), range(0, 6))
    fire("rejected", np.flatnonzero(hedge), range(6, 12))
    features = make_features(freq)
    pairs = []
    for i in range(n):
        row = {"id": features.ids[i], "prompt": [{"role": "user", "content": f"Question {prompt_id[i]}?"}],
               "chosen": f"Answer {i}." + (" **Note** this." if bold[i] else ""),
               "rejected": f"A short answer {i}." + (" Perhaps, I think." if hedge[i] else ""),
               "family": str(family[i]), "rejected_kind": organism.KINDS[i % 3]}
        for k, c in enumerate(organism.CONCEPTS):  # the others: a few responses, read by no feature
            other = i % 20 == k
            row[f"{c}_chosen"] = bool(bold[i]) if c == "bold" else other and c != "hedge"
            row[f"{c}_rejected"] = bool(hedge[i]) if c == "hedge" else other and c in organism.CONTROLS
        pairs.append(row)
    return features, pairs


@pytest.fixture(scope="module")
def scored():
    from anatomy.diagnose import DiagnoseConfig, discover, prompt_keys

    features, pairs = scored_organism()
    diagnosis = discover(features, prompt_keys(pairs), config=DiagnoseConfig(resolution=1.0, n_boot=0))
    return diagnosis, pairs, organism.score_diagnosis(diagnosis, pairs, ungated=features)


def test_score_diagnosis_finds_the_planted_concepts_with_the_right_sign(scored):
    diagnosis, pairs, s = scored
    found = s["detail"]["top20"]["recall_concepts_found"]
    assert set(found) == {"bold", "hedge"} and s["headline"]["recall_top20"] == pytest.approx(2 / 7)
    per = s["per_concept"].set_index("concept")
    for c, sign in (("bold", "chosen"), ("hedge", "rejected")):
        assert per.at[c, "best_cluster_auroc"] >= organism.AUROC_MATCH and per.at[c, "lost_at"] == ""
        assert per.at[c, "best_feature"] in (range(0, 6) if c == "bold" else range(6, 12))
        row = s["ranked"][s["ranked"]["matches"].str.split(",").apply(lambda m, c=c: c in m)].iloc[0]
        assert row["direction"] == sign and row["rank"] == per.at[c, "best_global_rank_right_sign"]
    assert per.at["emoji", "lost_at"] == "sae" and per.at["table", "lost_at"] == ""  # table: a control
    assert per.at["bold", "truth_rate"] == pytest.approx(np.mean([p["bold_chosen"] for p in pairs]))
    # precision counts the top-20 rows that match a planted concept (here only bold or hedge: the
    # isolates make a concept of each of several bold features, all of them matches)
    top = s["ranked"].head(20)
    matching = top["matches"] != ""
    assert set(",".join(top.loc[matching, "matches"]).split(",")) == {"bold", "hedge"}
    assert s["detail"]["top20"]["n_match_planted"] == matching.sum() >= 2
    assert s["headline"]["precision_top20"] == pytest.approx(matching.mean())
    assert s["headline"]["controls_min_q"] == 1.0  # no table or rule anywhere
    assert not s["links"]["finds_links"] and s["links"]["note"] == "no url-matching concept cluster"
    assert "recall_ungated_scores" in s["detail"]["top20"]


def test_covariate_sensitivity_rescores_each_adjustment(scored):
    diagnosis, pairs, _ = scored
    rows = organism.covariate_sensitivity(diagnosis, pairs)
    assert [r["covariate"] for r in rows] == ["length", "length+mean_disparity", "none"]
    assert all(r["best_rank_right_sign"]["bold"] is not None for r in rows)


def test_score_diagnosis_refuses_other_pairs(scored):
    diagnosis, pairs, _ = scored
    with pytest.raises(ValueError, match="not the diagnosed pairs"):
        organism.score_diagnosis(diagnosis, pairs[::-1])
    with pytest.raises(ValueError, match="ground-truth columns"):
        organism.score_diagnosis(diagnosis, [{k: p[k] for k in ("id", "prompt", "chosen", "rejected")}
                                             for p in pairs])


def test_auroc_matrix_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = np.round(rng.random((200, 4)), 1)  # many ties
    labels = pd.DataFrame({"a": rng.random(200) < 0.3, "b": scores[:, 1] > 0.5, "none": np.zeros(200, bool)})
    auc = organism.auroc_matrix(scores, labels)
    for c in ("a", "b"):
        for j in range(4):
            assert auc.at[j, c] == pytest.approx(roc_auc_score(labels[c], scores[:, j]), abs=1e-12)
    assert auc["none"].isna().all()


def test_score_diagnosis_of_a_sample_without_some_concept(scored):
    # a small sample may hold no response with a planted concept: it has no AUROC and no best cluster
    diagnosis, pairs, _ = scored
    no_emoji = [{**p, "emoji_chosen": False, "emoji_rejected": False, "url_chosen": False, "url_rejected": False}
                for p in pairs]
    s = organism.score_diagnosis(diagnosis, no_emoji)
    assert s["links"]["note"] == "no url in these pairs' responses" and s["links"]["best_url_cluster"] is None
    per = s["per_concept"].set_index("concept")
    assert pd.isna(per.at["emoji", "best_cluster"]) and np.isnan(per.at["emoji", "best_cluster_auroc"])
    assert per.at["emoji", "lost_at"] == "absent"
    assert per.at["bold", "best_cluster_auroc"] >= organism.AUROC_MATCH
