"""The audit report: one self-contained HTML file of a `Diagnosis` that opens offline.

``write_report(diagnosis, path)`` writes, in order:

  1. what was read: the data source, pair counts, the rows skipped and why, the model, the
     SAE and hook, every setting and the time per stage;
  2. the ranked hypotheses of the global view: label, direction, effect with its CI, q, d,
     replication and the pairs in scope, and a forest plot of them;
  3. for each top hypothesis, example pairs side by side with the concept's tokens marked;
  4. the prompt-conditioned view: its table and forest plot;
  5. the length finding (median tokens chosen vs rejected, CI, q).

plotly.js is embedded once, in the first figure; nothing is loaded from the network, so the
page opens on a machine without internet. Labels are offline navigation aids (the SAE's
enriched tokens and snippets), not validated names: the examples are the evidence.
"""

from __future__ import annotations

import html
import math
import numbers
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_report"]

SECTIONS = ("read", "hypotheses", "examples", "prompt", "length")
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4 }
h1 { margin-bottom: 0.2em } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em }
table.anatomy-table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 }
table.anatomy-table th, table.anatomy-table td { border: 1px solid #ddd; padding: 3px 8px; text-align: left;
  vertical-align: top }
table.anatomy-table th { background: #f4f4f4 }
.chosen { color: #1f77b4; font-weight: 600 } .rejected { color: #d62728; font-weight: 600 }
.note { color: #555; font-size: 0.9em } mark.anatomy-concept { padding: 0 1px; border-radius: 2px }
details { margin: 0.5em 0 }
"""


# ---------------------------------------------------------------- small formatters
def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 10 ** 6):
        return f"{v:.{digits - 1}e}"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits + 1}g}"


def _table(df: pd.DataFrame, *, classes: dict[str, str] | None = None) -> str:
    """An escaped HTML table; ``classes`` maps a column to a function of its value -> CSS class."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            cls = f' class="{html.escape(str(v))}"' if classes and c in classes else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="anatomy-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _kv(items) -> str:
    return _table(pd.DataFrame([(k, v) for k, v in items], columns=["", "value"]))


def _name(row) -> str:
    label = str(row.get("label") or "")
    return f"c{int(row['concept'])}" + (f" · {label[:60]}" if label else "")


# ---------------------------------------------------------------- sections
def _read_section(d) -> str:
    src, st = dict(d.source or {}), dict(d.settings or {})
    n_prompts = d.length.get("n_prompts") if d.length else None
    read = [("data source", src.get("source")), ("split", src.get("split")), ("limit", src.get("limit")),
            ("rows read", src.get("n_read")), ("pairs kept", src.get("n_kept", len(d))),
            ("rows skipped", src.get("n_skipped", 0)), ("pairs diagnosed", len(d)),
            ("distinct prompts", n_prompts), ("pairs digest", src.get("pairs_digest")),
            ("model", st.get("model")), ("model fingerprint", st.get("model_fingerprint")),
            ("SAE", st.get("sae_arg") or "the shipped SAE"), ("SAE fingerprint", st.get("sae_fingerprint")),
            ("hook", st.get("hook"))]
    parts = ['<section id="read"><h2>1. What was read</h2>', _kv(read)]
    bad = d.bad_rows
    if bad is not None and len(bad):
        parts.append(f"<h3>Rows skipped ({len(bad)})</h3><p class='note'>Each row that could not be read, "
                     "with the field and the reason; the diagnosis read the others.</p>")
        parts.append(_table(bad.head(50)))
        if len(bad) > 50:
            parts.append(f"<p class='note'>… and {len(bad) - 50} more.</p>")
    else:
        parts.append("<p class='note'>Bad rows: none skipped (every row read was a valid pair"
                     + ("" if src.get("n_read") is not None else ", or the pairs were passed in memory") + ").</p>")
    chosen = {k: v for k, v in st.items() if k not in {"model", "model_fingerprint", "sae_arg", "sae_fingerprint",
                                                       "hook", "model_arg", "features_cache"}}
    cfg = d.config.to_dict() if getattr(d, "config", None) is not None else {}
    parts.append("<details><summary>Settings (the recipe, and what its rules chose)</summary>"
                 + _kv(sorted({**cfg, **chosen}.items())) + "</details>")
    if d.timings:
        parts.append("<details><summary>Seconds per stage</summary>" + _kv(d.timings.items()) + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _view_table(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "rank": table["rank"], "scope": table["scope"], "concept": table["concept"], "label": table["label"],
        "more in": table["direction"], "effect": table["effect"], "ci_low": table["ci_low"],
        "ci_high": table["ci_high"], "q": table["q"], "d": table["d"], "replicated": table["replicated"],
        "n": table["n"]})
    return out


def _forest(table: pd.DataFrame, title: str):
    from .contrast import plot_hypotheses

    rows = table.assign(concept=[f"{r['rank']}. {_name(r)}" for _, r in table.iterrows()])
    fig = plot_hypotheses(rows, top=len(rows), by="rank")
    fig.update_layout(title=title, xaxis_title="effect: mean u toward chosen (+) or rejected (−), with CI")
    return fig


def _hypotheses_section(table: pd.DataFrame, figure: str) -> str:
    intro = ("<p>One row per concept cluster, best first: rows that replicate in both split halves, are "
             "consistent and have q ≤ 0.05 come first, then by impact (the shift the row accounts for over the "
             "whole dataset). <b>effect</b> is the signed disparity u: the share of the concept's SAE features "
             "that fire in the chosen response only minus the share in the rejected one only (dataset-wide rows "
             "adjusted for the length gap; data-cluster rows: in the cluster minus outside it). "
             "<b>q</b>: Benjamini–Hochberg over all rows tested. Labels are offline reading aids: read the "
             "examples below.</p>")
    if not len(table):
        return f'<section id="hypotheses"><h2>2. Ranked hypotheses</h2>{intro}<p>No row was tested.</p></section>'
    return (f'<section id="hypotheses"><h2>2. Ranked hypotheses (global view)</h2>{intro}'
            f'{_table(_view_table(table), classes={"more in": str})}{figure}</section>')


def _examples_section(d, table: pd.DataFrame, pairs, n_examples: int, highlight: bool) -> str:
    parts = ['<section id="examples"><h2>3. Examples of the top hypotheses</h2>',
             "<p>For each, the pairs in its scope that move most towards its side; the concept's tokens are "
             "marked, shaded by the summed activation of its SAE features.</p>"]
    if not len(table):
        parts.append("<p>No hypothesis to show.</p>")
    for _, row in table.iterrows():
        try:
            shown = d.examples(int(row["concept"]), n=n_examples, pairs=pairs, view=row["view"],
                               highlight=highlight)
            parts.append(shown.data)
        except Exception as err:  # noqa: BLE001 — a report shows what it could not draw, and why
            parts.append(f"<p class='note'>{html.escape(_name(row))}: examples not shown ({html.escape(str(err))}).</p>")
    parts.append("</section>")
    return "".join(parts)


def _prompt_section(table: pd.DataFrame, figure: str) -> str:
    intro = ("<p>\"When prompts express A_k, the data moves responses along a concept\": per prompt cluster, "
             "u inside it minus u for the other prompts. A concept the data rewards only after one kind of "
             "prompt is strong here and diluted in the global view.</p>")
    if not len(table):
        return f'<section id="prompt"><h2>4. Prompt-conditioned view</h2>{intro}<p>No row was tested.</p></section>'
    return (f'<section id="prompt"><h2>4. Prompt-conditioned view</h2>{intro}'
            f'{_table(_view_table(table), classes={"more in": str})}{figure}</section>')


def _length_section(ln: dict) -> str:
    if not ln:
        return '<section id="length"><h2>5. The length finding</h2><p>Not measured.</p></section>'
    side = ln.get("direction", "none")
    sentence = (f"<p>Chosen responses have a median of <b>{_fmt(ln.get('median_chosen'))}</b> tokens, rejected "
                f"<b>{_fmt(ln.get('median_rejected'))}</b>; the median per-pair gap is "
                f"<b>{_fmt(ln.get('median_gap'))}</b> tokens (95% CI {_fmt(ln.get('ci_low'))} to "
                f"{_fmt(ln.get('ci_high'))}, q = {_fmt(ln.get('q'))}). "
                + (f"<span class='{side}'>The {side} response is longer</span> in "
                   f"{_fmt(100 * ln.get('share_' + side + '_longer', float('nan')))}% of pairs. "
                   if side in ("chosen", "rejected") else "Neither side is longer. ")
                + "A model trained on these pairs learns this length preference too; the dataset-wide "
                  "rows above are adjusted for it.</p>")
    return f'<section id="length"><h2>5. The length finding</h2>{sentence}{_kv(ln.items())}</section>'


# ---------------------------------------------------------------- the page
def write_report(diagnosis, path: str | os.PathLike, *, pairs=None, top: int = 20, n_example_rows: int = 5,
                 n_examples: int = 3, highlight: bool = True) -> Path:
    """Write ``diagnosis`` as one self-contained HTML file and return its path.

    diagnosis: a `anatomy.diagnose.Diagnosis`. pairs: the diagnosed pairs (default: those it
        holds in memory; needed for the examples after `Diagnosis.load`: without them the
        examples section says so and the rest is written).
    top: rows of each view in the tables and figures; n_example_rows: the top global rows
        (and the best prompt rows, up to two) shown with examples; n_examples: pairs per row.
    highlight: mark the concept's tokens (one forward per example pair with the diagnosis'
        model and SAE); False shows the pairs unmarked.
    plotly.js is embedded once; the page loads nothing from the network.
    """
    from .viz import figure_html

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = diagnosis
    table = d.table(top=top, n_examples=n_examples)
    glob = table[table["view"] == "global"].reset_index(drop=True)
    prompt = table[table["view"] == "prompt"].reset_index(drop=True)
    figures, embedded = {}, False
    for name, rows, title in (("global", glob, "Global view: effect with its CI, by rank"),
                              ("prompt", prompt, "Prompt-conditioned view: effect with its CI, by rank")):
        if len(rows):
            figures[name] = figure_html(_forest(rows, title), include_plotlyjs=not embedded,
                                        div_id=f"anatomy-forest-{name}")
            embedded = True
    shown = pd.concat([glob.head(n_example_rows), prompt.head(min(2, n_example_rows))], ignore_index=True)
    if pairs is None:
        pairs = getattr(d, "pairs", None)
    src = (d.source or {}).get("source", "pairs")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join([
        f"<h1>Preference-data audit</h1><p class='note'>{html.escape(str(src))} · {len(d)} pairs · "
        f"written {stamp} by anatomy.report</p>",
        "<p>What a model trained on these pairs with DPO is pushed towards: concepts the SAE lens finds more "
        "often in the chosen responses (<span class='chosen'>chosen</span>) or in the rejected ones "
        "(<span class='rejected'>rejected</span>), each a tested hypothesis with a confidence interval and a "
        "q-value, shown with the pairs it comes from.</p>",
        _read_section(d),
        _hypotheses_section(glob, figures.get("global", "")),
        _examples_section(d, shown, pairs, n_examples, highlight),
        _prompt_section(prompt, figures.get("prompt", "")),
        _length_section(d.length),
    ])
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>anatomy audit report</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
