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
from pathlib import Path

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
