"""saes: the shipped SAE meets its spec; the sparse training step equals SAELens's."""

import numpy as np
import pytest
import torch

from anatomy.saes import (
    ASSETS,
    CFG_FILE,
    WEIGHTS_FILE,
    _batchtopk_step,
    _training_cfg,
    sae_metrics,
    shipped_saes,
)

SPEC_EXPLAINED_VARIANCE = 0.85
SPEC_DEAD_FRACTION = 0.10


# ----------------------------------------------------------------------------- the shipped SAE


def test_shipped_sae_loads_with_hook_and_small_file(sae):
    from sae_lens import SAE

    assert isinstance(sae, SAE)
    path = ASSETS / shipped_saes()[0]
    layer = int(path.name.split("-L")[1].split("-")[0])
    assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
    assert sae.cfg.d_in == 576 and 8 <= sae.cfg.d_sae / sae.cfg.d_in <= 16  # the spec's 8-16x expansion
    assert (path / WEIGHTS_FILE).stat().st_size <= 15 * 2**20
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    meta = sae.cfg.metadata
    for key in ("norm_scaling_factor", "train_tokens", "epochs", "seed", "metrics"):
        assert meta[key] is not None, key
    assert (path / CFG_FILE).exists()


@pytest.fixture(scope="module")
def heldout_tokens(model, sae):
    """Response tokens of 20 organism heldout pairs (chosen + rejected: 40 responses)."""
    from anatomy.data import load_preferences, sample_pairs
    from anatomy.saes import collect_activations

    try:
        ds = load_preferences("organism", split="heldout")
    except Exception as err:  # the embedded dataset is not built yet
        pytest.skip(f"organism heldout split not available: {err}")
    pairs = sample_pairs(ds, 20, seed=0)
    hook = sae.cfg.metadata.hook_name
    tacts = collect_activations(model, pairs, hook, progress=False)
    return tacts.acts[hook][torch.as_tensor(tacts.span > 0)]


def test_shipped_sae_metrics_on_heldout_responses(sae, heldout_tokens):
    m = sae_metrics(sae, heldout_tokens)
    print(f"\nheld-out response tokens: {m['n_tokens']}, explained variance {m['explained_variance']:.4f}, "
          f"L0 {m['l0']}, dead on this sample {m['dead_fraction']:.3f}, "
          f"dead on the training tokens {sae.cfg.metadata['metrics']['train_dead_fraction']:.4f}")
    # TopK inference: each token keeps its k largest pre-activations, then ReLU; a token whose k-th largest
    # pre-activation is not positive has fewer than k active latents (5 of ~2,500 tokens here)
    z = sae.encode(heldout_tokens)
    pre = heldout_tokens @ sae.W_enc + sae.b_enc - sae.b_dec @ sae.W_enc
    n_pos = (pre > 0).sum(-1).clamp(max=sae.cfg.k)
    assert torch.equal((z > 0).sum(-1), n_pos)
    assert round(m["l0"]) == sae.cfg.k
    assert sae.cfg.metadata["metrics"]["train_dead_fraction"] <= SPEC_DEAD_FRACTION


def test_shipped_sae_meets_explained_variance_target(sae, heldout_tokens):
    assert sae_metrics(sae, heldout_tokens)["explained_variance"] >= SPEC_EXPLAINED_VARIANCE


# ----------------------------------------------------------------------------- training step parity


def test_sparse_training_step_equals_saelens_forward():
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    a = BatchTopKTrainingSAE(_training_cfg(32, 128, 4, None))
    b = BatchTopKTrainingSAE(_training_cfg(32, 128, 4, None))
    with torch.no_grad():
        a.b_dec.normal_(0, 0.3)
        a.b_enc.normal_(0, 0.01)
    b.load_state_dict(a.state_dict())
    x = torch.randn(64, 32)
    dead = torch.rand(128) < 0.3
    out = a.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                 n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    loss, mse, _ = _batchtopk_step(b, x, dead)
    loss.backward()
    torch.testing.assert_close(loss, out.loss)
    torch.testing.assert_close(mse, out.losses["mse_loss"].detach())
    assert float(a.topk_threshold) == pytest.approx(float(b.topk_threshold))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- config validation


def _tiny_sae_dir(tmp_path, **cfg_edits):
    """A tiny TopK SAE (d_in 32, 64 latents, k = 8) saved as cfg.json + weights, then cfg.json edited."""
    import json

    from sae_lens import TopKSAE, TopKSAEConfig

    from anatomy.saes import save_sae

    cfg = TopKSAEConfig(d_in=32, d_sae=64, k=8)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    cfg.metadata.training_architecture = "batchtopk"
    torch.manual_seed(0)
    path = save_sae(TopKSAE(cfg), tmp_path / "sae", dtype=torch.float32)
    raw = json.loads((path / CFG_FILE).read_text())
    for key, value in cfg_edits.items():
        if value is None:
            raw.pop(key, None)
        elif key == "hook_name":
            raw["metadata"]["hook_name"] = value
        else:
            raw[key] = value
    (path / CFG_FILE).write_text(json.dumps(raw))
    return path


def test_load_sae_refuses_configs_the_weights_contradict_and_names_the_field(tmp_path):
    from anatomy.saes import SAEConfigError, load_sae

    assert load_sae(str(_tiny_sae_dir(tmp_path / "ok"))).cfg.k == 8
    with pytest.raises(SAEConfigError, match=r"cfg.json: field 'k' is missing; a topk SAE needs it"):
        load_sae(str(_tiny_sae_dir(tmp_path / "a", k=None)))
    with pytest.raises(SAEConfigError, match=r"field 'k' must be an integer in 1..d_sae \(64\), got -3"):
        load_sae(str(_tiny_sae_dir(tmp_path / "b", k=-3)))
    with pytest.raises(SAEConfigError, match=r"field 'architecture' is 'standard', but the SAE was trained as TopK"):
        load_sae(str(_tiny_sae_dir(tmp_path / "c", architecture="standard", k=None)))
    with pytest.raises(SAEConfigError, match=r"W_enc has shape \(32, 64\), but cfg.json says d_in = 32, d_sae = 128"):
        load_sae(str(_tiny_sae_dir(tmp_path / "d", d_sae=128)))
    path = _tiny_sae_dir(tmp_path / "e")
    from safetensors.torch import load_file, save_file

    w = load_file(str(path / WEIGHTS_FILE))
    w["W_dec"][3, 4] = float("nan")
    save_file(w, str(path / WEIGHTS_FILE))
    with pytest.raises(SAEConfigError, match=r"sae_weights.safetensors: weight 'W_dec' holds 1 NaN"):
        load_sae(str(path))


def test_sae_hook_at_a_layer_the_model_lacks_is_named(tmp_path):
    from test_features import tiny_lens

    from anatomy.saes import SAEConfigError, load_sae

    model, _ = tiny_lens()
    path = _tiny_sae_dir(tmp_path, hook_name="blocks.99.hook_resid_post")
    with pytest.raises(SAEConfigError, match=r"field 'hook_name': hook\(s\) \['blocks.99.hook_resid_post'\] are not "
                                             r"hooks of the model \(2 layers"):
        load_sae(str(path), model=model)
    sae = load_sae(str(path))  # without the model it loads; where it meets the model it is refused
    from anatomy.features import feature_summaries

    pair = {"id": "a", "prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": "No."}
    with pytest.raises(SAEConfigError, match="field 'hook_name'.*blocks.99"):
        feature_summaries(model, sae, [pair], progress=False)
