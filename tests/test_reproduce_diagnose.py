"""The diagnosis from activations (`anatomy.diagnose.discover`, the steps of `diagnose` after the
features) on the synthetic links organism of test_hypotheses, with no ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from test_hypotheses import links_organism, make_features

from anatomy.diagnose import DiagnoseConfig, DiagnoseError, default_k, discover


@pytest.fixture(scope="module")
def organism():
    features, clusters, family, topic, prompt_id, has_links = links_organism()
    keys = [f"prompt {p}" for p in prompt_id]
    return features, keys, family, has_links


def config(**kw) -> DiagnoseConfig:
    # the size rule needs ~100 clusters, so a resolution is given; no bootstrap (speed)
    return DiagnoseConfig(**{"resolution": 1.0, "n_boot": 0, **kw})


def test_discover_finds_links_in_the_prompt_view_and_records_its_settings(organism):
    features, keys, family, has_links = organism
    recipe = DiagnoseConfig()
    # METHOD's firing (no gate, no isolates)
    disc = discover(features, keys, config=config(rank_by="d", gate=0.0, isolates=False))
    settings = disc.settings
    assert settings["rank_by"] == "d" and settings["redundancy"] == recipe.redundancy
    assert settings["gate"] == 0.0 and not settings["isolates"] and disc.features is features
    assert settings["k_data"] == default_k(len(features)) and settings["n_prompts"] == len(set(keys))
    clusters = disc.clusters
    links = clusters.loc[clusters["feature"].isin(range(96, 100)), "cluster"]
    assert links.nunique() == 1 and links.iloc[0] >= 0  # the four links features form one concept
    m = int(links.iloc[0])
    members = set(clusters.loc[clusters["cluster"] == m, "feature"])
    assert members - set(range(96, 100)) <= set(range(100, 110))  # no family or topic feature joins;
    # the knn graph gives every feature neighbours, so a few noise features (100-109) may
    ranked = disc.ranked
    assert ranked["concept"].is_unique and list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    top = disc.prompt_rows.iloc[0]
    assert top["concept"] == m and top["direction"] == "chosen"
    assert set(family[disc.prompt_labels == top["group"]]) == {7}
    # u is the share of the cluster's features: the 4 links features fire in chosen only
    assert disc.u[m].mean() == pytest.approx(has_links.mean() * 4 / len(members), abs=0.01)
    assert top["effect"] > 3 * disc.u[m].mean()  # dataset-wide the links are diluted
    # the same discovery under the shipped key: the same clusters, possibly another order
    shipped = discover(features, keys, config=config(gate=0.0, isolates=False))
    assert shipped.settings["rank_by"] == recipe.rank_by
    assert (shipped.clusters["cluster"] == clusters["cluster"]).all()
    assert set(shipped.ranked["concept"]) == set(ranked["concept"])


def test_discover_gates_weak_firings_and_still_finds_links(organism):
    features, keys, family, has_links = organism
    recipe = DiagnoseConfig()
    plain = discover(features, keys, config=config(gate=0.0, isolates=False))
    disc = discover(features, keys, config=config())  # the shipped gate and isolates
    assert disc.settings["gate"] == recipe.gate == 0.5 and disc.settings["isolates"] is recipe.isolates is True
    gated = disc.features
    assert gated is not features and gated.meta["gate_rho"] == recipe.gate
    assert gated.freq["chosen"].nnz < features.freq["chosen"].nnz  # weak firings are gone
    top = disc.prompt_rows.iloc[0]  # links after resource prompts survive the gate
    clusters = disc.clusters
    members = set(clusters.loc[clusters["cluster"] == top["concept"], "feature"])
    assert members & set(range(96, 100)) and top["direction"] == "chosen"
    assert set(family[disc.prompt_labels == top["group"]]) == {7}
    # the links fire at 0.03-0.1, so the gate (0.5 x 0.1) drops those below 0.05, about 2 in 7
    m_plain = int(plain.clusters.loc[plain.clusters["feature"] == 96, "cluster"].iloc[0])
    assert 0 < disc.u[top["concept"]].mean() * len(members) < plain.u[m_plain].mean() * (
        plain.clusters["cluster"] == m_plain).sum()


def test_bad_settings_and_too_few_pairs_fail_before_clustering(organism):
    features, keys, _, _ = organism
    with pytest.raises(ValueError, match="rank_by must be"):
        DiagnoseConfig(rank_by="t")
    with pytest.raises(ValueError, match="covariate must be one of"):
        DiagnoseConfig(covariate="size")
    with pytest.raises(ValueError, match="gate must be in"):
        DiagnoseConfig(gate=1.5)
    few = make_features({s: features.freq[s][:12].toarray() for s in features.spans})
    with pytest.raises(DiagnoseError, match="too few to cluster"):
        discover(few, keys[:12], config=config())
