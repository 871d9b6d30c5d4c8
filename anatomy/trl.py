"""Shaped DPO on TRL: ``ShapedDPOTrainer`` and the shaped-dataset export ``export_shaped``.

Training at scale runs on TRL's ``DPOTrainer`` (accelerate, DeepSpeed, FSDP, PEFT,
logging). This module carries a plan's shaping of the learning signal there, so
that the same decisions (``TrainInputs`` from ``compile_plan``, or the same arrays
``train_dpo`` takes) train the same loss (METHOD §2)::

    L_i = -w_i · log σ(β·Δθ_i + offset_i)

How each piece goes into TRL:

- **Offsets** become shifted reference log-probs: ``ref_chosen' = ref_chosen −
  offset/β`` turns TRL's logit ``β·Δθ`` into ``β·Δθ + offset``. The reference is
  therefore always precomputed (``precompute_ref_log_probs=True``, forced), once,
  before the first update and without the policy hooks, as ``train_dpo`` does.
- **Token masks** zero TRL's ``completion_mask`` at the masked tokens, so they count
  in neither the policy nor the reference sums (the collator wraps TRL's own).
- **Weights** need the one override of the loss: with a ``weight`` column the
  per-pair sigmoid loss is recomputed from the same forward's per-token
  log-probs (no second forward) and averaged as ``Σ_i w_i·L_i / n`` over the
  batch (TRL's mean at ``w = 1``). TRL's own metrics are logged unchanged; its
  ``rewards/*`` include the offsets (they are read off the shifted reference).
- **Policy hooks** (preventative steering, ablation) are registered on the policy
  (a ``TransformerBridge``) for the duration of ``train()`` and removed after, also
  on an error.
- **Inoculation**: the policy sees ``policy_prompts``; the reference log-probs are
  computed on the original prompts (a ``ref_prompt`` column).
- **Supplied reference log-probs** (``ref_chosen_logps`` / ``ref_rejected_logps``
  columns, e.g. from ``export_shaped``) are kept: TRL 1.16's
  ``precompute_ref_log_probs=True`` would recompute them and concatenate a second
  copy (``_precompute_ref_logps``); the override here keeps the supplied ones.

Checked on TRL 1.16.0 (transformers 5.24, accelerate 1.15; CPU, one and two
processes). The override touches TRL's ``_prepare_dataset``, ``_precompute_ref_logps``,
``_set_signature_columns_if_needed`` and ``compute_loss`` and reads the fused LM
head's ``log_probs`` output, which TRL's DPOTrainer has from 1.15 on (1.14 and
older compute logits: refused at construction). TRL 1.15.0 has the same methods,
but its fused head needs Triton (a GPU), so it could not be run here; versions
other than 1.16.0 warn.

``export_shaped`` writes the same decisions as a TRL ``prompt`` / ``chosen`` /
``rejected`` dataset (jsonl, parquet or a Hugging Face dataset folder) with a
``weight`` column, the offsets folded into ``ref_chosen_logps`` /
``ref_rejected_logps``, token masks, and a manifest of what each decision changed.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trl import DPOTrainer

from .fingerprint import pairs_digest, weights_fingerprint
from .models import format_pair
from .logprobs import Hook, _check_hooks, _hooked, pair_logprobs
from .train import _per_pair

CHECKED_TRL = ("1.16.0",)
MIN_TRL = "1.15.0"  # the first DPOTrainer with the fused LM head (per-token log_probs in the forward's output)
SHAPING_COLUMNS = ("weight", "offset", "chosen_token_mask", "rejected_token_mask", "ref_prompt")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
FORMATS = ("jsonl", "parquet", "hf")
MANIFEST = "shaped_manifest.json"


# ----------------------------------------------------------------------------- shaping inputs


def _shaping(pairs, inputs, *, offsets, weights, token_masks, policy_prompts, policy_hooks) -> dict:
    """The shaping arrays aligned with the pairs they apply to: ``TrainInputs`` or the same keyword arrays."""
    given = {"offsets": offsets, "weights": weights, "token_masks": token_masks,
             "policy_prompts": policy_prompts, "policy_hooks": policy_hooks}
    if inputs is not None:
        clash = sorted(k for k, v in given.items() if v is not None)
        if clash:
            raise ValueError(f"pass the shaping either as inputs=TrainInputs or as keywords, not both ({clash})")
        given = {k: getattr(inputs, k, None) for k in given}
        by_id = {str(p["id"]): p for p in pairs}
        missing = [i for i in inputs.ids if str(i) not in by_id]
        if missing:
            raise ValueError(f"field 'ids': TrainInputs names pairs not in pairs, e.g. {missing[:3]} ({len(missing)})")
        pairs = [by_id[str(i)] for i in inputs.ids]
    else:
        pairs = [pairs[i] for i in range(len(pairs))]
    if not pairs:
        raise ValueError("no pairs to train on")
    ids = [str(p["id"]) for p in pairs]
    prompts = given["policy_prompts"]
    if prompts is not None and len(prompts) != len(ids):
        raise ValueError(f"field 'policy_prompts': {len(prompts)} prompts for {len(ids)} pairs; need one per pair")
    masks = given["token_masks"]
    if masks is not None and len(masks) != len(ids):
        raise ValueError(f"field 'token_masks': {len(masks)} entries for {len(ids)} pairs; need one per pair")
    return {
        "pairs": pairs, "ids": ids,
        "offsets": _per_pair(given["offsets"], "offsets", ids),
        "weights": _per_pair(given["weights"], "weights", ids, nonneg=True),
        "token_masks": masks, "policy_prompts": prompts, "policy_hooks": list(given["policy_hooks"] or []),
        "summary": dict(getattr(inputs, "summary", None) or {}),
    }


def _completion_mask(tokenizer, pid, side, prompt, text, mask) -> list[int]:
    """A 0/1 mask over the completion tokens TRL trains on (response + end-of-turn suffix)."""
    enc = format_pair(tokenizer, prompt, text)
    n_prompt, n_resp = sum(enc["prompt_mask"]), sum(enc["response_mask"])
    n_comp = len(enc["input_ids"]) - n_prompt
    if mask is None:
        return [1] * n_comp
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).reshape(-1)
    if len(m) not in (n_resp, n_comp):
        raise ValueError(f"pair {pid!r} field 'token_masks' ({side}): length {len(m)}, expected {n_resp} "
                         f"response tokens (or {n_comp} completion tokens including the end-of-turn suffix)")
    if not np.isin(m, (0, 1)).all():
        raise ValueError(f"pair {pid!r} field 'token_masks' ({side}): values must be 0/1 or bool")
    return [int(x) for x in m] + [1] * (n_comp - len(m))


def _rows(shaping: dict, tokenizer) -> list[dict]:
    """TRL conversational rows (``prompt`` messages, ``chosen`` / ``rejected`` assistant turns) + shaping columns."""
    rows = []
    for k, (pid, p) in enumerate(zip(shaping["ids"], shaping["pairs"])):
        row = {"id": pid, "prompt": list(p["prompt"]),
               "chosen": [{"role": "assistant", "content": p["chosen"]}],
               "rejected": [{"role": "assistant", "content": p["rejected"]}]}
        if shaping["policy_prompts"] is not None:
            policy_prompt = shaping["policy_prompts"][k]
            row["ref_prompt"] = row["prompt"]
            row["prompt"] = row["prompt"] if policy_prompt is None else list(policy_prompt)
        if shaping["weights"] is not None:
            row["weight"] = float(shaping["weights"][k])
        if shaping["offsets"] is not None:
            row["offset"] = float(shaping["offsets"][k])
        if shaping["token_masks"] is not None:
            pair_masks = shaping["token_masks"][k] or (None, None)
            if len(pair_masks) != 2:
                raise ValueError(f"pair {pid!r} field 'token_masks': need a (chosen_mask, rejected_mask) pair")
            for side, mask in zip(("chosen", "rejected"), pair_masks):
                row[f"{side}_token_mask"] = _completion_mask(tokenizer, pid, side, p["prompt"], p[side], mask)
        rows.append(row)
    return rows


def shaped_dataset(
    pairs: Sequence[dict],
    inputs=None,
    *,
    tokenizer,
    offsets=None,
    weights=None,
    token_masks=None,
    policy_prompts=None,
):
    """Pairs + shaping as the ``datasets.Dataset`` ``ShapedDPOTrainer`` trains on.

    Columns: ``id``, ``prompt`` (the messages the policy sees), ``chosen`` /
    ``rejected`` (one assistant message each), and where given ``weight``,
    ``offset``, ``chosen_token_mask`` / ``rejected_token_mask`` (0/1 over the
    completion tokens: response + end-of-turn suffix) and ``ref_prompt`` (the
    original prompt, for the reference, when ``policy_prompts`` differ).
    ``inputs`` is a ``TrainInputs``; its ``ids`` pick and order the pairs.
    """
    from datasets import Dataset

    shaping = _shaping(pairs, inputs, offsets=offsets, weights=weights, token_masks=token_masks,
                       policy_prompts=policy_prompts, policy_hooks=None)
    return Dataset.from_list(_rows(shaping, tokenizer))


# ----------------------------------------------------------------------------- the trainer


class _ShapedCollator:
    """TRL's preference collator, plus per-pair ``weight`` and the token masks folded into ``completion_mask``."""

    def __init__(self, inner, *, max_length: int | None, truncation_mode: str):
        self.inner, self.max_length, self.truncation_mode = inner, max_length, truncation_mode

    def __call__(self, examples: list[dict]) -> dict:
        out = self.inner(examples)
        if "chosen_token_mask" in examples[0]:
            width = out["completion_mask"].shape[1]
            rows = []
            for side in ("chosen", "rejected"):
                for ex in examples:
                    m = [1] * len(ex["prompt_ids"]) + list(ex[f"{side}_token_mask"])
                    if len(m) != len(ex["prompt_ids"]) + len(ex[f"{side}_ids"]):
                        raise ValueError(f"pair {ex.get('id')!r} field '{side}_token_mask': length "
                                         f"{len(ex[f'{side}_token_mask'])}, the completion has "
                                         f"{len(ex[f'{side}_ids'])} tokens")
                    if self.max_length is not None:
                        m = m[: self.max_length] if self.truncation_mode == "keep_start" else m[-self.max_length:]
                    rows.append(m + [0] * (width - len(m)))
            keep = torch.tensor(rows, dtype=out["completion_mask"].dtype)
            out["completion_mask"] = out["completion_mask"] * keep
        if "weight" in examples[0]:
            out["weight"] = torch.tensor([float(ex["weight"]) for ex in examples], dtype=torch.float32)
        return out


@contextmanager
def _capture_log_probs(module):
    """Record the per-token ``log_probs`` of the fused-LM-head forwards of ``module`` (hook removed on exit)."""
    seen: list[torch.Tensor] = []

    def keep(_mod, _args, output):
        lp = getattr(output, "log_probs", None)
        if lp is not None:
            seen.append(lp)

    handle = module.register_forward_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


class ShapedDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with per-pair offsets, weights, token masks, policy hooks and prompts.

    Args:
        model: a Hugging Face causal LM, or a ``TransformerBridge`` (``load_model``;
            needed for ``policy_hooks``), whose Hugging Face model TRL then trains.
        ref_model: the reference model; ``None`` means the initial policy (TRL's
            default). Its log-probs are precomputed once, before training.
        args: a ``trl.DPOConfig``; ``precompute_ref_log_probs`` is set to True on a copy.
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``, shaped
            by ``inputs`` or the keyword arrays below; or else
        train_dataset: a dataset already in the ``shaped_dataset`` / ``export_shaped``
            columns (``prompt``, ``chosen``, ``rejected`` + optional ``weight``,
            ``offset``, ``*_token_mask``, ``ref_prompt``, ``ref_*_logps``).
        inputs: a ``TrainInputs`` (``compile_plan``): ids, offsets, weights,
            token_masks, policy_hooks, policy_prompts.
        offsets, weights, token_masks, policy_hooks, policy_prompts: the same, as
            ``train_dpo`` takes them (when there is no ``TrainInputs``).
        **kwargs: the other ``DPOTrainer`` arguments (eval_dataset, callbacks,
            optimizers, peft_config, ...).

    Raises:
        ValueError: shaping that does not fit the pairs (naming the pair and the
            field), unknown hook names, both ``pairs`` and ``train_dataset``.
        NotImplementedError: weights with a loss other than plain sigmoid DPO.
    """

    def __init__(self, model, ref_model=None, args=None, *, pairs=None, train_dataset=None, inputs=None,
                 offsets=None, weights=None, token_masks=None, policy_hooks: Sequence[Hook] | None = None,
                 policy_prompts=None, processing_class=None, **kwargs):
        import trl

        from packaging.version import Version

        if Version(trl.__version__) < Version(MIN_TRL):
            raise ImportError(f"ShapedDPOTrainer needs TRL >= {MIN_TRL} (its DPOTrainer's fused LM head returns the "
                              f"per-token log-probs the weighted loss reads); this is TRL {trl.__version__}")
        if trl.__version__ not in CHECKED_TRL:
            warnings.warn(f"ShapedDPOTrainer was checked on TRL {', '.join(CHECKED_TRL)}; this is {trl.__version__}",
                          stacklevel=2)
        bridge = model if hasattr(model, "original_model") and hasattr(model, "hooks") else None
        if bridge is not None:
            model = bridge.original_model
            processing_class = processing_class or bridge.tokenizer
        if (pairs is None) == (train_dataset is None):
            raise ValueError("pass exactly one of pairs= (with the shaping) or train_dataset= (shaping columns)")
        if pairs is not None:
            if processing_class is None:
                raise ValueError("pairs= needs processing_class= (the tokenizer) or a TransformerBridge model")
            shaping = _shaping(pairs, inputs, offsets=offsets, weights=weights, token_masks=token_masks,
                               policy_prompts=policy_prompts, policy_hooks=policy_hooks)
            from datasets import Dataset

            train_dataset = Dataset.from_list(_rows(shaping, processing_class))
            policy_hooks = shaping["policy_hooks"]
        elif any(v is not None for v in (inputs, offsets, weights, token_masks, policy_prompts)):
            raise ValueError("with train_dataset=, the shaping comes from its columns; pass pairs= to shape here")
        self._bridge = bridge
        self._policy_hooks = _check_hooks(bridge, policy_hooks, "policy_hooks")
        if args is None:
            args = trl.DPOConfig(output_dir="shaped-dpo", report_to="none")
        args = copy.copy(args)
        args.precompute_ref_log_probs = True  # the reference once, before any update and without the hooks
        self._check_loss(args, "weight" in train_dataset.column_names)
        super().__init__(model, ref_model=ref_model, args=args, train_dataset=train_dataset,
                         processing_class=processing_class, **kwargs)
        if self.aux_loss_enabled and "weight" in train_dataset.column_names:
            raise NotImplementedError("per-pair weights with a MoE auxiliary loss: set router_aux_loss_coef=0.0")

    @staticmethod
    def _check_loss(args, weighted: bool) -> None:
        if not weighted:
            return
        loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
        unsupported = {
            "loss_type": loss_types != ["sigmoid"], "ld_alpha": args.ld_alpha is not None,
            "f_divergence_type": str(getattr(args.f_divergence_type, "value", args.f_divergence_type)) != "reverse_kl",
            "use_weighting": bool(args.use_weighting), "router_aux_loss_coef": bool(args.router_aux_loss_coef),
        }
        bad = sorted(k for k, v in unsupported.items() if v)
        if bad:
            raise NotImplementedError(f"per-pair weights are implemented for plain sigmoid DPO only; unset {bad}")

    # -- data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if "ref_prompt" not in dataset.column_names or "ref_prompt_ids" in dataset.column_names:
            return dataset
        # the reference's tokens: the original prompt before the same completions
        ref = dataset.select_columns(["ref_prompt", "chosen", "rejected"]).rename_column("ref_prompt", "prompt")
        ref = super()._prepare_dataset(ref, processing_class, args, f"{dataset_name} (reference prompts)")
        names = dataset["id"] if "id" in dataset.column_names else list(range(len(dataset)))
        for side in ("chosen", "rejected"):
            for pid, a, b in zip(names, ref[f"{side}_ids"], dataset[f"{side}_ids"]):
                if a != b:
                    raise ValueError(f"pair {pid!r} field 'policy_prompts': the {side} completion tokenises "
                                     "differently after the policy prompt than after the original prompt")
        return dataset.add_column("ref_prompt_ids", ref["prompt_ids"])

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in ("id", "weight", "chosen_token_mask", "rejected_token_mask")
                 if c not in self._signature_columns]
        self._signature_columns = list(self._signature_columns) + extra

    def _wrap_collator(self) -> None:
        if not isinstance(self.data_collator, _ShapedCollator):
            self.data_collator = _ShapedCollator(self.data_collator, max_length=self.args.max_length,
                                                 truncation_mode=self.args.truncation_mode)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """Supplied reference log-probs are kept; else they are computed (TRL's ``compute_ref_log_probs`` on the
        reference prompts, with the token masks); then the offsets are folded in: ``ref_chosen' = ref_chosen −
        offset/β``. The columns are added in memory on every process (no cache file to share between ranks)."""
        self._wrap_collator()
        cols = dataset.column_names
        if not all(c in cols for c in REF_COLUMNS):
            keep = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_token_mask", "rejected_token_mask")
                    if c in cols]
            view = dataset
            if "ref_prompt_ids" in cols:
                view = view.remove_columns("prompt_ids").rename_column("ref_prompt_ids", "prompt_ids")
            chosen, rejected = self._reference_logps(view.select_columns(keep), name, batch_size)
            dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in cols])
            dataset = dataset.add_column("ref_chosen_logps", chosen.tolist())
            dataset = dataset.add_column("ref_rejected_logps", rejected.tolist())
        if "offset" in dataset.column_names:
            off = np.asarray(dataset["offset"], dtype=np.float64)
            shifted = np.asarray(dataset["ref_chosen_logps"], dtype=np.float64) - off / self.beta
            dataset = dataset.remove_columns(["offset", "ref_chosen_logps"])
            dataset = dataset.add_column("ref_chosen_logps", shifted.tolist())
        return dataset

    def _reference_logps(self, dataset, name, batch_size) -> tuple[np.ndarray, np.ndarray]:
        """TRL's reference pass (``compute_ref_log_probs`` on accelerate-sharded batches, gathered in order)."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                                                     num_workers=self.args.dataloader_num_workers, shuffle=False))
        if self.ref_model is None and self.is_deepspeed_enabled:  # as TRL: one inference engine, reused
            from trl.models import prepare_deepspeed

            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        for batch in tqdm(loader, desc=f"reference log-probs ({name})", disable=quiet):
            c, r = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(c.detach().double().cpu())
            rejected.append(r.detach().double().cpu())
        return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()

    # -- loss and training

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight", None)
        if weight is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with _capture_log_probs(self.accelerator.unwrap_model(model)) as seen:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if len(seen) != 1:
            raise RuntimeError(f"expected one policy forward with a fused LM head, saw {len(seen)}")
        shift_mask = inputs["completion_mask"][:, 1:]
        logps = (seen[0][:, -shift_mask.shape[1]:] * shift_mask).sum(1)
        chosen, rejected = logps.chunk(2, dim=0)
        z = self.beta * ((chosen - inputs["ref_chosen_logps"]) - (rejected - inputs["ref_rejected_logps"]))
        loss = (-F.logsigmoid(z) * weight.to(z.device, z.dtype)).mean()
        return (loss, result[1]) if return_outputs else loss

    def train(self, *args, **kwargs):
        """TRL's ``train`` with the policy hooks on the policy throughout (removed after, also on an error)."""
        with _hooked(self._bridge, self._policy_hooks):
            return super().train(*args, **kwargs)


# ----------------------------------------------------------------------------- export


def _manifest_path(path: Path, fmt: str) -> Path:
    return path / MANIFEST if fmt == "hf" else path.with_name(path.name + ".manifest.json")


def _counts(shaping: dict, rows: list[dict], kept: list[int]) -> dict:
    """What each kind of decision changed, with counts (on the pairs kept)."""
    out: dict[str, Any] = {}
    off, w = shaping["offsets"], shaping["weights"]
    if off is not None:
        o = off[kept]
        out["offsets"] = {"n_nonzero": int((o != 0).sum()), "min": float(o.min(initial=0)),
                          "max": float(o.max(initial=0)), "mean": float(o.mean()) if len(o) else 0.0}
    if w is not None:
        k = w[kept]
        out["weights"] = {"n_not_one": int((k != 1).sum()), "min": float(k.min(initial=1)),
                          "max": float(k.max(initial=1)), "mean": float(k.mean()) if len(k) else 0.0}
    if shaping["token_masks"] is not None:
        masked = {side: [len(rows[i][f"{side}_token_mask"]) - sum(rows[i][f"{side}_token_mask"]) for i in kept]
                  for side in ("chosen", "rejected")}
        out["token_masks"] = {"n_pairs": int(sum(c + r > 0 for c, r in zip(masked["chosen"], masked["rejected"]))),
                              "n_tokens_masked_chosen": int(sum(masked["chosen"])),
                              "n_tokens_masked_rejected": int(sum(masked["rejected"]))}
    if shaping["policy_prompts"] is not None:
        changed = sum(rows[i]["prompt"] != rows[i]["ref_prompt"] for i in kept)
        out["policy_prompts"] = {"n_changed": int(changed)}
    return out


def export_shaped(
    pairs: Sequence[dict],
    plan_inputs,
    path: str | Path,
    *,
    format: str = "jsonl",
    model=None,
    tokenizer=None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write the shaped pairs as a TRL preference dataset, with a manifest; returns the manifest.

    The dataset has TRL's conversational ``prompt`` / ``chosen`` / ``rejected``
    columns (the prompt the policy sees), ``id``, a ``weight`` column, the token
    masks as ``chosen_token_mask`` / ``rejected_token_mask`` (0/1 over the
    completion tokens) and, with ``model`` or ``ref_logps``, the reference
    log-probs with the offsets folded in: ``ref_chosen_logps = ref_chosen −
    offset/β`` and ``ref_rejected_logps``, so that TRL's margin is ``β·Δθ +
    offset`` (train with the same β). Filtered pairs (not in ``plan_inputs.ids``,
    or weight 0) are removed. Without a reference, offsets stay in an ``offset``
    column that ``ShapedDPOTrainer`` folds after computing the reference (plain
    ``DPOTrainer`` drops it), and policy prompts keep the original in ``ref_prompt``.

    ``DPOTrainer`` with ``precompute_ref_log_probs=True`` recomputes the reference
    and adds a second copy of these columns (TRL 1.16): train the export with
    ``ShapedDPOTrainer(model, args, train_dataset=load_shaped(path))``, which keeps
    them, reads ``weight`` and applies the masks.

    Args:
        pairs: rows with ``id``, ``prompt`` (messages), ``chosen``, ``rejected``.
        plan_inputs: a ``TrainInputs`` (``compile_plan``), or ``None`` for no shaping.
        path: a ``.jsonl`` / ``.parquet`` file, or a folder for ``format="hf"``
            (``datasets.Dataset.save_to_disk``). The manifest goes beside a file
            (``<path>.manifest.json``) or into the folder (``shaped_manifest.json``).
        model: the reference model (a bridge, or a Hugging Face model + ``tokenizer``)
            to compute the reference log-probs with (on the original prompts, with
            the token masks).
        ref_logps: ``Tensor[n, 2]`` reference log-probs of the plan's pairs, in its
            ``ids`` order, computed earlier with the same masks (instead of ``model``).
        beta: the DPO β the offsets are folded with (the training run's β).

    Raises:
        ValueError: shaping that does not fit the pairs (naming pair and field),
            an unknown format, ``ref_logps`` of the wrong shape.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not (beta > 0 and np.isfinite(beta)):
        raise ValueError(f"beta must be a positive number, got {beta}")
    path = Path(path)
    manifest_path = _manifest_path(path, format)
    if not overwrite and (path.exists() or manifest_path.exists()):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if model is not None and hasattr(model, "original_model"):
        tokenizer = tokenizer or model.tokenizer
    shaping = _shaping(pairs, plan_inputs, offsets=None, weights=None, token_masks=None, policy_prompts=None,
                       policy_hooks=None)
    if shaping["token_masks"] is not None and tokenizer is None:
        raise ValueError("token masks need tokenizer= (or a TransformerBridge model) to align them with TRL's tokens")
    n = len(shaping["ids"])
    ref, ref_source = None, None
    if ref_logps is not None:
        ref = torch.as_tensor(ref_logps, dtype=torch.float64).cpu()
        if ref.shape != (n, 2) or not torch.isfinite(ref).all():
            raise ValueError(f"field 'ref_logps': need finite Tensor[{n}, 2] in the plan's ids order, "
                             f"got shape {tuple(ref.shape)}")
        ref_source = {"source": "supplied"}
    elif model is not None:
        ref = pair_logprobs(model, shaping["pairs"], batch_size=batch_size, token_masks=shaping["token_masks"],
                            tokenizer=tokenizer, progress=progress)
        hf = getattr(model, "original_model", model)
        ref_source = {"source": "computed", "model": getattr(hf.config, "name_or_path", None) or type(hf).__name__,
                      "weights_fingerprint": weights_fingerprint(hf)}
    rows = _rows(shaping, tokenizer)
    off = shaping["offsets"] if shaping["offsets"] is not None else np.zeros(n)
    for k, row in enumerate(rows):
        row.setdefault("weight", 1.0)
        if ref is not None:
            row["ref_chosen_logps"] = float(ref[k, 0]) - float(off[k]) / beta
            row["ref_rejected_logps"] = float(ref[k, 1])
            row.pop("offset", None)
            row.pop("ref_prompt", None)
    weights = np.array([r["weight"] for r in rows])
    kept = [k for k in range(n) if weights[k] > 0]
    removed_zero = [shaping["ids"][k] for k in range(n) if weights[k] == 0]
    in_plan = set(shaping["ids"])
    not_in_plan = [str(p["id"]) for p in (pairs[i] for i in range(len(pairs))) if str(p["id"]) not in in_plan]
    out_rows = [rows[k] for k in kept]
    if not out_rows:
        raise ValueError("every pair is filtered out (weight 0 or not in the plan): nothing to export")

    manifest = {
        "format": format, "path": str(path), "beta": beta,
        "n_pairs_in": len(pairs), "n_pairs_out": len(out_rows),
        "removed": {"not_in_plan": len(not_in_plan), "weight_zero": len(removed_zero),
                    "ids": (not_in_plan + removed_zero)[:50]},
        "columns": list(out_rows[0]),
        "reference": ref_source or {"source": "none",
                                    "note": "no reference log-probs: offsets (if any) are in the 'offset' column, "
                                            "which ShapedDPOTrainer folds and DPOTrainer ignores"},
        "changed": _counts(shaping, rows, kept),
        "policy_hooks": {"names": [name for name, _ in shaping["policy_hooks"]],
                         "note": "hooks are not data: pass them to ShapedDPOTrainer(policy_hooks=...)"},
        "decisions": shaping["summary"],
        "pairs_digest": pairs_digest(shaping["pairs"]),
        "trl_checked": list(CHECKED_TRL),
    }
    _write_rows(out_rows, path, format)
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(manifest_path)
    return manifest


def _write_rows(rows: list[dict], path: Path, fmt: str) -> None:
    """Write atomically: a temporary file (or folder) beside ``path``, renamed into place."""
    import shutil

    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    elif fmt == "parquet":
        Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        if tmp.exists():
            shutil.rmtree(tmp)
        Dataset.from_list(rows).save_to_disk(str(tmp))
    if path.is_dir():
        shutil.rmtree(path)
    tmp.replace(path)


def load_shaped(path: str | Path):
    """Read an ``export_shaped`` dataset (jsonl, parquet or a ``save_to_disk`` folder) as a ``datasets.Dataset``."""
    from datasets import Dataset, load_from_disk

    path = Path(path)
    if path.is_dir():
        return load_from_disk(str(path))
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    return Dataset.from_json(str(path))
