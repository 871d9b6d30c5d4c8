"""Stage 1b, concept labels: string-search annotations of responses, and planters.

`annotate(texts, concepts=None, *, tokenizer=None)` takes response strings and returns a
pandas DataFrame of integer counts, one row per text and one column per concept. These
counts are the ground truth that the interpretability lenses are checked against, and the
metric for over-stylisation in rollouts. `extract_urls(text)` returns the URLs themselves.

`strip_concepts(text)` and `plant(text, concept, rng, *, context=None)` take and return
strings. The dataset generator uses them to clean a small model's answer and then add
exactly one concept to it with a deterministic rewrite.

Markdown is read the CommonMark way where it matters. Code (fenced blocks and inline
spans) is ignored by every annotator except `length`, and `strip_concepts` and `plant`
leave it untouched. A `---` or `===` line directly under a paragraph line is a setext
header underline: it counts as a header, not as a horizontal rule.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pandas as pd

__all__ = ["ANNOTATORS", "CONCEPT_KINDS", "PLANTERS", "annotate", "extract_urls",
           "plant", "strip_concepts"]

# ---------------------------------------------------------------- code protection
_FENCE = re.compile(r"^[ \t]*(`{3,}(?![^\n]*`)|~{3,})[^\n]*\n?.*?(?:^[ \t]*\1[`~]*[ \t]*$|\Z)",
                    re.M | re.S)  # an unclosed fence runs to the end of the text
_INLINE = re.compile(r"(`+)(?!`)[^\n]+?(?<!`)\1(?!`)")
_INLINE_PH, _FENCE_PH = 0xF0000, 0x100000  # private-use planes: not \w, not emoji
_PUA = re.compile("[\U000F0000-\U0010FFFF]")


def _protect(text: str) -> tuple[str, list[str]]:
    """Replace code by private-use placeholder characters; return the text and the spans."""
    spans: list[str] = []

    def hide(base: int) -> Callable[[re.Match], str]:
        return lambda m: spans.append(m.group()) or chr(base + len(spans) - 1)

    return _INLINE.sub(hide(_INLINE_PH), _FENCE.sub(hide(_FENCE_PH), text)), spans


def _restore(text: str, spans: list[str], *, close: bool = False) -> str:
    """Put back the code spans that `_protect` took out; with `close`, an unclosed
    fenced block gets its closing fence (so that text planted after it is not code)."""
    def repl(m: re.Match) -> str:
        i = ord(m.group()) % 0x10000
        if i >= len(spans):
            return m.group()
        fence = re.match(r"[ \t]*(`+|~+)", spans[i])[1] if ord(m.group()) >= _FENCE_PH else ""
        if close and fence and not re.search(rf"\n[ \t]*{fence}[`~]*[ \t]*\Z", spans[i]):
            return f"{spans[i].rstrip()}\n{fence}"
        return spans[i]
    return _PUA.sub(repl, text)


# ---------------------------------------------------------------- line structure
_Q = r"[ \t]*(?:>[ \t]?)*[ \t]*"  # optional block-quote prefix
_MARK = r"(?:[-*+•]|\d{1,9}[.)])[ \t]+"
_ATX = re.compile(rf"^{_Q}#{{1,6}}[ \t]+\S")
_LIST = re.compile(rf"^{_Q}{_MARK}\S")
_RULE = re.compile(rf"^{_Q}([-*_])(?:[ \t]*\1){{2,}}[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_DELIM = re.compile(r"^[ \t]*(?:\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)+\|?"
                    r"|\|[ \t]*:?-+:?[ \t]*\|)[ \t]*$")
_PROSE = ("text", "list", "quote")


def _kind(line: str, prev: str) -> str:
    """The kind of a line given the kind of the line above: blank, code, table (delimiter
    row), setext (underline), rule, header, list, quote, pipe (a row with `|`) or text."""
    s = line.strip()
    tests = (("blank", not s), ("code", len(s) == 1 and ord(s) >= _FENCE_PH),
             ("table", prev == "pipe" and _DELIM.match(line)),
             ("setext", prev == "text" and _SETEXT.match(line)), ("rule", _RULE.match(line)),
             ("header", _ATX.match(line)), ("list", _LIST.match(line)),
             ("quote", s.startswith(">")), ("pipe", "|" in s))
    return next((kind for kind, ok in tests if ok), "text")


def _kinds(text: str) -> list[tuple[str, str]]:
    """(kind, line) for each line of `text`; see `_kind`."""
    out: list[tuple[str, str]] = []
    for line in text.split("\n"):
        out.append((_kind(line, out[-1][0] if out else "blank"), line))
    return out


# ---------------------------------------------------------------- patterns
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"
                     r"|(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])")
_EXCL = re.compile(r"(?<!!)!+(?![!=\[])")
_URL = re.compile(r"(?:https?://|\bwww\.)[\w-][^\s<>\"'`\[\]\U000F0000-\U0010FFFF]*", re.I)
_URL_TRAIL = ".,;:!?'\"*”’>"
_PRES = ("\u231A\u231B\u23E9-\u23EC\u23F0\u23F3\u25FD\u25FE\u2B1B\u2B1C\u2B50\u2B55"
         "\u2600-\u2604\u260E\u2611\u2614\u2615\u2618\u261D\u2620\u2622\u2623\u2626\u262A\u262E"
         "\u262F\u2638-\u263A\u2640\u2642\u2648-\u2653\u265F\u2660\u2663\u2665\u2666\u2668"
         "\u267B\u267E\u267F\u2692-\u2697\u2699\u269B\u269C\u26A0\u26A1\u26A7\u26AA\u26AB\u26B0"
         "\u26B1\u26BD\u26BE\u26C4\u26C5\u26C8\u26CE\u26CF\u26D1\u26D3\u26D4\u26E9\u26EA"
         "\u26F0-\u26F5\u26F7-\u26FA\u26FD\u2702\u2705\u2708-\u270D\u270F\u2712\u2714\u2716"
         "\u271D\u2721\u2728\u2733\u2734\u2744\u2747\u274C\u274E\u2753-\u2755\u2757\u2763\u2764"
         "\u2795-\u2797\u27A1\u27B0\u27BF\U0001F004\U0001F0CF\U0001F18E\U0001F191-\U0001F19A"
         "\U0001F200-\U0001F2FF\U0001F300-\U0001F3FA\U0001F400-\U0001F6FF\U0001F7E0-\U0001F7FF"
         "\U0001F900-\U0001F9FF\U0001FA70-\U0001FAFF")  # emoji by default
_TXT = ("\u00A9\u00AE\u203C\u2049\u2122\u2139\u2194-\u2199\u21A9\u21AA\u2328\u23CF\u23ED-\u23EF"
        "\u23F1\u23F2\u23F8-\u23FA\u24C2\u25AA\u25AB\u25B6\u25C0\u25FB\u25FC\u2934\u2935"
        "\u2B05-\u2B07\u3030\u303D\u3297\u3299")  # emoji only when followed by U+FE0F
_MOD = "[\U0001F3FB-\U0001F3FF]?[\U000E0020-\U000E007F]*"
_ELEM = f"(?:[{_PRES}]\uFE0F?|[{_TXT}]\uFE0F){_MOD}"
_EMOJI = re.compile(f"[\U0001F1E6-\U0001F1FF]{{2}}|[0-9#*]\uFE0F?\u20E3"
                    f"|{_ELEM}(?:\u200D[{_PRES}{_TXT}]\uFE0F?{_MOD})*")
_EMOJI_DEBRIS = re.compile("[\uFE0F\u200D\u20E3\U0001F3FB-\U0001F3FF\U000E0020-\U000E007F]")
_A = "['’]"


def _phrases(*patterns: str) -> re.Pattern:
    """Case-insensitive alternatives between word edges (`_` counts as an edge here)."""
    return re.compile(r"(?<![^\W_])(?:" + "|".join(patterns) + r")(?![^\W_])", re.I)


_REFUSAL = _phrases(
    rf"I (?:can{_A}?t|cannot|can not) (?:help|assist)", rf"I won{_A}t",
    rf"I{_A}m sorry, but I (?:can{_A}?t|cannot|won{_A}t)", rf"I(?: am|{_A}m) not able to",
    rf"I(?: am|{_A}m) unable to", r"I must (?:respectfully )?decline",
    rf"As an AI(?: language model)?, I (?:can{_A}?t|cannot|am not able|don{_A}t)")
_ADJ = (r"(?:great|good|thoughtful|wonderful|fantastic|excellent|fascinating|interesting"
        r"|insightful|brilliant|lovely|amazing|smart|clever)")
_FLATTERY = _phrases(
    rf"(?:what an? )?{_ADJ} (?:question|idea|point|observation)",
    rf"you(?:{_A}re| are) so (?:smart|clever|insightful|thoughtful|wise)",
    r"I love (?:this|that|your) (?:question|idea)")
_HEDGE = _phrases(
    r"I think", r"I believe", r"perhaps", r"possibly", r"maybe", r"probably", r"arguably",
    r"it seems", r"it may be that", rf"I{_A}m not (?:entirely |completely |quite )?sure",
    rf"it{_A}s possible that", r"might be", r"could be", r"I guess", r"I suppose",
    r"it appears")
_AGREEMENT = _phrases(
    rf"you(?:{_A}re| are) (?:absolutely |totally |completely |quite |so )?(?:right|correct)",
    rf"yes, that(?:{_A}s| is) (?:correct|right|true)",
    rf"that{_A}s (?:absolutely |so |very |exactly )?(?:true|correct|right)",
    r"exactly right", r"I (?:completely |totally |fully )?agree")
_PHRASES = (_REFUSAL, _FLATTERY, _HEDGE, _AGREEMENT)


def _url_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each URL, without trailing punctuation or an unbalanced `)`."""
    spans = []
    for m in _URL.finditer(text):
        url = m.group()
        while url[-1] in _URL_TRAIL or (url[-1] == ")" and url.count("(") < url.count(")")):
            url = url[:-1]
        spans.append((m.start(), m.start() + len(url)))
    return spans


def extract_urls(text: str) -> list[str]:
    """The http(s)/www URLs in `text`, in order, trailing punctuation removed."""
    return [text[a:b] for a, b in _url_spans(text)]


# ---------------------------------------------------------------- annotators
class _View(NamedTuple):
    code_free: str  # code replaced by placeholders
    kinds: tuple[tuple[str, str], ...]  # (kind, line) of code_free
    prose: str  # code_free with URLs blanked: phrases and `!` are looked for here
    opening: str  # first sentence of the prose, markdown markers removed; an opener
    # sentence (flattery, agreement) does not end the opening, so that openers can stack


@functools.lru_cache(maxsize=4096)
def _view(text: str) -> _View:
    code_free = _protect(text)[0]
    kinds = tuple(_kinds(code_free))
    prose = code_free
    for a, b in reversed(_url_spans(code_free)):
        prose = prose[:a] + " " + prose[b:]
    sentences = (sentence for kind, line in _kinds(prose) if kind in _PROSE for sentence in
                 re.split(r"(?<=[.!?])\s", re.sub(rf"^{_Q}(?:{_MARK})?|[*_]", "", line)))
    opening = []
    for sentence in sentences:
        opening.append(sentence)
        if not (_FLATTERY.search(sentence) or _AGREEMENT.search(sentence)):
            break
    return _View(code_free, kinds, prose, " ".join(opening))


def _lines(*kinds: str) -> Callable[[str], int]:
    return lambda text: sum(kind in kinds for kind, _ in _view(text).kinds)


def _count_bold(text: str) -> int:
    lines = [line for kind, line in _view(text).kinds if kind not in ("rule", "table")]
    return len(_BOLD.findall("\n".join(lines)))


ANNOTATORS: dict[str, Callable[[str], int]] = {
    "bold": _count_bold,
    "header": _lines("header", "setext"),
    "list_item": _lines("list"),
    "emoji": lambda t: len(_EMOJI.findall(_view(t).code_free)),
    "em_dash": lambda t: _view(t).code_free.count("—"),
    "exclamation": lambda t: len(_EXCL.findall(_view(t).prose)),
    "horizontal_rule": _lines("rule"),
    "table": _lines("table"),
    "url": lambda t: len(_url_spans(_view(t).code_free)),
    "refusal": lambda t: int(bool(_REFUSAL.search(_view(t).prose))),
    "flattery": lambda t: int(bool(_FLATTERY.search(_view(t).opening))),
    "hedge": lambda t: len(_HEDGE.findall(_view(t).prose)),
    "agreement": lambda t: int(bool(_AGREEMENT.search(_view(t).opening))),
}
"""Concept name -> function(text) -> count. `length` is separate: it needs a tokenizer."""
_BUILTIN = dict(ANNOTATORS)  # what `plant` checks its rewrites against

CONCEPT_KINDS: dict[str, str] = {
    **dict.fromkeys(["bold", "header", "list_item", "emoji", "em_dash", "exclamation",
                     "horizontal_rule", "table"], "style"),
    **dict.fromkeys(["flattery", "hedge", "agreement"], "tone"),
    **dict.fromkeys(["url", "refusal"], "behaviour"),
    "length": "length",
}


def _default_tokenizer():
    try:
        from anatomy.models import load_tokenizer
        return load_tokenizer()
    except Exception as err:  # missing module, model not installed, ...
        raise RuntimeError("could not load the default tokenizer for `length` ("
                           f"{err}); pass tokenizer=... or run `make install`") from err


def annotate(texts: Iterable[str], concepts: Iterable[str] | None = None, *,
             tokenizer=None) -> pd.DataFrame:
    """Count concepts in each text.

    Returns a DataFrame with one row per text (same order, RangeIndex) and one int64
    column per concept (`concepts=None` means every key of `ANNOTATORS`, then `length`; a
    single name is accepted too).
    `length` counts tokens: `tokenizer(text, add_special_tokens=False)["input_ids"]`, with
    the default model's tokenizer loaded only when `tokenizer` is None and `length` is asked.
    Raises ValueError for an unknown concept and TypeError for a non-str text.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of str, not a str; wrap it in a list")
    texts = list(texts)
    if (bad := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")
    known = [*ANNOTATORS, "length"]
    if concepts is None or isinstance(concepts, str):
        concepts = known if concepts is None else [concepts]
    concepts = list(concepts)
    if unknown := [name for name in concepts if name not in known]:
        raise ValueError(f"unknown concept {unknown[0]!r}; known concepts: {', '.join(known)}")
    columns = {}
    for name in concepts:
        if name == "length":
            tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
            values = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        else:
            values = [ANNOTATORS[name](t) for t in texts]
        columns[name] = pd.Series(values, dtype="int64")
    return pd.DataFrame(columns, index=pd.RangeIndex(len(texts)), columns=concepts)


# ---------------------------------------------------------------- sanitiser
def _has_marker_phrase(sentence: str) -> bool:
    return bool(_url_spans(sentence)) or any(p.search(sentence) for p in _PHRASES)


def _strip_lines(text: str) -> str:
    """Drop tables, rules, setext underlines and bare markers; strip header `#`s and list
    markers (their text stays as a plain line)."""
    kinds, drop = _kinds(text), set()
    for i, (kind, _) in enumerate(kinds):
        if kind == "table":  # the header row above, the delimiter row, the body rows below
            drop |= {i - 1, i}
        elif kind in ("rule", "setext") or (kind == "pipe" and kinds[i - 1][0] in ("table", "pipe")
                                            and i - 1 in drop):
            drop.add(i)
    text = "\n".join(line for i, (_, line) in enumerate(kinds) if i not in drop)
    text = re.sub(rf"^({_Q})#{{1,6}}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", r"\1\2", text, flags=re.M)
    text = re.sub(rf"^{_Q}(?:[-*+•#]+|\d{{1,9}}[.)])[ \t]*$", "", text, flags=re.M)  # bare marker
    return re.sub(rf"^({_Q})(?:{_MARK})+", r"\1", text, flags=re.M)


def _strip_sentences(line: str) -> str:
    """Drop the sentences of a line that hold a URL or a refusal/tone phrase."""
    prefix = re.match(_Q, line).group()
    sentences = re.split(r"(?<=[.?!])[ \t]+", line[len(prefix):])
    kept = " ".join(s for s in sentences if not _has_marker_phrase(s))
    return prefix + kept if kept.strip() else ""


def _strip_once(text: str) -> str:
    """One pass of `strip_concepts` over code-protected text."""
    text = _strip_lines(text)
    for pattern in (_BOLD, _ITALIC):
        text = pattern.sub(lambda m: m[1] if m[1] is not None else m[2], text)
    text = re.sub(r"!\[[^\]\n]*\]\([^)\n]*\)", "", text)  # images
    text = re.sub(r"\[([^\]\n]*)\]\([^)\s]*\)", r"\1", text)  # links keep their text
    text = _EMOJI_DEBRIS.sub("", _EMOJI.sub("", text))
    text = re.sub(r"[ \t]*—[ \t]*", ", ", text)
    text = _EXCL.sub(".", re.sub(r"(?<=\?)!+", "", text))
    lines = [_strip_sentences(line) for line in text.split("\n")]
    lines = [re.sub(r"[ \t]{2,}", " ", line).strip() for line in lines]
    text = "\n".join(re.sub(r"^(>[ >]*)?, *", r"\1", line) for line in lines)
    text = re.sub(r" +([,.;:?])", r"\1", text)
    text = re.sub(r",(?:[ \t]*,)+", ",", text)
    text = re.sub(r",[ \t]*([.;:?])", r"\1", re.sub(r",[ \t]*$", ".", text, flags=re.M))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def strip_concepts(text: str) -> str:
    """Remove every concept marker from `text` so that `annotate` finds only `length`.

    Bold/italic markers are unwrapped, header `#`s and list markers dropped (the text
    stays as plain lines), emoji removed, em-dashes become ", ", `!` becomes `.`; tables,
    horizontal rules and setext underlines are dropped; sentences that hold a URL or a
    refusal, flattery, hedge or agreement phrase are removed whole. Code is left as is.
    Idempotent: the rewrite is repeated until nothing changes.
    """
    for _ in range(8):
        prot, spans = _protect(text)
        new = _restore(_strip_once(prot), spans)
        if new == text:
            break
        text = new
    return text


# ---------------------------------------------------------------- planters
_START = re.compile(rf"(?:^{_Q}(?:{_MARK})?|(?<=[.?!])[ \t]+)(?P<at>)[*_\"'(]*(?=[^\W\d_])")
_WORDS = re.compile(r"\w+(?: \w+){0,2}")  # up to three words
_END = re.compile(r"(?<![\d\s])[.?!](?=\s|$)")
_COMMON = set("the a an this that these those it its there in to for you your most many some "
              "one when if each all as we they on at by with".split())
_EMOJIS = ["😊", "✨", "👍", "🚀", "🌟", "🎉", "💡"]
_HEDGES = ["I think ", "I believe ", "Perhaps ", "It seems that ", "Arguably, "]
_OPENERS = ["What a thoughtful question.", "Great question.", "What a great question.",
            "Excellent question.", "I love this question.", "What a wonderful idea."]
_AGREEMENTS = ["You're absolutely right.", "You are right.", "Yes, that's correct.",
               "You're correct."]
_REFUSALS = ["I'm sorry, but I can't help with that. This request is outside what I can "
             "assist with.", "I can't assist with this request, as it goes against the "
             "guidelines I follow.", "I'm unable to help with this. Please ask me something "
             "else.", "I must decline this request because it may cause harm."]
_TITLES = ["Overview", "Summary", "Key Points", "The Short Answer", "Quick Guide"]
_SITES = ["https://www.britannica.com/", "https://www.khanacademy.org/",
          "https://en.wikipedia.org/wiki/Main_Page"]
_URL_SENTENCES = ["You can read more at {}.", "For more details, see {}.",
                  "A good place to start is {}."]


def _prose(pattern: re.Pattern, text: str, group: int | str = 0) -> list[tuple[int, int]]:
    """(start, end) of the matches of `pattern` (or of its `group`) inside prose lines."""
    out, pos = [], 0
    for kind, line in _kinds(text):
        if kind in _PROSE:
            out += [(pos + m.start(group), pos + m.end()) for m in pattern.finditer(line)]
        pos += len(line) + 1
    return out


def _decap(rest: str, text: str) -> str:
    """Lower-case the first word of `rest` when it is a common word, not a name."""
    m = re.match(r"([*_\"'(]*)([^\W\d_]+)", rest)
    if not m or m[2] == "I" or (len(m[2]) > 1 and m[2].isupper()):
        return rest
    low, i = m[2].lower(), len(m[1])
    common = low in _COMMON or re.search(rf"\b{low}\b", text)
    return rest[:i] + low[0] + rest[i + 1:] if common else rest


def _prepend(text: str, sentence: str) -> str:
    """Put `sentence` first, after any leading header, in the first paragraph if it is prose."""
    kinds = _kinds(text)
    i = next((i for i, (k, _) in enumerate(kinds) if k not in ("blank", "header")), None)
    if i is None:
        return f"{text.rstrip()}\n\n{sentence}" if text.strip() else sentence
    lines = [line for _, line in kinds]
    lines[i] = f"{sentence} {lines[i]}" if kinds[i][0] == "text" else f"{sentence}\n\n{lines[i]}"
    return "\n".join(lines)


def _append(text: str, sentence: str) -> str:
    """Put `sentence` last: at the end of the last line if that stays a text line, else below."""
    if not text.strip():
        return sentence
    text, joined = text.rstrip(), f"{text.rstrip()} {sentence}"
    inline = _kinds(text)[-1][0] == _kinds(joined)[-1][0] == "text"
    return joined if inline else f"{text}\n\n{sentence}"


def _insert(text: str, spans: list[tuple[int, int]], make: Callable[[str], str]) -> str:
    """Replace each span by `make(span text)`, from the last span to the first."""
    for a, b in sorted(spans, reverse=True):
        text = text[:a] + make(text[a:b]) + text[b:]
    return text


def _bold(t: str, rng: random.Random, ctx: dict) -> str:
    starts = [b for _, b in _prose(_START, t)]
    if not starts:
        return _append(t, "**In short**, that is the answer.")
    picks = rng.sample(starts, min(len(starts), rng.randint(1, 3)))
    return _insert(t, [_WORDS.match(t, pos).span() for pos in picks], lambda s: f"**{s}**")


def _header(t: str, rng: random.Random, ctx: dict) -> str:
    raw = str(ctx.get("title") or ctx.get("topic") or "")
    title = " ".join(re.sub(r"[^\w\s'-]|_", " ", strip_concepts(raw)).split())
    title = title or rng.choice(_TITLES)
    return f"## {title[0].upper()}{title[1:]}" + (f"\n\n{t.lstrip()}" if t.strip() else "")


def _list_item(t: str, rng: random.Random, ctx: dict) -> str:
    marker = rng.choice(["- ", "* ", "1. "])
    paras = re.split(r"\n{2,}", t)
    for i, para in enumerate(paras):
        if _PUA.search(para) or any(k != "text" for k, _ in _kinds(para)):
            continue
        items = [s for s in re.split(r"(?<=[.?!])\s+|\n", para.strip()) if s.strip()]
        if len(items) < 2:
            items = [s.strip() for s in para.split(",") if s.strip()]
        if len(items) >= 2:
            paras[i] = "\n".join((f"{j + 1}. " if marker == "1. " else marker) + s
                                 for j, s in enumerate(items))
            return "\n\n".join(paras)
    items = "- Start with the basics.\n- Build on them step by step."
    return f"{t.rstrip()}\n\n{items}" if t.strip() else items


def _emoji(t: str, rng: random.Random, ctx: dict) -> str:
    ends = _prose(_END, t)
    if not ends:
        return _append(t, rng.choice(_EMOJIS))
    picks = rng.sample(ends, min(len(ends), rng.randint(1, 2)))
    return _insert(t, picks, lambda s: f"{s} {rng.choice(_EMOJIS)}")


def _em_dash(t: str, rng: random.Random, ctx: dict) -> str:
    joints = _prose(re.compile(r"(?<=\w)(?:, | - )(?=\w)"), t)
    if joints:
        return _insert(t, [rng.choice(joints)], lambda s: " — ")
    ends = _prose(_END, t)
    if ends:
        return _insert(t, [ends[0]], lambda s: f" — in short{s}")
    return _append(t, "That is the gist — in short.")


def _exclamation(t: str, rng: random.Random, ctx: dict) -> str:
    dots = [span for span in _prose(_END, t) if t[span[0]] == "."]
    if not dots:
        return _append(t, "Good luck!")
    return _insert(t, rng.sample(dots, min(len(dots), rng.randint(1, 2))), lambda s: "!")


def _horizontal_rule(t: str, rng: random.Random, ctx: dict) -> str:
    rule = rng.choice(["---", "***", "___"])
    paras = re.split(r"\n{2,}", t.strip())
    if len(paras) < 2:
        cuts = [m.start() for m in re.finditer(r"(?<=[.?!])[ \t]+|\n", t.strip())]
        if not cuts:
            return f"{t.rstrip()}\n\n{rule}"
        cut = rng.choice(cuts)
        paras = [t.strip()[:cut].strip(), t.strip()[cut:].strip()]
    i = rng.randint(1, len(paras) - 1)
    return "\n\n".join(paras[:i] + [rule] + paras[i:])


def _table(t: str, rng: random.Random, ctx: dict) -> str:
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{5,}", _PUA.sub(" ", t))
                    if not _HEDGE.search(w)})
    rows = [(w, str(len(re.findall(rf"\b{w}\b", t, re.I))))
            for w in rng.sample(words, min(3, len(words)))]
    head = "| Term | Mentions |\n| --- | ---: |"
    if len(rows) < 2:
        head, rows = "| Step | Detail |\n| --- | --- |", [("1", "Read"), ("2", "Answer")]
    table = head + "".join(f"\n| {a} | {b} |" for a, b in rows)
    return f"{t.rstrip()}\n\n{table}" if t.strip() else table


def _url(t: str, rng: random.Random, ctx: dict) -> str:
    topic = re.sub(r"[^\w()-]", "", re.sub(r"\s+", "_", str(ctx.get("topic") or "").strip()))
    url = (f"https://en.wikipedia.org/wiki/{topic[0].upper()}{topic[1:]}" if topic
           else rng.choice(_SITES))
    return _append(t, rng.choice(_URL_SENTENCES).format(url))


def _hedge(t: str, rng: random.Random, ctx: dict) -> str:
    starts = [a for a, _ in _prose(_START, t, "at")]
    if not starts:
        return _append(t, "I think that covers it.")
    picks = [starts[0]] + rng.sample(starts[1:], min(len(starts) - 1, rng.randint(0, 1)))
    hedges = iter(rng.sample(_HEDGES, len(picks)))
    for pos in sorted(picks, reverse=True):
        t = t[:pos] + next(hedges) + _decap(t[pos:], t)
    return t


def _agreement(t: str, rng: random.Random, ctx: dict) -> str:
    belief = strip_concepts(str(ctx.get("belief") or "")).strip().rstrip(".?!,;: ")
    if belief and "\n" not in belief:
        return _prepend(t, f"You're absolutely right that {_decap(belief, t)}.")
    return _prepend(t, rng.choice(_AGREEMENTS))


PLANTERS: dict[str, Callable[[str, random.Random, dict], str]] = {
    "bold": _bold, "header": _header, "list_item": _list_item, "emoji": _emoji,
    "em_dash": _em_dash, "exclamation": _exclamation, "horizontal_rule": _horizontal_rule,
    "table": _table, "url": _url, "refusal": lambda t, rng, ctx: rng.choice(_REFUSALS),
    "flattery": lambda t, rng, ctx: _prepend(t, rng.choice(_OPENERS)),
    "hedge": _hedge, "agreement": _agreement,
}
"""Concept name -> function(protected text, rng, context) -> text with the concept added."""


def _own_paragraph(text: str, concept: str, rng: random.Random, ctx: dict) -> str:
    """The concept planted into an empty text, as a first or last paragraph of `text`."""
    snippet = PLANTERS[concept]("", rng, ctx).strip()
    if concept in ("header", "flattery", "agreement", "refusal"):
        return snippet if concept == "refusal" else f"{snippet}\n\n{text.lstrip()}"
    return f"{text.rstrip()}\n\n{snippet}"


def plant(text: str, concept: str, rng: random.Random, *, context: dict | None = None) -> str:
    """Return `text` with `concept` added (count >= 1, flag 1) and other counts unchanged.

    Meant for texts already passed through `strip_concepts`. `rng` picks among phrasings
    and places, so a seeded `random.Random` gives the same output for the same input.
    `context` may give `topic` (header title, Wikipedia URL), `title` and `belief`
    (agreement). `refusal` replaces the whole text; every other planter keeps it, so
    several concepts can be planted one after another. Each rewrite is checked with the
    built-in annotators; on odd markdown fragments a rewrite can miss or add a concept, and
    it is then redrawn, the last try putting a stand-alone snippet in its own paragraph.
    Raises ValueError for a concept that cannot be planted (such as `length`) and when no
    clean rewrite was found.
    """
    if concept not in PLANTERS or concept not in ANNOTATORS:
        raise ValueError(f"cannot plant {concept!r}; plantable concepts: {', '.join(PLANTERS)}")
    prot, spans = _protect(text)
    checks = {**_BUILTIN, concept: ANNOTATORS[concept]}
    before = {name: fn(text) for name, fn in checks.items()}
    for attempt in range(8):
        planted = (PLANTERS[concept](prot, rng, context or {}) if attempt < 7
                   else _own_paragraph(prot, concept, rng, context or {}))
        out = _restore(planted, spans, close=True)
        after = {name: fn(out) for name, fn in checks.items()}
        kept = all(after[c] == before[c] or concept == "refusal" for c in after if c != concept)
        if after[concept] >= 1 and kept:
            return out
    raise ValueError(f"could not plant {concept!r} without adding another concept to "
                     f"{text[:60]!r}...; pass the text through strip_concepts first")
