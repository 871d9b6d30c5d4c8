"""What made a result: digests of data, weights and settings, so caches are keyed by content.

Every cache in the package (activations, feature summaries, reference log-probs, a saved
diagnosis) records these digests in its manifest and compares them on reuse: a cache must
never return results computed from other pair texts, other weights, another SAE or hook,
or other settings.

- ``digest(*parts)``: sha256 (16 hex) of JSON-serialisable parts (or bytes).
- ``pairs_digest(pairs)``: of every pair's id, prompt, chosen and rejected text, in order.
- ``weights_fingerprint(module)``: of a ``torch.nn.Module``'s parameters and buffers (names,
  shapes, dtypes, the float64 sum of each tensor and a strided sample of ~4,096 of its
  values). Any optimiser step moves it; so does an edit of a single weight, through the sum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

SAMPLE = 4096  # values sampled per tensor


def digest(*parts) -> str:
    """sha256 of ``parts`` (bytes as they are, anything else as sorted JSON), 16 hex characters."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def pair_texts(pair: dict) -> list:
    """The fields of a pair that its activations depend on: id, prompt, chosen, rejected."""
    return [pair.get("id"), pair.get("prompt"), pair.get("chosen"), pair.get("rejected")]


def pairs_digest(pairs: Iterable[dict]) -> str:
    """Digest of every pair's id, prompt messages, chosen and rejected text, in order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps(pair_texts(p), sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def weights_fingerprint(module) -> str:
    """Fingerprint of a module's parameters and buffers (see the module docstring).

    Accepts a ``torch.nn.Module`` (a TransformerBridge, a Hugging Face model, an SAE) or
    anything with ``named_parameters``. Cost: one pass of sums over the weights (~0.2 s
    for a 135M-parameter model on a CPU).
    """
    import torch

    h = hashlib.sha256()
    tensors: Sequence = list(module.named_parameters()) + list(getattr(module, "named_buffers", lambda: [])())
    seen: set[int] = set()
    with torch.no_grad():
        for name, t in tensors:
            if t is None or id(t) in seen:  # tied weights count once
                continue
            seen.add(id(t))
            flat = t.detach().reshape(-1)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if flat.numel():
                h.update(repr(float(flat.sum(dtype=torch.float64))).encode())
                step = max(1, flat.numel() // SAMPLE)
                h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
