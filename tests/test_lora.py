"""LoRA: parameter counts, the trained head, target validation, run_lora.py outputs, reloading and merging."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from tolerances import MERGE_ATOL, auc_noise_bound, binary_noise_range, forward_atol, rounding_atol, within
from conftest import (
    REPO,
    SHARED,
    common_args,
    kill_at_checkpoint_then_resume,
    make_tokenizer,
    requires_shared,
    synthetic_rows,
    tiny_bert_config,
    trainer_batched_logits,
)
from peft import AutoPeftModelForSequenceClassification
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    pipeline,
)

import run_lora
from distillkit.cli import UsageError
from distillkit.lora import (
    LoraArguments,
    apply_lora,
    linear_module_names,
    newly_initialised_modules,
    parameter_counts,
    trained_in_full,
)
from distillkit.metrics import classification_metrics, softmax
from distillkit.students import build_student

LABELS = {0: "non-toxic", 1: "toxic"}


def run_main(argv):
    return run_lora.main([str(a) for a in argv])


def lora_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_bert_base_counts_match_the_known_figures():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    assert sum(p.numel() for p in model.parameters()) == 109_483_778
    peft_model = apply_lora(model, LoraArguments(lora_r=8, lora_target_modules="query,value", modules_to_save="none"))
    counts = parameter_counts(peft_model)
    # 12 layers × (query, value) × (768·8 + 8·768) LoRA weights, plus the 768·2 + 2 of the trained head.
    assert lora_params(peft_model) == 294_912
    assert counts["trainable_params"] == 294_912 + 1_538
    # print_trainable_parameters counts the head's frozen original copy too.
    assert counts["total_params"] == 109_483_778 + 294_912 + 1_538
    assert counts["trainable_pct"] == pytest.approx(100 * 296_450 / 109_780_228)


def test_bert_base_auto_also_trains_the_pooler_the_head_reads():
    torch.manual_seed(0)
    peft_model = apply_lora(BertForSequenceClassification(BertConfig(num_labels=2)), LoraArguments(lora_r=8))
    # The pooler (768·768 + 768) joins the head: its output is all the head sees.
    assert parameter_counts(peft_model)["trainable_params"] == 294_912 + 1_538 + 590_592
    assert set(trained_in_full(peft_model)) == {"bert.pooler", "classifier"}


def test_head_pooler_and_lora_train_while_the_base_stays_frozen():
    torch.manual_seed(0)
    model = apply_lora(BertForSequenceClassification(tiny_bert_config()), LoraArguments(lora_dropout=0.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert any("pooler.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or ".modules_to_save." in n for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {"input_ids": torch.randint(5, 30, (4, 10)), "labels": torch.tensor([0, 1, 0, 1])}
    for _ in range(2):  # lora_B starts at zero: lora_A only moves from the second step
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_modules_to_save_none_keeps_only_the_head_and_names_add_to_it():
    torch.manual_seed(0)
    head_only = apply_lora(BertForSequenceClassification(tiny_bert_config()), LoraArguments(modules_to_save="none"))
    assert not any("pooler.modules_to_save" in n for n, p in head_only.named_parameters() if p.requires_grad)
    named = apply_lora(
        BertForSequenceClassification(tiny_bert_config()), LoraArguments(modules_to_save="bert.embeddings.LayerNorm")
    )
    trained = {n for n, p in named.named_parameters() if p.requires_grad and ".modules_to_save." in n}
    assert any("LayerNorm.modules_to_save" in n for n in trained) and not any("pooler" in n for n in trained)


def test_auto_trains_what_loading_initialised_fresh():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    new = ["bert.encoder.layer.1.output.dense.weight", "classifier.weight", "classifier.bias"]
    assert newly_initialised_modules(model, new) == ["bert.encoder.layer.1.output.dense"]  # the head is PEFT's
    peft_model = apply_lora(model, LoraArguments(), new)
    assert set(trained_in_full(peft_model)) == {
        "bert.pooler",
        "bert.encoder.layer.1.output.dense",
        "classifier",
    }


def test_target_module_choices():
    torch.manual_seed(0)
    model = apply_lora(
        BertForSequenceClassification(tiny_bert_config()), LoraArguments(lora_target_modules="all-linear")
    )
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    # Every linear layer (4 per attention block + 2 feed-forward, 4 layers) but the head and the pooler,
    # which are trained in full (--modules_to_save auto).
    assert len(adapted) == 4 * 6 and not any("classifier" in n or "pooler" in n for n in adapted)
    model = apply_lora(
        BertForSequenceClassification(tiny_bert_config()), LoraArguments(lora_target_modules="attention.output.dense")
    )
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert len(adapted) == 4 and all(n.endswith("attention.output.dense") for n in adapted)


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            "query,foo",
            "'foo' matches no module of this bert model; its linear modules are named classifier, dense, key, query, value",
        ),
        ("LayerNorm", "'LayerNorm' is not a linear module (LayerNorm)"),
        ("classifier", "is the classification head, which is trained in full"),
    ],
)
def test_bad_target_modules_name_the_linear_modules(targets, message):
    model = BertForSequenceClassification(tiny_bert_config())
    with pytest.raises(UsageError, match="--lora_target_modules") as err:
        apply_lora(model, LoraArguments(lora_target_modules=targets))
    assert message in str(err.value)
    assert "all-linear" in str(err.value) or "head" in str(err.value)
    assert linear_module_names(model)[0] == "bert.encoder.layer.0.attention.self.query"


def _expect_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and message in err[-1], err


def test_bad_flags_fail_before_writing(tmp_path, tiny_base_model_dir, tiny_data_dir, capsys):
    out = tmp_path / "lora"

    def argv(**kw):
        return common_args(tiny_data_dir, out, **{"model_name_or_path": tiny_base_model_dir, **kw})

    _expect_usage_error(
        capsys,
        argv(lora_target_modules="query,foo"),
        "its linear modules are named classifier, dense, key, query, value",
    )
    _expect_usage_error(capsys, argv(lora_r=0), "--lora_r 0")
    _expect_usage_error(capsys, argv(lora_dropout=1), "--lora_dropout 1")
    _expect_usage_error(capsys, argv(modules_to_save="nope"), "--modules_to_save nope: 'nope' matches no module")
    _expect_usage_error(capsys, argv(alpha_kl=1), "--alpha_kl 1.0 needs a teacher")
    _expect_usage_error(capsys, argv(teacher_name_or_path=tiny_base_model_dir), "not a fine-tuned 2-label classifier")
    _expect_usage_error(capsys, argv(model_name_or_path=tmp_path / "nowhere"), "--model_name_or_path")
    assert not out.exists()


def _logits(model, tokenizer, texts):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits


def test_outputs_reload_anywhere_and_merge(tmp_path, tiny_base_model_dir, tiny_data_dir, monkeypatch):
    out = tmp_path / "lora"
    results = run_main(
        common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, num_train_epochs=3)
        + ["--merge", "true", "--class_names", "non-toxic,toxic"]
    )
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "all_results.json",
        "trainer_state.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()
    saved = json.loads((out / "all_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["method"] == "lora" and saved["base_model"] == str(tiny_base_model_dir) and "layers" not in saved
    assert (saved["lora_r"], saved["lora_alpha"], saved["lora_target_modules"]) == (8, 32, ["query", "value"])
    assert saved["trainable_pct"] == pytest.approx(100 * saved["trainable_params"] / saved["total_params"])
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_base_model_dir)
    assert "classifier" in adapter_config["modules_to_save"]
    # The base's pooler is trained in full, recorded, and saved with the adapter.
    assert saved["modules_to_save"] == ["bert.pooler", "classifier"]
    from safetensors.torch import load_file

    adapter_weights = load_file(out / "adapter_model.safetensors")
    pooler_key = next(k for k in adapter_weights if "pooler" in k and k.endswith("dense.weight"))
    base_pooler = AutoModelForSequenceClassification.from_pretrained(tiny_base_model_dir).bert.pooler.dense.weight
    assert not torch.equal(adapter_weights[pooler_key], base_pooler.detach())

    # From another working directory: the adapter finds its base, and reproduces the recorded test metrics.
    monkeypatch.chdir(tmp_path)
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    test = __import__("pandas").read_csv(tiny_data_dir / "test.csv")
    texts, gold = list(test.text), test.label.to_numpy()
    logits = _logits(adapter, tokenizer, texts)
    # The training run's test pass (the Trainer's predict: in order, 16 per batch) is replayed beside this one padded
    # batch to measure their float32 rounding: this near-chance model gives texts probabilities ~1e-7 apart, so each
    # metric is compared within the range that rounding allows (tests/tolerances.py), exactly when no text is near.
    replayed = trainer_batched_logits(adapter, tokenizer, texts, max_length=32, batch_size=16)
    # p(toxic) is the sigmoid (slope <= 1/4) of the difference of two logits, each of which may move by the atol.
    atol = 2 * rounding_atol(logits.numpy(), replayed) / 4
    probs = softmax(logits.double().numpy())  # float64, as the training run's Task.probabilities
    threshold = saved["decision_thresholds"][0]  # tuned on validation
    metrics = classification_metrics(probs, gold, (probs[:, 1] >= threshold).astype(int))
    assert within(saved["test_accuracy"], binary_noise_range(probs[:, 1], gold == 1, threshold, atol)["accuracy"])
    assert metrics["roc_auc"] == pytest.approx(saved["test_roc_auc"], abs=auc_noise_bound(probs[:, 1], gold == 1, atol))

    merged_dir = out / "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == LABELS
    record = merged.config.training_record
    assert record["method"] == "lora" and record["lora_r"] == 8 and record["seed"] == 0
    assert torch.equal(merged.bert.pooler.dense.weight.detach(), adapter_weights[pooler_key])  # the trained one
    merged_logits = _logits(merged, tokenizer, list(test.text))
    assert torch.allclose(merged_logits, logits, rtol=0, atol=MERGE_ATOL)
    classifier = pipeline("text-classification", model=str(merged_dir), top_k=None)
    atol = forward_atol(merged_logits.numpy())
    for row, p in zip(classifier(list(test.text[:4])), merged_logits.softmax(-1)):
        # the pipeline runs one text at a time, the reference a padded batch: float32 rounding apart
        assert {r["label"]: r["score"] for r in row}["toxic"] == pytest.approx(p[1].item(), rel=0, abs=atol)


def test_a_multi_class_adapter_records_its_labels_for_reloading(tmp_path, tiny_base_model_dir):
    data = tmp_path / "three"
    data.mkdir()
    for split, n, seed in (("train", 30, 1), ("validation", 12, 2), ("test", 12, 3)):
        synthetic_rows(n, seed, num_labels=3).to_csv(data / f"{split}.csv", index=False)
    out = tmp_path / "lora"
    results = run_main(common_args(data, out, model_name_or_path=tiny_base_model_dir) + ["--class_names", "a,b,c"])
    saved = json.loads((out / "all_results.json").read_text())
    assert results["num_labels"] == 3 and saved["id2label"] == {"0": "a", "1": "b", "2": "c"}
    # The headless base alone would give a 2-class head: the recorded labels make the 3-class adapter load.
    id2label = {int(k): v for k, v in saved["id2label"].items()}
    model = AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=3, id2label=id2label)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert head.out_features == 3


@pytest.fixture
def tiny_student_dir(tmp_path, tiny_classifier_dir):
    """A student as run_distill.py writes it: teacher layers 2 and 4, its own label names."""
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    student = build_student(teacher, [2, 4])
    student.config.id2label, student.config.label2id = {0: "ok", 1: "bad"}, {"ok": 0, "bad": 1}
    student.config.training_record = {"method": "even", "layers": [2, 4]}
    directory = tmp_path / "even"
    student.save_pretrained(directory)
    make_tokenizer(directory)
    return directory


def test_lora_on_a_distilled_student_with_a_teacher(tmp_path, tiny_student_dir, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "lora_even"
    results = run_main(
        common_args(tiny_data_dir, out, model_name_or_path=tiny_student_dir, teacher_name_or_path=tiny_classifier_dir)
        + ["--merge", "true"]
    )
    assert results["method"] == "lora_even" and results["layers"] == [2, 4]  # named after the student, as in methods.py
    assert (results["alpha_kl"], results["alpha_cos"], results["teacher"]) == (1.0, 1.0, str(tiny_classifier_dir))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any({"loss_ce", "loss_kl", "loss_cos"} <= h.keys() for h in history)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
    assert merged.config.id2label == {0: "ok", 1: "bad"}  # the student's labels are kept
    assert merged.config.training_record["base_record"] == {"method": "even", "layers": [2, 4]}
    assert AutoPeftModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "ok", 1: "bad"}


def test_cosine_term_with_other_hidden_sizes_is_refused(tmp_path, tiny_base_model_dir, tiny_data_dir, capsys):
    """The trainer's policy (hidden_state_layer_map): the user's --alpha_cos is never silently set to 0."""
    wide = tmp_path / "wide_teacher"
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(hidden_size=48, intermediate_size=96)).save_pretrained(wide)
    out = tmp_path / "lora"
    argv = common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, teacher_name_or_path=wide)
    _expect_usage_error(capsys, argv, "--alpha_cos 1: the hidden-state cosine term compares hidden states one to one")
    _expect_usage_error(capsys, argv, "student hidden_size 32 != teacher 48; set --alpha_cos 0")
    assert not out.exists()
    results = run_main(argv + ["--alpha_cos", "0"])
    assert (results["alpha_kl"], results["alpha_cos"]) == (1.0, 0.0)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss_kl" in h for h in history) and not any("loss_cos" in h for h in history)


def test_argument_files_and_refusal_to_overwrite(tmp_path, tiny_base_model_dir, tiny_data_dir, capsys):
    argv = common_args(
        tiny_data_dir,
        tmp_path / "y",
        model_name_or_path=tiny_base_model_dir,
        lora_target_modules="all-linear",
        lora_r=4,
    )
    as_dict = {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2)}
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(as_dict))
    results = run_main([tmp_path / "args.yaml"])
    assert (results["lora_r"], results["lora_target_modules"]) == (4, "all-linear")
    assert json.loads((tmp_path / "y" / "adapter_config.json").read_text())["r"] == 4
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "y").iterdir()}
    _expect_usage_error(capsys, argv, "already holds a finished run")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "y").iterdir()} == before


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base_model_dir, tiny_data_dir):
    out = tmp_path / "lora"
    argv = common_args(
        tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, num_train_epochs=8, save_strategy="steps",
        save_steps=3, save_total_limit=50, logging_steps=1,
    )  # fmt: skip
    state = kill_at_checkpoint_then_resume("run_lora.py", argv, out, checkpoint_step=3)
    assert state["global_step"] == 8 * 12
    # A LoRA checkpoint holds the adapter, not a full model.
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoint-3" / "model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path, tiny_base_model_dir, tiny_data_dir):
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "compute_environment": "LOCAL_MACHINE",
                "distributed_type": "MULTI_GPU",
                "num_processes": 2,
                "num_machines": 1,
                "machine_rank": 0,
                "use_cpu": True,
                "mixed_precision": "no",
                "main_process_port": _free_port(),
            }
        )
    )
    out = tmp_path / "lora"
    argv = common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir, log_level_replica="warning")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "run_lora.py",
        *map(str, argv),
    ]
    done = subprocess.run(
        cmd,
        check=False,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "Process rank: 0, world size: 2" in log and "Process rank: 1, world size: 2" in log
    results = json.loads((out / "all_results.json").read_text())
    # 96 rows over 2 processes × batch 8: 6 steps.
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert results["method"] == "lora" and (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@requires_shared
def test_minilm_on_wiki_toxic_small_beats_the_majority_baseline(tmp_path):
    out = tmp_path / "lora"
    argv = common_args(
        SHARED / "data" / "wiki_toxic_small", out, model_name_or_path=SHARED / "models" / "all-MiniLM-L6-v2",
        max_train_samples=400, max_eval_samples=200, max_test_samples=200, max_seq_length=64,
        num_train_epochs=2, per_device_train_batch_size=16, learning_rate=run_lora.DEFAULT_LORA_LEARNING_RATE,
    )  # fmt: skip
    results = run_main(argv + ["--merge", "true"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert results["method"] == "lora" and results["trainable_pct"] < 2.0
    # The majority baseline on the very rows that were scored.
    import pandas as pd

    from distillkit.data import DataTrainingArguments, load_text_classification_data

    data = load_text_classification_data(
        DataTrainingArguments(dataset_name=str(SHARED / "data" / "wiki_toxic_small"), max_test_samples=200), seed=0
    )
    labels = np.asarray(data.splits["test"]["label"])
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert results["test_accuracy"] > majority + 0.05, (results["test_accuracy"], majority)
    assert results["test_roc_auc"] > 0.6
    texts = list(pd.read_csv(SHARED / "data" / "wiki_toxic_small" / "test.csv").text[:8])
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(out).eval()
    merged_logits, adapter_logits = _logits(merged, tokenizer, texts), _logits(adapter, tokenizer, texts)
    assert torch.allclose(merged_logits, adapter_logits, rtol=0, atol=MERGE_ATOL)
