"""run_eval.py --bias_dataset: bias.csv / bias_summary.csv recomputed independently, other column names and string
labels, sampling, 3-class toxic scores, errors before anything is written, tokenising once per tokenizer."""

from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NEUTRAL_WORDS, TOXIC_WORDS, common_args, make_tokenizer, synthetic_rows, tiny_bert_config
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

import run_distill
import run_eval
from distillkit import bias, bias_eval, evaluation
from distillkit.report import linked_images

FAST = ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32"]
FAST += ["--num_threads", "1", "--bootstrap_samples", "20"]
IDENTITIES = ["page", "source", "article"]  # words the tiny tokenizer knows


def bias_rows(n_per_identity: int = 12, seed: int = 0) -> pd.DataFrame:
    """A bias set with its own column names and string labels: comment, is_hate (hateful / fine), group."""
    rng = random.Random(seed)
    rows = []
    for identity in [*IDENTITIES, ""]:
        for i in range(n_per_identity):
            toxic = i % 2 == 0
            words = [identity] if identity else []
            words += [rng.choice(TOXIC_WORDS if toxic else NEUTRAL_WORDS), rng.choice(["you", "the", "this"])]
            rng.shuffle(words)
            rows.append({"comment": " ".join(words), "is_hate": "hateful" if toxic else "fine", "group": identity})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bias_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bias_set")
    bias_rows().to_csv(directory / "test.csv", index=False)
    return directory


BIAS_FLAGS = ["--bias_text_column", "comment", "--bias_label_column", "is_hate", "--bias_identity_column", "group"]
BIAS_FLAGS += ["--bias_positive_label", "hateful"]


@pytest.fixture(scope="module")
def seeded_experiment(tmp_path_factory, tiny_base_model_dir, tiny_data_dir):
    """EXP/seed{0,1}/{teacher,odd}: a few steps each."""
    exp = tmp_path_factory.mktemp("bias_exp")
    for seed in (0, 1):
        run_distill.main(
            common_args(
                tiny_data_dir,
                exp / f"seed{seed}" / "odd",
                teacher_name_or_path=tiny_base_model_dir,
                layers="odd",
                max_steps=3,
                seed=seed,
                do_eval="false",
                do_predict="false",
            )
        )
    return exp


@pytest.fixture(scope="module")
def bias_report(seeded_experiment, tiny_data_dir, bias_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bias_report")
    run_eval.main(
        ["--experiment_dir", str(seeded_experiment), "--dataset_name", str(tiny_data_dir), "--output_dir", str(out)]
        + FAST
        + ["--bias_dataset", str(bias_dir), *BIAS_FLAGS, "--bias_batch_size", "7"]
    )
    return out


def test_bias_csv_is_recomputed_from_the_models_own_probabilities(bias_report, seeded_experiment, bias_dir):
    table = pd.read_csv(bias_report / "bias.csv", keep_default_na=False)
    assert list(table.columns) == ["model", "identity", "n", "subgroup_auc", "bpsn_auc", "bnsp_auc", "fpr", "fnr"]
    models = ["seed0-odd", "seed0-teacher", "seed1-odd", "seed1-teacher"]
    assert sorted(set(table.model)) == models
    assert sorted(set(table.identity)) == sorted(IDENTITIES)  # the empty group is background only
    assert set(table.n) == {12}
    source = pd.read_csv(bias_dir / "test.csv", keep_default_na=False)
    toxic = (source.is_hate == "hateful").to_numpy()
    clf = AutoModelForSequenceClassification.from_pretrained(seeded_experiment / "seed1" / "odd").eval()
    tokenizer = AutoTokenizer.from_pretrained(seeded_experiment / "seed1" / "odd")
    with torch.no_grad():  # one text at a time: no padding, no sorting, no shared batches
        logits = torch.cat([clf(**tokenizer([t], return_tensors="pt")).logits for t in source.comment])
    p_toxic = torch.softmax(logits.double(), dim=-1)[:, 1].numpy()
    written = bias_report / "bias_predictions" / "seed1-odd.csv"
    texts = pd.read_csv(written, keep_default_na=False, float_precision="round_trip")  # the scores' exact bits
    assert texts.text.tolist() == source.comment.tolist() and texts.label.tolist() == toxic.astype(int).tolist()
    # float32 logits of a 2-layer model under other padding differ by ~1e-7; 1e-5 is far above that, far below a rank
    np.testing.assert_allclose(texts.toxic_score, p_toxic, atol=1e-5)
    # The measures are recomputed from those scores as written. Not from the one-text pass: this 3-step model gives
    # texts probabilities ~1e-7 apart, and rounding may rank such a pair, or one at the threshold, either way.
    score = texts.toxic_score.to_numpy()
    rows = table[table.model == "seed1-odd"].set_index("identity")
    page = (source.group == "page").to_numpy()
    assert rows.loc["page", "subgroup_auc"] == pytest.approx(roc_auc_score(toxic[page], score[page]), abs=1e-12)
    bpsn = (page & ~toxic) | (~page & toxic)
    assert rows.loc["page", "bpsn_auc"] == pytest.approx(roc_auc_score(toxic[bpsn], score[bpsn]), abs=1e-12)
    flagged = texts.toxic_pred.to_numpy().astype(bool)
    threshold = (getattr(clf.config, "decision_thresholds", None) or [0.5])[0]  # the model's own saved rule
    assert (flagged == (score >= threshold)).all()
    assert rows.loc["page", "fpr"] == pytest.approx(flagged[page & ~toxic].mean(), abs=1e-12)

    summary = pd.read_csv(bias_report / "bias_summary.csv").set_index("model")
    row = summary.loc["seed1-odd"]
    assert row.method == "odd" and row.seed == 1 and row.n == len(source) and row.toxic_classes == "LABEL_1"  # the tiny data names no class
    assert row.overall_auc == pytest.approx(roc_auc_score(toxic, score), abs=1e-12)
    assert row.power_mean_bpsn_auc == pytest.approx(bias.power_mean(rows.bpsn_auc.tolist()), abs=1e-12)
    means = [row.power_mean_subgroup_auc, row.power_mean_bpsn_auc, row.power_mean_bnsp_auc]
    assert row.final_metric == pytest.approx(0.25 * row.overall_auc + 0.75 * np.mean(means), abs=1e-12)
    assert row.fped == pytest.approx((rows.fpr - flagged[~toxic].mean()).abs().sum(), abs=1e-12)
    assert row.worst_bpsn.split("; ") == rows.sort_values(["bpsn_auc"]).index.tolist()[:5]


def test_report_has_the_bias_section_with_the_teacher_beside_each_student(bias_report):
    report = (bias_report / "report.md").read_text()
    assert "## Identity bias" in report and "**odd** (2 seeds)" in report
    images = [p for p in linked_images(str(bias_report / "report.md")) if os.path.basename(p).startswith("bias_")]
    assert sorted(p.rsplit("/", 1)[-1] for p in images) == ["bias_odd.png", "bias_teacher.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in images)
    versus = pd.read_csv(bias_report / "bias_vs_teacher.csv")
    final = versus[versus.measure == "final_metric"].iloc[0]
    summary = pd.read_csv(bias_report / "bias_summary.csv").set_index("model").final_metric
    diffs = [summary[f"seed{s}-odd"] - summary[f"seed{s}-teacher"] for s in (0, 1)]
    assert final.n_seeds == 2 and final["diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert final.ci_low < final["diff"] < final.ci_high or diffs[0] == diffs[1]


def test_stratified_sample_flag(seeded_experiment, tiny_data_dir, bias_dir, tmp_path):
    run_eval.main(
        ["--model_dirs", str(seeded_experiment / "seed0" / "teacher"), "--dataset_name", str(tiny_data_dir)]
        + ["--output_dir", str(tmp_path), *FAST, "--bias_dataset", str(bias_dir / "test.csv"), *BIAS_FLAGS]
        + ["--bias_max_per_identity", "6"]
    )
    table = pd.read_csv(tmp_path / "bias.csv")
    assert set(table.n) == {6}
    texts = pd.read_csv(tmp_path / "bias_predictions" / "teacher.csv", keep_default_na=False)
    assert len(texts) == 4 * 6 and texts.groupby("identity").label.sum().tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bias_identity_column", "identity"], "--bias_identity_column identity: no such column"),
        (["--bias_positive_label", "1"], "--bias_positive_label 1: no row"),
    ],
)
def test_bad_bias_flags_are_one_line_errors_and_write_nothing(
    flags, message, seeded_experiment, tiny_data_dir, bias_dir, tmp_path, capsys
):
    # The defaults (text / label / identity, positive label 1) do not fit this set's names and string labels.
    argv = ["--model_dirs", str(seeded_experiment / "seed0" / "teacher"), "--dataset_name", str(tiny_data_dir)]
    argv += ["--output_dir", str(tmp_path / "out"), *FAST, "--bias_dataset", str(bias_dir), *BIAS_FLAGS, *flags]
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_three_class_model_needs_its_toxic_classes_and_sums_them(tmp_path, bias_dir, capsys):
    data = tmp_path / "data3"
    data.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        synthetic_rows(12, seed, num_labels=3).to_csv(data / f"{split}.csv", index=False)
    model_dir = tmp_path / "three"
    torch.manual_seed(0)
    names = {0: "hate", 1: "offensive", 2: "neither"}
    BertForSequenceClassification(
        tiny_bert_config(num_labels=3, id2label=names, label2id={v: k for k, v in names.items()})
    ).save_pretrained(model_dir)
    make_tokenizer(model_dir)
    argv = ["--model_dirs", str(model_dir), "--dataset_name", str(data), "--class_names", "hate,offensive,neither"]
    argv += [*FAST, "--bias_dataset", str(bias_dir), *BIAS_FLAGS]
    with pytest.raises(SystemExit) as exit_info:
        run_eval.main([*argv, "--output_dir", str(tmp_path / "refused")])
    assert exit_info.value.code == 2 and "--bias_toxic_classes" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "results.csv").exists()

    run_eval.main([*argv, "--output_dir", str(tmp_path / "out"), "--bias_toxic_classes", "hate,offensive"])
    texts = pd.read_csv(tmp_path / "out" / "bias_predictions" / "three.csv", keep_default_na=False)
    clf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        probs = torch.softmax(clf(**tokenizer(texts.text.tolist(), padding=True, return_tensors="pt")).logits, -1)
    np.testing.assert_allclose(texts.toxic_score, probs[:, :2].sum(-1).numpy(), atol=1e-5)
    assert texts.toxic_pred.tolist() == (probs.argmax(-1) < 2).int().tolist()
    assert pd.read_csv(tmp_path / "out" / "bias_summary.csv").toxic_classes.tolist() == ["hate,offensive"]


def test_texts_are_tokenised_once_per_tokenizer(monkeypatch, tiny_classifier_dir, bias_dir):
    from distillkit.runtime import load_classifier_dir

    calls = []
    real = bias_eval.encode_batches
    monkeypatch.setattr(bias_eval, "encode_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = bias_eval.BiasArguments(str(bias_dir), **dict(zip([f[2:] for f in BIAS_FLAGS[::2]], BIAS_FLAGS[1::2])))
    scorer = bias_eval.BiasScorer(bias_eval.load_bias_set(args), max_length=32, batch_size=5)
    first = load_classifier_dir(str(tiny_classifier_dir), name="a")
    second = load_classifier_dir(str(tiny_classifier_dir), name="b")  # another load: the same tokenizer
    summaries = [scorer.score(clf)[1] for clf in (first, second)]
    assert len(calls) == 1 and summaries[0]["final_metric"] == summaries[1]["final_metric"]


def test_predict_logits_in_sorted_batches_equals_one_text_at_a_time(tiny_classifier_dir):
    clf = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    texts = bias_rows(3).comment.tolist() + ["thanks " * 40]  # one text longer than max_length
    batched = evaluation.predict_logits(clf, tokenizer, texts, max_length=16, batch_size=4)
    with torch.no_grad():
        single = torch.cat(
            [clf(**tokenizer([t], truncation=True, max_length=16, return_tensors="pt")).logits for t in texts]
        )
    assert not np.isnan(batched).any()
    np.testing.assert_allclose(batched, single.double().numpy(), atol=1e-5)  # padding changes float32 sums only
