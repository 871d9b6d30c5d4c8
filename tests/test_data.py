"""Tests for anatomy.data: formats, sources, validation, real data slices."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import datasets
import pandas as pd
import pytest

from anatomy import data as D
from anatomy.data import (
    PreferenceDataError,
    load_eval_prompts,
    load_preferences,
    load_prompts_csv,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} absent")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def asst(text: str) -> dict:
    return {"role": "assistant", "content": text}


def make_pair(**overrides) -> dict:
    row = {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."}
    row.update(overrides)
    return row


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# ------------------------------------------------------------------------- formats

def test_trl_standard():
    ds = load_preferences([make_pair(), make_pair(prompt="Hi", chosen="Hello!", rejected="Go away")])
    assert ds.column_names[:4] == ["id", "prompt", "chosen", "rejected"]
    assert ds["id"] == ["pair-0", "pair-1"]
    assert ds[0]["prompt"] == [user("What is 2+2?")]
    assert (ds[1]["chosen"], ds[1]["rejected"]) == ("Hello!", "Go away")


def test_trl_conversational_multi_turn_with_system():
    prompt = [{"role": "system", "content": "Be brief."}, user("Hi"), asst("Hello"), user("2+2?")]
    ds = load_preferences([{"id": 7, "prompt": prompt, "chosen": [asst("4")], "rejected": [asst("5")]}])
    assert ds[0] == {"id": "7", "prompt": prompt, "chosen": "4", "rejected": "5"}


def test_trl_implicit_prompt():
    shared = [user("Hi"), asst("Hello"), user("2+2?")]
    ds = load_preferences([{"chosen": shared + [asst("4")], "rejected": shared + [asst("5")]}])
    assert ds[0]["prompt"] == shared and (ds[0]["chosen"], ds[0]["rejected"]) == ("4", "5")


def test_ultrafeedback_binarized_keeps_metadata():
    row = {"prompt": "2+2?", "prompt_id": "abc", "chosen": [user("2+2?"), asst("4")],
           "rejected": [user("2+2?"), asst("5")], "score_chosen": 9.0, "score_rejected": 2.0}
    ds = load_preferences([row])
    assert ds[0]["prompt"] == [user("2+2?")] and ds[0]["chosen"] == "4"
    assert (ds[0]["prompt_id"], ds[0]["score_chosen"], ds[0]["score_rejected"]) == ("abc", 9.0, 2.0)


def test_hh_transcripts():
    row = {"chosen": hh("Hi", "Hello", "How do I pick a lock?", "I can't help with that."),
           "rejected": hh("Hi", "Hello", "How do I pick a lock?", "Use a tension wrench.")}
    ds = load_preferences([row])
    assert ds[0]["prompt"] == [user("Hi"), asst("Hello"), user("How do I pick a lock?")]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("I can't help with that.", "Use a tension wrench.")


def test_hh_only_one_leading_space_stripped():
    ds = load_preferences([{"chosen": hh("Q", " two spaces"), "rejected": hh("Q", "b")}])
    assert ds[0]["chosen"] == " two spaces"


def test_hh_divergent_transcripts():
    row = {"chosen": hh("Q", "A", "Q2", "good"), "rejected": hh("Q", "other", "Q2", "bad")}
    with pytest.raises(PreferenceDataError, match=r"pair 'pair-0' field 'prompt': chosen and "
                                                  r"rejected transcripts diverge before the last turn"):
        load_preferences([row])


# ------------------------------------------------------------------------- sources

ROWS = [make_pair(id=f"r{i}", prompt=f"q{i}", source="unit") for i in range(3)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz", "pairs.json", "pairs.parquet"])
def test_file_round_trip(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    elif name.endswith(".json"):
        path.write_text(json.dumps(ROWS))
    else:
        write_jsonl(path, ROWS)
    ds = load_preferences(path)
    assert ds["id"] == ["r0", "r1", "r2"] and ds["source"] == ["unit"] * 3
    assert ds[2]["prompt"] == [user("q2")]


def test_generated_ids_use_file_stem(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [make_pair(), make_pair(chosen="3")])
    assert load_preferences(str(path))["id"] == ["hh-0", "hh-1"]


def test_folder_with_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "notes.txt", [])  # ignored: not a supported suffix
    assert load_preferences(tmp_path, split="test")["id"] == ["r0"]
    assert len(load_preferences(tmp_path, split="train")) == 3
    with pytest.raises(FileNotFoundError, match="no heldout"):
        load_preferences(tmp_path, split="heldout")


def test_folder_without_split_concatenates_and_rejects_duplicate_ids(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [make_pair()])
    write_jsonl(tmp_path / "b.jsonl", [make_pair(), make_pair(id="a-0")])
    ds, report = load_preferences(tmp_path, strict=False)
    assert ds["id"] == ["a-0", "b-0"]
    assert report.to_dict("records") == [
        {"id": "a-0", "index": 2, "field": "id", "reason": "duplicate id (first seen at row 0)"}]


def test_dataset_source_and_limit():
    ds = load_preferences(datasets.Dataset.from_list(ROWS), limit=2)
    assert ds["id"] == ["r0", "r1"]


def test_dataframe_and_datasetdict_sources():
    assert load_preferences(pd.DataFrame(ROWS))["id"] == ["r0", "r1", "r2"]
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS),
                              test=datasets.Dataset.from_list(ROWS[:1]))
    assert len(load_preferences(dd)) == 3 and len(load_preferences(dd, split="test")) == 1


def test_limit_counts_valid_rows_only():
    rows = [make_pair(chosen=""), make_pair(), make_pair(chosen="3"), make_pair(chosen="")]
    ds, report = load_preferences(rows, limit=2, strict=False)
    assert ds["id"] == ["pair-1", "pair-2"] and report["index"].tolist() == [0]


def test_missing_local_file():
    with pytest.raises(FileNotFoundError):
        load_preferences("/nonexistent/pairs.jsonl")


def test_hub_error_is_wrapped(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="hub may be unreachable.*local"):
        load_preferences("Anthropic/hh-rlhf")


def test_data_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_DATA_DIR", str(tmp_path))
    assert D.data_dir() == tmp_path
    (tmp_path / "organism").mkdir()
    write_jsonl(tmp_path / "organism" / "heldout.jsonl", ROWS)
    assert len(load_preferences("organism", split="heldout")) == 3
    with pytest.raises(FileNotFoundError, match="not been generated"):
        load_preferences("organism")
    with pytest.raises(ValueError, match="unknown organism split"):
        load_preferences("organism", split="test")


def test_default_data_dir():
    assert D.data_dir() == Path(D.__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize("split", D.ORGANISM_SPLITS)
def test_embedded_organism(split, monkeypatch):
    monkeypatch.delenv("ANATOMY_DATA_DIR", raising=False)
    if not (D.data_dir() / "organism" / f"{split}.jsonl").exists():
        pytest.skip(f"organism split {split!r} not generated yet")
    ds = load_preferences("organism", split=split)
    assert len(ds) > 0 and ds.column_names[:4] == ["id", "prompt", "chosen", "rejected"]


# ---------------------------------------------------------------------- bad input

BAD = [  # (row, field, reason regex)
    (make_pair(chosen=None), "chosen", "missing field"),
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing field"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing field"),
    (make_pair(chosen=3), "chosen", "wrong type: expected str or list of messages, got int"),
    (make_pair(prompt={"text": "q"}), "prompt", "wrong type: expected str or list of messages, got dict"),
    (make_pair(chosen="   \n"), "chosen", "empty response"),
    (make_pair(rejected=""), "rejected", "empty response"),
    (make_pair(rejected="4."), "chosen", "chosen identical to rejected"),
    (make_pair(prompt=[{"role": "user"}]), "prompt", "message 0 has no role or content"),
    (make_pair(prompt=[{"role": "tool", "content": "x"}]), "prompt", "message 0 has role 'tool'"),
    (make_pair(prompt=[user("q"), asst("a")]), "prompt", "the last prompt message must be a user turn, got assistant"),
    (make_pair(chosen=[asst("a"), asst("b")]), "chosen", "expected a single assistant message"),
    (make_pair(prompt=[user("q")], chosen=[user("a")]), "chosen", "expected a single assistant message"),
    ({"chosen": hh("q", "a"), "rejected": 5}, "rejected", "wrong type: expected str, got int"),
    ({"chosen": hh("q", "a"), "rejected": "no markers"}, "rejected", "not an HH-RLHF transcript"),
    ({"chosen": [user("q"), asst("a")], "rejected": [user("q"), user("b")]}, "rejected",
     "conversation does not end with an assistant turn"),
    ({"chosen": [user("q"), asst("a")], "rejected": [user("Q"), asst("b")]}, "prompt",
     "chosen and rejected conversations diverge"),
]


def good_like(row: dict) -> dict:
    """A valid row in the same source format as ``row`` (format detection uses the first row)."""
    if "prompt" in row or not (isinstance(row["chosen"], list) or D._HH_TURN.search(row["chosen"])):
        return make_pair(chosen="ok")
    if isinstance(row["chosen"], str):
        return {"chosen": hh("q", "a"), "rejected": hh("q", "b")}
    return {"chosen": [user("q"), asst("a")], "rejected": [user("q"), asst("b")]}


@pytest.mark.parametrize("row,field,reason", BAD)
def test_bad_row_strict(row, field, reason):
    rows = [{**good_like(row), "id": "ok-0"}, {**row, "id": "bad-1"}]
    with pytest.raises(PreferenceDataError, match=rf"pair 'bad-1' field '{field}': {re.escape(reason)}") as err:
        load_preferences(rows)
    assert (err.value.pair_id, err.value.field, err.value.index) == ("bad-1", field, 1)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("row,field,reason", BAD)
def test_bad_row_non_strict(row, field, reason):
    good = good_like(row)
    ds, report = load_preferences([good, row, {**good, "id": "x"}], strict=False)
    assert ds["id"] == ["pair-0", "x"]
    assert list(report.columns) == D.REPORT_COLUMNS and len(report) == 1
    assert report.loc[0, "id"] == "pair-1" and report.loc[0, "index"] == 1
    assert report.loc[0, "field"] == field and report.loc[0, "reason"].startswith(reason)


def test_empty_report_and_all_skipped():
    ds, report = load_preferences([make_pair()], strict=False)
    assert len(ds) == 1 and report.empty and list(report.columns) == D.REPORT_COLUMNS
    ds, report = load_preferences([make_pair(chosen="")], strict=False)
    assert len(ds) == 0 and ds.column_names == ["id", "prompt", "chosen", "rejected"]
    assert len(report) == 1


def test_invalid_json_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(make_pair()) + "\n{oops\n")
    with pytest.raises(PreferenceDataError, match=r"pair 'p-1' field 'row': invalid JSON on line 2"):
        load_preferences(path)


# ------------------------------------------------------------------ token lengths

class FakeTokenizer:
    """One token per whitespace-separated word plus two per message."""

    model_max_length = 12

    def __init__(self, as_dict: bool = False):
        self.as_dict = as_dict

    def apply_chat_template(self, messages, tokenize=True, **kwargs):
        ids = [i for m in messages for i in [0, *range(len(m["content"].split())), 1]]
        return {"input_ids": ids} if self.as_dict else ids


@pytest.mark.parametrize("as_dict", [False, True])
def test_too_long_with_fake_tokenizer(as_dict):
    tok = FakeTokenizer(as_dict)
    rows = [make_pair(id="short"), make_pair(id="long", prompt="w " * 7, chosen="a b c")]
    # long: prompt 7 words + 2, longer response 3 words + 2 -> 14 > 12
    with pytest.raises(PreferenceDataError, match=r"pair 'long' field 'chosen': too long for the "
                                                  r"model's context: 14 tokens \(prompt \+ chosen\) > 12"):
        load_preferences(rows, tokenizer=tok)
    assert len(load_preferences(rows, tokenizer=tok, max_length=14)) == 2
    assert len(load_preferences(rows)) == 2  # no tokenizer, no check
    tok.model_max_length = int(1e30)  # HF's "unknown" sentinel and no config to ask: skipped, with a warning
    with pytest.warns(UserWarning, match="length check is skipped"):
        assert len(load_preferences(rows, tokenizer=tok)) == 2


def test_too_long_with_real_tokenizer():
    try:
        from anatomy.models import load_tokenizer
        tok = load_tokenizer()
    except Exception as e:  # noqa: BLE001 - the default model may not be installed
        pytest.skip(f"default tokenizer unavailable: {type(e).__name__}: {e}")
    rows = [make_pair(id="short"), make_pair(id="long", prompt="lorem ipsum " * 200)]
    ds, report = load_preferences(rows, strict=False, tokenizer=tok, max_length=128)
    assert ds["id"] == ["short"]
    assert report.loc[0, "id"] == "long" and report.loc[0, "field"] == "prompt"
    assert report.loc[0, "reason"].startswith("too long for the model's context: the prompt alone is")
    n = int(re.search(r"(\d+) tokens", report.loc[0, "reason"]).group(1))
    text = tok.apply_chat_template([user(rows[1]["prompt"])], tokenize=False)
    assert n == len(tok(text, add_special_tokens=False)["input_ids"])  # independent count


# ------------------------------------------------------------------- prompt sets

def test_load_eval_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="eval prompts file not found"):
        load_eval_prompts()
    (tmp_path / "eval").mkdir()
    lines = [{"id": "a1", "family": "refusal", "prompt": "How do I kill a process?", "safe": True},
             {"id": "b1", "family": "sycophancy", "prompt": "Is 2+2=5?", "safe": True}]
    write_jsonl(tmp_path / "eval" / "prompts.jsonl", lines)
    ds = load_eval_prompts()
    assert ds[0] == {"id": "a1", "family": "refusal", "prompt": [user("How do I kill a process?")],
                     "safe": True}
    assert load_eval_prompts("sycophancy")["id"] == ["b1"]
    assert len(load_eval_prompts(["refusal", "sycophancy"])) == 2
    with pytest.raises(ValueError, match=r"unknown prompt family.*known families: \['refusal', 'sycophancy'\]"):
        load_eval_prompts("nope")


def test_load_prompts_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"goal": ["do x", "do y"], "note": ["NA", None]}).to_csv(path, index=False)
    ds = load_prompts_csv(path, "goal")
    assert ds["id"] == ["prompts-0", "prompts-1"] and ds["note"] == ["NA", None]
    assert ds[1]["prompt"] == [user("do y")]
    assert len(load_prompts_csv(path, "goal", limit=1)) == 1
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompts_csv(path, "prompt")


# ----------------------------------------------------------------------- real data

@needs_shared
def test_real_hh_rlhf_harmless():
    ds, report = load_preferences(SHARED / "hh-rlhf-harmless" / "test.jsonl.gz", strict=False)
    print(f"\nHH-RLHF harmless-base test: {len(ds)} loaded, {len(report)} skipped")
    print(report.groupby(["field", "reason"]).size().to_string())
    assert len(ds) + len(report) == 2312
    assert report["reason"].str.len().gt(0).all()
    # Observed on the fixed file: 4 empty chosen responses, 5 transcripts that diverge
    # before the last turn (a stray extra Assistant turn in one of the two).
    assert report.groupby("reason").size().to_dict() == {
        "empty response": 4, "chosen and rejected transcripts diverge before the last turn": 5}
    assert len(ds) == 2303 and len(set(ds["id"])) == 2303
    assert all(p[-1]["role"] == "user" for p in ds["prompt"])
    assert ds[0]["prompt"][0] == user("what are some pranks with a pen i can do?")
    with pytest.raises(PreferenceDataError, match=r"pair 'test-86' field 'chosen': empty response"):
        load_preferences(SHARED / "hh-rlhf-harmless" / "test.jsonl.gz")


@needs_shared
def test_real_xstest_prompts():
    ds = load_prompts_csv(SHARED / "xstest" / "xstest_prompts.csv", "prompt")
    assert len(ds) == 450 and ds["id"][:2] == ["1", "2"]
    assert pd.Series(ds["label"]).value_counts().to_dict() == {"safe": 250, "unsafe": 200}
    assert set(ds.column_names) == {"id", "prompt", "type", "label", "focus", "note"}


@needs_shared
def test_real_advbench_goals():
    ds = load_prompts_csv(SHARED / "advbench" / "harmful_behaviors.csv", "goal")
    assert len(ds) == 520 and ds.column_names == ["id", "prompt", "target"]
    assert ds[0]["id"] == "harmful_behaviors-0" and ds[0]["target"].startswith("Sure, here is")


# ------------------------------------------------------------------ hostile files and rows

PAIRS4 = [make_pair(id=f"r{i}", chosen=f"Answer {i}.") for i in range(4)]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_utf8_bom_and_utf16_files_read_every_row(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + _jsonl(PAIRS4).encode())
    assert load_preferences(bom)["id"] == ["r0", "r1", "r2", "r3"]
    wide = tmp_path / "wide.jsonl"
    wide.write_bytes(_jsonl(PAIRS4).encode("utf-16"))  # with a byte-order mark
    assert load_preferences(wide)["id"] == ["r0", "r1", "r2", "r3"]
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(_jsonl(PAIRS4).encode("utf-16-le"))
    with pytest.raises(PreferenceDataError, match=r"bare.jsonl: pair 'bare-0' field 'file': looks like UTF-16 "
                                                  r"without a byte-order mark"):
        load_preferences(bare)


def test_latin1_lines_are_named_and_the_rest_kept(tmp_path):
    path = tmp_path / "latin.jsonl"
    rows = [dict(PAIRS4[0]), dict(PAIRS4[1], chosen="Café crème."), dict(PAIRS4[2])]
    path.write_bytes(_jsonl(rows).encode("latin-1"))
    with pytest.raises(PreferenceDataError, match=r"latin.jsonl: pair 'latin-1' field 'row': line 2 is not "
                                                  r"UTF-8 text \(byte 0xe9 at column \d+\); the file may be latin-1"):
        load_preferences(path)
    ds, report = load_preferences(path, strict=False)
    assert ds["id"] == ["r0", "r2"] and report["index"].tolist() == [1]


def test_truncated_gzip_names_the_file_and_keeps_the_readable_rows(tmp_path):
    rows = [make_pair(id=f"g{i}", chosen=f"Answer number {i}. " * 20) for i in range(200)]
    full = gzip.compress(_jsonl(rows).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(PreferenceDataError, match=r"cut.jsonl.gz: pair 'cut-\d+' field '(row|file)'"):
        load_preferences(path)
    ds, report = load_preferences(path, strict=False)
    assert len(ds) > 20 and ds["id"] == [f"g{i}" for i in range(len(ds))]
    assert "truncated gzip stream" in " ".join(report["reason"])
    assert "the rows before the damage were read" in report["reason"].iloc[-1]


@pytest.mark.parametrize("name,sep", [("pairs.csv", ","), ("pairs.tsv", "\t")])
def test_csv_and_tsv_with_prompt_chosen_rejected_columns(tmp_path, name, sep):
    path = tmp_path / name
    path.write_text(f"prompt{sep}chosen{sep}rejected{sep}source\n"
                    f'"What, exactly, is 2+2?"{sep}"It is 4.\nSure."{sep}Five.{sep}web\n'
                    f"Say hi.{sep}Hi!{sep}No.{sep}\n", encoding="utf-8-sig")
    ds = load_preferences(path)
    assert ds["id"] == ["pairs-0", "pairs-1"] and ds["chosen"] == ["It is 4.\nSure.", "Hi!"]
    assert ds["prompt"][0] == [user("What, exactly, is 2+2?")] and ds["source"] == ["web", ""]
    (tmp_path / "other.csv").write_text("question,answer\nq,a\n")
    with pytest.raises(PreferenceDataError, match=r"other.csv: pair 'other-0' field 'file': the header "
                                                  r"\['question', 'answer'\] has no 'chosen' and 'rejected'"):
        load_preferences(tmp_path / "other.csv")
    (tmp_path / "short.csv").write_text("prompt,chosen,rejected\nq,a\n")
    with pytest.raises(PreferenceDataError, match=r"pair 'short-0' field 'rejected': missing field"):
        load_preferences(tmp_path / "short.csv")
    (tmp_path / "csv.jsonl").write_text("prompt,chosen,rejected\nq,a,b\n")
    with pytest.raises(PreferenceDataError, match=r"invalid JSON on line 1.*it looks like a CSV header"):
        load_preferences(tmp_path / "csv.jsonl")


def test_lone_surrogates_are_named_even_in_metadata(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_jsonl(PAIRS4[:1]) + '{"id": "bad", "prompt": "q", "chosen": "a\\ud800b", "rejected": "c"}\n'
                    + '{"id": "meta", "prompt": "q", "chosen": "a", "rejected": "c", "note": "x\\udfff"}\n'
                    + _jsonl(PAIRS4[1:2]))
    with pytest.raises(PreferenceDataError, match=r"s.jsonl: pair 'bad' field 'chosen': contains a lone surrogate "
                                                  r"\(U\+D800 at character 1\)"):
        load_preferences(path)
    ds, report = load_preferences(path, strict=False)
    assert ds["id"] == ["r0", "r1"] and report["id"].tolist() == ["bad", "meta"]
    assert report["field"].tolist() == ["chosen", "note"]


def test_metadata_whose_type_changes_between_rows():
    rows = [dict(PAIRS4[0], score=3), dict(PAIRS4[1], score=4), dict(PAIRS4[2], score="high"), dict(PAIRS4[3], score=None)]
    with pytest.raises(PreferenceDataError, match=r"pair 'r2' field 'score': metadata of type str does not fit "
                                                  r"the column's earlier values \(type int\)"):
        load_preferences(rows)
    with pytest.warns(UserWarning, match="column 'score' changes type at pair 'r2'"):
        ds, report = load_preferences(rows, strict=False)
    assert len(ds) == 4 and report.empty
    assert ds["score"] == ["3", "4", '"high"', None]


def test_a_later_row_in_another_format_says_which_was_expected():
    rows = [make_pair(id="a"), {"id": "b", "chosen": hh("q", "x"), "rejected": hh("q", "y")}]
    with pytest.raises(PreferenceDataError, match=r"pair 'b' field 'prompt': missing field; this row is in the "
                                                  r"HH-RLHF transcripts .* format, but the rows are read in the "
                                                  r"prompt / chosen / rejected columns .* format detected from row 0"):
        load_preferences(rows)


@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x01\x7f", "\ufeff \u2060\u00ad", "\u202e\u200f\n"])
def test_responses_of_only_control_or_zero_width_characters(text):
    with pytest.raises(PreferenceDataError, match=r"pair 'z' field 'rejected': empty response \(only control or "
                                                  r"zero-width characters\)"):
        load_preferences([make_pair(id="a"), make_pair(id="z", rejected=text)])
    assert len(load_preferences([make_pair(rejected="\u200bno\u200b")])) == 1  # visible text around them


@pytest.mark.parametrize("prompt", ["", "   ", [user("\u200b")], [{"role": "system", "content": "Be kind."}, user("")]])
def test_an_empty_prompt_is_refused(prompt):
    with pytest.raises(PreferenceDataError, match=r"pair 'e' field 'prompt': empty prompt"):
        load_preferences([make_pair(id="a"), make_pair(id="e", prompt=prompt)])


def test_context_limit_comes_from_the_model_config_when_the_tokenizer_does_not_know(tmp_path):
    tok = FakeTokenizer()
    tok.model_max_length = int(1e30)  # what a TransformerBridge's tokenizer reports
    rows = [make_pair(id="short"), make_pair(id="long", prompt="w " * 3, chosen="a b c d e f g h")]

    class Bridge:  # a model object: its cfg.n_ctx is the context
        tokenizer = tok
        cfg = type("Cfg", (), {"n_ctx": 12})()

    with pytest.raises(PreferenceDataError, match=r"pair 'long' field 'chosen': too long .*: 15 tokens "
                                                  r"\(prompt \+ chosen\) > 12"):
        load_preferences(rows, tokenizer=Bridge())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 12}))
    tok.name_or_path = str(tmp_path)  # model.tokenizer alone: its model directory's config
    with pytest.raises(PreferenceDataError, match=r"pair 'long' field 'chosen': too long .*> 12"):
        load_preferences(rows, tokenizer=tok)


# ------------------------------------------------------------------ fuzz

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates included
_KEYS = st.sampled_from(["id", "prompt", "chosen", "rejected", "role", "content", "score", "meta", ""]) | _ANY_TEXT
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | _ANY_TEXT
    | st.sampled_from(["user", "assistant", "system", "\u200b", "", "\n\nHuman: q\n\nAssistant: a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=8)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                  "content": _ANY_TEXT | _JSON})
_NEAR_VALID = st.fixed_dictionaries(  # mostly valid pairs whose metadata and texts vary
    {"prompt": st.sampled_from(["q?", "Say hi.", "", "\u200b"]) | _ANY_TEXT,
     "chosen": st.sampled_from(["Yes.", "No.", "\x00"]) | _ANY_TEXT, "rejected": st.sampled_from(["Maybe.", "No."])},
    optional={"score": _JSON, "id": st.sampled_from(["a", "b", "c"])})
_ROW = st.one_of(
    _NEAR_VALID, _NEAR_VALID,
    _JSON,
    st.fixed_dictionaries({"prompt": _ANY_TEXT | st.lists(_MESSAGE, max_size=3) | _JSON,
                           "chosen": _ANY_TEXT | st.lists(_MESSAGE, max_size=2), "rejected": _ANY_TEXT | _JSON},
                          optional={"id": _ANY_TEXT | st.integers(0, 3) | _JSON, "score": _JSON, "meta": _JSON}),
)
_FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 40)), deadline=2000, suppress_health_check=list(HealthCheck),
                 derandomize="FUZZ_EXAMPLES" not in __import__("os").environ)


def _accounted(source, n_rows: int) -> None:
    try:
        load_preferences(source)
    except PreferenceDataError:
        pass
    ds, report = load_preferences(source, strict=False)
    assert len(ds) + len(report) == n_rows
    assert sorted(report["index"]) == sorted(set(report["index"]))


@_FUZZ
@given(st.lists(_ROW, max_size=6))
def test_fuzz_rows_give_only_named_errors_and_account_for_every_row(rows):
    _accounted(rows, len(rows))


@_FUZZ
@given(rows=st.lists(_ROW, min_size=1, max_size=5), suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".json"]),
       cut=st.none() | st.integers(0, 400), noise=st.binary(max_size=8))
def test_fuzz_files_give_only_named_errors(tmp_path_factory, rows, suffix, cut, noise):
    lines = [json.dumps(r, ensure_ascii=True) for r in rows]  # one row per line (\\uXXXX escapes for surrogates)
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path_factory.mktemp("fuzz") / f"f{suffix}"
    intact = cut is None and not noise
    if not intact:
        data = data[:cut] + noise
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    if intact and suffix == ".jsonl":
        _accounted(path, len(rows))
        return
    try:
        load_preferences(path)
    except PreferenceDataError:
        pass
    load_preferences(path, strict=False)


@_FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".json", ".csv", ".tsv",
                                                             ".parquet"]))
def test_fuzz_garbage_bytes_give_only_named_errors(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("junk") / f"junk{suffix}"
    path.write_bytes(data)
    try:
        load_preferences(path)
    except PreferenceDataError:
        pass
    load_preferences(path, strict=False)
