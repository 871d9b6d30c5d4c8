"""The audit report: one HTML file holding every section, plotly.js embedded once, no network
reference; opened by headless Chromium with the network cut off, its figures are drawn."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from anatomy.diagnose import Diagnosis
from anatomy.report import SECTIONS, write_report

from headless import PLOTLY_MARK, colour_share, external_references, outside_plotlyjs, screenshot
from test_hypotheses import links_organism

from anatomy.diagnose import DiagnoseConfig, discover

BAD_ROWS = pd.DataFrame({"id": ["row-7"], "index": [7], "field": ["chosen"], "reason": ["empty response"]})


@pytest.fixture(scope="module")
def diagnosis():
    """`discover` on the synthetic links organism (200 pairs, 40 prompts), with texts and labels
    attached as `diagnose` attaches them: links are planted in chosen responses to resource prompts."""
    features, clusters, family, topic, prompt_id, has_links = links_organism(n_prompts=40)
    keys = [f"prompt {p}" for p in prompt_id]
    d = discover(features, keys, config=DiagnoseConfig(resolution=1.0, n_boot=100, gate=0.0, isolates=False))
    pairs = [{"id": pid, "prompt": [{"role": "user", "content": f"question {prompt_id[i]} (family {family[i]})"}],
              "chosen": f"answer on topic {topic[i]}" + (" <see the docs>" if has_links[i] else ""),
              "rejected": f"another answer on topic {topic[i]}"} for i, pid in enumerate(features.ids)]
    labels = {int(c): f"concept {int(c)} tokens" for c in d.ranked["concept"].head(5)}
    return replace(d, labels=labels, pairs=pairs, bad_rows=BAD_ROWS,
                   source={"source": "links organism", "n_read": 201, "n_kept": 200, "n_skipped": 1},
                   settings={**d.settings, "model": "tiny", "sae_fingerprint": "f00dfeed", "hook": "blocks.0.x"})


@pytest.fixture(scope="module")
def report(diagnosis, tmp_path_factory):
    path = write_report(diagnosis, tmp_path_factory.mktemp("report") / "report.html", highlight=False)
    return diagnosis, path, path.read_text(encoding="utf-8")


def test_report_holds_every_section_and_embeds_plotlyjs_once(report):
    d, path, page = report
    for name in SECTIONS:
        assert f'<section id="{name}">' in page, name
    assert page.count(PLOTLY_MARK) == 1  # two figures, one bundle
    assert external_references(page) == []
    rest = outside_plotlyjs(page)
    assert "cdn.plot.ly" not in rest and "<script src" not in rest
    # what was read: counts, the skipped row and why, model and SAE
    assert "row-7" in rest and "empty response" in rest and "f00dfeed" in rest
    assert "blocks.0.x" in rest and ">200<" in rest and ">201<" in rest  # pairs diagnosed, rows read
    # the ranked hypotheses with labels, effects and q; the prompt view; the length finding
    table = d.table(top=20)
    top = table[table.view == "global"].iloc[0]
    assert f"c{int(top.concept)} · {top.label[:60]}" in rest or top.label in rest
    assert 'id="anatomy-forest-global"' in page
    assert ("anatomy-forest-prompt" in page) == bool((table.view == "prompt").any())
    ln = d.length
    assert f"<b>{ln['median_chosen']:.4g}</b>" in rest or f"<b>{ln['median_chosen']:.0f}</b>" in rest
    # examples side by side (escaped), the links pairs among them: the prompt view's top row
    assert rest.count('class="anatomy-pair"') >= 2 and "&lt;see the docs&gt;" in rest
    assert "<see the docs>" not in rest


def test_report_of_a_loaded_diagnosis_without_pairs_says_what_it_cannot_show(diagnosis, tmp_path):
    loaded = Diagnosis.load(diagnosis.save(tmp_path / "saved"))
    page = write_report(loaded, tmp_path / "r.html", highlight=False).read_text(encoding="utf-8")
    assert "examples not shown" in page and "pass pairs=" in page
    assert all(f'<section id="{name}">' in page for name in SECTIONS)
    with_pairs = write_report(loaded, tmp_path / "r2.html", pairs=diagnosis.pairs, highlight=False)
    assert with_pairs.read_text(encoding="utf-8").count('class="anatomy-pair"') >= 2


def test_report_renders_its_figures_offline_in_headless_chromium(report, tmp_path):
    _, path, page = report
    shot = screenshot(path, tmp_path / "report.png", size=(1200, 4000))
    # the same page with plotly.js removed: its figures cannot draw
    blank = tmp_path / "no_plotly.html"
    blank.write_text(outside_plotlyjs(page), encoding="utf-8")
    empty = screenshot(blank, tmp_path / "no_plotly.png", size=(1200, 4000))
    bars = [(0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)]
    drawn = sum(colour_share(shot, c) for c in bars)
    assert drawn > sum(colour_share(empty, c) for c in bars) + 0.002  # the forest's bars
    # the plot areas are not blank: > 10,000 pixels of the 1200 x 4000 page differ from the page
    # without figures (the global forest alone is ~1150 x 300)
    assert (np.abs(shot.astype(int) - empty.astype(int)).max(axis=-1) > 30).sum() > 10_000


def test_hypothesis_browser_shows_the_chosen_rows_examples_and_u(diagnosis):
    from anatomy.viz import hypothesis_browser

    app = hypothesis_browser(diagnosis, highlight=False)
    select, info, hist = app.children
    table = diagnosis.table(top=20)
    first = table.iloc[0]
    assert 'class="anatomy-pair"' in info.value and f"concept {first.concept}" in info.value
    assert len(hist.data[0].x) + len(hist.data[1].x) == len(diagnosis)
    last = len(table) - 1
    select.value = last
    row = table.iloc[last]
    inside = (diagnosis.prompt_labels if row.view == "prompt" else diagnosis.data_labels) == row.group
    if row.group != -1:
        np.testing.assert_allclose(hist.data[0].x, diagnosis.u[row.concept].to_numpy()[inside])
    assert f"concept {row.concept}" in info.value
