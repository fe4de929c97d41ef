"""`--layers auto` and `search` (distillkit/layer_selection.py): the scores, the rules, and run_distill.py with them,
on tiny models."""

import json

import pandas as pd
import pytest
import torch
from conftest import common_args, tiny_bert_config
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import run_distill
import run_eval
from distillkit.layer_report import LAYER_SELECTION_FILE
from distillkit.layer_selection import (
    CRITERIA,
    SEARCH_CRITERIA,
    LayerSelection,
    _SkipLayerProbe,
    choose_layers,
    combine,
    default_validation_rows,
    greedy_removal,
)
from distillkit.losses import GOLD_TERM, loss_terms
from distillkit.records import RunRecord
from distillkit.students import build_student, layer_stack
from distillkit.trainer import DistillationTrainingArguments
from distillkit.training import build_trainer, rows_trained

NOOP = 2  # the teacher layer (1-based) made a no-op


def _make_noop(model, layer: int) -> None:
    """Zero the attention-output and FFN-output projections of `layer`: both residual branches add 0, so the layer
    returns its input (up to its LayerNorms, which are kept at weight 1, bias 0 and then renormalise a normalised
    input)."""
    block = model.bert.encoder.layer[layer - 1]
    for linear in (block.attention.output.dense, block.output.dense):
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        linear.requires_grad_(False)


@pytest.fixture()
def noop_teacher(tiny_task, tmp_path):
    """A tiny 4-layer teacher, fine-tuned on the synthetic task, whose layer NOOP passes its input through.

    Every LayerNorm is frozen at weight 1, bias 0 so that each layer's input stays a normalised vector, which the
    no-op layer's LayerNorms then return unchanged (up to their epsilon)."""
    _, tokenized, tokenizer, _ = tiny_task
    torch.manual_seed(0)
    # A wider initialisation than BERT's 0.02: every other layer then changes its input clearly.
    teacher = BertForSequenceClassification(
        tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    )
    _make_noop(teacher, NOOP)
    for name, param in teacher.named_parameters():
        if "LayerNorm" in name:
            param.requires_grad_(False)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "teacher"),
        num_train_epochs=3,
        learning_rate=3e-3,
        logging_steps=100,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **{t.weight_flag: float(t.name == GOLD_TERM) for t in loss_terms()},  # plain fine-tuning
    )
    build_trainer(teacher, args, tokenized, tokenizer).train()
    teacher.eval()
    return tokenized, tokenizer, teacher


def test_the_noop_layer_returns_its_input_and_auto_drops_it(noop_teacher):
    tokenized, tokenizer, teacher = noop_teacher
    collator = DataCollatorWithPadding(tokenizer)
    batch = collator([{k: row[k] for k in ("input_ids", "attention_mask")} for row in tokenized["validation"]])
    with torch.no_grad():
        hidden = teacher(**batch, output_hidden_states=True).hidden_states
    # LayerNorm of an already normalised vector: off by float32 rounding and the 1e-12 epsilon, far below 1e-5.
    torch.testing.assert_close(hidden[NOOP], hidden[NOOP - 1], atol=1e-5, rtol=0)
    assert not torch.allclose(hidden[NOOP + 1], hidden[NOOP], atol=1e-2)  # the other layers do change their input

    for k in (1, 2, 3):
        selection = choose_layers(teacher, tokenized["train"], tokenized["validation"], collator, k=k)
        assert len(selection.chosen) == k and NOOP not in selection.chosen, (k, selection)
        assert selection.chosen == sorted(selection.chosen)
    scores = selection.scores
    assert set(scores) == set(CRITERIA) and all(len(v) == 4 for v in scores.values())
    # Block Influence: 1 - cosine of the no-op layer's input and output, which are equal.
    assert abs(scores["block_influence"][NOOP - 1]) < 1e-5
    assert min(s for i, s in enumerate(scores["block_influence"]) if i != NOOP - 1) > 0.1
    # Skipping the no-op layer computes the same logits, so the same predictions and metric.
    assert selection.skipped_metric[NOOP - 1] == selection.teacher_metric
    assert scores["skip_metric_drop"][NOOP - 1] == 0.0
    assert selection.metric == "f1" and selection.teacher_metric > 0.7  # the teacher did learn the task
    assert selection.train_rows == 32 and selection.validation_rows == 24 and selection.seconds > 0  # samples
    assert LayerSelection.from_dict(json.loads(json.dumps(selection.to_dict()))) == selection


@pytest.mark.parametrize(
    "model",
    [
        lambda: BertForSequenceClassification(tiny_bert_config(num_labels=3, vocab_size=50, initializer_range=0.5)),
        lambda: DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=50, dim=32, hidden_dim=64, n_layers=4, n_heads=4, num_labels=3, initializer_range=0.5)
        ),
        lambda: RobertaForSequenceClassification(
            RobertaConfig(
                vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                num_labels=3, initializer_range=0.5,
            )
        ),
    ],
    ids=["bert", "distilbert", "roberta"],
)
def test_skipping_a_layer_reuses_the_prefix_and_equals_the_student_without_it(model):
    torch.manual_seed(0)  # a wide initialisation (0.5): every layer then changes the logits clearly
    teacher = model().eval()
    # Padded rows of different lengths: the skipped runs must build the same attention mask as a real student.
    input_ids = torch.randint(5, 50, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    with torch.no_grad():
        probed = _SkipLayerProbe(teacher)(input_ids=input_ids, attention_mask=attention_mask).logits
        expected = [teacher(input_ids=input_ids, attention_mask=attention_mask).logits]
        for layer in range(1, 5):
            student = build_student(teacher, [i for i in range(1, 5) if i != layer]).eval()
            expected.append(student(input_ids=input_ids, attention_mask=attention_mask).logits)
    # The same float32 operations on the same inputs; 1e-5 allows for a different kernel path, far below the
    # logits' spread.
    torch.testing.assert_close(probed, torch.cat(expected, dim=-1), atol=1e-5, rtol=0)
    assert not torch.allclose(expected[1], expected[2], atol=1e-2)  # skipping different layers does differ
    # The probe leaves the teacher whole.
    assert len(teacher.get_submodule(layer_stack(teacher)[0])) == 4


def test_the_validation_sample_is_a_fortieth_of_the_rows_trained_within_48_and_1000():
    assert [default_validation_rows(r) for r in (0, 1680, 2000, 6720, 10_080, 40_000, 127_000)] == [
        48, 48, 50, 168, 252, 1000, 1000,
    ]  # fmt: skip
    epochs = DistillationTrainingArguments(output_dir="x", num_train_epochs=2.5, per_device_train_batch_size=8)
    assert rows_trained(epochs, 840) == 2100
    steps = DistillationTrainingArguments(
        output_dir="x", num_train_epochs=2, max_steps=30, per_device_train_batch_size=8, gradient_accumulation_steps=2
    )
    assert rows_trained(steps, 840) == 30 * 8 * 2  # --max_steps overrides the epochs


def test_combination_rule_is_the_mean_rank_with_block_influence_breaking_ties():
    scores = {"block_influence": [0.3, 0.1, 0.2, 0.4], "skip_metric_drop": [0.0, 0.5, 0.1, 0.2]}
    # ranks: BI 3,1,2,4; drop 1,4,2,3 → means 2, 2.5, 2, 3.5
    combined, chosen = combine(scores, 2)
    assert combined == [2.0, 2.5, 2.0, 3.5] and chosen == [2, 4]
    # Layers 1 and 3 tie on 2.0: the higher Block Influence (layer 1) is kept.
    assert combine(scores, 3)[1] == [1, 2, 4]
    # Equal scores everywhere: the later layers are kept (deterministic).
    assert combine({"block_influence": [0.1] * 4, "skip_metric_drop": [0.0] * 4}, 2)[1] == [3, 4]


def assert_copies_teacher_layers(student_dir, teacher_dir, layers: list[int]) -> dict:
    """Every weight of the saved student's layer i equals the teacher's layer layers[i] (1-based); returns them."""
    teacher = load_file(str(teacher_dir / "model.safetensors"))
    student = load_file(str(student_dir / "model.safetensors"))
    for i, layer in enumerate(layers):
        prefix, source = f"bert.encoder.layer.{i}.", f"bert.encoder.layer.{layer - 1}."
        names = [k for k in student if k.startswith(prefix)]
        assert names
        for name in names:
            torch.testing.assert_close(student[name], teacher[source + name[len(prefix) :]], atol=0, rtol=0)
    return student


def score_into_report(model_dir, data_dir, report_dir) -> pd.DataFrame:
    """run_eval.py on one model; its layer_selection.csv."""
    run_eval.main(
        ["--model_dirs", str(model_dir), "--dataset_name", str(data_dir), "--output_dir", str(report_dir)]
        + ["--max_seq_length", "32", "--latency_runs", "50", "--throughput_texts", "32", "--bootstrap_samples", "10"]
    )
    return pd.read_csv(report_dir / LAYER_SELECTION_FILE)


def test_run_distill_auto_copies_exactly_the_chosen_layers(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "EXP" / "auto"
    # learning rate 0: the saved student is the student as built, so its weights must be the chosen teacher layers'.
    argv = common_args(
        tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="auto", learning_rate=0,
        num_student_layers=3, max_steps=2, do_predict="false",
    )  # fmt: skip
    results = run_distill.main(argv)
    record = RunRecord.load(str(out))
    selection = record.layer_selection
    assert record.method == "auto" and record.layers == selection["chosen"] and len(record.layers) == 3
    assert set(selection["scores"]) == set(CRITERIA) and all(len(v) == 4 for v in selection["scores"].values())
    assert selection["rule"].startswith("rank_mean") and selection["seconds"] > 0
    assert results["layer_selection_seconds"] == selection["seconds"]
    # 2 steps × 8 rows trained: the default sample is its floor, 48 rows, so the whole 24-row validation split.
    assert (selection["train_rows"], selection["validation_rows"]) == (32, 24)
    config = json.loads((out / "config.json").read_text())
    assert config["distillation_layers"] == record.layers and config["num_hidden_layers"] == 3

    student = assert_copies_teacher_layers(out, tiny_classifier_dir, record.layers)
    # ... which is what build_student makes of them.
    built = build_student(AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir), record.layers)
    for name, value in built.state_dict().items():
        if name in student:
            torch.testing.assert_close(student[name], value, atol=0, rtol=0)
    card = (out / "README.md").read_text()
    assert "--layers auto" in card and "block_influence" in card and "(layer_scores.png)" in card
    assert (out / "layer_scores.png").stat().st_size > 1000

    # run_eval's report shows the choice and its cost beside the student's training.
    report_dir = tmp_path / "report"
    table = score_into_report(out, tiny_data_dir, report_dir)
    assert table.model.tolist() == ["auto"] and table.layers_chosen.tolist() == [" ".join(map(str, record.layers))]
    assert table.layer_selection_seconds.tolist() == [selection["seconds"]]
    assert table.train_runtime_s.iloc[0] == pytest.approx(results["train_runtime"], rel=1e-6)
    assert "## Layer selection (`--layers auto`)" in (report_dir / "report.md").read_text()
    assert (report_dir / "plots" / "layer_selection.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "--num_student_layers 0: --layers auto keeps fewer layers than the teacher's 4; give 1..3"),
        ("4", "--num_student_layers 4: --layers auto keeps fewer layers than the teacher's 4; give 1..3"),
        ("2.5", "invalid int value: '2.5'"),
    ],
)
def test_bad_num_student_layers_is_a_one_line_usage_error(
    value, message, tmp_path, tiny_classifier_dir, tiny_data_dir, capsys
):
    out = tmp_path / "EXP" / "auto"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="auto")
    with pytest.raises(SystemExit) as exit_info:
        run_distill.main(argv + ["--num_student_layers", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "EXP").exists()


def test_greedy_removal_drops_the_layer_whose_removal_scores_best_each_round():
    importance = {1: 5.0, 2: 0.0, 3: 3.0, 4: 1.0}
    calls = []

    def score_without(layers):
        calls.append(layers)
        return sum(importance[layer] for layer in layers)

    kept, rounds = greedy_removal(4, 2, score_without)
    assert kept == [1, 3] and [r["removed"] for r in rounds] == [2, 4]
    assert rounds[0]["metric_without"] == {1: 4.0, 2: 9.0, 3: 6.0, 4: 8.0} and rounds[1]["remaining"] == [1, 3, 4]
    assert len(calls) == 4 + 3  # n + (n - 1) + ... + (k + 1) probes
    # Ties drop the earlier layer (auto's rule keeps the later one on a tie too).
    assert greedy_removal(3, 1, lambda layers: 0.0)[0] == [3]


def test_run_distill_search_copies_exactly_the_layers_its_probes_chose(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "EXP" / "search"
    # learning rate 0 for the student, and so for its probes: each probe is the student as built, so the search is
    # the skip-layer metric of a student without each layer, and the saved weights must be the chosen layers'.
    argv = common_args(
        tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="search", learning_rate=0,
        num_student_layers=2, max_steps=2, do_predict="false", layer_search_probe_steps=2,
    )  # fmt: skip
    results = run_distill.main(argv)
    record = RunRecord.load(str(out))
    selection = record.layer_selection
    assert record.method == "search" and record.layers == selection["chosen"] and len(record.layers) == 2
    assert selection["criterion"] == "search" and set(selection["scores"]) == set(SEARCH_CRITERIA)
    assert selection["probes"] == 4 + 3 and selection["probe_steps"] == 2 and len(selection["rounds"]) == 2
    assert selection["train_rows"] == 2 * 8  # 2 steps × a batch of 8
    removed = [r["removed"] for r in selection["rounds"]]
    assert sorted(removed + record.layers) == [1, 2, 3, 4]
    assert selection["scores"]["removal_round"] == [
        float(removed.index(layer) + 1) if layer in removed else 3.0 for layer in (1, 2, 3, 4)
    ]
    assert results["layer_selection_seconds"] == selection["seconds"] > 0
    assert_copies_teacher_layers(out, tiny_classifier_dir, record.layers)
    card = (out / "README.md").read_text()
    assert "`--layers search`" in card and "7 probe students of 2 optimizer steps" in card
    assert (out / "layer_scores.png").stat().st_size > 1000

    report_dir = tmp_path / "report"
    table = score_into_report(out, tiny_data_dir, report_dir)
    assert table.criterion.tolist() == ["search"] and table.probes.tolist() == [7]
    report = (report_dir / "report.md").read_text()
    assert "## Layer selection (`--layers auto` / `search`)" in report and "search: 7 probes of 2 steps" in report


def test_search_s_probe_steps_must_be_positive(tmp_path, tiny_classifier_dir, tiny_data_dir, capsys):
    out = tmp_path / "EXP" / "search"
    argv = common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, layers="search")
    with pytest.raises(SystemExit) as exit_info:
        run_distill.main(argv + ["--layer_search_probe_steps", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --layer_search_probe_steps 0: must be at least 1"
    assert not (tmp_path / "EXP").exists()
