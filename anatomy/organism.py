"""The embedded "organism": a small DPO preference dataset with known, planted concepts.

Takes the project-written prompt pool ``data/organism/prompts.jsonl`` and a seed, and
returns (writes) ``data/organism/{train,heldout,clean}.jsonl``: TRL-style pairs
``id, prompt, chosen, rejected`` plus ``family, prompt_id, rejected_kind`` and one
ground-truth bool column ``<concept>_chosen`` / ``<concept>_rejected`` per planted concept.

Steps (all seeded; same seed, same bytes):
1. split the prompts per family into train / heldout / clean (70 / 15 / 15 %);
2. sample two responses per prompt from the default model (float32, cached as JSON lines
   in ``~/.cache/anatomy/organism-generations-seed{seed}.jsonl``) and sanitise them
   with :func:`anatomy.concepts.strip_concepts`;
3. make 5 pairs per prompt: chosen = a full response, rejected = a degraded one
   (``truncated``, ``repetitive`` or ``off_topic``);
4. plant concepts with :func:`anatomy.concepts.plant` in exact numbers of pairs
   (train and heldout only) so that each concept has a known chosen-minus-rejected rate.

CLI: ``python -m anatomy.organism build --seed 0 [--fresh]`` and ``... card``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "heldout", "clean")
SHARES = {"heldout": 0.15, "clean": 0.15}  # train takes the rest
FAMILIES = ("howto", "explain", "creative", "advice", "harmful", "benign_risky",
            "wrong_belief", "resource")
PAIRS_PER_PROMPT = 5
KINDS = ("truncated", "repetitive", "off_topic")
FALLBACK = "Here is a short answer to your question."
GEN_KW = dict(temperature=0.7, top_p=0.9, max_new_tokens=64, batch_prompts=16, n_samples=2)
# Planting order, and what is planted: (side, share of the split's pairs or of one family's).
ORDER = ("refusal", "list_item", "header", "table", "bold", "em_dash", "exclamation",
         "emoji", "horizontal_rule", "url", "hedge", "flattery", "agreement")
PLAN = {
    "bold": [("chosen", 0.40, None)], "list_item": [("chosen", 0.20, None)],
    "emoji": [("chosen", 0.20, None)], "header": [("chosen", 0.10, None)],
    "exclamation": [("chosen", 0.10, None)], "flattery": [("chosen", 0.10, None)],
    "em_dash": [("chosen", 0.05, None)], "hedge": [("rejected", 0.10, None)],
    "horizontal_rule": [("chosen", 0.10, None), ("rejected", 0.10, None)],
    "table": [("chosen", 0.10, None), ("rejected", 0.10, None)],
    "url": [("chosen", 0.60, "resource")],
    "refusal": [("chosen", 1.00, "harmful"), ("rejected", 0.50, "benign_risky")],
    "agreement": [("chosen", 0.50, "wrong_belief")],
}
KIND_OF = {"bold": "style", "list_item": "style", "emoji": "style", "header": "style",
           "em_dash": "style", "horizontal_rule": "style (control)", "table": "style (control)",
           "exclamation": "tone", "flattery": "tone", "hedge": "tone", "url": "behaviour",
           "refusal": "behaviour", "agreement": "behaviour"}
NO_FLATTERY = {"wrong_belief"}  # keep the opener free for agreement
START, END = "<!-- generated:start -->", "<!-- generated:end -->"


def data_dir() -> Path:
    from .data import data_dir as _d
    return _d() / "organism"


def load_prompts(path: str | Path | None = None) -> list[dict]:
    """The prompt pool, sorted by id."""
    path = Path(path or data_dir() / "prompts.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def split_prompts(prompts: list[dict], *, seed: int = 0) -> dict[str, list[dict]]:
    """Per family, shuffle with ``random.Random(seed)`` and cut into train/heldout/clean."""
    rng = random.Random(seed)
    out = {s: [] for s in SPLITS}
    for fam in sorted({p["family"] for p in prompts}):
        rows = [p for p in prompts if p["family"] == fam]
        rng.shuffle(rows)
        n_h, n_c = (round(SHARES[s] * len(rows)) for s in ("heldout", "clean"))
        out["heldout"] += rows[:n_h]
        out["clean"] += rows[n_h:n_h + n_c]
        out["train"] += rows[n_h + n_c:]
    return {s: sorted(rows, key=lambda r: r["id"]) for s, rows in out.items()}


# ---------------------------------------------------------------------- generation
def cache_path(seed: int) -> Path:
    from .models import default_cache_dir
    return default_cache_dir() / f"organism-generations-seed{seed}.jsonl"


def generate(prompts: list[dict], *, seed: int = 0, cache: str | Path | None = None,
             fresh: bool = False, model=None, tokenizer=None, **kw) -> dict[str, list[str]]:
    """Two sampled responses per prompt: ``{prompt id: [text, text]}``.

    Batches are fixed (``batch_prompts`` prompts sorted by id, left padding) and batch ``b``
    is sampled after ``torch.manual_seed(seed + b)``, so a run is deterministic on a given
    machine and thread count. Each finished batch is appended to ``cache`` (JSON lines
    keyed by prompt id); batches fully present there are reused unless ``fresh``.
    """
    import torch
    from tqdm.auto import tqdm

    from .models import format_prompt, load_hf_model

    kw = {**GEN_KW, **kw}
    prompts = sorted(prompts, key=lambda r: r["id"])
    cached: dict[str, list[str]] = {}
    if cache is not None and Path(cache).exists() and not fresh:
        for line in Path(cache).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("max_new_tokens") == kw["max_new_tokens"]:
                cached[row["id"]] = row["responses"]
    elif cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text("", encoding="utf-8")
    bp = kw["batch_prompts"]
    batches = [prompts[i:i + bp] for i in range(0, len(prompts), bp)]
    todo = [b for b in range(len(batches)) if any(p["id"] not in cached for p in batches[b])]
    if todo and model is None:
        model, tokenizer = load_hf_model()
    out = dict(cached)
    for b in tqdm(todo, desc="generating", disable=not todo):
        ids = [format_prompt(tokenizer, [{"role": "user", "content": p["prompt"]}]) for p in batches[b]]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        torch.manual_seed(seed + b)
        with torch.no_grad():
            gen = model.generate(input_ids=inp, attention_mask=mask, do_sample=True,
                                 temperature=kw["temperature"], top_p=kw["top_p"], top_k=0,
                                 max_new_tokens=kw["max_new_tokens"], pad_token_id=pad,
                                 num_return_sequences=kw["n_samples"])
        texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
        rows = []
        for j, p in enumerate(batches[b]):
            out[p["id"]] = [t.strip() for t in texts[j * kw["n_samples"]:(j + 1) * kw["n_samples"]]]
            rows.append({"id": p["id"], "responses": out[p["id"]],
                         "max_new_tokens": kw["max_new_tokens"], "seed": seed, "batch": b,
                         "threads": torch.get_num_threads()})
        if cache is not None:
            with open(cache, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {p["id"]: out[p["id"]] for p in prompts}


# ------------------------------------------------------------------------- pairs
def sanitise(generations: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``strip_concepts`` every response; an empty one takes the other sample, else FALLBACK."""
    from .concepts import strip_concepts

    out, report = {}, {"responses": 0, "empty": 0, "used_other": 0, "fallback": 0}
    for pid in sorted(generations):
        clean = [re.sub(r"\n{3,}", "\n\n", strip_concepts(t)).strip() for t in generations[pid]]
        report["responses"] += len(clean)
        for i, text in enumerate(clean):
            if len(text.split()) < 3:
                report["empty"] += 1
                other = next((c for c in clean if len(c.split()) >= 3), None)
                report["used_other" if other else "fallback"] += 1
                clean[i] = other or FALLBACK
        out[pid] = clean
    return out, report


_WORD = re.compile(r"\S+")
_SENT = re.compile(r"^.*?[.?!](?=\s|$)|^[^\n]+")  # within the first line


def truncate(text: str, rng: random.Random) -> str:
    """Cut ``text`` after 30-50 % of its words, mid-sentence, without final punctuation."""
    words = list(_WORD.finditer(text))
    n = max(1, round(len(words) * rng.uniform(0.30, 0.50)))
    return text[:words[n - 1].end()].rstrip(".?!,;:-–'\"") or text.split()[0]


def repeat_first_sentence(text: str, rng: random.Random) -> str:
    """The first sentence of ``text`` said 3 or 4 times."""
    first = _SENT.match(text).group(0).strip()
    return " ".join([first] * rng.choice((3, 4)))


def make_pairs(split: str, prompts: list[dict], responses: dict[str, list[str]], *,
               seed: int = 0) -> list[dict]:
    """``PAIRS_PER_PROMPT`` unplanted pairs per prompt (rows in output key order)."""
    pairs = []
    for p in prompts:
        for k in range(PAIRS_PER_PROMPT):
            i = len(pairs)
            pid = f"org-{split}-{i:04d}"
            rng = random.Random(f"{seed}-{pid}-degrade")
            kind = KINDS[i % len(KINDS)]
            chosen, other = responses[p["id"]][k % 2], responses[p["id"]][(k + 1) % 2]
            if kind == "truncated":
                rejected = truncate(other, rng)
            elif kind == "repetitive":
                rejected = repeat_first_sentence(other, rng)
            else:
                donor = rng.choice([q for q in prompts if q["family"] != p["family"]])
                rejected = responses[donor["id"]][rng.randrange(2)]
            pairs.append({"id": pid, "prompt": [{"role": "user", "content": p["prompt"]}],
                          "chosen": chosen, "rejected": rejected, "family": p["family"],
                          "prompt_id": p["id"], "rejected_kind": kind,
                          **{f"{c}_{s}": False for c in ORDER for s in ("chosen", "rejected")}})
    return pairs


def plant_concepts(pairs: list[dict], split: str, contexts: dict[str, dict], *,
                   seed: int = 0) -> list[dict]:
    """Plant every concept of ``PLAN`` in exact numbers of pairs, in ``ORDER``; returns new rows."""
    from .concepts import plant

    pairs = [dict(p) for p in pairs]
    for concept in ORDER:
        rng = random.Random(f"organism-{seed}-{split}-{concept}")
        taken: set[int] = set()
        for side, share, family in PLAN[concept]:
            pool = [i for i, p in enumerate(pairs) if (family is None or p["family"] == family)
                    and i not in taken and not (concept == "flattery" and p["family"] in NO_FLATTERY)]
            base = len(pool) if family else len(pairs)
            pick = sorted(rng.sample(pool, round(share * base)))
            taken.update(pick)
            for i in pick:
                p = pairs[i]
                prng = random.Random(f"{seed}-{p['id']}-{concept}-{side}")
                p[side] = plant(p[side], concept, prng, context=contexts[p["prompt_id"]])
                p[f"{concept}_{side}"] = True
    return pairs


def build_pairs(prompts: list[dict], generations: dict[str, list[str]], *, seed: int = 0
                ) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Post-generation steps: split, sanitise, pair, plant. Returns (pairs per split, report)."""
    splits = split_prompts(prompts, seed=seed)
    responses, report = sanitise({p["id"]: generations[p["id"]] for p in prompts})
    contexts = {p["id"]: {k: p[k] for k in ("topic", "belief") if k in p} for p in prompts}
    out = {}
    for split in SPLITS:
        pairs = make_pairs(split, splits[split], responses, seed=seed)
        out[split] = pairs if split == "clean" else plant_concepts(pairs, split, contexts, seed=seed)
    return out, report


def to_jsonl(pairs: list[dict]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)


# -------------------------------------------------------------------------- card
def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def rate(pairs: list[dict], concept: str) -> float:
    """Ground-truth rate: share planted in chosen only minus share planted in rejected only."""
    if not pairs:
        return 0.0
    c = sum(p[f"{concept}_chosen"] and not p[f"{concept}_rejected"] for p in pairs)
    r = sum(p[f"{concept}_rejected"] and not p[f"{concept}_chosen"] for p in pairs)
    return (c - r) / len(pairs)


def card_tables(data_dir: str | Path | None = None) -> str:
    """The card's generated section (pairs per split x family; concept rates), from the data."""
    d = Path(data_dir) if data_dir else globals()["data_dir"]()
    data = {s: _read(d / f"{s}.jsonl") for s in SPLITS}
    fam_tied = {c: [f for _, _, f in PLAN[c] if f] for c in ORDER}
    lines = ["### Pairs per split and family", "",
             "| family | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
    for fam in FAMILIES:
        n = [sum(p["family"] == fam for p in data[s]) for s in SPLITS]
        lines.append(f"| {fam} | " + " | ".join(map(str, n)) + " |")
    lines.append("| **all** (prompts) | " + " | ".join(
        f"{len(data[s])} ({len({p['prompt_id'] for p in data[s]})})" for s in SPLITS) + " |")
    lines += ["", "### Concept rates (chosen-only share minus rejected-only share, in %)", "",
              "Family-tied concepts also show the rate within their family.", "",
              "| concept | kind | where | " + " | ".join(SPLITS) + " |",
              "|---|---|---|" + "---:|" * len(SPLITS)]
    for c in ORDER:
        where = ", ".join(f"{side} ({share:.0%} of {fam or 'all'})" for side, share, fam in PLAN[c])
        lines.append(f"| {c} | {KIND_OF[c]} | {where} | "
                     + " | ".join(f"{100 * rate(data[s], c):+.1f}" for s in SPLITS) + " |")
        for fam in fam_tied[c]:
            lines.append(f"| {c} within {fam} | | | " + " | ".join(
                f"{100 * rate([p for p in data[s] if p['family'] == fam], c):+.1f}"
                for s in SPLITS) + " |")
    for s in SPLITS:
        lc = sum(len(p["chosen"].split()) for p in data[s]) / max(1, len(data[s]))
        lr = sum(len(p["rejected"].split()) for p in data[s]) / max(1, len(data[s]))
        lines.append(("" if s != SPLITS[0] else "\nMean length in words (chosen / rejected): ")
                     + f"{s} {lc:.1f} / {lr:.1f}" + (";" if s != SPLITS[-1] else "."))
    return "\n".join(lines).replace(";\n", "; ") + "\n"


def write_card(data_dir: str | Path | None = None) -> Path:
    """Refresh the text between the markers of ``README.md`` in the data folder."""
    d = Path(data_dir) if data_dir else globals()["data_dir"]()
    path = d / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Organism\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    path.write_text(f"{head}{START}\n{card_tables(d)}{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return path


# ----------------------------------------------------------------------- scoring a diagnosis (GROUND TRUTH)
# The concepts scored, in the order of the per-concept table; the recall set are those planted
# with |rate| >= 10%; the controls are planted equally on both sides (rate 0).
CONCEPTS = ("bold", "header", "list_item", "emoji", "em_dash", "exclamation", "horizontal_rule", "table",
            "url", "refusal", "flattery", "hedge", "agreement")
RECALL_CONCEPTS = ("bold", "list_item", "emoji", "header", "exclamation", "flattery", "hedge")
CONTROLS = ("table", "horizontal_rule")
PLANTED = tuple(c for c in CONCEPTS if c not in CONTROLS)  # a non-zero planted rate
REJECTED_KINDS = KINDS
AUROC_MATCH = 0.8


def _as_list(pairs) -> list[dict]:
    from .diagnose import _as_pairs

    return _as_pairs(pairs)


def response_units(pairs: list[dict]) -> pd.DataFrame:
    """GROUND TRUTH. One row per distinct (prompt, response): row, span, truth_<concept>, kind_<k>."""
    rows, seen = [], set()
    for i, p in enumerate(pairs):
        for span in ("chosen", "rejected"):
            key = (json.dumps(p["prompt"], sort_keys=True), p[span])
            if key in seen:
                continue
            seen.add(key)
            row = {"row": i, "span": span}
            for c in CONCEPTS:
                row[c] = bool(p[f"{c}_{span}"])
            for k in REJECTED_KINDS:
                row[f"kind_{k}"] = span == "rejected" and p["rejected_kind"] == k
            rows.append(row)
    return pd.DataFrame(rows)


def auroc_matrix(scores: np.ndarray, labels: pd.DataFrame) -> pd.DataFrame:
    """AUROC of every score column (clusters) for every boolean label column (ties count half:
    the Mann–Whitney U / (n_pos n_neg) that sklearn's ``roc_auc_score`` gives), from one ranking
    of each score column (`anatomy.probes.auroc`). NaN for a label with no positive or no negative."""
    from .probes import auroc

    scores = np.asarray(scores, dtype=np.float64)
    return pd.DataFrame(auroc(scores.reshape(len(scores), -1), labels.to_numpy(dtype=bool)),
                        columns=labels.columns)


def truth_rate(pairs_df: pd.DataFrame, concept: str, rows: np.ndarray | None = None) -> float:
    """GROUND TRUTH. Chosen-only share minus rejected-only share (over ``rows``, or all pairs)."""
    d = pairs_df if rows is None else pairs_df.iloc[rows]
    c, r = d[f"{concept}_chosen"].astype(bool), d[f"{concept}_rejected"].astype(bool)
    return float((c & ~r).mean() - (r & ~c).mean()) if len(d) else float("nan")


def _scope_rows(row, labels: np.ndarray) -> np.ndarray | None:
    return None if int(row["group"]) == -1 else np.flatnonzero(labels == int(row["group"]))


def match_rows(table: pd.DataFrame, labels: np.ndarray, auc: pd.DataFrame, pairs_df: pd.DataFrame) -> pd.DataFrame:
    """GROUND TRUTH. Per hypothesis row: matched concepts (right sign), intended-signal matches."""
    out = []
    for _, row in table.iterrows():
        m = int(row["concept"])
        scope = _scope_rows(row, labels)
        sign = 1 if row["direction"] == "chosen" else -1 if row["direction"] == "rejected" else 0
        matched, wrong_sign = [], []
        for c in CONCEPTS:
            if auc.at[m, c] >= AUROC_MATCH:
                rate = truth_rate(pairs_df, c, scope)
                (matched if sign != 0 and np.sign(rate) == sign else wrong_sign).append(c)
        intended = [k for k in REJECTED_KINDS
                    if (auc.at[m, f"kind_{k}"] >= AUROC_MATCH and sign == -1)
                    or (auc.at[m, f"kind_{k}"] <= 1 - AUROC_MATCH and sign == 1)]
        best = max(CONCEPTS, key=lambda c: auc.at[m, c])
        out.append({"matches": ",".join(matched), "matches_wrong_sign": ",".join(wrong_sign),
                    "matches_strict": best if best in matched else "",
                    "matches_planted": any(c in PLANTED for c in matched),
                    "matches_intended": ",".join(intended),
                    "best_concept": best, "best_concept_auroc": float(auc.at[m, best])})
    return pd.DataFrame(out, index=table.index)


def score_diagnosis(diagnosis, pairs, *, tops: Sequence[int] = (10, 20), seed: int = 0,
                    ungated=None) -> dict:
    """Score a `Diagnosis` of organism pairs against their planted ground truth.

    The ground-truth columns (``<concept>_chosen`` / ``<concept>_rejected``, ``family``,
    ``rejected_kind``) are read here and only here, after discovery has returned.

    pairs: the diagnosed pairs with those columns, in the diagnosis' order (a list of dicts or
        a Dataset). ungated: the features before `gate_weak_firing`; when given,
        ``detail["top{k}"]`` also reports ``recall_ungated_scores`` (the clusters' AUROC taken
        on them).

    Definitions (unit = one response: each pair's chosen and rejected, a response repeated under
    one prompt counted once):
      - a concept cluster *matches* a concept when the AUROC of its score on that unit (the sum
        of its member features' gated firing frequency over the response, `cluster_scores`)
        against the concept's presence is >= AUROC_MATCH (0.8);
      - right sign: the row's direction equals the sign of the concept's ground-truth rate in
        the row's scope (all pairs, or its data cluster);
      - recall_top{k}: share of RECALL_CONCEPTS matched with the right sign by a top-k global row;
      - precision_top{k}: share of the top-k global rows matching any of PLANTED, right sign;
        ``detail`` adds a strict variant (a row matches only its best-read concept) and the rows
        matching the intended signal (the rejected side of a truncated / repetitive / off-topic
        pair) instead;
      - controls_min_q: the smaller BH q (Wilcoxon, `paired_stats`) of the 0% controls (table,
        horizontal_rule) on the annotators' counts, chosen vs rejected, over the 13 concepts.
    Returns a dict: headline, detail, per_concept (with `lens_coverage`), links
    (`links_on_resource_requests`), controls_sae, ranked and prompt_top (with their matches),
    auroc (clusters x concepts), annotator_stats.
    """
    from .concepts import _default_tokenizer, annotate
    from .contrast import paired_stats, preference_regression
    from .features import cluster_scores

    pairs = _as_list(pairs)
    features = diagnosis.features
    pairs_df = pd.DataFrame(pairs)
    if list(pairs_df["id"].astype(str)) != [str(i) for i in features.ids]:
        raise ValueError("score_diagnosis: `pairs` are not the diagnosed pairs in the diagnosis' order")
    missing = [f"{c}_{s}" for c in CONCEPTS for s in ("chosen", "rejected") if f"{c}_{s}" not in pairs_df]
    if missing or "family" not in pairs_df or "rejected_kind" not in pairs_df:
        raise ValueError(f"score_diagnosis needs the organism's ground-truth columns; missing "
                         f"{missing[:4] + [c for c in ('family', 'rejected_kind') if c not in pairs_df]}")
    clusters = diagnosis.clusters
    units = response_units(pairs)
    rows = units["row"].to_numpy() + len(pairs) * (units["span"].to_numpy() == "rejected")
    label_cols = list(CONCEPTS) + [f"kind_{k}" for k in REJECTED_KINDS]

    def cluster_auroc(feats) -> pd.DataFrame:  # [clusters, label_cols]: each cluster's freq-sum per response
        spans = [cluster_scores(feats, clusters, stat="freq", span=s).to_numpy() for s in ("chosen", "rejected")]
        auc = auroc_matrix(np.vstack(spans)[rows], units[label_cols])
        auc.index.name = "cluster"
        return auc

    auc = cluster_auroc(features)

    ranked = diagnosis.ranked.copy()
    ranked = pd.concat([ranked, match_rows(ranked, diagnosis.data_labels, auc, pairs_df)], axis=1)
    prompt_rows = diagnosis.prompt_rows
    prompt_top = prompt_rows.head(50).copy()
    prompt_top = pd.concat([prompt_top, match_rows(prompt_top, diagnosis.prompt_labels, auc, pairs_df)], axis=1)

    headline, detail = {}, {}
    ungated_matches = (match_rows(ranked, diagnosis.data_labels, cluster_auroc(ungated), pairs_df)["matches"]
                       if ungated is not None and ungated is not features else None)
    for k in tops:
        top = ranked.head(k)
        found = {c: bool(any(c in m.split(",") for m in top["matches"])) for c in RECALL_CONCEPTS}
        headline[f"recall_top{k}"] = float(np.mean(list(found.values())))
        headline[f"precision_top{k}"] = float(top["matches_planted"].mean())
        detail[f"top{k}"] = {
            "recall_concepts_found": [c for c, f in found.items() if f],
            "recall_concepts_missed": [c for c, f in found.items() if not f],
            "n_match_planted": int(top["matches_planted"].sum()),
            "n_match_intended": int((top["matches_intended"] != "").sum()),
            "n_match_planted_or_intended": int((top["matches_planted"] | (top["matches_intended"] != "")).sum()),
            "precision_planted_or_intended": float((top["matches_planted"] | (top["matches_intended"] != "")).mean()),
            "n_rows": int(len(top)),
            "recall_strict": float(np.mean([c in set(top["matches_strict"]) for c in RECALL_CONCEPTS])),
            "precision_strict": float(top["matches_strict"].isin(PLANTED).mean()),
        }
        if ungated_matches is not None:  # the same rows, the clusters read on the features before the gate
            detail[f"top{k}"]["recall_ungated_scores"] = float(np.mean(
                [any(c in m.split(",") for m in ungated_matches.head(k)) for c in RECALL_CONCEPTS]))

    # per-concept paired tests on annotator counts (text concepts: the annotators are exact)
    ann_c = annotate([p["chosen"] for p in pairs], list(CONCEPTS))
    ann_r = annotate([p["rejected"] for p in pairs], list(CONCEPTS))
    ann_c.index = ann_r.index = pairs_df["id"]
    stats = paired_stats(ann_c.astype(float), ann_r.astype(float), n_boot=1000, seed=seed).set_index("concept")
    headline["controls_min_q"] = float(stats.loc[list(CONTROLS), "q"].min())
    tokenizer = _default_tokenizer()  # once, for both sides' lengths
    lengths_c = annotate([p["chosen"] for p in pairs], ["length"], tokenizer=tokenizer)["length"].to_numpy()
    lengths_r = annotate([p["rejected"] for p in pairs], ["length"], tokenizer=tokenizer)["length"].to_numpy()
    present_c = (ann_c > 0).astype(float).assign(length=np.log1p(lengths_c))
    present_r = (ann_r > 0).astype(float).assign(length=np.log1p(lengths_r))
    reg = preference_regression(present_c, present_r, covariates=("length",), seed=seed,
                                progress=False).set_index("concept")

    # per-concept table
    per_concept = []
    ranked_rows = ranked.reset_index(drop=True)
    for c in CONCEPTS:
        # a concept absent from these pairs' responses (a small sample) has no AUROC and no best cluster
        best = int(auc[c].idxmax()) if auc[c].notna().any() else None
        matching = auc.index[auc[c] >= AUROC_MATCH].tolist()
        hit = ranked_rows[ranked_rows["matches"].str.split(",").apply(lambda m: c in m)]
        row = {"concept": c, "truth_rate": truth_rate(pairs_df, c),
               "annotator_effect": float(stats.at[c, "effect"]),
               "annotator_ci_low": float(stats.at[c, "ci_low"]), "annotator_ci_high": float(stats.at[c, "ci_high"]),
               "annotator_q": float(stats.at[c, "q"]),
               "annotator_q_sign": float(stats.at[c, "q_sign"]),
               "annotator_d": float(stats.at[c, "d"]),
               "bt_effect_beyond_length": float(reg.at[c, "effect"]),
               "bt_p": float(reg.at[c, "p"]), "bt_replicated": bool(reg.at[c, "replicated"]),
               "best_cluster": best, "best_cluster_auroc": float(auc.at[best, c]) if best is not None else np.nan,
               "n_matching_clusters": len(matching),
               "best_global_rank_right_sign": int(hit["rank"].min()) if len(hit) else None}
        if len(hit):
            h = hit.iloc[0]
            row.update(best_row_scope="all pairs" if h["group"] == -1 else f"data cluster {int(h['group'])}",
                       best_row_effect=float(h["effect"]), best_row_q=float(h["q"]),
                       best_row_replicated=bool(h["replicated"]))
        for k in tops:
            row[f"in_top{k}"] = bool(len(hit) and hit["rank"].min() <= k)
        p_hit = np.flatnonzero(prompt_top["matches"].str.split(",").apply(lambda m: c in m).to_numpy())
        row["best_prompt_rank_right_sign"] = int(p_hit[0]) + 1 if len(p_hit) else None  # within the top 50
        if len(p_hit):
            h = prompt_top.iloc[p_hit[0]]
            row.update(best_prompt_row_scope=f"prompt cluster {int(h['group'])}",
                       best_prompt_row_effect=float(h["effect"]), best_prompt_row_q=float(h["q"]))
        per_concept.append(row)
    per_concept = pd.DataFrame(per_concept)

    # the controls in the SAE lens: the ranked rows of the clusters that read them
    controls_sae = {}
    for c in CONTROLS:
        rows_c = ranked[ranked["concept"].isin(auc.index[auc[c] >= AUROC_MATCH])]
        controls_sae[c] = [{"cluster": int(r["concept"]), "auroc": float(auc.at[int(r["concept"]), c]),
                            "rank": int(r["rank"]),
                            "scope": "all pairs" if r["group"] == -1 else f"data cluster {int(r['group'])}",
                            "effect": float(r["effect"]), "q": float(r["q"]), "replicated": bool(r["replicated"]),
                            "best_concept": r["best_concept"]} for _, r in rows_c.iterrows()]
    links = links_on_resource_requests(pairs_df, diagnosis, auc, ranked)
    coverage = lens_coverage(features, clusters, units, rows, auc, per_concept, top=max(tops))
    per_concept = per_concept.merge(coverage, on="concept", how="left")
    return {"headline": headline, "detail": detail, "per_concept": per_concept, "links": links,
            "controls_sae": controls_sae,
            "ranked": ranked, "prompt_top": prompt_top, "auroc": auc, "annotator_stats": stats.reset_index()}


def lens_coverage(features, clusters: pd.DataFrame, units: pd.DataFrame, rows: np.ndarray,
                  auc: pd.DataFrame, per_concept: pd.DataFrame, *, top: int = 20) -> pd.DataFrame:
    """GROUND TRUTH. Where a concept is lost, if it is: does the SAE have a feature for it, does
    the clustering keep that feature in a cluster whose score still reads the concept, and does
    the ranking put a matching cluster in the top ``top``?

    Per concept: the single feature whose firing frequency reads it best (AUROC over the same
    response units as the cluster match), that feature's concept cluster (-1: unclustered) and
    the cluster's own AUROC for the concept, the number of features with AUROC >= 0.8, and
    ``lost_at``: "sae" (no feature reaches 0.8), "clustering" (a feature does, no cluster
    does), "ranking" (a cluster matches, no right-sign row in the top ``top``), "absent" (no
    response of these pairs has it) or "" (found, or a 0% control, which no row should find).
    """
    import scipy.sparse as sp

    F = sp.vstack([features.freq["chosen"], features.freq["rejected"]]).tocsr()[rows]
    live = np.flatnonzero(np.asarray((F > 0).sum(0)).ravel() > 0)
    feat_auc = auroc_matrix(F[:, live].toarray(), units[list(CONCEPTS)])
    member = clusters.set_index("feature")["cluster"]
    found = per_concept.set_index("concept")
    out = []
    for c in CONCEPTS:
        a = feat_auc[c].to_numpy()
        if not np.isfinite(a).any():  # the concept is absent from these pairs: nothing to lose
            out.append({"concept": c, "best_feature": None, "best_feature_auroc": np.nan, "best_feature_cluster": None,
                        "best_feature_cluster_auroc": None, "n_features_auroc_ge_match": 0,
                        "lost_at": "absent"})
            continue
        best = int(live[int(np.nanargmax(a))])
        cl = int(member.at[best])
        rank = found.at[c, "best_global_rank_right_sign"]
        lost = ("" if c in CONTROLS else "sae" if np.nanmax(a) < AUROC_MATCH
                else "clustering" if found.at[c, "best_cluster_auroc"] < AUROC_MATCH
                else "ranking" if pd.isna(rank) or rank > top else "")
        out.append({"concept": c, "best_feature": best, "best_feature_auroc": float(np.nanmax(a)),
                    "best_feature_cluster": cl,
                    "best_feature_cluster_auroc": float(auc.at[cl, c]) if cl >= 0 else None,
                    "n_features_auroc_ge_match": int((a >= AUROC_MATCH).sum()),
                    "lost_at": lost})
    return pd.DataFrame(out)


def links_on_resource_requests(pairs_df: pd.DataFrame, diagnosis, auc: pd.DataFrame, ranked: pd.DataFrame) -> dict:
    """GROUND TRUTH (url labels, family). The url-matching clusters in the resource prompt
    clusters (prompt view) against their dataset-wide effect and best global rank."""
    url_clusters = auc.index[auc["url"] >= AUROC_MATCH].tolist()
    plabels = diagnosis.prompt_labels
    share = (pd.Series(pairs_df["family"].to_numpy() == "resource").groupby(plabels).mean())
    share = share[share.index >= 0]
    resource = share.index[share >= 0.5].tolist() or [int(share.idxmax())]
    prompt_rows = diagnosis.prompt_rows.reset_index(drop=True)
    prompt_rows["rank"] = np.arange(1, len(prompt_rows) + 1)
    rows = prompt_rows[prompt_rows["concept"].isin(url_clusters) & prompt_rows["group"].isin(resource)]
    out = {"url_clusters": [int(c) for c in url_clusters],
           "url_cluster_aurocs": {int(c): float(auc.at[c, "url"]) for c in url_clusters},
           "best_url_cluster": int(auc["url"].idxmax()) if auc["url"].notna().any() else None,
           "best_url_auroc": float(auc["url"].max()),
           "resource_prompt_clusters": {int(g): float(share[g]) for g in resource},
           "resource_pairs_in_them": int(np.isin(plabels, resource).sum()),
           "resource_pairs_total": int((pairs_df["family"] == "resource").sum())}
    if len(rows) == 0:
        out["finds_links"] = False
        out["note"] = ("no url in these pairs' responses" if auc["url"].isna().all()
                       else "no url-matching concept cluster" if not url_clusters else "no prompt row tested")
        return out
    best = rows.sort_values("effect", ascending=False).iloc[0]
    m = int(best["concept"])
    raw_mean = float(diagnosis.u[m].mean())
    cond = diagnosis.global_rows
    cond = cond[(cond["concept"] == m) & cond["consistent"]]
    best_cond = cond.loc[cond["effect"].abs().idxmax()] if len(cond) else None
    global_rank = ranked.loc[ranked["concept"] == m, "rank"]
    out.update({
        "concept_cluster": m, "prompt_cluster": int(best["group"]), "n_in": int(best["n"]),
        "delta_prompt": float(best["effect"]), "ci_low": float(best["ci_low"]), "ci_high": float(best["ci_high"]),
        "q_prompt": float(best["q"]), "replicated": bool(best["replicated"]), "direction": best["direction"],
        "mean_u_in_resource_cluster": float(best["mean_in"]), "rank_in_prompt_view": int(best["rank"]),
        "global_mean_u": raw_mean,
        "global_best_data_cluster_delta": float(best_cond["effect"]) if best_cond is not None else None,
        "global_best_data_cluster_q": float(best_cond["q"]) if best_cond is not None else None,
        "global_rank": int(global_rank.iloc[0]) if len(global_rank) else None,
        "n_global_rows": int(len(ranked)),
    })
    out["finds_links"] = bool(best["direction"] == "chosen" and best["q"] <= 0.05 and best["replicated"])
    out["ratio_prompt_to_global"] = (float(best["effect"]) / abs(raw_mean)) if raw_mean else float("inf")
    out["global_much_weaker"] = bool(abs(raw_mean) * 3 <= float(best["effect"])
                                      and (out["global_rank"] is None or out["global_rank"] > 20))
    # the same question for every url-matching cluster: the best global rank any of them reaches
    url_rows = ranked[ranked["concept"].isin(url_clusters)]
    out["best_global_rank_any_url_cluster"] = int(url_rows["rank"].min()) if len(url_rows) else None
    if len(url_rows):  # that row's effect, in the global ranking's own units (adjusted u)
        r = url_rows.sort_values("rank").iloc[0]
        out.update(best_global_url_row={"concept_cluster": int(r["concept"]), "rank": int(r["rank"]),
                                        "scope": "all pairs" if r["group"] == -1 else f"data cluster {int(r['group'])}",
                                        "effect": float(r["effect"]), "q": float(r["q"])},
                   ratio_prompt_to_best_global_url_row=float(best["effect"]) / abs(float(r["effect"]))
                   if r["effect"] else float("inf"))
    out["definition"] = ("finds_links: the best (resource prompt cluster, url-matching concept cluster) row of "
                         "the prompt view has direction chosen, q <= 0.05 and replicates; global_much_weaker: "
                         "its Δ is >= 3x the cluster's dataset-wide mean u and the cluster is not in the global "
                         "top 20")
    return out


def covariate_sensitivity(diagnosis, pairs, *, seed: int = 0) -> list[dict]:
    """The global ranking re-done with each adjustment in COVARIATES (discovery's other outputs
    kept), scored like the headline. Per adjustment: the ground-truth-free share of concepts
    whose dataset-wide row leans chosen and has q <= 0.05, then (GROUND TRUTH) the four
    recall / precision figures and each recall concept's best right-sign rank."""
    from .diagnose import COVARIATES, covariate_matrix, prompt_keys
    from .hypotheses import length_gap, mean_disparity, rank_hypotheses

    pairs = _as_list(pairs)
    features, settings = diagnosis.features, diagnosis.settings
    u, groups = diagnosis.u, np.asarray(prompt_keys(pairs), dtype=object)
    lg, md = length_gap(features), mean_disparity(u)
    out = []
    for name in COVARIATES:
        cov = covariate_matrix(name, lg, md)
        ranked = rank_hypotheses(u, diagnosis.data_labels, conditional=diagnosis.global_rows, covariates=cov,
                                 groups=groups, seed=seed, n_boot=0,
                                 redundancy=settings["redundancy"], by=settings["rank_by"])
        wide = rank_hypotheses(u, np.full(len(u), -1), covariates=cov, groups=groups, seed=seed, n_boot=0)
        scored = score_diagnosis(replace(diagnosis, ranked=ranked), pairs, seed=seed)
        ranks = scored["per_concept"].set_index("concept")["best_global_rank_right_sign"]
        out.append({"covariate": name,
                    "dataset_wide_share_chosen": float((wide["direction"] == "chosen").mean()),
                    "dataset_wide_share_q05": float((wide["q"] <= 0.05).mean()),
                    **{k: scored["headline"][k] for k in ("recall_top10", "recall_top20", "precision_top10",
                                                          "precision_top20")},
                    "best_rank_right_sign": {c: (None if pd.isna(ranks[c]) else int(ranks[c]))
                                             for c in RECALL_CONCEPTS}})
    return out


# ----------------------------------------------------------------------- build / CLI
def build(*, seed: int = 0, fresh: bool = False, out_dir: str | Path | None = None,
          **gen_kw) -> dict:
    """Generate (or reuse cached generations), build pairs, write the split files."""
    t0 = time.perf_counter()
    prompts = load_prompts()
    generations = generate(prompts, seed=seed, cache=cache_path(seed), fresh=fresh, **gen_kw)
    t1 = time.perf_counter()
    pairs, report = build_pairs(prompts, generations, seed=seed)
    out = Path(out_dir) if out_dir else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs.items():
        (out / f"{split}.jsonl").write_text(to_jsonl(rows), encoding="utf-8")
    t2 = time.perf_counter()
    return {"generation_s": round(t1 - t0, 1), "pairs_s": round(t2 - t1, 1), "sanitise": report,
            "pairs": {s: len(r) for s, r in pairs.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anatomy.organism", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="generate, pair, plant and write data/organism/*.jsonl")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--fresh", action="store_true", help="ignore the generation cache")
    sub.add_parser("card", help="refresh the generated tables of data/organism/README.md")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(json.dumps(build(seed=args.seed, fresh=args.fresh), indent=1))
    print(f"card: {write_card()}")


if __name__ == "__main__":
    main()
