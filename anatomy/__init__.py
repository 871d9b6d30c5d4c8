"""anatomy: audit preference data through the model that will be trained, then shape DPO.

Stages (one module each): ``models`` (load the model, format pairs), ``data``
(load and validate preference pairs), ``cache`` (pooled / streamed activations),
``concepts`` (text-level concept annotators), ``organism`` (the embedded dataset),
``probes`` (difference-of-means directions and linear probes), ``contrast``
(paired statistics of chosen vs rejected concept scores), ``saes`` (the SAE lens:
training, per-span feature summaries, concept clusters, offline labels), ``viz``.
"""

from .cache import PairActivations, cache_pairs, load_pair_activations, stream_pair_activations
from .contrast import paired_stats, plot_hypotheses, plot_volcano, preference_regression
from .saes import (
    PairFeatures,
    cluster_features,
    cluster_scores,
    feature_summaries,
    label_clusters,
    label_features,
    load_sae,
    sae_metrics,
    train_sae,
)
from .data import PreferenceDataError, load_eval_prompts, load_preferences, load_prompts_csv
from .models import format_pair, format_prompt, load_hf_model, load_model, load_tokenizer
from .probes import (
    Direction,
    Probe,
    contrastive_prompt_direction,
    diff_of_means,
    direction_from_labels,
    evaluate_direction,
    fit_probe,
    heldout_auroc,
    last_token_activations,
    project,
    project_spans,
    refusal_direction,
)

__all__ = [
    "PairFeatures",
    "cluster_features",
    "cluster_scores",
    "feature_summaries",
    "label_clusters",
    "label_features",
    "load_sae",
    "sae_metrics",
    "train_sae",
    "paired_stats",
    "plot_hypotheses",
    "plot_volcano",
    "preference_regression",
    "Direction",
    "Probe",
    "contrastive_prompt_direction",
    "diff_of_means",
    "direction_from_labels",
    "evaluate_direction",
    "fit_probe",
    "heldout_auroc",
    "last_token_activations",
    "project",
    "project_spans",
    "refusal_direction",
    "PairActivations",
    "PreferenceDataError",
    "cache_pairs",
    "format_pair",
    "format_prompt",
    "load_eval_prompts",
    "load_hf_model",
    "load_model",
    "load_pair_activations",
    "load_preferences",
    "load_prompts_csv",
    "load_tokenizer",
    "stream_pair_activations",
]
__version__ = "0.1.0"
