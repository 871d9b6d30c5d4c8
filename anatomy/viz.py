"""Figures and HTML for reading a diagnosis: offline-safe plotly files, highlighted tokens,
example pairs side by side, and an inline feature browser.

- `save_figure(fig, name)`: ``figures/<name>.html`` with plotly.js embedded (opens offline).
- `figure_html(fig, include_plotlyjs=...)`: a figure as an HTML fragment (the report embeds
  plotly.js once, then reuses it).
- `highlight_tokens(tokens, scores)`: tokens with a positive score marked, shaded by score.
- `show_examples(pairs, ids, highlight=...)`: chosen | rejected side by side, the concept marked
  (`examples_html`: the same as a string).
- `feature_browser(features, labels)`: pick a feature or cluster, see its examples and histogram.
- `hypothesis_browser(diagnosis)`: pick a hypothesis, see its example pairs side by side and the
  histogram of its u.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["examples_html", "feature_browser", "figure_html", "figures_dir", "highlight_tokens", "hypothesis_browser",
           "save_figure", "show_examples"]


def figures_dir() -> Path:
    """``$ANATOMY_FIGURES`` if set, else ``<repo>/figures``; created on demand."""
    out = Path(os.environ.get("ANATOMY_FIGURES", Path(__file__).resolve().parent.parent / "figures"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_figure(fig, name: str) -> Path:
    """Write a plotly figure as ``<figures_dir>/<name>.html`` and return the path.

    plotly.js (~4.6 MB) is embedded in the file, never fetched from the network: the page must
    open on a machine without internet (a page that fetches plotly.js from the network is blank there).
    """
    path = figures_dir() / f"{name}.html"
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def figure_html(fig, *, include_plotlyjs: bool = False, div_id: str | None = None) -> str:
    """A plotly figure as an HTML fragment (a ``<div>`` and its script).

    include_plotlyjs: True embeds plotly.js in the fragment (do it once per page); False
    assumes the page already holds it. Never a link to plotly.js on the network, so the page opens offline.
    """
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_plotlyjs), div_id=div_id)


def highlight_tokens(tokens: Sequence[str], scores: Sequence[float], *, vmax: float | None = None) -> str:
    """HTML-escaped tokens; those with a score > 0 in ``<mark class="anatomy-concept">``.

    The mark's opacity is ``0.15 + 0.85 * score / vmax`` (``vmax``: the largest score by
    default), its ``title`` the score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if vmax is None:
        vmax = float(scores.max()) if len(scores) and scores.max() > 0 else 1.0
    out = []
    for tok, s in zip(tokens, scores):
        text = html.escape(tok)
        if s > 0:
            alpha = min(1.0, s / vmax)
            out.append(f'<mark class="anatomy-concept" title="{s:.3g}" '
                       f'style="background: rgba(255,140,0,{0.15 + 0.85 * alpha:.2f})">{text}</mark>')
        else:
            out.append(text)
    return "".join(out)


Span = tuple[int, int]
Highlight = (Callable[[str], Iterable[Span]] | str | re.Pattern
             | Mapping[str, Mapping[str, tuple[Sequence[str], Sequence[float]]]] | None)


def _pair_rows(pairs) -> dict[str, dict]:
    if isinstance(pairs, pd.DataFrame):
        rows = pairs.to_dict("records")
    else:
        rows = [dict(p) for p in pairs]
    out = {}
    for i, row in enumerate(rows):
        out[str(row.get("id", i))] = row
    return out


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m.get("content", "") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        return users[-1] if users else "\n".join(str(m.get("content", "")) for m in prompt
                                                   if isinstance(m, Mapping))
    return str(prompt)


def _mark_spans(text: str, spans: Iterable[Span]) -> str:
    """Escaped text with the (merged) character spans wrapped in <mark>."""
    cuts = sorted((max(0, int(a)), min(len(text), int(b))) for a, b in spans)
    merged: list[list[int]] = []
    for a, b in cuts:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, pos = [], 0
    for a, b in merged:
        out.append(html.escape(text[pos:a]))
        out.append(f'<mark class="anatomy-concept">{html.escape(text[a:b])}</mark>')
        pos = b
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _render(text: str, pid: str, side: str, highlight) -> str:
    if highlight is None:
        return html.escape(text)
    if isinstance(highlight, (str, re.Pattern)):
        pattern = re.compile(highlight) if isinstance(highlight, str) else highlight
        return _mark_spans(text, (m.span() for m in pattern.finditer(text)))
    if isinstance(highlight, Mapping):
        entry = highlight.get(pid, {}).get(side)
        if entry is None:
            return html.escape(text)
        tokens, scores = entry
        return highlight_tokens(tokens, scores)
    if callable(highlight):
        return _mark_spans(text, highlight(text))
    raise ValueError("`highlight` must be None, a regex, a callable text -> [(start, end)], or "
                     "token scores from token_feature_scores")


def show_examples(pairs, pair_ids: Sequence[str], *, highlight: Highlight = None,
                  title: str | None = None):
    """Example pairs, chosen and rejected side by side, the concept's text marked.

    pairs: the dataset (a `datasets.Dataset`, a list of dicts or a DataFrame with id,
        prompt, chosen, rejected). pair_ids: which pairs, in order (e.g. the ``examples`` of
        a `hypotheses_table` row).
    highlight: None; a regex (str or compiled) whose matches are marked; a callable
        text -> [(char_start, char_end), ...]; or `token_feature_scores` output (per pair id
        and side, tokens and scores: tokens with a score > 0 are marked, shaded by score).
    All text is HTML-escaped; marked text is in ``<mark class="anatomy-concept">``.
    Returns an ``IPython.display.HTML`` (its ``.data`` is the HTML string of
    `examples_html`). Raises ValueError naming a pair id that is not in ``pairs``.
    """
    from IPython.display import HTML

    return HTML(examples_html(pairs, pair_ids, highlight=highlight, title=title))


def examples_html(pairs, pair_ids: Sequence[str], *, highlight: Highlight = None,
                  title: str | None = None) -> str:
    """The HTML string `show_examples` displays (for pages such as the report)."""
    rows = _pair_rows(pairs)
    missing = [p for p in pair_ids if str(p) not in rows]
    if missing:
        raise ValueError(f"pair id(s) {missing[:5]} not in `pairs`")
    cell = "vertical-align: top; white-space: pre-wrap; padding: 4px 8px; width: 50%"
    parts = ['<div class="anatomy-examples" style="font-family: sans-serif">']
    if title:
        parts.append(f"<h3>{html.escape(title)}</h3>")
    for pid in pair_ids:
        pid = str(pid)
        row = rows[pid]
        for field in ("chosen", "rejected"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"pair {pid!r} field {field!r}: missing or not text")
        prompt = html.escape(_prompt_text(row.get("prompt", "")))
        parts.append(
            f'<div class="anatomy-pair" style="margin: 8px 0; border-top: 1px solid #ccc">'
            f"<p><b>{html.escape(pid)}</b> — <i>{prompt}</i></p>"
            f'<table style="width: 100%; table-layout: fixed"><tr><th>chosen</th><th>rejected</th></tr>'
            f'<tr><td class="anatomy-chosen" style="{cell}">'
            f"{_render(row['chosen'], pid, 'chosen', highlight)}</td>"
            f'<td class="anatomy-rejected" style="{cell}">'
            f"{_render(row['rejected'], pid, 'rejected', highlight)}</td></tr></table></div>")
    parts.append("</div>")
    return "".join(parts)


def feature_browser(features, labels, *, stat: str = "max"):
    """An inline app: pick a feature or cluster, see its label, top examples and chosen-vs-rejected histogram.

    Args:
        features: ``PairFeatures`` (``anatomy.features.feature_summaries``).
        labels: a ``label_features`` or ``label_clusters`` DataFrame (one row per
            feature / cluster, with ``label`` and ``snippets``; cluster rows list
            their member ``features``).
        stat: ``"max"`` or ``"freq"``: the per-pair summary shown in the histogram.

    Returns:
        ``ipywidgets.VBox``; ``.children`` are the selector, the label / snippets
        HTML, and a plotly ``FigureWidget`` histogram. Selecting updates both.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go

    key = "cluster" if "cluster" in labels.columns else "feature"
    rows = {int(r[key]): r for _, r in labels.iterrows()}
    options = [(f"{key} {k}: {r['label']}", k) for k, r in rows.items()]
    select = widgets.Dropdown(options=options, description=key, layout={"width": "60%"})
    info = widgets.HTML()
    hist = go.FigureWidget(layout={"barmode": "overlay", "height": 280, "margin": dict(t=40, b=30),
                                   "xaxis_title": f"{stat} activation per pair", "yaxis_title": "pairs"})
    for span in ("chosen", "rejected"):
        hist.add_histogram(x=[], name=span, opacity=0.6)
    mats = getattr(features, stat)

    def show(k: int) -> None:
        row = rows[k]
        members = list(row["features"]) if key == "cluster" else [k]
        snippets = "".join(
            f"<div style='font-family:monospace;margin:2px 0'><b>{s['pair_id']}·{s['span']}</b> "
            f"({s['max']:.2f}): {highlight_tokens(s['tokens'], s['acts'])}</div>"
            for s in row["snippets"])
        info.value = (f"<h4>{key} {k}: {row['label']}</h4><p>features: {members[:20]}</p>{snippets}")
        with hist.batch_update():
            for trace, span in zip(hist.data, ("chosen", "rejected")):
                trace.x = np.asarray(mats[span][:, members].sum(axis=1)).ravel()
            hist.layout.title = f"{key} {k}: {stat} per pair, chosen vs rejected"

    select.observe(lambda change: show(change["new"]), names="value")
    if options:
        show(options[0][1])
    return widgets.VBox([select, info, hist])


def hypothesis_browser(diagnosis, *, pairs=None, top: int = 20, n_examples: int = 3, highlight: bool = True):
    """An inline app over a `Diagnosis`: pick a hypothesis (a row of ``diagnosis.table(top)``), see
    its example pairs side by side (`Diagnosis.examples`) and the histogram of its u over the
    pairs in its scope, beside the other pairs.

    pairs: the diagnosed pairs (default: those the diagnosis holds). highlight: mark the
    concept's tokens (one forward per shown pair with the diagnosis' model and SAE).
    Returns ``ipywidgets.VBox``; ``.children`` are the selector, the examples HTML and a plotly
    ``FigureWidget`` histogram. Selecting a row updates both.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go

    table = diagnosis.table(top=top, n_examples=n_examples)
    if not len(table):
        raise ValueError("the diagnosis has no hypothesis to browse (its tables are empty)")
    groups = {"global": np.asarray(diagnosis.data_labels), "prompt": np.asarray(diagnosis.prompt_labels)}
    options = [(f"{r.view} #{r.rank}: concept {r.concept}"
                + (f" · {r.label[:50]}" if r.label else "") + f" ({r.scope}, {r.direction}, effect {r.effect:+.3f})", i)
               for i, r in enumerate(table.itertuples(index=False))]
    select = widgets.Dropdown(options=options, description="hypothesis", layout={"width": "90%"})
    info = widgets.HTML()
    hist = go.FigureWidget(layout={"barmode": "overlay", "height": 280, "margin": dict(t=40, b=30),
                                   "xaxis_title": "u (chosen-only share − rejected-only share of the concept's features)",
                                   "yaxis_title": "pairs", "template": "plotly_white"})
    hist.add_histogram(x=[], name="in scope", opacity=0.7)
    hist.add_histogram(x=[], name="other pairs", opacity=0.5)

    def show(i: int) -> None:
        row = table.iloc[i]
        u = diagnosis.u[row["concept"]].to_numpy()
        inside = (np.ones(len(u), bool) if int(row["group"]) == -1 else groups[row["view"]] == int(row["group"]))
        try:
            info.value = diagnosis.examples(int(row["concept"]), n=n_examples, pairs=pairs, view=row["view"],
                                            highlight=highlight).data
        except Exception as err:  # noqa: BLE001 — show why, keep the app usable
            info.value = f"<p>examples not shown: {html.escape(str(err))}</p>"
        with hist.batch_update():
            hist.data[0].x, hist.data[1].x = u[inside], u[~inside]
            hist.layout.title = f"concept {row['concept']}: u in {row['scope']} vs the other pairs"

    select.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([select, info, hist])
