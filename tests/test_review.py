"""The review app: rows, filters, decisions, the preview through compile_plan, and the plan's
save / reopen round trip (a plan made in the app, saved and reloaded compiles to the same
TrainInputs)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from review_fixtures import organism_pairs, small_diagnosis


@pytest.fixture(scope="module")
def iv():
    """The real `anatomy.interventions` when it imports, else the interface's test double."""
    import anatomy

    try:
        yield importlib.import_module("anatomy.interventions")
        return
    except ImportError:
        pass
    import interventions_double

    sys.modules["anatomy.interventions"] = interventions_double
    anatomy.interventions = interventions_double
    yield interventions_double
    del sys.modules["anatomy.interventions"]
    del anatomy.interventions


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
    assert all(app._row(k)["q"] <= 0.05 for k in sig)
    app._filter_sig.value = False
    app._filter_view.value = "prompt"
    assert {app._row(k)["view"] for _, k in app._row_select.options} == {"prompt"}
    app._filter_view.value = "all"
    app._sort.value = "|effect|"
    eff = [abs(app._row(k)["effect"]) for _, k in app._row_select.options]
    assert eff == sorted(eff, reverse=True)
    row = app._row_select.options[0][0]
    for part in ("[", "q=", "n="):
        assert part in row


def test_selected_row_shows_examples_u_and_members(setup):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs, n_examples=3)
    app.select("global:all pairs:1")
    assert app._examples.value.count('class="anatomy-pair"') == 3
    app._more.click()
    assert app._examples.value.count('class="anatomy-pair"') == 6
    assert len(app._u_fig.data[0].x) == len(pairs)
    np.testing.assert_allclose(app._u_fig.data[0].x, diag.u[1].to_numpy())
    assert "member features (3)" in app._members.value and "f10" in app._members.value
    assert "anatomy-concept" in app._examples.value or "sorry" not in app._examples.value.lower()


def test_methods_fit_the_lens(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    offered = list(app._method.options)
    assert offered and all("sae" in iv.METHODS[m] for m in offered)
    assert set(offered) == {m for m, lenses in iv.METHODS.items() if "sae" in lenses}


def test_decision_changes_plan_and_preview(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    app.select("global:all pairs:0")
    assert app.plan.decisions == ()
    m = _method(app, "reward_shaping", "downweight_pairs")
    app.set_decision("explain_away", m, 1.0)
    (d,) = app.plan.decisions
    assert (d.action, d.method, d.strength, d.concept.cluster) == ("explain_away", m, 1.0, 0)
    assert d.concept.features == (0, 1)
    p1 = app.preview()
    assert p1["n_offset"] + p1["n_weight"] > 0
    direct = iv.compile_plan(iv.Plan(decisions=(d,)), None, pairs, diagnosis=diag)
    vals = direct.offsets if m == "reward_shaping" else direct.weights
    np.testing.assert_allclose(p1["offsets"] if m == "reward_shaping" else p1["weights"], vals)
    assert len(app._preview_fig.data[0].x) > 0
    before = np.asarray(app._preview_fig.data[0].x).copy()
    app._strength.value = 0.5
    assert app.plan.decisions[0].strength == 0.5
    after = np.asarray(app._preview_fig.data[0].x)
    assert not np.allclose(before, after)
    assert "explain away" in app._plan_html.value
    app._action.value = "allow"
    assert app.plan.decisions == ()


def test_saved_plan_reopens_and_compiles_to_the_same_inputs(setup, iv, tmp_path):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs, save_path=tmp_path / "plan.json")
    app.select("global:all pairs:0")
    app.set_decision("explain_away", _method(app, "reward_shaping", "downweight_pairs"), 0.75)
    app.select("prompt:prompt cluster 0:1")
    app.set_decision("amplify", _method(app, "downweight_pairs", "reward_shaping"), 1.5)
    app._save_btn.click()
    assert "saved 2 decision(s)" in app._status.value
    loaded = iv.Plan.load(tmp_path / "plan.json")
    assert loaded == app.plan
    again = review(diag, pairs=pairs, plan=loaded)
    assert again.plan == app.plan
    again.select("prompt:prompt cluster 0:1")
    assert again._action.value == "amplify" and again._strength.value == 1.5
    a = iv.compile_plan(app.plan, None, pairs, diagnosis=diag)
    b = iv.compile_plan(again.plan, None, pairs, diagnosis=diag)
    assert a.ids == b.ids
    for f in ("offsets", "weights"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.summary == b.summary


def test_plan_naming_an_unknown_concept_is_refused(setup, iv):
    from anatomy.review import review

    pairs, diag = setup
    stray = iv.Plan(decisions=(iv.Decision(concept=iv.ConceptRef(lens="sae", name="99", cluster=99),
                                           action="amplify", method="reward_shaping", strength=1.0),))
    with pytest.raises(ValueError, match="'99'"):
        review(diag, pairs=pairs, plan=stray)


def test_preview_is_cached_per_decision(setup, iv, monkeypatch):
    from anatomy.review import review

    pairs, diag = setup
    app = review(diag, pairs=pairs)
    calls = []
    real = iv.compile_plan
    monkeypatch.setattr(iv, "compile_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    app.select("global:all pairs:0")
    app.set_decision("explain_away", _method(app, "reward_shaping", "downweight_pairs"), 1.0)
    app._strength.value = 0.5
    app._strength.value = 1.0
    assert len(calls) == 2
