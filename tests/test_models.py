"""format_pair spans and load_model's default / error paths."""

import pytest
import torch

from anatomy.models import ModelNotAvailableError, format_pair, format_prompt, load_model

MULTI = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What's 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]
RESPONSES = [
    "Six.",
    "  leading spaces",
    "\n\nnewlines first\nand a second line",
    "Émoji 👍🏽 👨‍👩‍👧 and ünïcode — 日本語",
    "trailing whitespace  \n",
]
PROMPTS = [[{"role": "user", "content": "Hi"}], MULTI]


def _span(enc, key):
    return [t for t, m in zip(enc["input_ids"], enc[key]) if m]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["single", "multi-turn+system"])
@pytest.mark.parametrize("response", RESPONSES)
def test_response_span_is_exactly_the_response(tokenizer, prompt, response):
    enc = format_pair(tokenizer, prompt, response)
    n = len(enc["input_ids"])
    assert len(enc["prompt_mask"]) == len(enc["response_mask"]) == n
    assert tokenizer.decode(_span(enc, "response_mask")) == response
    assert _span(enc, "response_mask") == tokenizer(response, add_special_tokens=False)["input_ids"]
    # the prompt span is the generation prompt: exactly what generation conditions on
    assert _span(enc, "prompt_mask") == format_prompt(tokenizer, prompt)
    assert not any(p and r for p, r in zip(enc["prompt_mask"], enc["response_mask"]))
    # everything together renders the whole conversation
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
    assert tokenizer.decode(enc["input_ids"]) == full


def test_template_that_strips_the_response(tokenizer):
    stripping = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    old, tokenizer.chat_template = tokenizer.chat_template, stripping
    try:
        enc = format_pair(tokenizer, PROMPTS[0], "\n\n  Hello there.  \n")
        assert tokenizer.decode(_span(enc, "response_mask")) == "Hello there."
    finally:
        tokenizer.chat_template = old


def test_missing_default_model_says_which_command_to_run(tmp_path, monkeypatch):
    import anatomy.models as models

    monkeypatch.setattr(models, "_gguf_path", lambda: None)
    with pytest.raises(ModelNotAvailableError, match="make install"):
        load_model(cache_dir=tmp_path)


def test_unloadable_name_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="hub"):
        load_model(str(tmp_path / "no-such-model"))


def test_default_model_matches_hf_logits(model):
    """The bridge computes the same logits as the plain HF model it wraps."""
    ids = torch.tensor([format_prompt(model.tokenizer, PROMPTS[1])])
    with torch.no_grad():
        ours = model(ids)
        ref = model.original_model(ids).logits
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _is_greedy(model, out, n_prompt):
    """Whether every generated token is the argmax of the bridge's own full forward (no KV cache) before it."""
    with torch.no_grad():
        logits = model(out[:, :-1])
    return torch.equal(logits[0, n_prompt - 1:].argmax(-1), out[0, n_prompt:])


def test_load_model_generate_decodes_real_text(model):
    ids = torch.tensor([format_prompt(model.tokenizer, [{"role": "user", "content": "Name three colours."}])])
    out = model.generate(ids, max_new_tokens=6, do_sample=False, verbose=False)
    assert out.shape[1] == ids.shape[1] + 6 and _is_greedy(model, out, ids.shape[1])
    text = model.tokenizer.decode(out[0, ids.shape[1]:])
    assert any(c in text.lower() for c in ("red", "blue", "green", "yellow")), text
    assert "---" not in text
    said = model.generate("The capital of France is", max_new_tokens=3, do_sample=False, verbose=False)
    assert isinstance(said, str) and said.startswith("The capital of France is") and "Paris" in said, said


def test_generate_with_hooks_attached_runs_the_hooks():
    from test_features import tiny_lens

    from anatomy.models import correct_generate

    tiny = correct_generate(tiny_lens()[0])
    ids = torch.tensor([[1, 26843, 665]])
    free = tiny.generate(ids, max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    assert _is_greedy(tiny, free, 3)

    def push(acts, hook):
        return acts + 3.0

    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", push)]):
        steered = tiny.generate(ids, max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
        assert _is_greedy(tiny, steered, 3)
    assert not torch.equal(steered, free)
