"""anatomy: audit preference data through the model that will be trained, then shape DPO.

Stages (one module each): ``models`` (load the model, format pairs), ``data``
(load and validate preference pairs), ``cache`` (pooled / streamed activations),
``concepts`` (text-level concept annotators), ``organism`` (the embedded dataset),
``probes`` (difference-of-means directions and linear probes), ``saes`` (the SAE
lens: load, train, measure), ``features`` (per-span feature summaries, concept
clusters, offline labels),
``contrast`` (paired statistics of chosen vs rejected concept scores), ``hypotheses``
(the global and prompt-conditioned views, ranked), ``diagnose`` (the whole audit in one call),
``report`` (the audit as one offline HTML file), ``interventions`` (a Plan of
per-concept decisions compiled into the shaping of DPO), ``train`` (shaped DPO; its log-prob
engine in ``logprobs``, run directories and LoRA in ``checkpoints``), ``evals``
(rollouts and their scores), ``predict`` (predicted vs observed shift), ``review`` (the inline app in which a person
turns ranked hypotheses into a Plan), ``viz`` (offline figures, highlighted examples, inline browsers).

Names are imported lazily (PEP 562), so ``import anatomy`` is fast and a stage's
heavy dependencies (torch, transformers, sae_lens) load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "trl": ["ShapedDPOTrainer", "export_shaped", "load_shaped", "shaped_dataset"],
    "cache": ["CacheError", "PairActivations", "cache_pairs", "load_pair_activations", "stream_pair_activations"],
    "contrast": ["paired_stats", "plot_hypotheses", "plot_volcano", "preference_regression"],
    "evals": ["annotator_scorer", "direction_scorer", "distinct_n", "measure", "perplexity", "repetition_rate",
              "rollouts", "sae_scorer", "diagnosis_scorer",
              "RefusalRule", "calibrate_refusal", "capability", "harmful_compliance", "load_capability_set",
              "option_logprobs", "over_refusal", "refusal_scorer", "refusal_split", "response_refusal_direction",
              "xstest_labels"],
    "hypotheses": ["data_clusters", "global_hypotheses", "hypotheses_table", "length_gap", "prompt_clusters",
                   "prompt_conditioned_hypotheses", "rank_hypotheses", "signed_disparity", "symmetric_activity",
                   "token_feature_scores"],
    "report": ["write_report"],
    "viz": ["examples_html", "feature_browser", "figure_html", "highlight_tokens", "hypothesis_browser", "save_figure",
            "show_examples"],
    "concepts": ["annotate"],
    "diagnose": ["DiagnoseConfig", "DiagnoseError", "Diagnosis", "diagnose"],
    "organism": ["score_diagnosis"],
    "predict": ["compare", "observed_shift", "predict_shift", "predict_shift_from_features", "recovery"],
    "review": ["ReviewApp", "review"],
    "interventions": ["ConceptRef", "Decision", "METHODS", "Plan", "TrainInputs", "compile_plan", "concept_scores",
                      "concept_spans", "concept_vector"],
    "train": ["TrainConfig", "TrainResult", "dpo_loss", "train_dpo"],
    "logprobs": ["pair_logprobs", "preference_margins", "sequence_logprobs"],
    "checkpoints": ["load_train_run"],
    "data": ["PreferenceDataError", "load_eval_prompts", "load_preferences", "load_prompts_csv", "sample_pairs"],
    "models": ["format_pair", "format_prompt", "generation_model", "load_hf_model", "load_model", "load_tokenizer"],
    "probes": ["Direction", "Probe", "annotator_directions", "auroc", "cluster_directions",
               "contrastive_prompt_direction", "decoder_directions", "diff_of_means", "direction_from_labels",
               "evaluate_direction", "fit_probe", "heldout_auroc", "last_token_activations", "project",
               "project_spans", "refusal_direction"],
    "saes": ["collect_activations", "load_sae", "sae_metrics", "train_sae"],
    "fingerprint": ["pairs_digest", "weights_fingerprint"],
    "features": ["PairFeatures", "cluster_features", "cluster_features_sweep", "cluster_scores", "feature_summaries",
                 "load_pair_features",
                 "gate_weak_firing", "label_clusters", "label_features"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'anatomy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
