"""Multi-label data: label-id lists (or "3,17" text), several 0/1 or score columns, detection and --problem_type."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, requires_shared

from distillkit.cli import UsageError
from distillkit.data import DataTrainingArguments, load_text_classification_data
from distillkit.data_presets import GO_EMOTIONS_LABELS
from distillkit.tasks import MULTI_LABEL, SINGLE_LABEL

WORDS = ["calm", "angry", "funny", "sad", "kind", "rude", "odd", "nice"]


def load(path, class_names=None, **kw):
    return load_text_classification_data(
        DataTrainingArguments(dataset_name=str(path), **kw), seed=0, class_names=class_names
    )


def rows(n: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    rng = np.random.default_rng(seed)
    texts, lists = [], []
    for i in range(n):
        ids = sorted(set(rng.choice(4, size=rng.integers(1, 3)).tolist()))
        texts.append(f"comment {i} " + " ".join(WORDS[j] for j in ids))
        lists.append(ids)
    return texts, lists


def as_matrix(lists: list[list[int]], k: int) -> np.ndarray:
    out = np.zeros((len(lists), k), np.float32)
    for r, ids in enumerate(lists):
        out[r, ids] = 1
    return out


def test_comma_separated_ids_are_detected_as_multi_label(tmp_path):
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        texts, lists = rows(40, seed)
        pd.DataFrame({"text": texts, "labels": [",".join(map(str, ids)) for ids in lists]}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    data = load(tmp_path)
    assert data.problem_type == MULTI_LABEL and data.multi_label
    assert data.num_labels == 4 and data.source["problem_type"] == MULTI_LABEL
    texts, lists = rows(40, 1)
    assert list(data.splits["validation"]["text"]) == texts
    np.testing.assert_array_equal(np.array(data.splits["validation"]["label"]), as_matrix(lists, 4))


def test_jsonl_lists_and_missing_splits_are_split_at_random(tmp_path):
    texts, lists = rows(100)
    lists[0] = []  # a row with no label is a valid multi-label row
    with open(tmp_path / "all.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "label": ids}) + "\n" for t, ids in zip(texts, lists))
    data = load(tmp_path / "all.jsonl", class_names=["calm", "angry", "funny", "sad"])
    assert data.multi_label and data.label_names == ["calm", "angry", "funny", "sad"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 80, "validation": 10, "test": 10}
    by_text = dict(zip(texts, as_matrix(lists, 4).tolist()))
    for ds in data.splits.values():
        for t, y in zip(ds["text"], ds["label"]):
            assert y == by_text[t]


def test_label_columns_with_scores_and_a_threshold(tmp_path):
    df = pd.DataFrame(
        {
            "comment_text": ["a b", "c d", "e f", "g h", "i j", "k l", "m n", "o p", "q r", "s t"],
            "toxic": [0.9, 0.1, 0.5, 0.0, 1.0, 0.2, 0.7, 0.0, 0.3, 0.6],
            "insult": [0, 1, 0, 0, 1, 0, 1, 0, 0, 1],
            "threat": [0.2, 0.0, 0.8, 0.0, 0.0, 0.4, 0.0, 0.0, 0.9, 0.1],
        }
    )
    for split in ("train", "validation", "test"):
        df.to_csv(tmp_path / f"{split}.csv", index=False)
    data = load(tmp_path, label_columns="toxic,insult,threat", label_threshold=0.6)
    assert data.multi_label and data.label_names == ["toxic", "insult", "threat"]
    expected = (df[["toxic", "insult", "threat"]].to_numpy() >= 0.6).astype(np.float32)
    np.testing.assert_array_equal(np.array(data.splits["test"]["label"]), expected)
    assert data.source["label_columns"] == ["toxic", "insult", "threat"]

    df.loc[3, "insult"] = None
    df.to_csv(tmp_path / "validation.csv", index=False)
    with pytest.raises(UsageError, match=r"score column 'insult' in split 'validation' has a missing value \(row 3\)"):
        load(tmp_path, label_columns="toxic,insult,threat")
    with pytest.raises(UsageError, match=r"--label_columns: no column 'obscene'"):
        load(tmp_path, label_columns="toxic,obscene")
    with pytest.raises(UsageError, match=r"give two or more"):
        load(tmp_path, label_columns="toxic")
    with pytest.raises(UsageError, match=r"not both"):
        load(tmp_path, label_columns="toxic,insult", label_column="threat")


def test_problem_type_overrides_detection(tmp_path):
    texts, lists = rows(60)
    pd.DataFrame({"text": texts, "labels": [",".join(map(str, ids)) for ids in lists]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    row = next(i for i, ids in enumerate(lists) if len(ids) > 1)
    with pytest.raises(UsageError, match=rf"split 'train', row {row}: 2 labels in a single-label task"):
        load(tmp_path, problem_type="single_label")
    # Integer class ids read as a multi-label task: each row has exactly its one label.
    ids = [ids[0] for ids in lists]
    pd.DataFrame({"text": texts, "label": ids}).to_csv(tmp_path / "train.csv", index=False)
    data = load(tmp_path, problem_type="multi_label_classification")
    assert data.multi_label and data.num_labels == 4
    assert all(sum(y) == 1 for y in data.splits["train"]["label"])
    with pytest.raises(UsageError, match=r"--problem_type multi: expected one of single_label, multi_label"):
        load(tmp_path, problem_type="multi")


def test_a_stray_id_in_a_list_names_split_and_row(tmp_path):
    texts, lists = rows(30)
    labels = [",".join(map(str, ids)) for ids in lists]
    labels[7] = "1,9"
    pd.DataFrame({"text": texts, "labels": labels}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"split 'train', row 7: label 9 is outside the label set \[0, 4\)"):
        load(tmp_path, class_names=["a", "b", "c", "d"])
    labels[7] = "1,x"
    pd.DataFrame({"text": texts, "labels": labels}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(UsageError, match=r"holds '1,x' \(row 7\), not a list of label ids"):
        load(tmp_path)


@pytest.mark.slow
@requires_shared
def test_go_emotions_preset_multi_label_form_matches_its_one_hot_columns():
    path = SHARED / "data" / "go_emotions"
    multi = load(path, problem_type="multi_label", max_test_samples=300)
    assert multi.num_labels == 28 and multi.label_names == list(GO_EMOTIONS_LABELS)
    one_hot = pd.read_csv(path / "test.csv").set_index("text")[list(GO_EMOTIONS_LABELS)]
    one_hot = one_hot[~one_hot.index.duplicated()]
    got = np.array(multi.splits["test"]["label"])
    np.testing.assert_array_equal(got, one_hot.loc[list(multi.splits["test"]["text"])].to_numpy())
    assert got.sum(axis=1).max() > 1  # some rows really carry several emotions
    # Without --problem_type the preset keeps its 28-class, first-label form.
    single = load(path, max_test_samples=300)
    assert single.problem_type == SINGLE_LABEL and single.num_labels == 28
    first = pd.read_csv(path / "test.csv").drop_duplicates("text").set_index("text")["label"]
    assert list(single.splits["test"]["label"]) == first.loc[list(single.splits["test"]["text"])].tolist()
