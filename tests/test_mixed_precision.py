"""Mixed precision: --bf16 (and --fp16 on a GPU) put the student AND the frozen teacher under the same autocast.

CPU autocast is real (bf16 and fp16 matmuls run in reduced precision), so these run on any machine.
"""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import common_args
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import run_distill
from distill_trainer import DistillationTrainingArguments
from distillkit.data import DataTrainingArguments, load_text_classification_data, tokenize_splits
from distillkit.students import build_student
from distillkit.training import build_trainer


# fp16 is left out: on CPU accelerate does not autocast fp16 at all (Accelerator.native_amp stays False), so
# `--fp16 --use_cpu` trains in fp32 — on a GPU the same prepare_model autocast wraps both models.
@pytest.mark.parametrize(("flag", "expected"), [(None, torch.float32), ("bf16", torch.bfloat16)])
def test_teacher_forward_runs_under_the_students_autocast(flag, expected, tmp_path, tiny_classifier_dir, tiny_data_dir):
    data = load_text_classification_data(DataTrainingArguments(dataset_name=str(tiny_data_dir)), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    tokenized = tokenize_splits(data, tokenizer, 32)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    student = build_student(teacher, [2, 4])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    seen: dict[str, set] = {"teacher": set(), "student": set()}

    def record(name):
        return lambda module, args, output: seen[name].add(output.dtype)

    # A Linear inside the encoder: its output dtype is the precision the matmul actually ran in.
    teacher.bert.encoder.layer[0].attention.self.query.register_forward_hook(record("teacher"))
    student.bert.encoder.layer[0].attention.self.query.register_forward_hook(record("student"))
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **({flag: True} if flag else {}),
    )
    trainer = build_trainer(student, args, tokenized, tokenizer, teacher_model=teacher, layer_map=[2, 4])
    trainer.train()

    assert seen["teacher"] == {expected}
    assert seen["student"] == {expected}
    assert trainer.teacher is teacher  # moved and autocast, never wrapped for training
    # Frozen, and its stored weights stay float32 (autocast only changes the compute precision).
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(v.dtype == torch.float32 for v in teacher.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.fixture(scope="module")
def fp32_and_bf16_runs(tmp_path_factory, tiny_classifier_dir, tiny_data_dir):
    root = tmp_path_factory.mktemp("precision")
    runs = {}
    # A decision threshold tuned on validation would amplify bf16's rounding into a different rule: compare the
    # numerics at the plain rule.
    for name, extra in (("fp32", {"tune_decision": "false"}), ("bf16", {"bf16": "true", "tune_decision": "false"})):
        out = root / name
        run_distill.main(common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, **extra))
        runs[name] = out
    return runs


def test_bf16_on_cpu_is_finite_and_close_to_fp32(fp32_and_bf16_runs, tiny_data_dir):
    results = {k: json.loads((v / "all_results.json").read_text()) for k, v in fp32_and_bf16_runs.items()}
    logs = {
        k: [h for h in json.loads((v / "trainer_state.json").read_text())["log_history"] if "loss" in h]
        for k, v in fp32_and_bf16_runs.items()
    }
    assert logs["bf16"], "training logged its losses"
    for entry in logs["bf16"]:
        for key in ("loss", "loss_ce", "loss_kl", "loss_cos"):
            assert math.isfinite(entry[key]), (key, entry)
    fp32, bf16 = results["fp32"], results["bf16"]
    for key, value in bf16.items():
        if key.startswith(("train_loss", "eval_", "test_")) and isinstance(value, float):
            assert math.isfinite(value), key
    # bf16 keeps 8 bits of mantissa (eps 2**-8 = 3.9e-3) in every matmul of training: the two runs are different
    # trainings that should agree to a few percent, not to rounding.
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.03)
    for key in ("eval_loss", "test_loss"):
        assert bf16[key] == pytest.approx(fp32[key], abs=0.02)
    for key in ("eval_accuracy", "test_accuracy"):
        assert abs(bf16[key] - fp32[key]) <= 2 / bf16[key.split("_")[0] + "_samples"] + 1e-9

    # Same predictions, to bf16's precision: both saved students (fp32 weights) scored in fp32.
    texts = list(pd.read_csv(tiny_data_dir / "validation.csv")["text"])
    probs = {}
    for name, out in fp32_and_bf16_runs.items():
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert model.dtype == torch.float32  # mixed precision trains fp32 master weights
        batch = AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            probs[name] = model(**batch).logits.softmax(-1)
    assert torch.allclose(probs["bf16"], probs["fp32"], atol=0.05)  # weights trained apart: ~10x bf16's eps
