import json

import pytest

from engine.data.builtin import builtin_rows
from engine.data.formats import (
    DataFormatError,
    detect_format,
    expect_format,
    split_implicit_prompt,
    validate_rows,
)
from engine.data.sources import load_rows, read_file, resolve_upload
from engine.spec import DatasetSpec

USER = [{"role": "user", "content": "hi"}]
ASSISTANT = [{"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"text": "abc"}, "text"),
        ({"messages": USER + ASSISTANT}, "messages"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "messages"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"prompt": USER, "completion": ASSISTANT}, "prompt_completion"),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
        ({"chosen": "a b", "rejected": "a c"}, "preference"),
        ({"prompt": "a", "completion": "b", "label": True}, "unpaired"),
        ({"prompt": "a", "answer": "7"}, "prompt_only"),
    ],
)
def test_detect_format_from_columns(row, fmt):
    assert detect_format([row]) == fmt


def test_unknown_columns_name_the_accepted_formats():
    with pytest.raises(
        DataFormatError, match=r"cannot tell the dataset format from the columns \['question'\]"
    ):
        detect_format([{"question": "x"}])


def test_empty_dataset_is_an_error():
    with pytest.raises(DataFormatError, match="empty"):
        detect_format([])


def test_row_errors_name_the_row_and_the_column():
    rows = [
        {"prompt": "fine", "completion": "ok"},
        {"prompt": "x", "completion": 3},
        {"prompt": USER, "completion": "a string after a conversational prompt"},
        {"prompt": [{"role": "robot", "content": "x"}], "completion": ASSISTANT},
    ]
    with pytest.raises(DataFormatError) as err:
        validate_rows(rows, "prompt_completion")
    text = str(err.value)
    assert "3 invalid row(s)" in text
    assert "row 1, column 'completion': expected a string or a list of messages, got int" in text
    assert "row 2, column 'completion': is a string but the row's prompt is a list of messages" in text
    assert "row 3, column 'prompt': message 0 has role 'robot'" in text
    assert [(e.row, e.column) for e in err.value.errors] == [
        (1, "completion"),
        (2, "completion"),
        (3, "prompt"),
    ]


def test_unpaired_label_must_be_boolean():
    with pytest.raises(DataFormatError, match=r"row 0, column 'label': expected true or false, got 'yes'"):
        validate_rows([{"prompt": "p", "completion": "c", "label": "yes"}], "unpaired")


def test_preference_rows_are_checked_per_column():
    rows = [{"prompt": "p", "chosen": "", "rejected": None}]
    with pytest.raises(DataFormatError) as err:
        validate_rows(rows, "preference")
    assert [(e.row, e.column) for e in err.value.errors] == [(0, "chosen"), (0, "rejected")]


def test_expect_format_refuses_a_format_the_algorithm_cannot_use():
    with pytest.raises(DataFormatError, match="dpo needs preference rows, but this dataset looks like text"):
        expect_format([{"text": "x"}], ("preference",), "dpo")


def test_sharegpt_conversations_become_messages():
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    fmt, out = expect_format(rows, ("messages",), "sft")
    assert fmt == "messages"
    assert out[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_implicit_prompt_is_the_shared_prefix():
    assert split_implicit_prompt("Q: 2+2? A: 4", "Q: 2+2? A: 5") == ("Q: 2+2? A:", " 4", " 5")
    p, c, r = split_implicit_prompt(USER + ASSISTANT, USER + [{"role": "assistant", "content": "no"}])
    assert p == USER and c == ASSISTANT and r[0]["content"] == "no"


def test_jsonl_reader_reports_bad_lines_by_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": \n{"text": "b"}\n')
    with pytest.raises(DataFormatError, match="line 3 is not valid JSON"):
        read_file(path)


def test_json_parquet_and_upload_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert read_file(tmp_path / "d.json") == rows
    assert read_file(tmp_path / "d.parquet") == rows
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "file-123.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert resolve_upload("file-123", uploads) == uploads / "file-123.jsonl"
    assert load_rows(DatasetSpec(file_id="file-123", num_rows=1), uploads_dir=uploads) == rows[:1]
    with pytest.raises(FileNotFoundError, match="uploaded file 'nope' not found"):
        resolve_upload("nope", uploads)
    with pytest.raises(ValueError, match="invalid file_id"):
        resolve_upload("../etc", uploads)


@pytest.mark.parametrize("name", ["chat", "preferences", "unpaired", "arithmetic"])
def test_builtins_are_deterministic_and_sized(name):
    a = load_rows(DatasetSpec(builtin=name, num_rows=17, seed=3))
    assert a == load_rows(DatasetSpec(builtin=name, num_rows=17, seed=3))
    assert a != load_rows(DatasetSpec(builtin=name, num_rows=17, seed=4))
    assert len(a) == 17
    fmt = detect_format(a)
    validate_rows(a, fmt)
    assert fmt == {"chat": "messages", "preferences": "preference", "unpaired": "unpaired"}.get(
        name, "prompt_only"
    )


def test_builtin_chat_answers_are_correct():
    for row in builtin_rows("chat", 200):
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        if q.startswith("Reverse the word: "):
            assert a == q.removeprefix("Reverse the word: ")[::-1]
        elif q.startswith("Capital of France"):
            assert a == "Paris"
        elif q.startswith("How many letters are in "):
            assert int(a) == len(q.removeprefix("How many letters are in ").rstrip("?"))


def test_builtin_preferences_chosen_follows_the_rule():
    for row in builtin_rows("preferences", 200):
        q, c, r = row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert c != r
        if q.startswith("What is "):
            a, b = q.removeprefix("What is ").rstrip("?").split("+")
            assert c == f"{a}+{b}={int(a) + int(b)}" and r != c


def test_unpaired_has_both_labels():
    rows = builtin_rows("unpaired", 40)
    assert {r["label"] for r in rows} == {True, False}
