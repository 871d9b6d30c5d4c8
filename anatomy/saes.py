"""Stage 2a: the SAE lens: load, train and measure an SAE on one residual layer.

``load_sae()`` gives the shipped BatchTopK SAE on one residual layer of the default
model, or any SAELens release; ``collect_activations`` gives per-token activations
of pairs (``TokenActivations``); ``train_sae``, ``sae_metrics`` and ``layer_sweep``
build and check an SAE. Reading pairs through it (per-span summaries, concept
clusters, labels) is ``anatomy.features``.

Training (``train_sae``, ``python -m anatomy.saes train --layer L``) uses
SAELens's ``BatchTopKTrainingSAE`` in a small in-memory loop over token
activations of the organism's train and clean splits (prompts and both responses;
the responses are SmolLM2-135M-Instruct's own generations on those prompts; the
heldout split is never trained on). The trained SAE is shipped as a SAELens
``TopKSAE`` (exactly ``k`` latents selected per token, unit-norm decoder rows, the
activation-norm scaling folded in), with ``cfg.json`` (``TopKSAEConfig.to_dict()``;
metadata: hook name, scaling factor, training tokens, epochs, seed, metrics) beside
``sae_weights.safetensors`` (fp16).

Rebuild the shipped SAE with ``python -m anatomy.saes train --layer 12 --threads 2``
(5,760 latents, k = 32, 2,765 train + clean pairs = 330,569 distinct tokens, 6 epochs;
measured on a 2-core CPU: 9 min to collect the activations, 13 min to train) and the
layer sweep table ``anatomy/assets/layer_sweep.csv`` with
``python -m anatomy.saes sweep --threads 1`` (13 min).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .cache import SPANS, _forward_sequences, tokenize_pairs

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_LAYER = 12  # overwritten below by the shipped directory's name, if present
SAE_PREFIX = "sae-smollm2-135m"
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
SWEEP_FILE = "layer_sweep.csv"


def sae_dir_name(layer: int, expansion: int = 10) -> str:
    """Directory name of a shipped SAE: ``sae-smollm2-135m-L{layer}-{expansion}x``."""
    return f"{SAE_PREFIX}-L{layer}-{expansion}x"


def shipped_saes() -> list[str]:
    """Names of the SAEs shipped under ``anatomy/assets``."""
    if not ASSETS.exists():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / CFG_FILE).exists() and p.name.startswith(SAE_PREFIX))


# ----------------------------------------------------------------------------- loading


class SAENotAvailableError(RuntimeError):
    """The requested SAE is neither shipped nor reachable on the hub."""


class SAEConfigError(ValueError):
    """An SAE whose config does not match its weights or the model; the message names the file and field."""


TOPK_ARCHITECTURES = ("topk", "batchtopk")
# parameters each SAELens inference architecture needs beyond W_enc, W_dec, b_enc, b_dec
EXTRA_PARAMS = {"standard": set(), "topk": set(), "jumprelu": {"threshold"}, "gated": {"b_gate", "b_mag", "r_mag"}}


def check_sae_config(path: str | Path) -> dict:
    """Check a ``cfg.json`` against its ``sae_weights.safetensors`` before SAELens reads it.

    Refuses, naming the file and field: a TopK SAE without ``k`` (SAELens would use 100),
    ``k`` outside 1..d_sae, an architecture the weights or the training record contradict
    (``"standard"`` on a TopK-trained SAE), weight shapes that are not ``d_in`` x ``d_sae``,
    and a ``hook_name`` that is not a name. Whether the hook exists needs the model
    (``check_sae_fits``). Returns the config.
    """
    path = Path(path)
    cfg_path = path / CFG_FILE
    try:
        cfg = json.loads(cfg_path.read_text())
        assert isinstance(cfg, dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError) as err:
        raise SAEConfigError(f"{cfg_path}: not a JSON object ({err or 'wrong type'})") from None

    def bad(field, why):
        return SAEConfigError(f"{cfg_path}: field {field!r} {why}")

    for field in ("d_in", "d_sae"):
        if not isinstance(cfg.get(field), int) or cfg[field] <= 0:
            raise bad(field, f"must be a positive integer, got {cfg.get(field)!r}")
    arch = cfg.get("architecture", "standard")
    meta = cfg.get("metadata") or {}
    trained = str(meta.get("training_architecture") or "").lower()
    if arch in TOPK_ARCHITECTURES or "k" in cfg:
        if "k" not in cfg:
            raise bad("k", f"is missing; a {arch} SAE needs it (SAELens would use k=100)")
        k = cfg["k"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg["d_sae"]:
            raise bad("k", f"must be an integer in 1..d_sae ({cfg['d_sae']}), got {k!r}")
    if arch not in TOPK_ARCHITECTURES and ("k" in cfg or trained in TOPK_ARCHITECTURES):
        why = f"training_architecture {trained!r}" if trained in TOPK_ARCHITECTURES else f"k = {cfg['k']}"
        raise bad("architecture", f"is {arch!r}, but the SAE was trained as TopK ({why}): its latents "
                                  "would be read with the wrong activation; use 'topk'")
    hook = meta.get("hook_name")
    if hook is not None and (not isinstance(hook, str) or not hook.strip()):
        raise SAEConfigError(f"{cfg_path}: field 'metadata.hook_name' = {hook!r} is not a hook name")
    weights = path / WEIGHTS_FILE
    if weights.exists():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except SafetensorError as err:
            raise SAEConfigError(f"{weights}: unreadable ({err})") from None
        want = {"W_enc": (cfg["d_in"], cfg["d_sae"]), "W_dec": (cfg["d_sae"], cfg["d_in"]),
                "b_enc": (cfg["d_sae"],), "b_dec": (cfg["d_in"],)}
        for key, shape in want.items():
            if key in shapes and shapes[key] != shape:
                raise SAEConfigError(f"{weights}: {key} has shape {shapes[key]}, but {CFG_FILE} says d_in = "
                                     f"{cfg['d_in']}, d_sae = {cfg['d_sae']} (expected {shape})")
        missing = sorted(EXTRA_PARAMS.get(arch, set()) - set(shapes))
        if missing:
            raise bad("architecture", f"is {arch!r}, which needs weights {missing} that {weights.name} does not hold")
        extra = sorted(set().union(*EXTRA_PARAMS.values()) & set(shapes) - EXTRA_PARAMS.get(arch, set()))
        if extra:
            raise bad("architecture", f"is {arch!r}, but {weights.name} holds {extra}, the weights of another architecture")
    return cfg


def check_sae_weights(sae, where: str = "the SAE") -> None:
    """Refuse NaN or infinite SAE weights, naming the tensor."""
    for name, t in sae.named_parameters():
        if not torch.isfinite(t).all():
            n = int((~torch.isfinite(t)).sum())
            raise SAEConfigError(f"{where}: weight {name!r} holds {n} NaN or infinite values")


def load_sae(name: str | None = None, *, release: str | None = None, sae_id: str | None = None,
             device: str = "cpu", model=None):
    """Load an SAE as a SAELens ``SAE`` object (``encode`` / ``decode`` as SAELens defines them).

    Args:
        name: a shipped SAE (``shipped_saes()``) or a local directory holding
            ``cfg.json`` + ``sae_weights.safetensors``; ``None``: the shipped default.
        release, sae_id: a SAELens pretrained release (``SAE.from_pretrained``),
            e.g. ``release="gemma-scope-2b-pt-res-canonical"``,
            ``sae_id="layer_12/width_16k/canonical"``; needs the hub.
        device: torch device.
        model: when given, the SAE must fit it (``check_sae_fits``: its hook exists in the
            model, ``d_in`` is the model's width).

    A local SAE is checked before it loads (``check_sae_config``: ``k``, the architecture,
    the weight shapes, the hook name) and after (``check_sae_weights``: no NaN); a mismatch
    is an ``SAEConfigError`` naming the file and field.

    Returns:
        a SAELens SAE (the shipped one is a ``TopKSAE`` in float32);
        ``sae.cfg.metadata.hook_name`` names the hook it reads, e.g.
        ``blocks.12.hook_resid_post``.
    """
    from sae_lens import SAE

    if release is not None or sae_id is not None:
        if release is None or sae_id is None:
            raise ValueError("pass both release= and sae_id= to load a SAELens pretrained SAE")
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except Exception as err:  # offline hub, unknown release, ...
            raise SAENotAvailableError(
                f"could not load SAE release={release!r} sae_id={sae_id!r} from the hub ({type(err).__name__}: "
                f"{err}). The hub may be unreachable from this machine; load_sae() without arguments "
                f"gives the shipped SAE ({', '.join(shipped_saes()) or 'none shipped'})."
            ) from err
        check_sae_weights(sae, f"SAE release={release!r} sae_id={sae_id!r}")
        if model is not None:
            check_sae_fits(sae, model)
        return sae
    if name is None:
        names = shipped_saes()
        if not names:
            raise SAENotAvailableError(f"no SAE is shipped under {ASSETS}; train one with "
                                       "`python -m anatomy.saes train --layer 12`")
        path = ASSETS / names[0]
    else:
        path = ASSETS / name if (ASSETS / name / CFG_FILE).exists() else Path(name)
    if not (path / CFG_FILE).exists():
        raise SAENotAvailableError(f"no {CFG_FILE} in {path}; shipped SAEs: {shipped_saes()}")
    check_sae_config(path)
    sae = SAE.load_from_disk(path, device=device, dtype="float32")
    check_sae_weights(sae, str(path / WEIGHTS_FILE))
    if model is not None:
        check_sae_fits(sae, model)
    return sae


def save_sae(sae, path: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``sae_weights.safetensors`` (in ``dtype``) and ``cfg.json`` (``sae.cfg.to_dict()``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sae.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    (path / CFG_FILE).write_text(json.dumps(sae.cfg.to_dict(), indent=1, default=_json_default))
    return path


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def sae_hook(sae) -> str:
    """The hook an SAE reads (``sae.cfg.metadata.hook_name``)."""
    hook = getattr(sae.cfg.metadata, "hook_name", None)
    if not hook:
        raise ValueError("the SAE's cfg.metadata has no hook_name; pass hook= explicitly")
    return hook


def check_sae_fits(sae, model, hook: str | None = None) -> None:
    """Refuse an SAE that does not fit the model: its hook (``hook`` or the SAE's
    ``hook_name``) must be a hook of the model and ``cfg.d_in`` its width there."""
    from .cache import check_hooks

    hook = hook or sae_hook(sae)
    try:
        check_hooks(model, [hook])
    except KeyError as err:
        raise SAEConfigError(f"SAE field 'hook_name': {err.args[0]}") from None
    d_model = getattr(model.cfg, "d_model", None)
    if d_model is not None and "resid" in hook and int(sae.cfg.d_in) != int(d_model):
        raise SAEConfigError(f"SAE field 'd_in' = {sae.cfg.d_in} does not match the model's d_model = {d_model} "
                         f"at {hook!r}")


# ----------------------------------------------------------------------------- token activations


@dataclass(frozen=True)
class TokenActivations:
    """Per-token activations of a set of pairs, each distinct sequence forwarded once.

    ``acts[hook]`` is ``Tensor[n_tokens, d_model]``; ``pair_index[t]`` is the row
    (in ``pairs``) of the first pair the token came from, ``span[t]`` its span
    (0 prompt, 1 chosen, 2 rejected), ``segment[t]`` the distinct segment it belongs
    to; ``pair_segments[i, s]`` is the segment of pair i's span s (a prompt shared by
    several pairs, or an identical response, is one segment).
    """

    acts: dict[str, Tensor]
    pair_index: np.ndarray
    span: np.ndarray
    segment: np.ndarray
    pair_segments: np.ndarray
    ids: list[str]

    def pooled(self, hook: str, span: str, pooling: str = "mean") -> Float[Tensor, "pair d"]:
        """``Tensor[n_pairs, d]``: mean (or max) over each pair's span tokens."""
        s = SPANS.index(span)
        seg = torch.as_tensor(self.segment, dtype=torch.long)
        n_seg = int(self.segment.max()) + 1 if len(self.segment) else 0
        x = self.acts[hook].float()
        if pooling == "mean":
            sums = torch.zeros(n_seg, x.shape[1]).index_add_(0, seg, x)
            counts = torch.bincount(seg, minlength=n_seg).clamp(min=1).unsqueeze(1)
            table = sums / counts
        elif pooling == "max":
            table = torch.full((n_seg, x.shape[1]), -torch.inf).index_reduce_(0, seg, x, "amax")
        else:
            raise ValueError(f"pooling {pooling!r} is not 'mean' or 'max'")
        return table[torch.as_tensor(self.pair_segments[:, s], dtype=torch.long)]


@torch.no_grad()
def collect_activations(
    model,
    pairs: Sequence[dict],
    hooks: str | Sequence[str],
    *,
    batch_tokens: int = 4096,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> TokenActivations:
    """Per-token activations of pairs' prompts and responses, each distinct sequence forwarded once.

    For SAE training. Identical (prompt + response) sequences, common when a
    prompt has several pairs, are forwarded once; a prompt's tokens are kept
    once per distinct prompt. All tokens are kept in memory, so use it on a
    sample (~10^5–10^6 tokens), not on a whole large dataset.
    """
    hooks = (hooks,) if isinstance(hooks, str) else tuple(hooks)
    tok = tokenize_pairs(model, pairs)
    seqs, seq_key = [], {}
    seg_of: dict[tuple, int] = {}
    pair_segments = np.zeros((len(tok), 3), dtype=np.int64)
    seg_src: list[tuple[int, int, np.ndarray, int]] = []  # (seq index, span, mask, first pair)
    for i, item in enumerate(tok):
        for s, side in ((1, "chosen"), (2, "rejected")):
            enc = item[side]
            key = tuple(enc["input_ids"])
            if key not in seq_key:
                seq_key[key] = len(seqs)
                seqs.append(enc["input_ids"])
            q = seq_key[key]
            pm = np.asarray(enc["prompt_mask"])
            rm = np.asarray(enc["response_mask"])
            if s == 1:
                pkey = ("prompt", tuple(np.asarray(enc["input_ids"])[pm]))
                if pkey not in seg_of:
                    seg_of[pkey] = len(seg_src)
                    seg_src.append((q, 0, pm, i))
                pair_segments[i, 0] = seg_of[pkey]
            rkey = ("response", key)
            if rkey not in seg_of:
                seg_of[rkey] = len(seg_src)
                seg_src.append((q, s, rm, i))
            pair_segments[i, s] = seg_of[rkey]
    by_seq: dict[int, list[int]] = {}
    for g, (q, _, _, _) in enumerate(seg_src):
        by_seq.setdefault(q, []).append(g)
    parts: dict[str, list] = {h: [None] * len(seg_src) for h in hooks}
    bar = tqdm(total=sum(len(s) for s in seqs), desc="collect tokens", unit="tok", disable=not progress)
    for q, out in _forward_sequences(model, seqs, hooks, batch_tokens, "right"):
        for g in by_seq[q]:
            mask = torch.as_tensor(seg_src[g][2])
            for h in hooks:
                parts[h][g] = out[h][mask].to(dtype).cpu()
        bar.update(len(seqs[q]))
    bar.close()
    lens = np.array([len(p) for p in parts[hooks[0]]])
    ids = [item["id"] for item in tok]
    return TokenActivations(
        acts={h: torch.cat(parts[h]) for h in hooks},
        pair_index=np.repeat([src[3] for src in seg_src], lens),
        span=np.repeat([src[1] for src in seg_src], lens),
        segment=np.repeat(np.arange(len(seg_src)), lens),
        pair_segments=pair_segments,
        ids=ids,
    )


# ----------------------------------------------------------------------------- training


def _training_cfg(d_in: int, d_sae: int, k: int, hook_name: str | None, aux_coefficient: float = 1.0 / 32):
    from sae_lens import BatchTopKTrainingSAEConfig

    return BatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
        rescale_acts_by_decoder_norm=True, aux_loss_coefficient=aux_coefficient, decoder_init_norm=0.1,
    )


def _to_inference(train_sae, scale: float, k: int, metadata: dict):
    """A SAELens ``TopKSAE`` on raw activations from a BatchTopK training SAE on ``scale * x``.

    Decoder rows are folded to unit norm; with inputs ``x`` instead of ``scale * x``
    the latents are ``1 / scale`` of the training ones and the reconstruction is
    ``x̂ = x̂_train / scale``: only ``b_enc`` and ``b_dec`` change.
    """
    from sae_lens import TopKSAE, TopKSAEConfig

    with torch.no_grad():
        norms = train_sae.W_dec.norm(dim=-1).clamp(min=1e-8)
        W_dec = train_sae.W_dec / norms[:, None]
        W_enc = train_sae.W_enc * norms[None, :]
        b_enc = train_sae.b_enc * norms / scale
        b_dec = train_sae.b_dec / scale
    cfg = TopKSAEConfig(d_in=train_sae.cfg.d_in, d_sae=train_sae.cfg.d_sae, k=int(k), dtype="float32",
                        device="cpu", apply_b_dec_to_input=True, normalize_activations="none",
                        rescale_acts_by_decoder_norm=False)
    for key, value in metadata.items():
        cfg.metadata[key] = value
    sae = TopKSAE(cfg)
    sae.load_state_dict({"W_enc": W_enc.contiguous(), "W_dec": W_dec.contiguous(),
                         "b_enc": b_enc.contiguous(), "b_dec": b_dec.contiguous()})
    return sae.eval()


def _batchtopk_step(sae, x: Float[Tensor, "batch d_in"], dead: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One ``BatchTopKTrainingSAE`` training forward (SAELens's losses), computed sparsely.

    The same quantities as ``sae.training_forward_pass`` (BatchTopK over the
    batch, activations rescaled by decoder norms, MSE summed over dimensions,
    the TopK auxiliary loss on dead latents, the threshold update), but the
    decoder is applied to the ``k * batch`` selected latents only
    (``embedding_bag``) and ``x @ W_enc`` is computed without an input gradient
    (``b_dec``'s encoder-side gradient is taken through ``b_dec @ W_enc``): about
    a third of the dense cost on a CPU.

    Returns:
        ``(loss, mse, fired)``: the loss to minimise, its MSE part, and the latents that fired.
    """
    cfg = sae.cfg
    n, d_sae = x.shape[0], cfg.d_sae
    norms = sae.W_dec.norm(dim=-1)
    hidden_pre = (x @ sae.W_enc - sae.b_dec @ sae.W_enc + sae.b_enc) * norms
    vals, idx = torch.topk(hidden_pre.relu().flatten(), int(cfg.k * n), sorted=False)
    idx, order = idx.sort()
    vals = vals[order]
    rows, cols = idx // d_sae, idx % d_sae
    offsets = torch.zeros(n, dtype=torch.long)
    offsets[1:] = torch.bincount(rows, minlength=n).cumsum(0)[:-1]
    W_unit = sae.W_dec / norms[:, None]
    recon = torch.nn.functional.embedding_bag(cols, W_unit, offsets, mode="sum", per_sample_weights=vals) + sae.b_dec
    mse = (recon - x).pow(2).sum(-1).mean()
    loss = mse
    if dead is not None and (num_dead := int(dead.sum())) > 0:
        k_aux = cfg.d_in // 2
        scale = min(num_dead / k_aux, 1.0)
        k_aux = min(k_aux, num_dead)
        aux_vals, aux_idx = torch.where(dead[None], hidden_pre, -torch.inf).topk(k_aux, sorted=False)
        aux = torch.nn.functional.embedding_bag(aux_idx.flatten(), W_unit, torch.arange(0, n * k_aux, k_aux),
                                                mode="sum", per_sample_weights=aux_vals.flatten())
        residual = (x - recon).detach()
        loss = loss + cfg.aux_loss_coefficient * scale * (aux - residual).pow(2).sum(-1).mean()
    with torch.no_grad():
        pos = vals > 0
        if pos.any():
            lr = cfg.topk_threshold_lr
            sae.topk_threshold = (1 - lr) * sae.topk_threshold + lr * vals[pos].min().double()
        fired = torch.zeros(d_sae, dtype=torch.bool)
        fired[cols[pos]] = True
    return loss, mse.detach(), fired


def activation_scale(acts: Float[Tensor, "tok d"], n: int = 100_000, seed: int = 0) -> float:
    """SAELens's ``expected_average_only_in`` factor: ``sqrt(d) / mean ||x||`` on a sample."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(acts), generator=g)[:n]
    return float(math.sqrt(acts.shape[1]) / acts[idx].float().norm(dim=-1).mean())


def train_sae(
    acts: Float[Tensor, "tok d_model"],
    *,
    d_sae: int = 4608,
    k: int = 32,
    epochs: int = 2,
    lr: float = 4e-4,
    batch_size: int = 4096,
    seed: int = 0,
    hook_name: str | None = None,
    eval_acts: Float[Tensor, "tok d_model"] | None = None,
    dead_window: int = 100_000,
    aux_coefficient: float = 1.0 / 32,
    metadata: dict | None = None,
    progress: bool = True,
):
    """Train a BatchTopK SAE (SAELens ``BatchTopKTrainingSAE``) on in-memory activations.

    Activations are scaled by SAELens's ``expected_average_only_in`` factor
    (mean norm ``sqrt(d_model)``; the factor is folded into the returned SAE and
    recorded in ``cfg.metadata.norm_scaling_factor``). ``b_dec`` starts at the
    data mean; Adam with a constant ``lr`` then linear decay over the last 20% of
    steps, gradient norm clipped at 1; SAELens's TopK auxiliary loss (coefficient
    ``aux_coefficient``) revives latents that have not fired in the last ``dead_window`` tokens.
    Each step computes SAELens's BatchTopK losses sparsely (``_batchtopk_step``).

    Args:
        acts: training token activations ``[n_tokens, d_model]`` (shuffled here).
        d_sae, k: latents and the BatchTopK mean number of active latents per token.
        epochs, lr, batch_size, seed: the training loop.
        hook_name: recorded in ``cfg.metadata.hook_name``.
        eval_acts: held-out tokens for the returned metrics (default: ``acts``).
        metadata: extra entries for ``cfg.metadata``.

    Returns:
        ``(sae, metrics)``: a SAELens ``TopKSAE`` on raw activations (exactly ``k``
        latents per token at inference) and ``sae_metrics`` on ``eval_acts`` plus
        ``train_dead_fraction`` (never fired on ``acts``), ``train_seconds`` and
        ``train_tokens``.
    """
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE

    t0 = time.time()
    torch.manual_seed(seed)
    n, d_in = acts.shape
    scale = activation_scale(acts, seed=seed)
    sae = BatchTopKTrainingSAE(_training_cfg(d_in, d_sae, k, hook_name, aux_coefficient))
    with torch.no_grad():
        sae.b_dec.copy_(acts[torch.randperm(n)[:100_000]].float().mean(0) * scale)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * epochs
    decay_from = int(0.8 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (total - s) / max(1, total - decay_from)))
    last_fired = torch.zeros(d_sae, dtype=torch.long)  # tokens seen when each latent last fired
    seen = 0
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc=f"train SAE ({n:,} tokens x {epochs})", disable=not progress)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            x = acts[order[b * batch_size:(b + 1) * batch_size]].float() * scale
            dead = (seen - last_fired) > dead_window if seen > dead_window else None
            loss, mse, fired = _batchtopk_step(sae, x, dead)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(x)
            last_fired[fired] = seen
            step += 1
            if step % 5 == 0:
                bar.set_postfix(mse=float(mse), dead=float(dead.float().mean()) if dead is not None else 0.0)
            bar.update(1)
    bar.close()
    train_seconds = time.time() - t0
    meta = {"hook_name": hook_name, "norm_scaling_factor": scale, "training_architecture": "batchtopk",
            "batchtopk_threshold": float(sae.topk_threshold) / scale,
            "train_tokens": int(n), "epochs": int(epochs), "seed": int(seed), "lr": lr, "batch_size": batch_size,
            "dead_window": int(dead_window), "aux_coefficient": aux_coefficient}
    meta.update(metadata or {})
    inf = _to_inference(sae, scale, k, meta)
    metrics = {k_: v for k_, v in sae_metrics(inf, eval_acts if eval_acts is not None else acts).items()
               if k_ != "feature_density"}
    metrics["train_dead_fraction"] = float((feature_density(inf, acts) == 0).mean())
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["train_tokens"] = int(n)
    inf.cfg.metadata["metrics"] = metrics
    return inf, metrics


@torch.no_grad()
def sae_metrics(sae, acts: Float[Tensor, "tok d_model"], *, batch_size: int = 8192) -> dict:
    """Reconstruction and sparsity of an SAE on token activations.

    Returns:
        ``{"explained_variance": 1 - Σ||x - x̂||² / Σ||x - mean x||²,
        "mse": mean squared error per token (sum over dims), "l0": mean active
        latents per token, "dead_fraction": share of latents that never fire,
        "n_tokens": int, "feature_density": np.ndarray[d_sae] (share of tokens
        where each latent fires)}``.
    """
    mean = acts.float().mean(0)
    sse = sst = l0 = 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for b in range(0, len(acts), batch_size):
        x = acts[b:b + batch_size].float()
        z = sae.encode(x)
        xh = sae.decode(z)
        sse += float(((x - xh) ** 2).sum())
        sst += float(((x - mean) ** 2).sum())
        active = z > 0
        l0 += float(active.sum())
        fires += active.sum(0)
    n = max(1, len(acts))
    density = (fires.double() / n).numpy()
    return {"explained_variance": 1.0 - sse / max(sst, 1e-12), "mse": sse / n, "l0": l0 / n,
            "dead_fraction": float((fires == 0).float().mean()), "n_tokens": int(len(acts)),
            "feature_density": density}


@torch.no_grad()
def feature_density(sae, acts: Float[Tensor, "tok d_model"], *, batch_size: int = 8192) -> np.ndarray:
    """``np.ndarray[d_sae]``: share of tokens on which each latent fires (encode only)."""
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for b in range(0, len(acts), batch_size):
        fires += (sae.encode(acts[b:b + batch_size].float()) > 0).sum(0)
    return (fires.double() / max(1, len(acts))).numpy()


MAX_NORM_RATIO = 10.0  # tokens above this x the typical norm are left out of training and summaries


def typical_tokens(sae, x: Float[Tensor, "tok d_model"], max_norm_ratio: float | None = MAX_NORM_RATIO) -> Tensor:
    """``Bool[tok]``: tokens whose norm is at most ``max_norm_ratio`` x the SAE's mean training norm.

    The first token of a chat sequence is an attention sink whose residual norm is
    ~200x the others' (~25,000 vs ~140 at layer 12 of the default model); the
    shipped SAE never saw such tokens (``_drop_outliers``) and some latents fire in
    the thousands on them. The mean training norm is ``sqrt(d_in) /
    cfg.metadata.norm_scaling_factor``; an SAE that does not record the factor, or
    ``max_norm_ratio=None``, keeps every token.
    """
    scale = getattr(sae.cfg.metadata, "norm_scaling_factor", None)
    if max_norm_ratio is None or not scale:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    return x.float().norm(dim=-1) <= max_norm_ratio * math.sqrt(sae.cfg.d_in) / scale


def _drop_outliers(acts: Tensor, ratio: float) -> tuple[Tensor, int]:
    """Drop tokens whose norm exceeds ``ratio`` x the median (the first token's attention sink)."""
    norms = acts.float().norm(dim=-1)
    keep = norms <= ratio * norms.median()
    return acts[keep], int((~keep).sum())


# ----------------------------------------------------------------------------- layer sweep

SWEEP_CONCEPTS = ("list_item", "bold", "header", "emoji", "refusal", "flattery", "hedge", "exclamation")


def _probe_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .probes import auroc

    if y.sum() < 5 or (1 - y).sum() < 5:
        return float("nan")
    scores = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
        clf.fit(x[tr], y[tr])
        scores[te] = clf.decision_function(x[te])
    return auroc(scores, y)


def layer_sweep(
    model,
    pairs: Sequence[dict],
    *,
    layers: Sequence[int] = (6, 9, 12, 15, 18),
    concepts: Sequence[str] = SWEEP_CONCEPTS,
    d_sae: int = 4608,
    k: int = 32,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 1024,
    heldout_fraction: float = 0.1,
    max_norm_ratio: float = 10.0,
    seed: int = 0,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> pd.DataFrame:
    """Compare residual layers on a small sample: a quick SAE's fit, and linear probes for concepts.

    One forward to the deepest layer collects every layer's tokens. Per layer: a
    short BatchTopK training (``epochs`` over the sample, ``lr``, ``batch_size``) on the pairs not held out, its explained variance
    on the held-out pairs' response tokens, dead fraction and L0; and, per
    concept (``anatomy.concepts.annotate`` count > 0), the cross-validated AUROC
    of a logistic probe on mean-pooled response activations (chosen and
    rejected responses, folds grouped by pair).

    Returns:
        DataFrame, one row per layer: ``layer, explained_variance, dead_fraction,
        l0, train_tokens, auroc_<concept>..., mean_auroc``.
    """
    from .concepts import annotate

    hooks = [f"blocks.{L}.hook_resid_post" for L in layers]
    tacts = collect_activations(model, pairs, hooks, batch_tokens=batch_tokens, progress=progress)
    rng = np.random.default_rng(seed)
    n = len(pairs)
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[: max(1, int(round(heldout_fraction * n)))]] = True
    tok_held = held[tacts.pair_index]
    texts = [pairs[i]["chosen"] for i in range(n)] + [pairs[i]["rejected"] for i in range(n)]
    ann = annotate(texts)
    groups = np.concatenate([np.arange(n), np.arange(n)])
    rows = []
    for L, h in zip(layers, hooks):
        acts = tacts.acts[h]
        train, n_out = _drop_outliers(acts[torch.as_tensor(~tok_held)], max_norm_ratio)
        ev = acts[torch.as_tensor(tok_held & (tacts.span > 0))]
        _, m = train_sae(train, d_sae=d_sae, k=k, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         hook_name=h, eval_acts=ev, dead_window=min(100_000, len(train)), progress=progress)
        row = {"layer": L, "explained_variance": m["explained_variance"], "dead_fraction": m["train_dead_fraction"],
               "l0": m["l0"], "train_tokens": m["train_tokens"], "eval_tokens": m["n_tokens"],
               "train_seconds": m["train_seconds"]}
        pooled = torch.cat([tacts.pooled(h, "chosen"), tacts.pooled(h, "rejected")]).numpy()
        aucs = []
        for c in concepts:
            y = (np.asarray(ann[c]) > 0).astype(int)
            a = _probe_auroc(pooled, y, groups, seed)
            row[f"auroc_{c}"] = a
            if not math.isnan(a):
                aucs.append(a)
        row["mean_auroc"] = float(np.mean(aucs)) if aucs else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- CLI


def _organism_tokens(model, layers: Sequence[int], *, splits: Sequence[str], max_pairs: int | None,
                     heldout_fraction: float, seed: int, batch_tokens: int, progress: bool):
    """Token activations at ``layers`` of the organism ``splits``; ~``heldout_fraction`` of prompts held out."""
    from .data import load_preferences

    pairs = [row for split in splits for row in load_preferences("organism", split=split)]
    rng = np.random.default_rng(seed)
    if max_pairs is not None and max_pairs < len(pairs):
        pairs = [pairs[i] for i in sorted(rng.permutation(len(pairs))[:max_pairs])]
    pkey = [p.get("prompt_id") or json.dumps(p["prompt"]) for p in pairs]
    uniq = sorted(set(pkey))
    n_held = round(heldout_fraction * len(uniq))
    held_prompts = set(np.asarray(uniq)[rng.permutation(len(uniq))[:n_held]]) if n_held else set()
    hooks = [f"blocks.{L}.hook_resid_post" for L in layers]
    tacts = collect_activations(model, pairs, hooks, batch_tokens=batch_tokens, progress=progress)
    held_pair = np.array([k in held_prompts for k in pkey])
    return pairs, tacts, held_pair


def _heldout_response_tokens(model, hook: str, *, n_pairs: int, seed: int, progress: bool) -> Tensor:
    """Response tokens of ``n_pairs`` seeded pairs of the organism heldout split (prompts never trained on)."""
    from .data import load_preferences

    ds = load_preferences("organism", split="heldout")
    idx = sorted(np.random.default_rng(seed).permutation(len(ds))[:n_pairs].tolist())
    tacts = collect_activations(model, [ds[i] for i in idx], hook, progress=progress)
    return tacts.acts[hook][torch.as_tensor(tacts.span > 0)]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anatomy.saes",
                                 description="Rebuild the shipped SAE (train) or the layer sweep table (sweep).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the shipped BatchTopK SAE on the organism's train split")
    t.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    t.add_argument("--d-sae", type=int, default=5760, help="latents (5,760 = 10x d_model 576, as shipped)")
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--lr", type=float, default=1.5e-3)
    t.add_argument("--batch-size", type=int, default=2048)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--aux-coef", type=float, default=0.25)
    t.add_argument("--dead-window", type=int, default=20_000)
    t.add_argument("--max-pairs", type=int, default=0,
                   help="a random subset of the train pairs (0: all, as for the shipped SAE)")
    t.add_argument("--splits", default="train,clean",
                   help="organism splits whose prompts and responses give the training tokens")
    t.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="share of the training splits' prompts held out for a second explained-variance figure")
    t.add_argument("--eval-pairs", type=int, default=200,
                   help="organism heldout-split pairs whose response tokens give the reported metrics")
    t.add_argument("--max-norm-ratio", type=float, default=MAX_NORM_RATIO)
    t.add_argument("--acts-cache", default=None, help="save/reuse the collected activations here (.pt)")
    t.add_argument("--also-collect", default="", help="more layers to collect in the same pass (for --acts-cache)")
    t.add_argument("--out", default=None, help=f"output directory (default anatomy/assets/{sae_dir_name(12)})")
    s = sub.add_parser("sweep", help="compare layers on a small sample; writes anatomy/assets/layer_sweep.csv")
    s.add_argument("--layers", default="6,9,12,15,18")
    s.add_argument("--n-pairs", type=int, default=150)
    s.add_argument("--epochs", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=str(ASSETS / SWEEP_FILE))
    for p in (t, s):
        p.add_argument("--threads", type=int, default=None,
                       help="torch threads (1 is fastest on a CPU shared with other jobs)")
    args = ap.parse_args(argv)

    from .data import load_preferences
    from .models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model()
    if args.cmd == "sweep":
        ds = load_preferences("organism", split="train")
        rng = np.random.default_rng(args.seed)
        # one pair per prompt where possible, so the sample spans many prompts
        by_prompt: dict = {}
        for i in rng.permutation(len(ds)):
            by_prompt.setdefault(ds[int(i)].get("prompt_id"), int(i))
        idx = sorted(by_prompt.values())[: args.n_pairs]
        if len(idx) < args.n_pairs:
            idx = sorted(set(idx) | set(rng.permutation(len(ds))[: args.n_pairs - len(idx)].tolist()))
        pairs = [ds[i] for i in idx]
        df = layer_sweep(model, pairs, layers=[int(x) for x in args.layers.split(",")], epochs=args.epochs,
                         seed=args.seed)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(df.to_string(index=False))
        return

    t0 = time.time()
    cache = Path(args.acts_cache) if args.acts_cache else None
    if cache is not None and cache.exists():
        blob = torch.load(cache, weights_only=False)
        tacts, held_pair, n_pairs = blob["tacts"], blob["held_pair"], blob["n_pairs"]
        collect_seconds = blob["collect_seconds"]
    else:
        layers = sorted({args.layer} | {int(x) for x in args.also_collect.split(",") if x})
        pairs, tacts, held_pair = _organism_tokens(model, layers, splits=args.splits.split(","),
                                                   max_pairs=args.max_pairs or None,
                                                   heldout_fraction=args.heldout_fraction, seed=args.seed,
                                                   batch_tokens=4096, progress=True)
        n_pairs = len(pairs)
        collect_seconds = time.time() - t0
        if cache is not None:
            torch.save({"tacts": tacts, "held_pair": held_pair, "n_pairs": n_pairs,
                        "collect_seconds": collect_seconds}, cache)
    hook = f"blocks.{args.layer}.hook_resid_post"
    acts = tacts.acts[hook]
    tok_held = held_pair[tacts.pair_index]
    train, n_out = _drop_outliers(acts[torch.as_tensor(~tok_held)], args.max_norm_ratio)
    ev = _heldout_response_tokens(model, hook, n_pairs=args.eval_pairs, seed=args.seed, progress=True)
    meta = {"model_name": "SmolLM2-135M-Instruct", "hook_name": hook,
            "dataset": "organism/" + "+".join(args.splits.split(",")),
            "tokens": f"organism {args.splits} splits: prompts and chosen + rejected responses (the model's own "
                      "generations), distinct sequences once; the heldout split is never trained on",
            "eval_tokens": f"response tokens of {args.eval_pairs} seeded organism heldout-split pairs",
            "n_pairs": int(n_pairs), "heldout_pairs": int(held_pair.sum()),
            "dropped_outlier_tokens": n_out, "max_norm_ratio": args.max_norm_ratio,
            "collect_seconds": round(collect_seconds, 1), "expansion": args.d_sae // acts.shape[1]}
    sae, metrics = train_sae(train, d_sae=args.d_sae, k=args.k, epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, seed=args.seed, hook_name=hook, eval_acts=ev,
                             dead_window=args.dead_window, aux_coefficient=args.aux_coef, metadata=meta)
    out = Path(args.out) if args.out else ASSETS / sae_dir_name(args.layer, args.d_sae // acts.shape[1])
    if tok_held.any():  # a second figure: prompts of the training splits held out
        held_ev = sae_metrics(sae, acts[torch.as_tensor(tok_held & (tacts.span > 0))])["explained_variance"]
        sae.cfg.metadata["metrics"]["explained_variance_heldout_train_prompts"] = held_ev
        metrics["explained_variance_heldout_train_prompts"] = held_ev
    save_sae(sae, out)
    print(json.dumps({"out": str(out), **metrics, "collect_seconds": round(collect_seconds, 1),
                      "total_seconds": round(time.time() - t0, 1)}, indent=1))


_shipped = shipped_saes()
if _shipped:
    DEFAULT_LAYER = int(_shipped[0].split("-L")[1].split("-")[0])

if __name__ == "__main__":
    main()
