"""The loss-term registry (distillkit/losses.py): it drives the three terms, and a new term is one entry.

A toy term (squared error between student and teacher logits) is registered for one test and removed after it:
the arguments get its `--alpha_toy` flag, the loss computes it, the trainer logs `loss_toy`, and the run record,
the model card and the report's loss plot show it, with no edit anywhere else.
"""

import dataclasses
import json

import pytest
import torch
from PIL import Image
from test_distill_trainer import make_args
from transformers import HfArgumentParser

from distill_trainer import DistillationTrainingArguments
from distillkit.losses import (
    LossInputs,
    LossTerm,
    LossWeights,
    distillation_loss,
    gold_loss,
    hidden_state_cosine_loss,
    loss_components,
    loss_terms,
    register_loss_term,
    soft_target_kl,
    unregister_loss_term,
    weight_flags,
)
from distillkit.records import RunRecord, loss_keys
from distillkit.report import plot_loss_curves
from distillkit.students import build_student
from distillkit.trainer import hidden_state_layer_map, with_loss_weight_fields
from distillkit.training import build_trainer, train_evaluate_save

# A seconds-long CPU run (the flags test_distill_trainer.make_args sets).
TRAIN_FLAGS = "--per_device_train_batch_size 8 --logging_steps 1 --save_strategy no --use_cpu true --report_to none"


def test_the_registry_drives_the_three_terms():
    assert [t.name for t in loss_terms()] == ["ce", "kl", "cos"]
    assert weight_flags() == ("alpha_ce", "alpha_kl", "alpha_cos")
    assert loss_components() == ("loss_ce", "loss_kl", "loss_cos")
    assert loss_keys() == ("alpha_ce", "alpha_kl", "alpha_cos", "temperature")
    fields = {f.name: f for f in dataclasses.fields(DistillationTrainingArguments)}
    for term in loss_terms():  # each term's flag, with the registry's help
        assert fields[term.weight_flag].metadata["help"].startswith(term.help)
    assert [t.name for t in loss_terms() if t.needs_teacher_logits] == ["kl"]
    assert [t.name for t in loss_terms() if t.needs_hidden_states] == ["cos"]

    torch.manual_seed(0)
    s, t, labels = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    s_hidden, t_hidden, mask = [torch.randn(4, 5, 8)], [torch.randn(4, 5, 8)], torch.ones(4, 5)
    total, parts = distillation_loss(s, labels, LossWeights(0.5, 2.0, 3.0), 2.0, t, s_hidden, t_hidden, mask)
    assert list(parts) == list(loss_components())
    expected = {
        "loss_ce": gold_loss(s, labels),
        "loss_kl": soft_target_kl(s, t, 2.0),
        "loss_cos": hidden_state_cosine_loss(s_hidden, t_hidden, mask),
    }
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item())
    assert total.item() == pytest.approx((0.5 * expected["loss_ce"] + 2 * expected["loss_kl"] + 3 * expected["loss_cos"]).item())


def test_loss_weights_by_name_position_and_default():
    weights = LossWeights(kl=0.5)
    assert dict(weights) == {"ce": 1.0, "kl": 0.5, "cos": 1.0} and weights.kl == weights["kl"] == 0.5
    assert dict(LossWeights(0.2, 0.0)) == {"ce": 0.2, "kl": 0.0, "cos": 1.0}
    assert dict(LossWeights.only("ce")) == {"ce": 1.0, "kl": 0.0, "cos": 0.0}
    assert [t.name for t in LossWeights(ce=0.0, cos=2.0).active()] == ["kl", "cos"]
    with pytest.raises(TypeError, match="unknown loss term"):
        LossWeights(attention=1.0)
    with pytest.raises(ValueError, match="need a new identifier"):
        register_loss_term(LossTerm("kl", "KL again", lambda x: x.student_logits.sum(), "twice"))


def test_arguments_follow_the_registry(tmp_path):
    args = make_args(tmp_path, alpha_kl=0.0)
    assert dict(args.loss_weights) == {"ce": 1.0, "kl": 0.0, "cos": 1.0}
    assert args.uses_teacher and args.needs_live_teacher  # the cosine term needs hidden states every step
    assert args.loss_record() == {"alpha_ce": 1.0, "alpha_kl": 0.0, "alpha_cos": 1.0, "temperature": 2.0}
    plain = make_args(tmp_path, alpha_kl=0.0, alpha_cos=0.0)
    assert not plain.uses_teacher and not plain.needs_live_teacher
    with pytest.raises(ValueError, match="--alpha_ce, --alpha_kl and --alpha_cos are all 0"):
        make_args(tmp_path, alpha_ce=0.0, alpha_kl=0.0, alpha_cos=0.0)


class _Config:
    def __init__(self, hidden_size, num_hidden_layers, distillation_layers=None):
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        if distillation_layers is not None:
            self.distillation_layers = distillation_layers


def test_one_hidden_size_policy_an_error_never_a_silent_drop():
    teacher = _Config(768, 12)
    on, off = LossWeights(cos=1.0), LossWeights(cos=0.0)
    assert hidden_state_layer_map(on, _Config(768, 6, [2, 4, 6, 8, 10, 12]), teacher) == [2, 4, 6, 8, 10, 12]
    assert hidden_state_layer_map(on, _Config(768, 12), teacher) == list(range(1, 13))  # same depth: layer to layer
    with pytest.raises(ValueError) as err:
        hidden_state_layer_map(on, _Config(384, 6, [1, 3, 5, 7, 9, 11]), teacher)
    message = str(err.value)
    assert "\n" not in message and message.startswith("--alpha_cos 1: the hidden-state cosine term")
    assert message.endswith("student hidden_size 384 != teacher 768; set --alpha_cos 0")
    with pytest.raises(ValueError, match="the student has 6 layers, the teacher 12, and no layer map.*set --alpha_cos 0"):
        hidden_state_layer_map(on, _Config(768, 6), teacher)
    with pytest.raises(ValueError, match=r"layer_map \[2, 14\]: need 2 teacher layers numbered 1..12; set --alpha_cos 0"):
        hidden_state_layer_map(on, _Config(768, 2, [2, 14]), teacher)
    # With the term off nothing is compared, so any sizes are fine.
    assert hidden_state_layer_map(off, _Config(384, 6), teacher) is None


def _squared_logit_error(x: LossInputs) -> torch.Tensor:
    return ((x.student_logits.float() - x.teacher_logits.float()) ** 2).mean()


@pytest.fixture
def toy_term():
    term = register_loss_term(
        LossTerm(
            "toy", "toy logit-matching", _squared_logit_error, "Weight of a toy term.", default_weight=0.0,
            needs_teacher_logits=True,
        )
    )  # fmt: skip
    try:
        yield term
    finally:
        unregister_loss_term("toy")
    assert "toy" not in weight_flags() and "toy" not in LossWeights()


def _arguments_class_made_now() -> type:
    """A training-arguments class created after the toy entry, as the scripts' classes are after the real ones.
    Module-level, so the Trainer can pickle its instance (training_args.bin)."""

    @dataclasses.dataclass
    @with_loss_weight_fields
    class ToyArguments(DistillationTrainingArguments):
        pass

    ToyArguments.__qualname__ = "ToyArguments"
    globals()["ToyArguments"] = ToyArguments
    return ToyArguments


def test_a_new_term_is_one_registry_entry(toy_term, tiny_task, tmp_path):
    # The flag: --alpha_toy.
    Args = _arguments_class_made_now()
    cli = ["--output_dir", str(tmp_path / "out"), "--alpha_toy", "0.5", "--alpha_cos", "0", *TRAIN_FLAGS.split()]
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses(args=cli)
    assert dict(args.loss_weights) == {"ce": 1.0, "kl": 1.0, "cos": 0.0, "toy": 0.5}
    assert args.loss_record()["alpha_toy"] == 0.5 and "alpha_toy" in loss_keys()
    ce_and_toy = dataclasses.replace(args, alpha_kl=0.0)
    assert ce_and_toy.uses_teacher and ce_and_toy.needs_live_teacher  # the toy term reads teacher logits
    assert not dataclasses.replace(ce_and_toy, cache_teacher_logits=True).needs_live_teacher  # cached logits do

    # The loss: the pure function, weighted, under loss_toy.
    s, t, labels = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    total, parts = distillation_loss(s, labels, LossWeights(ce=1.0, kl=0.0, cos=0.0, toy=0.5), 2.0, t)
    assert set(parts) == {"loss_ce", "loss_toy"}
    assert parts["loss_toy"].item() == pytest.approx(((s - t) ** 2).mean().item())
    assert total.item() == pytest.approx((parts["loss_ce"] + 0.5 * parts["loss_toy"]).item())

    # The trainer logs it; the record, the card and the report's loss plot carry it.
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [2, 4])
    student.config.training_record = {"method": "even", "layers": [2, 4], **ce_and_toy.loss_record()}
    trainer = build_trainer(student, ce_and_toy, tokenized, tokenizer, teacher_model=teacher)
    train_evaluate_save(trainer, tokenized, None)
    history = trainer.state.log_history
    logs = [h for h in history if "loss" in h and "loss_ce" in h]
    assert logs and all("loss_toy" in h and "loss_kl" not in h for h in logs)
    for h in logs:
        assert h["loss"] == pytest.approx(h["loss_ce"] + 0.5 * h["loss_toy"], rel=1e-4)
    out = tmp_path / "out"
    record = RunRecord.load(str(out))
    assert record.loss["alpha_toy"] == 0.5 and record.loss["alpha_kl"] == 0.0
    assert json.loads((out / "run_record.json").read_text())["loss"]["alpha_toy"] == 0.5
    assert "| loss weight `alpha_toy` | 0.5" in (out / "README.md").read_text()
    plot = plot_loss_curves({"even": history}, str(tmp_path / "loss.png"))
    width = Image.open(plot).size[0]
    assert width == 3 * 450  # panels: total, loss_ce, loss_toy (4.5 in at 100 dpi each)
