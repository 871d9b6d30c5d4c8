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
