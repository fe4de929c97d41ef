"""DistillationTrainer: what runs when, what is logged, and that the loss scale is right."""

import numpy as np
import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForSequenceClassification

from distill_trainer import DistillationTrainingArguments
from distillkit.losses import LossWeights, distillation_loss
from distillkit.students import build_student
from distillkit.training import build_trainer


def make_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return DistillationTrainingArguments(**base)


class CountingForward:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_components_are_logged_and_eval_runs_the_student_alone(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [2, 4])
    trainer = build_trainer(student, make_args(tmp_path), tokenized, tokenizer, teacher_model=teacher)
    counter = CountingForward(teacher)
    trainer.train()
    steps = trainer.state.global_step
    assert counter.calls == steps  # one teacher forward per training step
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all({"loss_ce", "loss_kl", "loss_cos"} <= h.keys() for h in logs)
    for h in logs:  # the logged total is the weighted sum of the logged parts (weights 1)
        assert h["loss"] == pytest.approx(h["loss_ce"] + h["loss_kl"] + h["loss_cos"], rel=1e-4)
    metrics = trainer.evaluate()
    assert counter.calls == steps  # evaluation never touches the teacher
    # The eval loss is the student's own cross-entropy.
    student.eval()
    batch = trainer.data_collator([tokenized["validation"][i] for i in range(len(tokenized["validation"]))])
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(
            student(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
        )
    assert metrics["eval_loss"] == pytest.approx(ce.item(), rel=1e-4)
    assert {"eval_f1", "eval_roc_auc", "eval_accuracy"} <= metrics.keys()


def test_zero_weights_skip_the_teacher(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [1, 3])
    args = make_args(tmp_path, alpha_kl=0.0, alpha_cos=0.0)
    trainer = build_trainer(student, args, tokenized, tokenizer, teacher_model=teacher)
    counter = CountingForward(teacher)
    trainer.train()
    assert counter.calls == 0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("loss_kl" not in h and "loss_cos" not in h for h in logs)
    assert all(h["loss"] == pytest.approx(h["loss_ce"], rel=1e-5) for h in logs)


def test_only_kl_skips_hidden_states(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [1, 3])
    trainer = build_trainer(student, make_args(tmp_path, alpha_cos=0.0), tokenized, tokenizer, teacher_model=teacher)
    seen = []
    teacher.register_forward_hook(lambda m, a, kw, out: seen.append(out.hidden_states is None), with_kwargs=True)
    trainer.train()
    assert seen and all(seen)


def test_compute_loss_equals_the_pure_loss(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [2, 4])
    args = make_args(tmp_path, alpha_ce=0.3, alpha_kl=0.5, alpha_cos=2.0, temperature=3.0)
    trainer = build_trainer(student, args, tokenized, tokenizer, teacher_model=teacher)
    batch = trainer.data_collator([tokenized["train"][i] for i in range(6)])
    student.train()
    got = trainer.compute_loss(student, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True)
        t = teacher(**inputs, output_hidden_states=True)
    expected, _ = distillation_loss(
        s.logits, batch["labels"], LossWeights(0.3, 0.5, 2.0), 3.0, t.logits,
        s.hidden_states[1:], [t.hidden_states[2], t.hidden_states[4]], batch["attention_mask"],
    )  # fmt: skip
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_logged_loss_is_not_rescaled_by_gradient_accumulation(tiny_task, tmp_path, accumulation):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [2, 4])
    args = make_args(tmp_path, learning_rate=0.0, per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
                     train_sampling_strategy="sequential", logging_steps=100)  # fmt: skip
    trainer = build_trainer(student, args, tokenized, tokenizer, teacher_model=teacher)
    train_loss = trainer.train().training_loss
    # With lr 0 the model never changes, so the mean over all 4-row batches is the reference.
    student.train()
    reference = []
    for start in range(0, len(tokenized["train"]), 4):
        batch = trainer.data_collator([tokenized["train"][i] for i in range(start, start + 4)])
        batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
        with torch.no_grad():
            reference.append(trainer.compute_loss(student, batch).item())
    assert train_loss == pytest.approx(sum(reference) / len(reference), rel=1e-4)


def test_mismatched_hidden_size_is_refused_for_the_cosine_term(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    other = BertForSequenceClassification(tiny_bert_config(num_layers=2, hidden_size=16, num_attention_heads=2))
    with pytest.raises(ValueError, match="hidden_size 16 != teacher 32; set --alpha_cos 0"):
        build_trainer(other, make_args(tmp_path), tokenized, tokenizer, teacher_model=teacher)
    build_trainer(other, make_args(tmp_path, alpha_cos=0.0), tokenized, tokenizer, teacher_model=teacher)


def test_teacher_required_when_distilling(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    with pytest.raises(ValueError, match="no teacher_model"):
        build_trainer(build_student(teacher, [1]), make_args(tmp_path), tokenized, tokenizer)


@pytest.mark.parametrize("spec", ["1,3", "balanced"])
def test_class_weights_weigh_the_training_ce_only(tiny_task, tmp_path, spec):
    data, tokenized, tokenizer, teacher = tiny_task
    args = make_args(tmp_path, class_weights=spec, alpha_kl=0.0, alpha_cos=0.0)  # plain fine-tuning
    trainer = build_trainer(teacher, args, tokenized, tokenizer)
    counts = torch.bincount(torch.tensor(tokenized["train"]["label"]), minlength=2).float()
    expected = torch.tensor([1.0, 3.0]) if spec == "1,3" else counts.sum() / (2 * counts)
    assert torch.allclose(trainer.class_weights, expected)
    batch = trainer.data_collator([tokenized["train"][i] for i in range(8)])
    assert set(batch["labels"].tolist()) == {0, 1}  # with one class only, a weighted mean equals the plain one
    teacher.train()  # dropout is off in the fixture, so train and eval forwards agree
    with torch.no_grad():
        logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        weighted = trainer.compute_loss(teacher, dict(batch))
        teacher.eval()
        plain = trainer.compute_loss(teacher, dict(batch))
    assert weighted.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, batch["labels"], weight=expected).item(), rel=1e-5
    )
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)


def test_class_weights_auto_resolves_on_train_and_says_so(tiny_task, tmp_path):
    data, tokenized, tokenizer, teacher = tiny_task
    labels = np.asarray(tokenized["train"]["label"])
    trainer = build_trainer(teacher, make_args(tmp_path, alpha_kl=0.0, alpha_cos=0.0), tokenized, tokenizer)
    record = trainer.class_weight_record  # auto is the default
    share = np.bincount(labels, minlength=2).min() / len(labels)
    assert record["policy"] == "auto" and record["rarest_share"] == pytest.approx(share, abs=1e-6)
    assert record["resolved"] == ("balanced" if share < 0.25 else "none")
    assert (trainer.class_weights is None) == (record["resolved"] == "none")
    # Rebalanced to 1 positive in 8: auto must weigh the CE term.
    keep = np.concatenate([np.flatnonzero(labels == 0)[:7], np.flatnonzero(labels == 1)[:1]])
    skewed = {**tokenized, "train": tokenized["train"].select(keep)}
    trainer = build_trainer(teacher, make_args(tmp_path, alpha_kl=0.0, alpha_cos=0.0), skewed, tokenizer)
    assert trainer.class_weight_record["resolved"] == "balanced"
    assert torch.allclose(trainer.class_weights, torch.tensor([8 / (2 * 7), 8 / (2 * 1)]))


@pytest.mark.parametrize("spec", ["heavy", "1,-2", "3"])
def test_bad_class_weights_are_refused(tmp_path, spec):
    with pytest.raises(ValueError, match="--class_weights"):
        make_args(tmp_path, class_weights=spec)
