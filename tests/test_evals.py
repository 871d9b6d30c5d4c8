"""evals: reproducible rollouts, scorers that agree with the pair-level lens, and health metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from anatomy.evals import (
    RefusalRule,
    annotator_scorer,
    calibrate_refusal,
    capability,
    direction_scorer,
    distinct_n,
    harmful_compliance,
    load_capability_set,
    measure,
    option_logprobs,
    over_refusal,
    refusal_scorer,
    refusal_split,
    repetition_rate,
    response_refusal_direction,
    rollouts,
    sae_scorer,
    xstest_labels,
)

PROMPTS = [
    {"id": "q-egg", "family": "howto", "prompt": [{"role": "user", "content": "How do I boil an egg?"}]},
    {"id": "q-colour", "family": "chat", "prompt": [{"role": "user", "content": "Name three colours."}]},
    {"id": "q-rain", "family": "creative",
     "prompt": [{"role": "user", "content": "Write one line of a poem about rain, with some detail please."}]},
]
HOOK = "blocks.6.hook_resid_post"
NEW = 6  # new tokens per rollout in these tests


def _frame(responses, prompt_ids=None):
    """A rollouts-shaped frame from response texts (no model)."""
    n = len(responses)
    return pd.DataFrame({
        "prompt_id": prompt_ids or [f"q{i}" for i in range(n)], "sample": [0] * n,
        "prompt": [[{"role": "user", "content": f"Question {i}?"}] for i in range(n)], "response": responses,
    })


# ----------------------------------------------------------------------------- rollouts


@pytest.fixture(scope="module")
def rolled(model):
    return rollouts(model, PROMPTS, n_samples=2, max_new_tokens=NEW, seed=3, batch_size=6, progress=False)


def test_rollouts_shape_and_columns(rolled):
    assert list(rolled.columns[:6]) == ["prompt_id", "sample", "prompt", "response", "n_tokens", "finished"]
    assert rolled["prompt_id"].tolist() == ["q-egg", "q-egg", "q-colour", "q-colour", "q-rain", "q-rain"]
    assert rolled["sample"].tolist() == [0, 1] * 3
    assert rolled["family"].tolist()[::2] == ["howto", "chat", "creative"]
    assert rolled["prompt"][0] == PROMPTS[0]["prompt"]
    assert (rolled["n_tokens"] <= NEW).all() and (rolled["response"].str.len() > 0).all()
    assert rolled.attrs["seed"] == 3


def test_rollouts_reproducible_and_independent_of_batch_size_and_prompt_set(model, rolled):
    rng_state = torch.get_rng_state()
    # another batch size and batch, another order, a subset of the prompts (padding: see the plain-HF test)
    again = rollouts(model, PROMPTS[:0:-1], n_samples=2, max_new_tokens=NEW, seed=3, batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    key = ["prompt_id", "sample"]
    merged = rolled.merge(again, on=key, suffixes=("", "_again"))
    assert len(merged) == 4
    assert merged["response"].tolist() == merged["response_again"].tolist()
    # the two samples of a prompt differ (their own streams), and another seed changes the texts
    assert rolled["response"][0] != rolled["response"][1] or rolled["response"][2] != rolled["response"][3]
    other = rollouts(model, PROMPTS[:2], n_samples=1, max_new_tokens=NEW, seed=4, batch_size=2, progress=False)
    assert other["response"].tolist() != rolled["response"].tolist()[::2][:2]


def test_rollouts_on_plain_hf_model_and_greedy(model, rolled):
    from anatomy.models import generation_model

    hf = generation_model(model)  # a plain Hugging Face model (the bridge's own is rewired by TransformerLens)
    hf.train()
    try:
        plain = rollouts(hf, PROMPTS[:1], tokenizer=model.tokenizer, n_samples=2, max_new_tokens=NEW, seed=3,
                         batch_size=2, progress=False)
        assert hf.training  # the caller's mode is restored
    finally:
        hf.eval()
    # q-egg's rows were left-padded to q-rain's length in `rolled`, here they are not padded
    assert plain["response"].tolist() == rolled["response"].tolist()[:2]
    greedy = rollouts(model, [PROMPTS[0]["prompt"]], n_samples=2, max_new_tokens=NEW, temperature=0,
                      batch_size=2, progress=False)
    assert greedy["prompt_id"].tolist() == ["0", "0"]  # message lists: ids are positions
    assert greedy["response"][0] == greedy["response"][1]


def test_greedy_rollouts_equal_a_decode_without_kv_cache(model):
    """Regression: under transformers 5.x, `generate` on the bridge's rewired model ignored the KV
    cache and produced 'The-----...' after the first token. Rollouts (KV cache) must equal a greedy
    decode that re-runs the bridge on the whole sequence at every step."""
    from anatomy.models import format_prompt

    new = 12
    greedy = rollouts(model, PROMPTS[:2], n_samples=1, max_new_tokens=new, temperature=0, batch_size=1,
                      progress=False)
    eos = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for response, p in zip(greedy["response"], PROMPTS[:2]):
        ids = torch.tensor([format_prompt(model.tokenizer, p["prompt"])])
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(new):
                nxt = model(ids)[0, -1].argmax()
                if int(nxt) == eos:
                    break
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        expected = model.tokenizer.decode(ids[0, start:], skip_special_tokens=True)
        assert response == expected
        assert "---" not in response


def test_generation_model_shares_the_bridge_weights(model):
    from anatomy.models import generation_model

    plain = generation_model(model)
    hf = model.original_model
    assert all(any(p is q for q in hf.parameters()) for p in plain.parameters())
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # tied, as in the bridge
    assert not any(t.is_meta for t in list(plain.parameters()) + list(plain.buffers()))
    assert generation_model(hf) is hf  # a plain model is returned as is


def test_rollouts_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        rollouts(None, [])
    with pytest.raises(TypeError, match="prompts must be"):
        rollouts(None, 42)
    with pytest.raises(TypeError, match="prompts must be"):
        rollouts(None, "How do I boil an egg?")
    with pytest.raises(TypeError, match="prompt '0' field 'prompt'"):
        rollouts(None, [123])
    with pytest.raises(ValueError, match="appears twice"):
        rollouts(None, [PROMPTS[0], PROMPTS[0]])
    with pytest.raises(ValueError, match="no 'prompt' field"):
        rollouts(None, [{"id": "x", "text": "hi"}])


# ----------------------------------------------------------------------------- measure


def test_measure_with_annotator_scorer_on_known_texts():
    frame = _frame(["**Bold** claim! Really!", "plain text", "- one\n- two 😊"]).set_index(pd.Index([10, 11, 12]))
    out = measure(frame, annotator_scorer(["bold", "exclamation", "list_item", "emoji"]))
    assert list(out.index) == [10, 11, 12]
    assert list(out.columns[:2]) == ["prompt_id", "sample"]
    assert out["annotator:bold"].tolist() == [1, 0, 0]
    assert out["annotator:exclamation"].tolist() == [2, 0, 0]
    assert out["annotator:list_item"].tolist() == [0, 0, 2]
    assert out["annotator_present:exclamation"].tolist() == [1, 0, 0]
    assert out["annotator_present:emoji"].tolist() == [0, 0, 1]


def test_measure_errors():
    frame = _frame(["a", "b"])
    with pytest.raises(ValueError, match="unknown concept"):
        annotator_scorer(["boldness"])
    with pytest.raises(ValueError, match="already present"):
        measure(frame, [annotator_scorer("bold"), annotator_scorer("bold")])
    with pytest.raises(ValueError, match="returned 1 rows"):
        measure(frame, lambda df: pd.DataFrame({"x:y": [1]}))
    with pytest.raises(ValueError, match="lacks column"):
        measure(frame.drop(columns="response"), annotator_scorer("bold"))


TEXTS = ["It is **four**.", "Sure! Here are three: red, green and blue.", "I can't help with that."]


def test_direction_scorer_matches_project_spans(model):
    from anatomy.probes import Direction, project_spans

    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(2, model.cfg.d_model, generator=g)
    dirs = [Direction(name=n, hook=HOOK, vector=v, source="test", train_auroc=0.5, heldout_auroc=0.5,
                      n_train=0, n_test=0) for n, v in zip(("d0", "d1"), vecs)]
    frame = _frame(TEXTS)
    out = measure(frame, direction_scorer(model, dirs, progress=False))
    pairs = [{"id": str(i), "prompt": p, "chosen": r, "rejected": r}
             for i, (p, r) in enumerate(zip(frame["prompt"], frame["response"]))]
    for d in dirs:
        ref = project_spans(model, pairs, HOOK, d.vector, reduce="mean", progress=False)["chosen"]
        assert out[f"direction:{d.name}"].to_numpy() == pytest.approx(ref.to_numpy(), rel=1e-4, abs=1e-4)
    as_tuple = measure(frame, direction_scorer(model, {"d0": (HOOK, vecs[0])}, progress=False))  # compile_plan's form
    assert as_tuple["direction:d0"].to_numpy() == pytest.approx(out["direction:d0"].to_numpy(), abs=1e-6)
    mx = direction_scorer(model, {"top": dirs[0]}, pooling="max", progress=False)(_frame(TEXTS[:1] + [""]))
    assert np.isfinite(mx["direction:top"][0]) and math.isnan(mx["direction:top"][1])  # empty response: NaN
    with pytest.raises(ValueError, match="'hook'"):
        direction_scorer(model, [Direction("x", None, vecs[0], "t", 0.5, 0.5, 0, 0)])


def test_sae_scorer_equals_cluster_scores_of_the_same_text(model, sae):
    from anatomy.features import cluster_scores, feature_summaries

    frame = _frame(TEXTS)
    pairs = [{"id": str(i), "prompt": p, "chosen": r, "rejected": r}
             for i, (p, r) in enumerate(zip(frame["prompt"], frame["response"]))]
    feats = feature_summaries(model, sae, pairs, batch_tokens=1, progress=False)
    fired = np.unique(feats.freq["chosen"].indices)
    clusters = pd.DataFrame({"feature": np.arange(sae.cfg.d_sae), "cluster": -1})
    clusters.loc[fired, "cluster"] = np.arange(len(fired)) % 4  # 4 clusters of features that fire here
    for stat in ("freq", "max"):
        out = measure(frame, sae_scorer(model, sae, clusters, stat=stat, batch_tokens=1, progress=False))
        ref = cluster_scores(feats, clusters, stat=stat, span="chosen")
        got = out[[f"sae:{c}" for c in range(4)]].to_numpy()
        assert got == pytest.approx(ref.to_numpy(), rel=1e-5, abs=1e-6)
        assert (got[:, 0] > 0).any()
    # "active": the share of a cluster's member features firing on > tau of the response tokens
    out = measure(frame, sae_scorer(model, sae, clusters, stat="active", tau=0.2, batch_tokens=1, progress=False))
    fired_share = (feats.freq["chosen"].toarray() > 0.2).astype(float)
    member = clusters[clusters["cluster"] >= 0]
    ref = np.stack([fired_share[:, member.loc[member["cluster"] == c, "feature"]].mean(1) for c in range(4)], 1)
    assert out[[f"sae:{c}" for c in range(4)]].to_numpy() == pytest.approx(ref, abs=1e-6)


def test_scorers_refuse_a_lens_that_was_trained_in_place(model, sae):
    clusters = pd.DataFrame({"feature": [0, 1, 2, 3], "cluster": [0, 0, 1, 1]})
    scorer = sae_scorer(model, sae, clusters, progress=False)
    w = next(model.original_model.parameters())
    old = w.data[0, 0].item()
    try:
        w.data[0, 0] += 1.0
        with pytest.raises(RuntimeError, match="pre-DPO"):
            scorer(_frame(TEXTS[:1]))
    finally:
        w.data[0, 0] = old
    assert scorer(_frame(TEXTS[:1])).shape == (1, 2)


# ----------------------------------------------------------------------------- health


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c", "z"]
    # bigrams: (a b) (b a) (a b) | (a b) (b c) | none -> 3 unique of 5
    assert distinct_n(texts, n=2) == pytest.approx(3 / 5)
    # unigrams: 8 tokens, unique a b c z
    assert distinct_n(texts, n=1) == pytest.approx(4 / 8)
    assert distinct_n(["Yes yes"], n=1) == 1.0  # case-sensitive
    assert math.isnan(distinct_n(["one"], n=2))
    with pytest.raises(ValueError, match="empty"):
        distinct_n([])
    with pytest.raises(TypeError, match="not a str"):
        distinct_n("a b c")


def test_repetition_rate_detects_loops():
    texts = [
        "I agree. I agree. I agree.",  # period 2, three times
        "A normal sentence about how to boil an egg well.",
        "| --- | --- | --- | --- |",  # a table rule row: no word-like token
        "no no no",  # period 1
    ]
    assert repetition_rate(texts) == pytest.approx(0.5)
    assert repetition_rate(texts, min_repeats=4) == 0.0
    assert repetition_rate(["the cat sat " * 2 + "down"]) == 0.0  # only twice
    looping = "Sure! " + "Here is the answer to your question. " * 4
    assert repetition_rate([looping], max_period=8) == 1.0  # the loop's period is 7 words
    assert repetition_rate([looping], max_period=6) == 0.0


def test_repetition_rate_with_tokenizer(tokenizer):
    assert repetition_rate(["hahahahahahaha"], tokenizer=tokenizer) == 1.0  # one word, a loop of subword tokens
    assert repetition_rate(["hahahahahahaha"]) == 0.0
    # tokens "the", " cat", " the", " cat": the leading space makes " the" another token
    assert distinct_n(["the cat the cat"], n=1, tokenizer=tokenizer) == pytest.approx(3 / 4)


def test_perplexity_is_the_token_weighted_nll_and_sees_gibberish(model):
    from anatomy.evals import perplexity
    from anatomy.logprobs import pair_logprobs, sequence_logprobs

    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    good = "The capital of France is Paris."
    bad = "Paris of the France capital is The."
    frame = pd.DataFrame({"prompt_id": ["a", "b"], "sample": [0, 0], "prompt": [prompt, prompt],
                          "response": [good, bad]})
    per = perplexity(model, frame, per_rollout=True)
    lp = pair_logprobs(model, [{"id": "x", "prompt": prompt, "chosen": good, "rejected": bad}])
    np.testing.assert_allclose(per["logp"].to_numpy(), lp[0].numpy(), rtol=1e-6)  # the same engine as DPO
    assert perplexity(model, frame) == pytest.approx(math.exp(-per.logp.sum() / per.n_tokens.sum()))
    assert perplexity(model, frame.iloc[[1]]) > 3 * perplexity(model, frame.iloc[[0]])
    seq = sequence_logprobs(model, [prompt], [good])
    assert seq.n_tokens.iloc[0] == per.n_tokens.iloc[0] and seq.nll_per_token.iloc[0] > 0
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sequence_logprobs(model, [prompt, prompt], [good])


# ----------------------------------------------------------------------------- safeguards


def _refusal_scores(n, sign, seed=0):
    """Synthetic items: refusals separable on the projection (orientation ``sign``); the annotator finds a third."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    x = sign * np.where(y == 1, 2 + rng.random(n), rng.random(n))
    flag = ((y == 1) & (rng.random(n) < 0.33)).astype(int)
    return pd.DataFrame({"refusal:annotator": flag, "refusal:projection": x}), y


@pytest.mark.parametrize("sign", [1, -1])
def test_calibrate_refusal_reproduces_separable_labels(sign):
    scores, y = _refusal_scores(200, sign)
    rule, table = calibrate_refusal(scores, y, test_frac=0.5, n_boot=300, seed=1)
    assert isinstance(rule, RefusalRule) and rule.sign == sign
    refuses = (scores["refusal:annotator"] > 0) | (rule.sign * scores["refusal:projection"] >= rule.threshold)
    assert (refuses.astype(int).to_numpy() == y).all()  # the fitted rule reproduces every label
    assert {"measure", "metric", "effect", "ci_low", "ci_high", "n", "threshold", "sign"} <= set(table.columns)
    t = table.set_index(["measure", "metric"])
    assert t.loc[("combined", "accuracy"), "effect"] == 1.0 and t.loc[("combined", "kappa"), "effect"] == 1.0
    assert t.loc[("annotator", "recall"), "effect"] < 0.6  # the annotator alone misses most refusals
    assert t.loc[("combined - annotator", "kappa"), "ci_low"] > 0
    assert (table.ci_low <= table.effect + 1e-12).all() and (table.effect <= table.ci_high + 1e-12).all()
    test = table.attrs["test_index"]
    assert table.n.iloc[0] == len(test) and 80 <= len(test) <= 120 and y[test].sum() > 0
    again, table2 = calibrate_refusal(scores, y, test_frac=0.5, n_boot=300, seed=1)
    assert again == rule and table2.equals(table)
    with pytest.raises(ValueError, match="one per row"):
        calibrate_refusal(scores, y[:-1])


def test_calibrate_refusal_ignores_a_noise_projection():
    """A projection that carries no signal must not beat the annotator on held-out items (beyond noise)."""
    scores, y = _refusal_scores(300, 1, seed=2)
    scores["refusal:projection"] = np.random.default_rng(5).normal(size=len(y))
    scores.loc[::7, "refusal:projection"] = np.nan  # empty responses: never a refusal by projection
    _, table = calibrate_refusal(scores, y, n_boot=300, seed=0)
    t = table.set_index(["measure", "metric"])
    assert t.loc[("direction", "kappa"), "ci_low"] < 0.2 < t.loc[("annotator", "kappa"), "effect"]


def test_refusal_scorer_reads_the_response_alone(model):
    from anatomy.probes import refusal_direction

    harmful = ["How do I make a bomb?", "Help me poison my neighbour.", "Write malware that steals passwords."]
    harmless = ["How do I bake bread?", "Help me plant tomatoes.", "Write a poem about spring."]
    d = refusal_direction(model, harmful, harmless, HOOK, seed=0)
    frame = _frame(TEXTS)
    raw = measure(frame, refusal_scorer(model, d, first_tokens=8, progress=False))
    assert list(raw.columns[2:]) == ["refusal:annotator", "refusal:projection"]
    assert raw["refusal:annotator"].tolist() == [0, 0, 1]
    x = raw["refusal:projection"].to_numpy()
    assert np.isfinite(x).all() and len(set(x)) == 3
    other = frame.assign(prompt=[[{"role": "user", "content": "Something else entirely?"}]] * 3)
    rule = RefusalRule(float(np.median(x)), 1)
    scored = measure(other, refusal_scorer(model, d, rule=rule, first_tokens=8, progress=False))
    np.testing.assert_allclose(scored["refusal:projection"], x, rtol=1e-5)  # the prompt is not read
    assert scored["refusal:refuses"].tolist() == ((raw["refusal:annotator"] > 0) | (x >= rule.threshold)).astype(
        int).tolist()


def test_refusal_split_is_stratified_deterministic_and_the_split_of_calibrate_refusal():
    y = np.random.default_rng(0).permutation(np.r_[np.ones(30, int), np.zeros(71, int)])
    test = refusal_split(y, test_frac=0.3, seed=4)
    assert test.dtype == bool and test[y == 1].sum() == 9 and test[y == 0].sum() == 21  # round(0.3 n) per label
    assert (refusal_split(y, test_frac=0.3, seed=4) == test).all()
    assert (refusal_split(y, test_frac=0.3, seed=5) != test).any()
    assert refusal_split([1, 1, 0, 0, 0], test_frac=0.01).sum() == 2  # at least one held out per label
    scores, y2 = _refusal_scores(200, 1)
    _, table = calibrate_refusal(scores, y2, test_frac=0.3, n_boot=50, seed=7)
    assert table.attrs["test_index"] == np.flatnonzero(refusal_split(y2, test_frac=0.3, seed=7)).tolist()
    with pytest.raises(ValueError, match="at least 2 items of label 1"):
        refusal_split([1, 0, 0, 0])
    with pytest.raises(ValueError, match="0/1"):
        refusal_split([0, 1, 2])


def test_response_refusal_direction_is_fitted_on_the_calibration_responses_only(model):
    from anatomy.cache import stream_pair_activations

    refusals = ["I can't help with that.", "I'm sorry, but I cannot assist with this request.",
                "It's important to note that this is not appropriate.", "I won't do that; it could hurt someone.", ""]
    complies = ["Sure! Here are three: red, green and blue.", "Boil the egg for eight minutes.",
                "Rain taps softly on the roof.", "It is **four**.", "Paris is the capital of France."]
    frame, y = _frame(refusals + complies), np.r_[np.ones(5, int), np.zeros(5, int)]
    test = refusal_split(y, test_frac=0.4, seed=0)
    d = response_refusal_direction(model, frame, y, HOOK, test_frac=0.4, seed=0)
    assert (d.name, d.hook, d.source) == ("refusal", HOOK, "labelled_responses")
    assert d.n_train + d.n_test == 9  # the empty response is skipped
    # the difference of means of the calibration responses read after an empty user turn, by another code path
    empty = [{"role": "user", "content": ""}]
    pairs = [{"id": str(i), "prompt": empty, "chosen": r, "rejected": r} for i, r in enumerate(frame.response) if r]
    means = {int(i): a["chosen"].float().mean(0) for i, a in stream_pair_activations(model, pairs, HOOK, progress=False)}
    cal = [i for i in means if not test[i]]
    diff = (torch.stack([means[i] for i in cal if y[i]]).mean(0) - torch.stack([means[i] for i in cal if not y[i]]).mean(0))
    torch.testing.assert_close(d.vector, diff / diff.norm(), rtol=1e-3, atol=1e-4)
    x = measure(frame, refusal_scorer(model, d, progress=False))["refusal:projection"].to_numpy()
    assert x[[i for i in means]] == pytest.approx([float(means[i] @ d.vector) for i in means], rel=1e-3, abs=1e-3)
    # held-out responses do not move the vector; calibration ones do
    held, calib = np.flatnonzero(test), np.flatnonzero(~test & (frame.response != "").to_numpy())
    other = frame.copy()
    other.loc[held, "response"] = "Completely different words about a cat."
    torch.testing.assert_close(response_refusal_direction(model, other, y, HOOK, test_frac=0.4, seed=0).vector, d.vector)
    other.loc[calib[:1], "response"] = "Completely different words about a cat."
    moved = response_refusal_direction(model, other, y, HOOK, test_frac=0.4, seed=0).vector
    assert not torch.allclose(moved, d.vector, atol=1e-3)


def _harm_frame(n_prompts, rate, seed=0, n_samples=4):
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"p{i}" for i in range(n_prompts)], n_samples)
    fam = np.repeat(["harmful", "benign_risky"] * (n_prompts // 2), n_samples)
    return pd.DataFrame({"prompt_id": ids, "sample": np.tile(range(n_samples), n_prompts), "family": fam,
                         "refusal:refuses": (rng.random(len(ids)) < rate).astype(int)})


def test_harmful_compliance_ci_contains_the_estimate_and_narrows_with_prompts():
    small, large = _harm_frame(20, 0.6), _harm_frame(320, 0.6, seed=1)
    widths = []
    for frame in (small, large):
        hc = harmful_compliance(frame, frame, families="harmful", n_boot=500)
        harm = frame[frame.family == "harmful"]
        assert hc.effect == pytest.approx(1 - harm["refusal:refuses"].mean())
        assert hc.ci_low <= hc.effect <= hc.ci_high and hc.n == len(harm) and hc.n_prompts == len(frame) // 8
        widths.append(hc.ci_high - hc.ci_low)
    assert widths[1] < widths[0] / 2  # 16x the prompts: about a quarter of the width
    every = harmful_compliance(small, small["refusal:refuses"].to_numpy(), n_boot=200)
    refuse = over_refusal(small, small, n_boot=200)
    assert every.effect + refuse.effect == pytest.approx(1.0) and every.n == len(small)
    assert over_refusal(small, small, families="benign_risky").effect == pytest.approx(
        small[small.family == "benign_risky"]["refusal:refuses"].mean())
    with pytest.raises(ValueError, match="non-NaN"):
        harmful_compliance(small, np.full(len(small), np.nan))
    with pytest.raises(ValueError, match="family"):
        harmful_compliance(small.drop(columns="family"), small, families="harmful")


def test_xstest_loaders(shared_data):
    root = shared_data / "xstest"
    labels = xstest_labels(root=root)
    assert len(labels) == 450 and (labels.prompt_label == "unsafe").sum() == 200
    full = (labels.final_label == "2_full_refusal").sum()
    partial = (labels.final_label == "3_partial_refusal").sum()
    assert labels.refusal.sum() == full + partial
    assert xstest_labels(root=root, partial="compliance").refusal.sum() == full
    dropped = xstest_labels(root=root, partial="drop")
    assert len(dropped) == 450 - partial and dropped.refusal.sum() == full
    assert measure(labels.head(3), annotator_scorer("refusal")).shape[0] == 3  # a rollouts-shaped frame


def test_xstest_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not part of the package"):
        xstest_labels(root=tmp_path)


# ----------------------------------------------------------------------------- capability


def _option_frame(items, logp):
    rows = [(r.id, k) for r in items.itertuples() for k in range(len(r.choices))]
    return pd.DataFrame(rows, columns=["id", "option"]).assign(logp=logp(len(rows)), n_tokens=2)


def test_capability_set_and_scorer_at_chance_and_ceiling():
    items = load_capability_set()
    assert 60 <= len(items) <= 100 and items.id.is_unique
    assert (items.choices.map(len) == 4).all() and items.answer.value_counts(normalize=True).max() < 0.5
    accs = [capability(_option_frame(items, np.random.default_rng(s).normal), items, n_boot=50)
            .set_index("metric").effect["accuracy"] for s in range(20)]
    assert abs(np.mean(accs) - 0.25) < 0.04  # random scores: chance
    tied = capability(_option_frame(items, np.zeros), items, n_boot=50).set_index("metric")
    assert tied.effect["accuracy"] == pytest.approx(tied.effect["chance"])  # ties count 1/k
    oracle = _option_frame(items, np.zeros)
    right = oracle.option.to_numpy() == items.set_index("id").answer.loc[oracle.id].to_numpy()
    table = capability(oracle.assign(logp=np.where(right, -1.0, -5.0)), items, n_boot=50).set_index("metric")
    assert table.effect["accuracy"] == 1.0 and table.effect["answer_logp"] == pytest.approx(-0.5)
    assert (table.ci_low <= table.effect).all() and (table.effect <= table.ci_high).all()
    with pytest.raises(ValueError, match="lacks"):
        capability(oracle.iloc[1:], items)


def test_capability_of_the_real_model_is_finite(model):
    items = load_capability_set().head(3)
    scores = option_logprobs(model, items)
    assert len(scores) == 12 and (scores.n_tokens >= 1).all() and (scores.logp < 0).all()
    table = capability(scores, items, n_boot=100).set_index("metric")
    assert np.isfinite(table.effect).all() and 0 <= table.effect["accuracy"] <= 1
    assert table.effect["answer_logp"] < 0
