"""Plans and their compilation (anatomy.interventions): JSON round trip, validation, one mechanism test per method.

The mechanism tests use the tiny random-weight Llama of tests/test_train.py (2 layers,
d_model 32, the default model's tokenizer) on hand-written pairs whose concepts are known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_train import make_tiny

from anatomy import interventions as I
from anatomy.interventions import ConceptRef, Decision, Plan, compile_plan
from anatomy.logprobs import pair_logprobs
from anatomy.models import format_pair
from anatomy.train import train_dpo

HOOK = "blocks.0.hook_resid_post"
BETA = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pair(i: int, chosen: str, rejected: str, family: str = "howto", question: str = "How do I boil an egg?") -> dict:
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": question}], "chosen": chosen,
            "rejected": rejected, "family": family}


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    """Pairs 0-2 differ only by the concept (exclamation / bold / emoji in chosen); 3-5 carry none."""
    return [
        pair(0, "Boil it for nine minutes!", "Boil it for nine minutes."),
        pair(1, "Boil it for **nine** minutes.", "Boil it for nine minutes."),
        pair(2, "Boil it for nine minutes 😊", "Boil it for nine minutes", family="advice"),
        pair(3, "Put it in boiling water for nine minutes.", "Use a pan.", family="advice"),
        pair(4, "Cover it with water and heat it.", "Eggs are food."),
        pair(5, "Cook it in simmering water, then cool it.", "I do not know.", family="advice"),
    ]


def ann(name: str) -> ConceptRef:
    return ConceptRef("annotator", name)


def plan_of(*decisions) -> Plan:
    return Plan(tuple(decisions))


@pytest.fixture(scope="module")
def vector() -> torch.Tensor:
    return torch.randn(32, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- the plan


def test_plan_round_trips_through_json(tmp_path):
    plan = plan_of(
        Decision(ann("bold"), "explain_away", "reward_shaping", 2.0, scope={"family": "howto"}),
        Decision(ConceptRef("sae", "emoji cluster", features=(5, 9)), "explain_away", "filter_tokens"),
        Decision(ConceptRef("sae", "cluster 3", cluster=3), "amplify", "steering", 4.0, scope={"ids": ["a", "b"]}),
        Decision(ConceptRef("direction", "flattery"), "explain_away", "ablation"),
        Decision(ann("hedge"), "allow", "inoculation"),
    )
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.to_dict()["decisions"][1]["concept"]["features"] == [5, 9]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"decisions": [{**plan.to_dict()["decisions"][0], "colour": 1}]}))
    with pytest.raises(ValueError, match=r"odd.json.*unknown field\(s\) \['colour'\]"):
        Plan.load(tmp_path / "odd.json")


@pytest.mark.parametrize("kwargs, message", [
    (dict(concept=ann("bold"), action="remove", method="reward_shaping"), "field 'action'"),
    (dict(concept=ann("bold"), action="explain_away", method="magic"), "unknown method 'magic'"),
    (dict(concept=ann("bold"), action="explain_away", method="steering"), "reads lenses"),
    (dict(concept=ann("bold"), action="amplify", method="filter_pairs", strength=0.1), "can only explain away"),
    (dict(concept=ann("bold"), action="explain_away", method="reward_shaping", strength=-1), "field 'strength'"),
    (dict(concept=ann("bold"), action="explain_away", method="reward_shaping", strength=math.nan), "field 'strength'"),
    (dict(concept=ann("bold"), action="explain_away", method="filter_pairs", strength=2), "0 < f <= 1"),
    (dict(concept=ConceptRef("direction", "d"), action="explain_away", method="ablation", scope={"family": "x"}),
     "takes no scope"),
    (dict(concept=ann("bold"), action="explain_away", method="reward_shaping", scope={"colour": 1}), "field 'scope'"),
])
def test_decision_validates_its_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Decision(**kwargs)


def test_concept_refs_and_plans_refuse_what_they_cannot_mean():
    with pytest.raises(ValueError, match="field 'lens'"):
        ConceptRef("probe", "x")
    with pytest.raises(ValueError, match="needs features"):
        ConceptRef("sae", "x")
    with pytest.raises(ValueError, match="belong to lens 'sae'"):
        ConceptRef("annotator", "bold", cluster=2)
    d = Decision(ann("bold"), "explain_away", "reward_shaping", 1.0)
    with pytest.raises(ValueError, match="already decided at \\[0\\]"):
        Plan((d, Decision(ann("bold"), "explain_away", "reward_shaping", 2.0)))
    assert set(I.METHODS) == {"reward_shaping", "steering", "inoculation", "filter_pairs", "downweight_pairs",
                              "filter_tokens", "preventative_steering", "ablation"}


# ----------------------------------------------------------------------------- methods


def test_empty_plan_trains_exactly_like_plain_dpo(tokenizer, pairs):
    inputs = compile_plan(Plan(), make_tiny(tokenizer), pairs)
    assert inputs.is_empty and inputs.train_kwargs() == {"shaping_ids": [p["id"] for p in pairs]}
    allow = compile_plan(plan_of(Decision(ann("bold"), "allow", "reward_shaping")), make_tiny(tokenizer), pairs)
    assert allow.is_empty
    plain = train_dpo(make_tiny(tokenizer), pairs, lr=1e-3, batch_size=3, epochs=1, progress=False)
    shaped = train_dpo(make_tiny(tokenizer), pairs, lr=1e-3, batch_size=3, epochs=1, progress=False,
                       **inputs.train_kwargs())
    np.testing.assert_array_equal(plain.history.loss, shaped.history.loss)
    with pytest.raises(ValueError, match="field 'shaping_ids'"):
        train_dpo(make_tiny(tokenizer), pairs[:3], progress=False, **inputs.train_kwargs())


def test_reward_shaping_offsets_and_a_huge_lambda_leave_no_gradient(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    gap = np.array([1.0, 0, 0, 0, 0, 0])  # only pair 0 has "!" in chosen
    z = (gap - gap.mean()) / gap.std(ddof=1)
    shaped = compile_plan(plan_of(Decision(ann("exclamation"), "explain_away", "reward_shaping", 2.0)), tiny, pairs)
    np.testing.assert_allclose(shaped.offsets, 2.0 * z)
    amp = compile_plan(plan_of(Decision(ann("exclamation"), "amplify", "reward_shaping", 2.0)), tiny, pairs)
    np.testing.assert_allclose(amp.offsets, -2.0 * z)
    assert shaped.weights is None and shaped.token_masks is None and not shaped.policy_hooks

    # pair 0 differs from its rejected response only by the concept: a huge λ explains it all away
    huge = compile_plan(plan_of(Decision(ann("exclamation"), "explain_away", "reward_shaping", 1e3)), tiny, pairs)
    norms = {}
    for name, off in (("plain", None), ("huge", huge.offsets[:1])):
        res = train_dpo(make_tiny(tokenizer), pairs[:1], lr=1e-3, batch_size=1, offsets=off, progress=False)
        norms[name] = res.history.grad_norm.iloc[0]
    assert norms["plain"] > 1e-2
    assert norms["huge"] < 1e-9 * norms["plain"]


def test_steering_offsets_are_beta_times_the_steered_log_prob_gap(tokenizer, pairs, vector):
    tiny = make_tiny(tokenizer)
    plan = plan_of(Decision(ConceptRef("direction", "d"), "explain_away", "steering", 3.0))
    inputs = compile_plan(plan, tiny, pairs, directions={"d": (HOOK, vector)}, beta=BETA)
    u = vector / vector.norm()
    steered = pair_logprobs(tiny, pairs, hooks=[(HOOK, lambda a, hook=None: a + 3.0 * u)])
    a = (steered - pair_logprobs(tiny, pairs)).numpy()
    np.testing.assert_allclose(inputs.offsets, BETA * (a[:, 0] - a[:, 1]), atol=1e-6)
    assert np.abs(inputs.offsets).max() > 1e-3  # the steering moved the log-probs
    assert inputs.summary["decisions"][0]["hook"] == HOOK and not inputs.policy_hooks  # the reference is steered
    amp = compile_plan(plan_of(Decision(ConceptRef("direction", "d"), "amplify", "steering", 3.0)), tiny, pairs,
                       directions={"d": (HOOK, vector)}, beta=BETA)
    np.testing.assert_allclose(amp.offsets, -inputs.offsets, atol=1e-9)


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i: i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_inoculation_prompt_reaches_the_policy_in_training_only(tokenizer, pairs):
    from anatomy.evals import rollouts
    from anatomy.logprobs import preference_margins

    tiny = make_tiny(tokenizer)
    inputs = compile_plan(plan_of(Decision(ann("bold"), "explain_away", "inoculation")), tiny, pairs,
                          effective=True, beta=BETA)
    system = I.INOCULATION.format(traits=I.TRAITS["bold"])
    assert all(p[0] == {"role": "system", "content": system} for p in inputs.policy_prompts)
    marker = tokenizer(system, add_special_tokens=False)["input_ids"][2:-2]
    seen = []  # (grad enabled, saw the inoculation prompt) per forward of the model's embedding
    embed = tiny.original_model.get_input_embeddings()
    handle = embed.register_forward_hook(
        lambda mod, args, out: seen.append((torch.is_grad_enabled(),
                                            any(_contains(r, marker) for r in args[0].tolist()))))
    try:
        res = train_dpo(tiny, pairs, lr=1e-3, batch_size=6, epochs=2, beta=BETA, progress=False,
                        **inputs.train_kwargs())
        ref_calls = [s for g, s in seen if not g]
        train_calls = [s for g, s in seen if g]
        assert ref_calls and not any(ref_calls)  # the reference pass never saw it
        assert train_calls and all(train_calls)  # every policy forward did
        # the reference log-probs are those of the original prompts
        torch.testing.assert_close(res.ref_logps, pair_logprobs(make_tiny(tokenizer), pairs))
        # at the first step the logit is the effective offset β·[Δ log π(y+) − Δ log π(y−)] of the prompt
        assert res.history.reward_margin.iloc[0] == pytest.approx(inputs.effective_offsets.mean(), abs=1e-4)
        assert np.abs(inputs.effective_offsets).max() > 1e-4
        seen.clear()
        rollouts(tiny, pairs[:2], n_samples=1, max_new_tokens=3, progress=False)
        preference_margins(tiny, pairs)
        assert seen and not any(s for _, s in seen)  # evaluation never sees it
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="field 'policy_prompts': 2 entries for 6 pairs"):
        train_dpo(make_tiny(tokenizer), pairs, policy_prompts=inputs.policy_prompts[:2], progress=False)


def test_filter_and_downweight_pairs_act_on_the_top_concept_gaps(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    many = [pair(i, "Yes! " * (i % 4) + "Boil it.", "Boil it.") for i in range(8)]  # gaps 0,1,2,3,0,1,2,3
    f = compile_plan(plan_of(Decision(ann("exclamation"), "explain_away", "filter_pairs", 0.25)), tiny, many)
    np.testing.assert_array_equal(f.weights, [1, 1, 1, 0, 1, 1, 1, 0])  # the two largest gaps
    assert f.summary["decisions"][0]["n_dropped"] == 2
    everything = compile_plan(plan_of(Decision(ann("exclamation"), "explain_away", "filter_pairs", 1.0)), tiny, many)
    np.testing.assert_array_equal(everything.weights, [1, 0, 0, 0, 1, 0, 0, 0])  # never a pair without the gap
    d = compile_plan(plan_of(Decision(ann("exclamation"), "explain_away", "downweight_pairs", 2.0)), tiny, many)
    gap = np.array([0, 1, 2, 3] * 2, dtype=float)
    z = (gap - gap.mean()) / gap.std(ddof=1)
    np.testing.assert_allclose(d.weights, 1 / (1 + 2.0 * np.maximum(z, 0)))
    assert d.weights[3] < d.weights[2] < d.weights[1] <= 1 and d.weights[0] == 1


def test_token_masks_remove_exactly_the_concept_tokens(tokenizer, pairs):
    from anatomy.concepts import annotate

    tiny = make_tiny(tokenizer)
    text = "Boil it for **nine minutes**, then cool it 😊 in cold water."
    rows = [pair(0, text, "Boil it."), *pairs[3:5]]
    inputs = compile_plan(plan_of(Decision(ann("bold"), "explain_away", "filter_tokens"),
                                  Decision(ann("emoji"), "explain_away", "filter_tokens")), tiny, rows)
    mask = inputs.token_masks[0][0]
    assert inputs.token_masks[0][1] is None and inputs.token_masks[1] == (None, None)
    enc = format_pair(tokenizer, rows[0]["prompt"], text)
    resp = [t for t, m in zip(enc["input_ids"], enc["response_mask"]) if m]
    kept = tokenizer.decode([t for t, k in zip(resp, mask) if k])
    dropped = tokenizer.decode([t for t, k in zip(resp, mask) if not k])
    assert "**nine minutes**" in dropped and "😊" in dropped
    assert annotate([kept], ["bold", "emoji"]).iloc[0].tolist() == [0, 0]
    assert "cool it" in kept and "cold water" in kept and "then" in kept and len(dropped) < 26
    np.testing.assert_array_equal(inputs.token_share["annotator:bold"][0], [1.0, 0.0])
    # the masked tokens count in neither the policy's nor the reference's sums
    full, masked = pair_logprobs(tiny, rows[:1]), pair_logprobs(tiny, rows[:1], token_masks=inputs.token_masks[:1])
    assert masked[0, 0] > full[0, 0] and masked[0, 1] == full[0, 1]
    res = train_dpo(make_tiny(tokenizer), rows, lr=1e-3, batch_size=3, progress=False, **inputs.train_kwargs())
    torch.testing.assert_close(res.ref_logps[:1], masked)


def test_sae_firing_tokens_are_masked(model, sae):
    from anatomy.cache import stream_pair_activations

    rows = [pair(0, "Boil it for **nine minutes**!", "Boil it."), pair(1, "Cool it 😊", "Cool it.")]
    with torch.no_grad():
        acts = dict(stream_pair_activations(model, rows, sae.cfg.metadata.hook_name, progress=False))
        z = sae.encode(acts["p0"]["chosen"])
    feature = int(z.gt(0).sum(0).argmax())  # a feature that fires on some of p0's chosen tokens
    fires = z[:, feature] > 0
    assert 0 < fires.sum() < len(fires)
    concept = ConceptRef("sae", "f", features=(feature,))
    inputs = compile_plan(plan_of(Decision(concept, "explain_away", "filter_tokens")), model, rows, sae=sae)
    np.testing.assert_array_equal(inputs.token_masks[0][0], (~fires).int().tolist())


def test_preventative_steering_and_ablation_hook_the_policy_during_training_only(tokenizer, pairs, vector):
    tiny = make_tiny(tokenizer)
    dirs = {"d": (HOOK, vector)}
    d = ConceptRef("direction", "d")
    prevent = compile_plan(plan_of(Decision(d, "explain_away", "preventative_steering", 4.0)), tiny, pairs,
                           directions=dirs)
    both = compile_plan(plan_of(Decision(d, "explain_away", "preventative_steering", 4.0),
                                Decision(d, "explain_away", "ablation")), tiny, pairs, directions=dirs)
    ablate = compile_plan(plan_of(Decision(d, "explain_away", "ablation")), tiny, pairs, directions=dirs)
    u = vector / vector.norm()
    h = torch.randn(3, 5, 32)
    torch.testing.assert_close(prevent.policy_hooks[0][1](h), h + 4.0 * u)
    out = ablate.policy_hooks[0][1](h)
    assert (out @ u).abs().max() < 1e-5 and ((out - h) - ((h @ u)[..., None] * -u)).abs().max() < 1e-5
    # hooks stack in plan order: ablation after the push removes the pushed component too
    assert [n for n, _ in both.policy_hooks] == [HOOK, HOOK]
    torch.testing.assert_close(pair_logprobs(tiny, pairs, hooks=both.policy_hooks),
                               pair_logprobs(tiny, pairs, hooks=ablate.policy_hooks))

    clean = pair_logprobs(tiny, pairs)
    for inputs in (prevent, ablate):
        res = train_dpo(tiny, pairs, lr=1e-6, batch_size=6, progress=False, **inputs.train_kwargs())
        torch.testing.assert_close(res.ref_logps, clean)  # the reference never had the hook
        assert abs(res.history.reward_margin.iloc[0]) > 1e-4  # the hooked policy did
        assert not [n for n, hp in tiny.hook_dict.items() if hp._forward_hooks]  # nothing left behind
        clean = pair_logprobs(tiny, pairs)
    torch.testing.assert_close(pair_logprobs(tiny, pairs, hooks=[]), clean)


def test_decisions_combine_offsets_add_weights_multiply_masks_intersect(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    rs = [Decision(ann(c), "explain_away", "reward_shaping", 1.5) for c in ("exclamation", "bold")]
    one = [compile_plan(plan_of(d), tiny, pairs).offsets for d in rs]
    np.testing.assert_allclose(compile_plan(plan_of(*rs), tiny, pairs).offsets, one[0] + one[1])

    many = [pair(i, "Yes! " * (i % 4) + "Boil it.", "Boil it.") for i in range(8)]
    f, dw = (Decision(ann("exclamation"), "explain_away", "filter_pairs", 0.25),
             Decision(ann("exclamation"), "explain_away", "downweight_pairs", 2.0))
    wf, wd = (compile_plan(plan_of(x), tiny, many).weights for x in (f, dw))
    np.testing.assert_allclose(compile_plan(plan_of(f, dw), tiny, many).weights, wf * wd)

    text = "**Boil** it 😊 now."
    rows = [pair(0, text, "Boil it.")]
    mb, me = (compile_plan(plan_of(Decision(ann(c), "explain_away", "filter_tokens")), tiny, rows).token_masks[0][0]
              for c in ("bold", "emoji"))
    both = compile_plan(plan_of(Decision(ann("bold"), "explain_away", "filter_tokens"),
                                Decision(ann("emoji"), "explain_away", "filter_tokens")), tiny, rows)
    assert both.token_masks[0][0] == [a & b for a, b in zip(mb, me)] and mb != me

    inoc = compile_plan(plan_of(Decision(ann("bold"), "explain_away", "inoculation"),
                                Decision(ann("emoji"), "explain_away", "inoculation")), tiny, pairs)
    assert inoc.policy_prompts[0][0]["content"] == I.INOCULATION.format(traits="bold text (**like this**) and emoji")


def test_scope_limits_a_decision_to_its_pairs(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    d = Decision(ann("exclamation"), "explain_away", "reward_shaping", 2.0, scope={"family": "advice"})
    inputs = compile_plan(plan_of(d), tiny, pairs)
    advice = np.array([p["family"] == "advice" for p in pairs])
    assert np.all(inputs.offsets[~advice] == 0) and np.any(inputs.offsets[advice] != 0)
    ids = compile_plan(plan_of(Decision(ann("bold"), "explain_away", "inoculation", scope={"ids": ["p1"]})), tiny,
                       pairs)
    assert ids.policy_prompts[1][0]["role"] == "system" and ids.policy_prompts[0] is None
    with pytest.raises(ValueError, match=r"unknown pair id\(s\) \['zz'\]"):
        compile_plan(plan_of(Decision(ann("bold"), "explain_away", "inoculation", scope={"ids": ["zz"]})), tiny,
                     pairs)
    with pytest.raises(ValueError, match="prompt_cluster needs diagnosis"):
        compile_plan(plan_of(Decision(ann("bold"), "explain_away", "inoculation", scope={"prompt_cluster": 1})),
                     tiny, pairs)


def test_compile_names_what_is_missing(tokenizer, pairs):
    tiny = make_tiny(tokenizer)
    with pytest.raises(ValueError, match="no direction of that name"):
        compile_plan(plan_of(Decision(ConceptRef("direction", "d"), "explain_away", "ablation")), tiny, pairs)
    with pytest.raises(ValueError, match="needs diagnosis="):
        compile_plan(plan_of(Decision(ConceptRef("sae", "c", cluster=1), "explain_away", "reward_shaping")), tiny,
                     pairs)
    with pytest.raises(TypeError, match="must be a Plan"):
        compile_plan({"decisions": []}, tiny, pairs)


def test_concept_spans_match_the_annotators():
    from anatomy.concepts import annotate

    texts = ["What a great question! Use **salt** and 😊🚀 then **stir**!!", "Plain text."]
    for concept in ("bold", "emoji", "exclamation", "flattery"):
        assert [len(I.concept_spans(t, concept)) for t in texts] == annotate(texts, [concept])[concept].tolist()
    assert [texts[0][a:b] for a, b in I.concept_spans(texts[0], "bold")] == ["**salt**", "**stir**"]
