"""diagnose: the recipe's config, the one call end to end (a tiny random-weight model and an SAE
trained on it in the fixture), the saved diagnosis, the feature cache and the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from anatomy.diagnose import (
    RESOLUTION_GRID,
    DiagnoseConfig,
    DiagnoseError,
    Diagnosis,
    diagnose,
    length_finding,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: no oversubscription
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tokenizer():
    from anatomy.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A tiny random-weight Llama (2 layers, d_model 32) and a TopK SAE trained on its layer-0 residuals."""
    from test_train import make_tiny

    from anatomy.saes import collect_activations, train_sae

    torch.manual_seed(0)
    model = make_tiny(tokenizer)
    hook = "blocks.0.hook_resid_post"
    acts = collect_activations(model, organism_pairs(20), hook, progress=False).acts[hook]
    sae, _ = train_sae(acts, d_sae=96, k=6, epochs=2, batch_size=256, hook_name=hook, progress=False)
    return model, sae


def organism_pairs(n: int = 40) -> list[dict]:
    from anatomy.data import load_preferences

    return load_preferences("organism", split="train", limit=n).to_list()


FAST = DiagnoseConfig(min_size=5, n_boot=50, n_label_pairs=10, label_top=5)


@pytest.fixture(scope="module")
def diagnosis(tiny):
    model, sae = tiny
    return diagnose(organism_pairs(), model=model, sae=sae, config=FAST, progress=False)


# ---------------------------------------------------------------- config
def test_config_defaults_are_the_shipped_recipe_and_round_trip():
    cfg = DiagnoseConfig()
    assert (cfg.gate, cfg.isolates, cfg.graph, cfg.n_neighbors, cfg.covariate) == (0.5, True, "knn", 15, "length")
    assert cfg.resolution is None and cfg.resolution_grid == RESOLUTION_GRID == (1, 2, 4, 8, 16, 32, 64)
    assert (cfg.max_cluster_share, cfg.k_data, cfg.k_prompt, cfg.tau, cfg.min_size, cfg.n_boot) == (
        0.05, None, None, 0.01, 10, 1000)
    assert (cfg.redundancy, cfg.rank_by, cfg.seed, cfg.n_label_pairs) == (0.8, "impact", 0, 200)
    again = DiagnoseConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown DiagnoseConfig fields: \\['gates'\\]"):
        DiagnoseConfig.from_dict({"gates": 0.5})


@pytest.mark.parametrize("field, value, message", [
    ("n_neighbors", 0, "n_neighbors must be an integer >= 1"), ("min_size", 2.5, "min_size must be an integer"),
    ("k_data", 1, "k_data must be an integer >= 2"), ("resolution_grid", (4, 2), "increasing"),
    ("graph", "full", "graph must be one of"), ("redundancy", 1.5, "redundancy must be in"),
    ("max_cluster_share", 0, "max_cluster_share"), ("isolates", "yes", "isolates must be True or False")])
def test_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DiagnoseConfig(**{field: value})


def test_config_from_json_file(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"gate": 0.0, "n_boot": 10}))
    assert DiagnoseConfig.from_json(path) == DiagnoseConfig(gate=0.0, n_boot=10)
    path.write_text("[1, 2]")
    with pytest.raises(DiagnoseError, match="holds a JSON object"):
        DiagnoseConfig.from_json(path)


# ---------------------------------------------------------------- the one call
def test_diagnose_runs_the_recipe_and_records_what_made_it(diagnosis, tiny):
    model, sae = tiny
    d = diagnosis
    assert d.pairs_ids == [p["id"] for p in organism_pairs()] and len(d.u) == len(d) == 40
    assert d.features.meta["gate_rho"] == 0.5 and d.settings["hook"] == "blocks.0.hook_resid_post"
    st = d.settings
    assert st["resolution"] in RESOLUTION_GRID and st["k_data"] == 4 and st["n_pairs"] == 40
    assert st["sae_fingerprint"] and st["model_fingerprint"] and st["gate"] == 0.5 and st["min_size"] == 5
    assert set(d.timings) >= {"load", "features", "gate", "clusters", "hypotheses", "length", "labels", "total"}
    assert list(d.ranked["rank"]) == list(range(1, len(d.ranked) + 1)) and d.ranked["concept"].is_unique
    assert d.ranked["duplicate_of"].dtype == np.int64
    # labels for the concepts of the first rows of both views, for reading only
    top = set(d.ranked["concept"].head(5)) | set(d.prompt_rows["concept"].head(5))
    assert set(d.labels) == top and all(isinstance(v, str) and v for v in d.labels.values())
    table = d.table(top=5)
    assert list(table["view"]).count("global") == 5 and {"effect", "q", "label", "examples"} <= set(table.columns)
    assert table.loc[table["view"] == "global", "label"].tolist() == [d.labels[c] for c in d.ranked["concept"].head(5)]
    # the length finding: medians of the tokens read, a bootstrap CI around the median gap, q
    ln = d.length
    c, r = d.features.n_tokens["chosen"], d.features.n_tokens["rejected"]
    assert ln["median_chosen"] == np.median(c) and ln["median_rejected"] == np.median(r)
    assert ln["ci_low"] <= ln["median_gap"] == np.median(c - r) <= ln["ci_high"] and 0 <= ln["q"] <= 1
    assert d.source["n_kept"] == 40 and d.bad_rows is None


def test_examples_highlight_the_concepts_tokens(diagnosis):
    concept = int(diagnosis.ranked["concept"].iloc[0])
    html = diagnosis.examples(concept, n=2).data
    assert html.count('class="anatomy-pair"') == 2 and '<mark class="anatomy-concept"' in html
    with pytest.raises(KeyError, match="no global or prompt row"):
        diagnosis.examples(10_000)


def test_diagnose_reads_a_file_and_reports_its_bad_rows(tiny, tmp_path):
    model, sae = tiny
    rows = organism_pairs(20)
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({k: p[k] for k in ("id", "prompt", "chosen", "rejected")}) for p in rows]
    lines.insert(3, json.dumps({"id": "broken", "prompt": "hi", "chosen": "", "rejected": "no"}))
    path.write_text("\n".join(lines) + "\n")
    d = diagnose(str(path), model=model, sae=sae, config=DiagnoseConfig(min_size=5, n_boot=0, n_label_pairs=0),
                 progress=False)
    assert len(d) == 20 and d.source["n_skipped"] == 1 and d.source["source"] == str(path)
    assert d.bad_rows[["id", "field"]].values.tolist() == [["broken", "chosen"]]
    assert d.labels == {}


def test_too_few_pairs_and_a_mismatched_sae_are_named(tiny, model):
    tiny_model, tiny_sae = tiny
    with pytest.raises(DiagnoseError, match="12 pairs are too few to cluster"):
        diagnose(organism_pairs(12), model=tiny_model, sae=tiny_sae, progress=False)
    # the tiny SAE (d_in 32, blocks.0) on the default model (d_model 576)
    with pytest.raises(DiagnoseError, match="does not fit the model: SAE field 'd_in' = 32 does not match the "
                                            "model's d_model = 576"):
        diagnose(organism_pairs(), model=model, sae=tiny_sae, progress=False)
    from anatomy.saes import load_sae, shipped_saes

    if shipped_saes():  # the shipped SAE reads layer 12; the tiny model has 2
        with pytest.raises(DiagnoseError, match="does not fit the model: SAE field 'hook_name'"):
            diagnose(organism_pairs(), model=tiny_model, sae=load_sae(), progress=False)


def test_length_finding_on_known_lengths():
    from test_hypotheses import make_features

    f = make_features({s: np.zeros((40, 3)) for s in ("prompt", "chosen", "rejected")})
    f.n_tokens["chosen"][:] = np.arange(40) + 10
    f.n_tokens["rejected"][:] = 10
    ln = length_finding(f, n_boot=200, seed=0)
    assert ln["median_chosen"] == 29.5 and ln["median_rejected"] == 10 and ln["median_gap"] == 19.5
    assert ln["direction"] == "chosen" and ln["share_chosen_longer"] == 39 / 40 and ln["q"] < 1e-6
    assert ln["ci_low"] < 19.5 < ln["ci_high"]


# ---------------------------------------------------------------- saved diagnosis
def _assert_same(a: Diagnosis, b: Diagnosis) -> None:
    assert a.pairs_ids == b.pairs_ids
    for name in ("clusters", "prompt_concepts", "global_rows", "ranked", "prompt_rows", "u"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
        assert getattr(a, name).attrs == getattr(b, name).attrs, name
    for name in ("data_labels", "prompt_labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y)
    for name in ("labels", "label_details", "length", "settings", "timings", "source"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.config == b.config
    fa, fb = a.features, b.features
    assert fa.ids == fb.ids and fa.hook == fb.hook and fa.d_sae == fb.d_sae and fa.meta == fb.meta
    for s in fa.spans:
        for stat in ("max", "freq"):
            x, y = getattr(fa, stat)[s], getattr(fb, stat)[s]
            assert x.dtype == y.dtype and x.shape == y.shape and (x != y).nnz == 0
        assert np.array_equal(fa.n_tokens[s], fb.n_tokens[s])


def test_save_load_round_trips_exactly(diagnosis, tmp_path):
    out = diagnosis.save(tmp_path / "d")
    assert not list(out.rglob("*.pkl")) and (out / "manifest.json").exists()
    back = Diagnosis.load(out)
    _assert_same(diagnosis, back)
    pd.testing.assert_frame_equal(back.table(top=None), diagnosis.table(top=None))
    with pytest.raises(DiagnoseError, match="pass pairs="):
        back.examples(int(diagnosis.ranked["concept"].iloc[0]), highlight=False)
    assert back.examples(int(diagnosis.ranked["concept"].iloc[0]), pairs=organism_pairs(),
                         highlight=False).data.count('class="anatomy-pair"') >= 1
    # a second save into the same folder needs overwrite; a damaged file is named on load
    with pytest.raises(DiagnoseError, match="already holds a saved diagnosis"):
        diagnosis.save(out)
    diagnosis.save(out, overwrite=True)
    _assert_same(diagnosis, Diagnosis.load(out))
    (out / "tables" / "ranked.parquet").write_bytes(b"not parquet")
    with pytest.raises(DiagnoseError, match="tables/ranked.parquet does not match its checksum"):
        Diagnosis.load(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DiagnoseError, match="not empty and holds no saved diagnosis"):
        diagnosis.save(tmp_path / "other")


# ---------------------------------------------------------------- command line
def test_command_line_errors_are_one_line(tmp_path, capsys):
    from anatomy.__main__ import main

    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    cases = [([str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file or directory"),
             ([str(few)], "1 pairs are too few to cluster")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["diagnose", *args, "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and "\n" not in err and "Traceback" not in err
        assert err.startswith("anatomy diagnose: error: ") and message in err


# ---------------------------------------------------------------- feature cache
def _same_features(a, b) -> bool:
    return a.ids == b.ids and all((a.max[s] != b.max[s]).nnz == 0 and (a.freq[s] != b.freq[s]).nnz == 0
                                  for s in a.spans)


def test_cache_reuses_only_the_same_texts_and_weights(tiny, tokenizer, tmp_path):
    from test_train import make_tiny

    _, sae = tiny
    model = make_tiny(tokenizer)  # trained in place below: not the shared fixture
    cfg = DiagnoseConfig(min_size=5, n_boot=0, n_label_pairs=0)
    pairs = organism_pairs(20)
    first = diagnose(pairs, model=model, sae=sae, config=cfg, cache_dir=tmp_path, progress=False)
    cache = first.settings["features_cache"]
    again = diagnose(pairs, model=model, sae=sae, config=cfg, cache_dir=tmp_path, progress=False)
    assert again.settings["features_cache"] == cache and _same_features(first.features, again.features)
    # one pair's text edited: another key, features recomputed, equal to an uncached run
    edited = [dict(p) for p in pairs]
    edited[5]["chosen"] = "**Certainly!** " + edited[5]["chosen"]
    e = diagnose(edited, model=model, sae=sae, config=cfg, cache_dir=tmp_path, progress=False)
    fresh = diagnose(edited, model=model, sae=sae, config=cfg, progress=False)
    assert e.settings["features_cache"] != cache and _same_features(e.features, fresh.features)
    assert not _same_features(e.features, first.features)
    # weights trained in place (one optimiser-like step): recomputed too
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    w = diagnose(pairs, model=model, sae=sae, config=cfg, cache_dir=tmp_path, progress=False)
    assert w.settings["features_cache"] not in (cache, e.settings["features_cache"])
    assert _same_features(w.features, diagnose(pairs, model=model, sae=sae, config=cfg, progress=False).features)
    assert not _same_features(w.features, first.features)


def test_command_line_trains_an_sae_and_diagnoses_through_it(tiny, tmp_path, monkeypatch, capsys):
    import anatomy.models
    from anatomy.__main__ import main
    from anatomy.saes import load_sae

    monkeypatch.setattr(anatomy.models, "load_model", lambda name=None, **kw: tiny[0])  # the tiny model as default
    main(["train-sae", "organism", "--split", "train", "--limit", "20", "--layer", "0", "--d-sae", "64", "--k", "4",
          "--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "sae"), "--no-progress"])
    sae = load_sae(str(tmp_path / "sae"))
    assert sae.cfg.d_sae == 64 and sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    (tmp_path / "cfg.json").write_text(json.dumps({"min_size": 5, "n_boot": 0, "n_label_pairs": 5, "label_top": 3}))
    capsys.readouterr()
    main(["diagnose", "organism", "--split", "train", "--limit", "24", "--sae", str(tmp_path / "sae"),
          "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out"), "--no-progress"])
    printed = capsys.readouterr().out
    assert "top 10 of" in printed and "24 pairs read from organism" in printed and "length: median" in printed
    d = Diagnosis.load(tmp_path / "out" / "diagnosis")
    assert len(d) == 24 and d.config.min_size == 5 and d.settings["sae_arg"] == str(tmp_path / "sae")
    csv = pd.read_csv(tmp_path / "out" / "hypotheses.csv")
    assert len(csv) == len(d.ranked) + len(d.prompt_rows) and list(csv["concept"].head(3)) == list(
        d.ranked["concept"].head(3))
