"""Offline checks of HTML pages: no external script or URL, and a headless-Chromium screenshot
taken with the network cut off (a proxy that refuses and a resolver that resolves nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
PLOTLY_MARK = "plotly.js v"  # the banner comment at the top of the embedded bundle
_EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def external_references(page: str) -> list[str]:
    """Tags that would load something from the network (``src=`` / ``href=`` to http(s) or //)."""
    return [m.group(0) for m in _EXTERNAL.finditer(page)]


def outside_plotlyjs(page: str) -> str:
    """The page without the embedded plotly.js bundle(s) (whose code names URLs it never loads
    for these figures, such as the topojson default of geo maps)."""
    return re.sub(r"<script[^>]*>\s*/\*\*\s*\n?\s*\*\s*plotly\.js v.*?</script>", "<script></script>", page,
                  flags=re.S)


def chromium() -> str:
    """The Chromium binary, or a pytest skip saying how to get it."""
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        pytest.skip(f"{CHROMIUM} not found: `apt-get install -y chromium` enables the offline screenshot test")
    return path


def screenshot(page: Path, png: Path, *, size: tuple[int, int] = (1200, 900), wait_ms: int = 10000) -> np.ndarray:
    """Open ``page`` in headless Chromium with no network, save a PNG, return its RGB pixels [h, w, 3]."""
    from PIL import Image

    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
           f"--screenshot={png}", page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    return np.asarray(Image.open(png).convert("RGB"))


def colour_share(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> float:
    """Share of pixels within ``tol`` of ``rgb`` on every channel."""
    return float((np.abs(pixels.astype(int) - np.asarray(rgb)).max(axis=-1) <= tol).mean())
