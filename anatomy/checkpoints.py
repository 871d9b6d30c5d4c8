"""Checkpoints and LoRA for ``train.train_dpo``: run directories, saved weights, adapters.

A run directory holds ``train_config.json`` (written at the start), the cached reference
log-probs, ``checkpoint-<step>/`` folders and the final ``model.safetensors`` (full
weights under their Hugging Face names, tied weights once) or ``adapter.safetensors``
(LoRA adapters) with ``history.json``. ``load_train_run`` reads a run back (and its
weights into a model of the same architecture). LoRA adapters are injected with peft
and merged back into the base Linear layers, so the model keeps its structure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

CONFIG_FILE = "train_config.json"
HISTORY_FILE = "history.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"
PEFT_HINT = (
    "lora= needs the optional package peft, which anatomy does not install: "
    "`pip install peft` in this environment (or leave lora=None for a full fine-tune)"
)
HISTORY_COLUMNS = [
    "step", "epoch", "loss", "accuracy", "margin", "reward_margin",
    "grad_norm", "lr", "n_pairs", "seconds",
]



# ----------------------------------------------------------------------------- LoRA


def _plain_name(name: str) -> str:
    return name.replace("._original_component", "")


def _inject_lora(hf, lora: dict, seed: int) -> list[Tensor]:
    """Inject LoRA adapters in place (peft); returns the adapter parameters."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(PEFT_HINT) from err
    kwargs = dict(lora)
    targets = kwargs.pop("target_modules", None)
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        targets = defaults.get(hf.config.model_type)
        if targets is None:
            raise ValueError(f"lora: no default target_modules for model type {hf.config.model_type!r}; pass some")
    targets = [targets] if isinstance(targets, str) else list(targets)
    # A TransformerBridge wraps each Linear (``q_proj._original_component``): name the Linear leaves exactly
    names = [n for n, m in hf.named_modules()
             if isinstance(m, torch.nn.Linear) and _plain_name(n).split(".")[-1] in targets]
    if not names:
        raise ValueError(f"lora: no Linear module named like {targets} in {type(hf).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(peft.LoraConfig(target_modules=names, **kwargs), hf)
    return [p for n, p in hf.named_parameters() if "lora_" in n]


def _merge_lora(hf) -> None:
    """Merge every LoRA adapter into its base Linear and put the base Linear back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(hf.named_modules()):
        if isinstance(module, LoraLayer):
            with torch.no_grad():
                module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent_name) if parent_name else hf, child, module.get_base_layer())


# ----------------------------------------------------------------------------- out_dir


def _prepare_out_dir(out: Path, cfg) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        new = cfg.to_dict()
        if old != new:
            diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
            raise ValueError(f"{out} holds a run with other settings {diff}; use another out_dir or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {CONFIG_FILE}; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=1))


def _bridge_head_bias(bridge, hf) -> Tensor | None:
    """The zero bias a TransformerBridge adds to a bias-free LM head (to expose ``b_U``).

    It is not part of the Hugging Face architecture: ``train_dpo`` keeps it frozen
    (so it stays zero) and the saved weights leave it out.
    """
    if bridge is None:
        return None
    head = hf.get_output_embeddings()
    bias = getattr(getattr(head, "original_component", head), "bias", None)
    return bias if bias is not None and not torch.count_nonzero(bias) else None


def _plain_state_dict(hf, skip: Tensor | None = None, only: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """Parameters and persistent buffers under their Hugging Face names (bridge wrappers and
    aliases removed; tied weights once, as ``save_pretrained`` does)."""
    keep = None if only is None else {id(t) for t in only}
    out = {}
    for name, p in hf.named_parameters():  # deduplicated: the first name is the Hugging Face path
        if p is skip or (keep is not None and id(p) not in keep):
            continue
        out[_plain_name(name)] = p.detach().contiguous().cpu()
    if only is None:
        for mod_name, mod in hf.named_modules():
            for b_name, buf in mod.named_buffers(recurse=False):
                if buf is not None and b_name not in mod._non_persistent_buffers_set:
                    out.setdefault(_plain_name(f"{mod_name}.{b_name}" if mod_name else b_name), buf.detach().cpu())
    return out


def _load_plain_state_dict(hf, state: dict[str, Tensor], source: Path) -> None:
    targets: dict[str, Tensor] = {}
    for name, t in list(hf.named_parameters()) + list(hf.named_buffers()):
        targets.setdefault(_plain_name(name), t)
    unexpected = sorted(set(state) - set(targets))
    if unexpected:
        raise ValueError(f"{source}: weights {unexpected[:5]} do not exist in {type(hf).__name__}")
    with torch.no_grad():
        for name, value in state.items():
            if targets[name].shape != value.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                 f"the model's has {tuple(targets[name].shape)}")
            targets[name].copy_(value)


def _save(dst: Path, hf, cfg, history: list[dict], adapters: list[Tensor] | None,
          skip: Tensor | None) -> None:
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    if adapters:
        save_file(_plain_state_dict(hf, only=adapters), str(dst / ADAPTER_FILE))
    else:
        save_file(_plain_state_dict(hf, skip=skip), str(dst / WEIGHTS_FILE))
    (dst / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    (dst / HISTORY_FILE).write_text(json.dumps(history, indent=1))


def load_train_run(out_dir: str | Path, model=None) -> tuple:
    """Read a saved run (``out_dir`` or one of its ``checkpoint-*`` folders).

    With ``model`` (a bridge or a Hugging Face model of the same architecture),
    also load the saved full weights into it, in place. ``model.safetensors``
    holds the weights under their Hugging Face names (tied weights once), so
    ``hf_model.load_state_dict(safetensors.torch.load_file(path), strict=False)``
    reads it too.
    """
    from .train import TrainConfig

    out = Path(out_dir)
    cfg = TrainConfig.from_dict(json.loads((out / CONFIG_FILE).read_text()))
    history = pd.DataFrame(json.loads((out / HISTORY_FILE).read_text()), columns=HISTORY_COLUMNS)
    if model is not None:
        from safetensors.torch import load_file

        path = out / WEIGHTS_FILE
        if not path.exists():
            raise ValueError(f"{out} has no {WEIGHTS_FILE} (a LoRA checkpoint holds only {ADAPTER_FILE})")
        hf = model.original_model if hasattr(model, "original_model") else model
        _load_plain_state_dict(hf, load_file(str(path)), path)
    return cfg, history
