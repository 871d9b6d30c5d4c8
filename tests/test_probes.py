"""probes: planted directions, probe controls, exact projections, and the real-model directions."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from anatomy.probes import (
    Direction,
    cluster_directions,
    contrastive_prompt_direction,
    decoder_directions,
    diff_of_means,
    direction_from_labels,
    evaluate_direction,
    fit_probe,
    heldout_auroc,
    project,
    refusal_direction,
)

HOOK = "blocks.15.hook_resid_post"


def _planted(n=200, d=32, shift=3.0, seed=0):
    """Gaussian data where positives are shifted by ``shift`` along a random unit vector."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    pos = torch.randn(n, d, generator=g) + shift * v
    neg = torch.randn(n, d, generator=g)
    return pos, neg, v


def test_diff_of_means_recovers_planted_direction():
    pos, neg, v = _planted(n=2000, shift=2.0)
    u = diff_of_means(pos, neg)
    assert torch.isclose(u.norm(), torch.tensor(1.0))
    assert torch.dot(u, v) > 0.95
    raw = diff_of_means(pos, neg, normalize=False)
    assert torch.allclose(raw, pos.mean(0) - neg.mean(0))


def test_fit_probe_separates_planted_and_not_shuffled():
    pos, neg, v = _planted()
    X = torch.cat([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    probe = fit_probe(X, y, Cs=4, seed=0)
    assert probe.cv_auroc > 0.95
    assert torch.isclose(probe.direction.norm(), torch.tensor(1.0))
    assert torch.dot(probe.direction, v) > 0.8
    # the unit direction and bias reproduce the pipeline's decisions
    np.testing.assert_array_equal((X.numpy() @ probe.direction.numpy() + probe.bias) > 0, probe.score(X) > 0)
    control = fit_probe(X, np.random.default_rng(0).permutation(y), Cs=4, seed=0)
    assert control.cv_auroc < 0.65


def test_fit_probe_rejects_bad_labels():
    X = torch.randn(10, 4)
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(X, np.ones(10))
    with pytest.raises(ValueError, match="rows"):
        fit_probe(X, np.r_[np.ones(5), np.zeros(4)])


def test_project_exact_and_empty_span():
    acts = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
    direction = torch.tensor([2.0, 0.0, 1.0])
    u = direction / direction.norm()
    per_token = acts @ u
    assert torch.equal(project(acts, direction), per_token)
    assert torch.equal(project(acts, direction, reduce="max"), per_token.max())
    assert torch.equal(project(acts, direction, reduce="mean"), per_token.mean())
    spans = [acts[:2], torch.empty(0, 3), acts[2:]]
    out = project(spans, direction, reduce="mean")
    assert out.shape == (3,)
    assert out[0] == per_token[:2].mean() and out[2] == per_token[2]
    assert math.isnan(out[1])
    assert math.isnan(project(torch.empty(0, 3), direction, reduce="max"))
    assert [t.shape[0] for t in project(spans, direction)] == [2, 0, 1]


def test_heldout_auroc_and_direction_from_labels():
    assert heldout_auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert heldout_auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    pos, neg, v = _planted(n=100)
    assert evaluate_direction(v, pos, neg) > 0.8
    for method in ("diff_of_means", "probe"):
        d = direction_from_labels(pos, neg, name="planted", seed=1, method=method)
        assert isinstance(d, Direction) and d.source == "labels"
        assert (d.n_train, d.n_test) == (140, 60)
        assert d.heldout_auroc > 0.8 and d.train_auroc > 0.8
    again = direction_from_labels(pos, neg, seed=1)
    assert torch.equal(again.vector, direction_from_labels(pos, neg, seed=1).vector)


def test_refusal_direction_on_real_prompts(model, shared_data):
    """AdvBench goals vs XSTest safe prompts; then the same direction on XSTest unsafe vs safe.

    Measured (SmolLM2-135M, Q4_1 de-quantised, layer 15, 24 vs 24 prompts, seeds 0/1/2):
    AdvBench vs XSTest-safe held-out AUROC 1.00 / 1.00 / 1.00; a direction fitted on
    XSTest unsafe vs safe (same style of prompt, a harder contrast) reaches only
    0.67 / 0.71 / 0.92 on 7 + 7 held-out prompts, so the strict threshold is asserted
    only on the AdvBench contrast.
    """
    from anatomy.data import load_prompts_csv

    xstest = load_prompts_csv(shared_data / "xstest" / "xstest_prompts.csv", "prompt")
    safe = [r for r in xstest if r["label"] == "safe"][:24]
    unsafe = [r for r in xstest if r["label"] == "unsafe"][:24]
    harmful = load_prompts_csv(shared_data / "advbench" / "harmful_behaviors.csv", "goal", limit=24)
    d = refusal_direction(model, harmful, safe, HOOK, seed=0)
    print(f"refusal AdvBench vs XSTest-safe: train {d.train_auroc:.3f} held-out {d.heldout_auroc:.3f}")
    assert d.source == "refusal" and d.hook == HOOK
    assert d.vector.shape == (model.cfg.d_model,) and torch.isclose(d.vector.norm(), torch.tensor(1.0))
    assert (d.n_train, d.n_test) == (34, 14)
    assert d.heldout_auroc > 0.8
    from anatomy.probes import last_token_activations

    transfer = evaluate_direction(d.vector, last_token_activations(model, unsafe, HOOK),
                                  last_token_activations(model, safe, HOOK))
    print(f"same direction, XSTest unsafe vs safe: AUROC {transfer:.3f}")
    assert transfer > 0.5


def test_contrastive_prompt_direction_shapes_and_determinism(model):
    prompts = ["Describe the sea.", "How do I learn to code?", "Tell me about dogs.",
               "What should I do this weekend?", "Explain rain.", "What is your favourite food?"]
    args = (model, prompts, "You are extremely cheerful and enthusiastic! Use exclamation marks!",
            "You are dull, flat and unenthusiastic.", HOOK)
    d, texts = contrastive_prompt_direction(*args, max_new_tokens=12, seed=0)
    assert d.source == "contrastive_prompts" and d.name == "trait"
    assert d.vector.shape == (model.cfg.d_model,) and torch.isclose(d.vector.norm(), torch.tensor(1.0))
    assert len(texts) == 12 and set(texts.condition) == {"trait", "opposite"}
    assert (texts.response.str.strip() != "").all() and texts.skipped.isna().all()
    assert (texts.n_tokens > 0).all() and texts.projection.notna().all()
    assert d.n_train + d.n_test == 12 and set(texts.split) == {"train", "test"}
    assert 0.0 <= d.heldout_auroc <= 1.0
    d2, texts2 = contrastive_prompt_direction(*args, max_new_tokens=12, seed=0)
    assert texts2.response.tolist() == texts.response.tolist()
    assert torch.allclose(d2.vector, d.vector, atol=1e-6)


def test_project_spans_matches_pooled_cache(model):
    """Mean projection per span equals the projection of ``cache_pairs``' mean-pooled activation."""
    from anatomy.cache import cache_pairs
    from anatomy.probes import project_spans

    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
             for i, (q, c, r) in enumerate([("Say hi.", "Hi!", "Hello there, friend."),
                                            ("Capital of France?", "Paris.", "It is Lyon, I think."),
                                            ("Is ice cold?", "Yes, ice is cold.", "No.")])]
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    df = project_spans(model, pairs, HOOK, direction, spans=("prompt", "chosen", "rejected"), progress=False)
    assert list(df.index) == ["p0", "p1", "p2"] and list(df.columns) == ["prompt", "chosen", "rejected", "gap"]
    pooled = cache_pairs(model, pairs, HOOK, pooling=("mean",), progress=False)
    for span in ("prompt", "chosen", "rejected"):
        expected = project(pooled.get(HOOK, span, "mean"), direction)
        np.testing.assert_allclose(df[span].to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(df["gap"], df["chosen"] - df["rejected"])


def test_cluster_directions_find_the_direction_a_cluster_fires_along():
    """Responses where a cluster fires sit along a planted direction: its own activity
    (no other label) recovers that direction; a cluster that never varies is left out."""
    g = torch.Generator().manual_seed(0)
    d, n = 32, 120
    planted = torch.zeros(d)
    planted[3] = 1.0
    fires_c = torch.rand(n, generator=g) < 0.4
    fires_r = torch.rand(n, generator=g) < 0.2
    xc = torch.randn(n, d, generator=g) + 3 * fires_c[:, None].float() * planted
    xr = torch.randn(n, d, generator=g) + 3 * fires_r[:, None].float() * planted
    sc = pd.DataFrame({0: fires_c.numpy() * 2.0, 1: np.zeros(n)})
    sr = pd.DataFrame({0: fires_r.numpy() * 1.0, 1: np.zeros(n)})
    dirs = cluster_directions(sc, sr, xc, xr, hook="blocks.1.hook_resid_post", seed=0)
    assert list(dirs) == ["cluster:0"]
    v = dirs["cluster:0"].vector
    assert float(v @ planted) / float(v.norm()) > 0.9
    assert dirs["cluster:0"].heldout_auroc > 0.9
    with pytest.raises(ValueError, match="rows differ"):
        cluster_directions(sc, sr, xc[:-1], xr, hook="h")


def test_decoder_directions_sum_member_decoders():
    W = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    sae = type("S", (), {"W_dec": W})()
    clusters = pd.DataFrame({"feature": [0, 1, 2], "cluster": [0, 0, -1]})
    dirs = decoder_directions(sae, clusters, hook="h")
    assert list(dirs) == ["decoder:0"]
    assert torch.allclose(dirs["decoder:0"].vector, torch.tensor([1.0, 1.0, 0]) / math.sqrt(2))


def test_annotator_directions_separate_flagged_responses(model):
    """Each direction puts the responses its annotator flags above the rest; its mean shift is the
    gap of the pooled means along it; a concept no response shows is left out."""
    from anatomy.cache import cache_pairs
    from anatomy.probes import annotator_directions

    texts = [("Name a fruit.", "**Apple** is a fruit.", "Apple."), ("Name a colour.", "**Red**.", "Red, I think."),
             ("Name a metal.", "Iron.", "**Iron** is a metal."), ("Name a planet.", "**Mars**!", "Mars.")]
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
             for i, (q, c, r) in enumerate(texts)]
    dirs, shifts = annotator_directions(model, pairs, HOOK, ["bold", "table"])
    assert list(dirs) == list(shifts) == ["bold"]
    hook, v = dirs["bold"]
    assert hook == HOOK and abs(float(v.norm()) - 1) < 1e-5 and shifts["bold"] > 0
    pooled = cache_pairs(model, pairs, HOOK, pooling=("mean",), progress=False)
    x = torch.cat([pooled.get(HOOK, "chosen", "mean"), pooled.get(HOOK, "rejected", "mean")])
    flagged = torch.tensor([True, True, False, True, False, False, True, False])
    proj = x @ v
    assert proj[flagged].mean() - proj[~flagged].mean() == pytest.approx(shifts["bold"], rel=1e-4)
