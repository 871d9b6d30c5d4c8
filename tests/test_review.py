"""The review app: rows, filters, decisions, the preview through compile_plan, and the plan's
save / reopen round trip (a plan made in the app, saved and reloaded compiles to the same
TrainInputs)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from review_fixtures import organism_pairs, small_diagnosis


@pytest.fixture(scope="module")
def iv():
    try:
        return importlib.import_module("anatomy.interventions")
    except ImportError as err:
        pytest.skip(f"anatomy.interventions (Plan, compile_plan) does not import: {err}")


@pytest.fixture()
def setup(iv):
    pairs = organism_pairs(40)
    return pairs, small_diagnosis(pairs, n_concepts=6)


def _method(app, *preferred):
    for m in preferred:
        if m in app._method.options:
            return m
    pytest.skip(f"none of {preferred} fits the SAE lens in interventions.METHODS")


def test_rows_filter_and_sort(setup):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    keys = [k for _, k in app._row_select.options]
    assert len(keys) == len(diag.table(top=None))
    app._filter_sig.value = True
    sig = [k for _, k in app._row_select.options]
    assert 0 < len(sig) < len(keys)
    assert all(app._by_key[k]["q"] <= 0.05 for k in sig)
    app._filter_sig.value = False
    app._filter_view.value = "prompt"
    assert {app._by_key[k]["view"] for _, k in app._row_select.options} == {"prompt"}
    app._filter_view.value = "all"
    app._sort.value = "|effect|"
    eff = [abs(app._by_key[k]["effect"]) for _, k in app._row_select.options]
    assert eff == sorted(eff, reverse=True)
    text, key = app._row_select.options[0]
    r = app._by_key[key]
    for part in (f"{r['effect']:+.2f}", f"[{r['ci_low']:+.2f},{r['ci_high']:+.2f}]", f"{r['q']:7.1e}", str(r["n"])):
        assert part in text


def test_selected_row_shows_examples_u_and_members(setup):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs, n_examples=3)
    app.select("global:all pairs:1")
    assert app._examples.value.count('class="anatomy-pair"') == 3
    app._more.click()
    assert app._examples.value.count('class="anatomy-pair"') == 6  # its 5 examples, then by u
    np.testing.assert_allclose(app._u_fig.data[0].x, diag.u[1].to_numpy())
    assert "3 SAE feature(s)" in app._members.value and "f10" in app._members.value
    assert "top tokens: sorry · link" in app._members.value
    # the examples mark the concept's top tokens: the regex reads the token texts, not the (token, score) pairs
    rx = app._token_regex(app._by_key["global:all pairs:1"])
    assert rx is not None and rx.fullmatch("sorry") and not rx.search("3.5")


def test_methods_fit_the_lens_and_the_action(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    app.set_decision("explain_away")
    assert set(app._method.options) == {m for m, lenses in iv.METHODS.items() if "sae" in lenses}
    app.set_decision("amplify")
    assert set(app._method.options) == {m for m, lenses in iv.METHODS.items() if "sae" in lenses} & set(iv.AMPLIFIES)
    assert "filter_pairs" not in app._method.options


def test_decision_changes_plan_and_preview(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    app.select("global:all pairs:0")
    assert app.plan.decisions == ()
    app.set_decision("explain_away", "reward_shaping", 1.0)
    (d,) = app.plan.decisions
    assert (d.action, d.method, d.strength, d.concept.cluster, d.scope) == ("explain_away", "reward_shaping", 1.0,
                                                                            0, None)
    assert d.concept.features == (0, 1)
    p1 = app.preview()
    direct = iv.compile_plan(iv.Plan(decisions=(d,)), None, pairs, diagnosis=diag)
    np.testing.assert_allclose(p1["offsets"], direct.offsets)
    assert p1["n_offset"] == np.count_nonzero(direct.offsets) > 0
    before = np.asarray(app._preview_fig.data[0].x).copy()
    assert len(before) == p1["n_offset"]
    app._strength.value = 0.5
    assert app.plan.decisions[0].strength == 0.5
    np.testing.assert_allclose(np.asarray(app._preview_fig.data[0].x), before * 0.5)
    assert "explain away</b> by reward_shaping, strength 0.50" in app._plan_html.value
    app._action.value = "allow"
    assert app.plan.decisions == ()


def test_filter_preview_names_the_dropped_pairs(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    app.select("global:all pairs:0")
    app.set_decision("explain_away", "filter_pairs", 0.25)
    s = app.preview()
    direct = iv.compile_plan(app.plan, None, pairs, diagnosis=diag)
    assert s["dropped"] == [i for i, w in zip(direct.ids, direct.weights) if w == 0]
    assert len(s["dropped"]) == 10  # a quarter of 40 pairs
    assert f"10 of {len(pairs)} pairs dropped" in app._preview_html.value


def test_scoped_rows_become_scoped_decisions(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    app.select("prompt:prompt cluster 0:1")
    app.set_decision("explain_away", "downweight_pairs", 2.0)
    app.select("global:data cluster 1:4")
    app.set_decision("explain_away", "reward_shaping", 1.0)
    prompt_d, data_d = app.plan.decisions[::-1] if app.plan.decisions[0].concept.cluster == 4 else app.plan.decisions
    assert prompt_d.scope == {"prompt_cluster": 0}
    assert set(data_d.scope["ids"]) == {i for i, k in zip(diag.pairs_ids, diag.data_labels) if k == 1}
    inputs = iv.compile_plan(app.plan, None, pairs, diagnosis=diag)
    outside = [j for j, k in enumerate(diag.data_labels) if k != 1]
    assert np.all(inputs.offsets[outside] == 0)
    assert np.all(inputs.weights[diag.prompt_labels != 0] == 1)


def test_saved_plan_reopens_and_compiles_to_the_same_inputs(setup, iv, tmp_path):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs, save_path=tmp_path / "plan.json")
    app.select("global:all pairs:0")
    app.set_decision("explain_away", "reward_shaping", 0.75)
    app.select("prompt:prompt cluster 0:1")
    app.set_decision("amplify", "reward_shaping", 1.5)
    app.select("global:all pairs:2")
    app.set_decision("explain_away", "filter_pairs", 0.2)
    app._save_btn.click()
    assert "saved 3 decision(s)" in app._status.value
    loaded = iv.Plan.load(tmp_path / "plan.json")
    assert loaded == app.plan
    again = review(diag, pairs=pairs, plan=loaded)
    assert again.plan == app.plan
    again.select("prompt:prompt cluster 0:1")
    assert (again._action.value, again._method.value, again._strength.value) == ("amplify", "reward_shaping", 1.5)
    a = iv.compile_plan(app.plan, None, pairs, diagnosis=diag)
    b = iv.compile_plan(again.plan, None, pairs, diagnosis=diag)
    assert a.ids == b.ids
    for f in ("offsets", "weights", "token_masks", "policy_prompts"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.summary == b.summary
    assert np.count_nonzero(a.offsets) > 0 and np.sum(a.weights == 0) > 0


def test_plan_naming_an_unknown_concept_is_refused(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    stray = iv.Plan(decisions=(iv.Decision(concept=iv.ConceptRef(lens="sae", name="stray", cluster=99),
                                           action="amplify", method="reward_shaping", strength=1.0),))
    with pytest.raises(ValueError, match="sae:stray"):
        review(diag, pairs=pairs, plan=stray)


def test_preview_is_cached_per_decision(setup, iv, monkeypatch):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    calls = []
    real = iv.compile_plan
    monkeypatch.setattr(iv, "compile_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    app.select("global:all pairs:0")
    app.set_decision("explain_away", "reward_shaping", 1.0)
    app._strength.value = 0.5
    app._strength.value = 1.0
    assert len(calls) == 2
    assert len(app.update_times) >= 3
