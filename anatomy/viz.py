"""Figures: where notebooks save them (``figures/`` at the repo root, or ``$ANATOMY_FIGURES``)."""

from __future__ import annotations

import os
from pathlib import Path


def figures_dir() -> Path:
    """``$ANATOMY_FIGURES`` if set, else ``<repo>/figures``; created on demand."""
    out = Path(os.environ.get("ANATOMY_FIGURES", Path(__file__).resolve().parent.parent / "figures"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_figure(fig, name: str) -> Path:
    """Write a plotly figure as ``<figures_dir>/<name>.html`` (plotly.js from a CDN) and return the path."""
    path = figures_dir() / f"{name}.html"
    fig.write_html(path, include_plotlyjs="cdn")
    return path


def highlight_tokens(tokens: list[str], acts: list[float], *, vmax: float | None = None) -> str:
    """HTML of tokens with a background whose opacity is the token's activation / ``vmax``."""
    import html

    vmax = vmax or max([a for a in acts if a > 0], default=1.0)
    spans = []
    for tok, a in zip(tokens, acts):
        alpha = 0.0 if a <= 0 else min(1.0, a / vmax)
        text = html.escape(tok).replace("\n", "⏎")
        spans.append(f'<span title="{a:.2f}" style="background: rgba(255,140,0,{alpha:.2f})">{text}</span>')
    return "".join(spans)


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
    import numpy as np
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
