"""Data loading: formats, column detection, presets, splitting, cleaning and every bad-input error."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_rows
from datasets import ClassLabel, Dataset, Features, Value

from distillkit.cli import UsageError
from distillkit.data import DataTrainingArguments, load_text_classification_data


def load(path, seed=0, class_names=None, **kw):
    return load_text_classification_data(
        DataTrainingArguments(dataset_name=str(path), **kw), seed=seed, class_names=class_names
    )


def test_directory_of_csv_splits(tiny_data_dir):
    data = load(tiny_data_dir)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 96, "validation": 24, "test": 24}
    assert data.splits["train"].column_names == ["text", "label"]
    assert data.num_labels == 2


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_single_file_formats_get_stratified_splits(tmp_path, fmt):
    df = synthetic_rows(200, seed=1)
    df.loc[:179, "label"] = 0  # 90% one class: the split must keep the ratio
    df.loc[180:, "label"] = 1
    path = tmp_path / f"comments.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    data = load(path, validation_split_percentage=10, test_split_percentage=10)
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 160, "validation": 20, "test": 20}
    for split in ("validation", "test"):
        assert sum(data.splits[split]["label"]) == 2  # 10% positives, stratified
    # Seeded: the same seed gives the same split, another seed another one.
    again = load(path, validation_split_percentage=10, test_split_percentage=10)
    assert again.splits["test"]["text"] == data.splits["test"]["text"]
    other = load(path, seed=1, validation_split_percentage=10, test_split_percentage=10)
    assert other.splits["test"]["text"] != data.splits["test"]["text"]


def test_column_detection_comment_text_and_labels(tmp_path):
    df = synthetic_rows(40, seed=2).rename(columns={"text": "comment_text", "label": "labels"})
    df.to_csv(tmp_path / "train.csv", index=False)
    data = load(tmp_path)
    assert data.source["text_column"] == "comment_text" and data.source["label_column"] == "labels"


def test_max_samples_are_seeded_subsets(tiny_data_dir):
    a = load(tiny_data_dir, max_train_samples=10, max_eval_samples=5, max_test_samples=7)
    b = load(tiny_data_dir, max_train_samples=10, max_eval_samples=5, max_test_samples=7)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 10, "validation": 5, "test": 7}
    assert a.splits["train"]["text"] == b.splits["train"]["text"]
    full = load(tiny_data_dir)
    assert set(a.splits["train"]["text"]) <= set(full.splits["train"]["text"])


def test_empty_and_missing_texts_are_dropped_with_a_count(tmp_path, caplog):
    df = synthetic_rows(30, seed=3)
    df.loc[3, "text"] = ""
    df.loc[5, "text"] = "   "
    df.loc[7, "text"] = None
    df.to_csv(tmp_path / "train.csv", index=False)
    with caplog.at_level("WARNING"):
        data = load(tmp_path, test_split_percentage=20, validation_split_percentage=20)
    assert sum(len(s) for s in data.splits.values()) == 27
    assert "dropped 3 of 30 rows" in caplog.text


def test_label_names_become_id2label(tiny_data_dir):
    data = load(tiny_data_dir, class_names=["clean", "toxic"])
    assert data.id2label == {0: "clean", 1: "toxic"} and data.label2id == {"clean": 0, "toxic": 1}


def test_local_copy_named_like_a_preset_gets_its_label_names(tmp_path):
    directory = tmp_path / "wiki_toxic"
    directory.mkdir()
    synthetic_rows(40, seed=4).to_csv(directory / "train.csv", index=False)
    assert load(directory).label_names == ["non-toxic", "toxic"]
    sample = tmp_path / "wiki_toxic_small"
    sample.mkdir()
    synthetic_rows(40, seed=4).to_csv(sample / "train.csv", index=False)
    assert load(sample).label_names == ["non-toxic", "toxic"]


def test_toxicity_threshold_on_a_local_csv(tmp_path):
    df = pd.DataFrame({"text": [f"comment {i}" for i in range(40)], "toxicity": np.linspace(0, 1, 40)})
    df.to_csv(tmp_path / "civil.csv", index=False)
    data = load(tmp_path / "civil.csv", label_threshold=0.6, test_split_percentage=25, validation_split_percentage=25)
    labels = sum((list(data.splits[s]["label"]) for s in data.splits), [])
    assert sum(labels) == int((np.linspace(0, 1, 40) >= 0.6).sum())
    assert data.source["label_threshold"] == 0.6 and data.source["label_column"] == "toxicity"


def test_civil_comments_preset_thresholds_at_half_by_default(tmp_path):
    directory = tmp_path / "civil_comments"
    directory.mkdir()
    df = pd.DataFrame({"text": [f"comment {i}" for i in range(20)], "toxicity": [0.1, 0.55] * 10})
    df.to_csv(directory / "train.csv", index=False)
    data = load(directory, test_split_percentage=20, validation_split_percentage=20)
    assert data.source["label_threshold"] == 0.5
    assert sum(sum(data.splits[s]["label"]) for s in data.splits) == 10


def test_hate_speech18_four_way_labels_become_hate_vs_rest(tmp_path):
    directory = tmp_path / "hate_speech18"
    directory.mkdir()
    names = ["noHate", "hate", "idk/skip", "relation"]
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    rows = {"text": [f"sentence {i}" for i in range(40)], "label": [i % 4 for i in range(40)]}
    Dataset.from_dict(rows, features=features).to_parquet(str(directory / "train.parquet"))
    data = load(directory, test_split_percentage=20, validation_split_percentage=20)
    assert data.label_names == ["noHate", "hate"]
    train = data.splits["train"]
    for label, original in zip(train["label"], train["label_original"]):
        assert label == (original == "hate")


def test_go_emotions_label_lists_take_the_first_label(tmp_path):
    directory = tmp_path / "go_emotions"
    directory.mkdir()
    rows = [{"text": f"text {i}", "labels": [i % 28, 27]} for i in range(112)]
    with open(directory / "train.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    data = load(directory, test_split_percentage=25, validation_split_percentage=25)
    assert data.num_labels == 28 and data.id2label[27] == "neutral"
    for text, label in zip(data.splits["train"]["text"], data.splits["train"]["label"]):
        assert label == int(text.split()[1]) % 28


# ---- bad input: each a UsageError with a message that says what to do ----


def test_missing_column_names_the_existing_columns(tiny_data_dir):
    with pytest.raises(UsageError, match=r"no such column; the data set has columns: id, text, label"):
        load(tiny_data_dir, text_column="body")


def test_no_detectable_text_column(tmp_path):
    pd.DataFrame({"body": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"no text column found .* columns: body, label; pass --text_column"):
        load(tmp_path)


def test_label_out_of_range(tmp_path):
    df = synthetic_rows(30, seed=5)
    df.loc[4, "label"] = 2
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"split 'train', row 4: label 2 is outside the label set \[0, 2\) \(from --class_names\)"):
        load(tmp_path, class_names=["a", "b"])


def test_negative_label(tmp_path):
    df = synthetic_rows(30, seed=5)
    df.loc[4, "label"] = -1
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"row 4: label -1 is outside"):
        load(tmp_path)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_label_outside_the_train_label_set_in_another_split(tmp_path, split):
    """One stray 5 in a held-out split of a 0/1 data set is an error, not a 6-class model."""
    for name, seed in (("train", 1), ("validation", 2), ("test", 3)):
        df = synthetic_rows(20, seed=seed)
        if name == split:
            df.loc[7, "label"] = 5
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    with pytest.raises(
        UsageError, match=rf"split '{split}', row 7: label 5 is outside the label set \[0, 2\) \(from the train split's labels\)"
    ):
        load(tmp_path)


def test_stray_label_in_train_of_a_binary_data_set(tmp_path):
    df = synthetic_rows(30, seed=5)
    df.loc[11, "label"] = 5
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"split 'train', row 11: label 5 leaves class id\(s\) 2, 3, 4 unused"):
        load(tmp_path)


def test_gapped_label_ids_need_class_names(tmp_path):
    df = synthetic_rows(30, seed=5)
    df["label"] = [0, 5] * 15
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"row 1: label 5 leaves class id\(s\) 1, 2, 3, 4 unused .* pass --class_names"):
        load(tmp_path)
    # The class names say how many classes there are: six, two of them seen.
    names = ["a", "b", "c", "d", "e", "f"]
    data = load(tmp_path, class_names=names, test_split_percentage=20, validation_split_percentage=20)
    assert data.num_labels == 6 and data.id2label[5] == "f"
    # Declared names cap the label set in every split, too.
    with pytest.raises(UsageError, match=r"label 5 is outside the label set \[0, 3\) \(from --class_names\)"):
        load(tmp_path, class_names=["a", "b", "c"])


def test_three_classes_from_the_train_split(tmp_path):
    synthetic_rows(30, seed=5, num_labels=3).to_csv(tmp_path / "train.csv", index=False)
    assert load(tmp_path, test_split_percentage=20, validation_split_percentage=20).num_labels == 3


@pytest.mark.parametrize("script", ["run_lora", "run_distill"])
def test_scripts_refuse_a_stray_label_before_writing(tmp_path, tiny_base_model_dir, script, capsys):
    import importlib

    from conftest import common_args

    data = tmp_path / "data"
    data.mkdir()
    for name, seed in (("train", 1), ("validation", 2), ("test", 3)):
        df = synthetic_rows(20, seed=seed)
        if name == "test":
            df.loc[3, "label"] = 5
        df.to_csv(data / f"{name}.csv", index=False)
    out = tmp_path / "exp" / "run"
    flag = "model_name_or_path" if script == "run_lora" else "teacher_name_or_path"
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(common_args(data, out, **{flag: tiny_base_model_dir}))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        (
            "error: split 'test', row 3: label 5 is outside the label set [0, 2) (from the train split's labels); "
            "labels must be class ids (fix the row, or check --label_column / --class_names)"
        )
    ]
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("bad", [0.5, "toxic"])
def test_non_integer_label(tmp_path, bad):
    df = synthetic_rows(30, seed=6).astype({"label": object})
    df.loc[2, "label"] = bad
    df.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match="not an integer class id"):
        load(tmp_path)


def test_threshold_column_not_numeric(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "toxicity": ["high", "low", "low"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(UsageError, match="'toxicity' is not numeric"):
        load(tmp_path / "d.csv", label_threshold=0.5)


def test_empty_split(tmp_path):
    synthetic_rows(30, seed=7).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"id": [], "text": [], "label": []}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(UsageError, match="split 'test' is empty"):
        load(tmp_path)


def test_split_with_only_empty_texts(tmp_path):
    synthetic_rows(30, seed=7).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["", " "], "label": [0, 1]}).to_csv(tmp_path / "validation.csv", index=False)
    with pytest.raises(UsageError, match="split 'validation' has no rows with a non-empty text"):
        load(tmp_path)


def test_directory_without_train_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UsageError, match="no train file found.*notes.txt"):
        load(tmp_path)


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(UsageError, match="could not load it from the Hugging Face Hub"):
        load("no-such-user/no-such-dataset")


# ---- text encodings (a CSV saved by a spreadsheet is often cp1252 / latin-1) ----


def _latin1_split_files(directory):
    directory.mkdir()
    for name, seed in (("train", 1), ("validation", 2), ("test", 3)):
        synthetic_rows(20, seed=seed).to_csv(directory / f"{name}.csv", index=False)
    df = synthetic_rows(20, seed=2)
    df.loc[5, "text"] = "café moron"
    df.to_csv(directory / "validation.csv", index=False, encoding="latin-1")
    raw = (directory / "validation.csv").read_bytes()
    return directory / "validation.csv", raw.index(b"caf\xe9") + 3


def test_non_utf8_file_names_the_file_the_byte_offset_and_the_fix(tmp_path, capsys):
    path, offset = _latin1_split_files(tmp_path / "data")
    with pytest.raises(UsageError) as err:
        load(tmp_path / "data")
    assert str(err.value) == (
        f"{path} is not valid utf-8 text: byte 0xe9 at byte offset {offset} (invalid continuation byte); "
        "pass --encoding with the file's encoding (e.g. --encoding latin-1 or cp1252), or re-encode the file to UTF-8"
    )
    # The fix the message names works, and the record says how the files were read.
    data = load(tmp_path / "data", encoding="latin-1")
    assert "café moron" in data.splits["validation"]["text"] and data.source["encoding"] == "latin-1"

    # Through a script: the same one line, exit status 2, nothing written.
    from conftest import common_args

    import run_finetune

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_finetune.main(common_args(tmp_path / "data", out, model_name_or_path="unused"))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"byte offset {offset}" in errors[0] and str(path) in errors[0]
    assert not out.exists()


def test_byte_offset_is_exact_past_the_first_mebibyte(tmp_path):
    """The file is decoded in 1 MiB chunks: a valid 2-byte character across the boundary is no error, and the
    offset of a later bad byte is counted from the start of the file."""
    head = b"text,label\n" + b"a" * ((1 << 20) - 12) + b"\xc3\xa9,0\n"  # é straddles the chunk boundary
    (tmp_path / "big.csv").write_bytes(head + b"bad \xff,1\n")
    with pytest.raises(UsageError, match=rf"byte 0xff at byte offset {len(head) + 4} \(invalid start byte\)"):
        load(tmp_path / "big.csv")


def test_jsonl_in_another_encoding_and_an_unknown_encoding(tmp_path):
    rows = synthetic_rows(40, seed=1)
    rows.loc[0, "text"] = "über idiot"
    with open(tmp_path / "train.jsonl", "w", encoding="cp1252") as f:
        f.write(rows.to_json(orient="records", lines=True, force_ascii=False))
    with pytest.raises(UsageError, match=r"train.jsonl is not valid utf-8 text: byte 0xfc at byte offset"):
        load(tmp_path)
    data = load(tmp_path, encoding="cp1252", test_split_percentage=20, validation_split_percentage=20)
    assert "über idiot" in [text for split in data.splits.values() for text in split["text"]]
    with pytest.raises(UsageError, match=r"--encoding klingon: not a known text encoding"):
        load(tmp_path, encoding="klingon")


def test_a_column_of_class_names_becomes_classes(tmp_path):
    """hate_speech18's label_name form: strings are class names, sorted from train unless --class_names orders them."""
    rows = {"train": ["noHate", "hate", "relation", "noHate", "hate", "relation", "noHate", "noHate"],
            "validation": ["noHate", "hate", "relation"], "test": ["relation", "noHate", "hate"]}  # fmt: skip
    for split, labels in rows.items():
        pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label_name": labels}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    data = load(tmp_path, label_column="label_name")
    assert data.label_names == ["hate", "noHate", "relation"] and data.num_labels == 3
    assert data.splits["test"]["label"] == [2, 1, 0]
    assert data.source["class_counts"]["train"] == [2, 4, 2]
    ordered = load(tmp_path, label_column="label_name", class_names=["noHate", "hate", "relation"])
    assert ordered.label_names == ["noHate", "hate", "relation"] and ordered.splits["test"]["label"] == [2, 0, 1]
    # A test value the train split never had is one clear error.
    pd.DataFrame({"text": ["a", "b"], "label_name": ["hate", "idk/skip"]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(UsageError, match="holds 'idk/skip' .*not one of the classes hate, noHate, relation"):
        load(tmp_path, label_column="label_name")
