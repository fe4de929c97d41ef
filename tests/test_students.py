"""Layer selection and student construction: exact copies, known sizes, clear errors."""

import pytest
import torch
from conftest import tiny_bert_config
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from distillkit.cli import UsageError
from distillkit.students import build_student, count_parameters, select_layers


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("odd", 12, [1, 3, 5, 7, 9, 11]),
        ("even", 12, [2, 4, 6, 8, 10, 12]),
        ("odd", 6, [1, 3, 5]),
        ("even", 6, [2, 4, 6]),
        ("top", 12, [7, 8, 9, 10, 11, 12]),
        ("bottom", 12, [1, 2, 3, 4, 5, 6]),
        ("1,3,5", 6, [1, 3, 5]),
        (" 2, 12 ", 12, [2, 12]),
    ],
)
def test_select_layers(spec, n, expected):
    assert select_layers(spec, n) == expected


def test_named_layers_with_explicit_depth():
    assert select_layers("top", 12, student_num_layers=4) == [9, 10, 11, 12]
    assert select_layers("even", 12, student_num_layers=3) == [2, 6, 12]  # spread over the even layers


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0,2", "numbered 1..6"),
        ("2,7", "numbered 1..6"),
        ("2,2", "appears twice"),
        ("4,2", "ascending"),
        ("", "empty"),
        ("1,,3", "item between commas is empty"),
        ("1,3,", "item between commas is empty"),
        ("middle", "expected one of odd, even, top, bottom"),
    ],
)
def test_select_layers_rejects_bad_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        select_layers(spec, 6)


def test_odd_depth_too_large():
    with pytest.raises(UsageError, match="only 3 odd layers"):
        select_layers("odd", 6, student_num_layers=4)


def _layer_params(model, prefix, index):
    return {
        k.split(f"{prefix}.{index}.", 1)[1]: v
        for k, v in model.state_dict().items()
        if k.startswith(f"{prefix}.{index}.")
    }


@pytest.mark.parametrize("layers", [[2, 4], [1, 3], [4], [1, 2, 3, 4]])
def test_student_layers_are_exact_copies(layers):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_layers=4))
    student = build_student(teacher, layers)
    assert student.config.num_hidden_layers == len(layers)
    assert student.config.distillation_layers == layers
    for i, source in enumerate(layers):
        s, t = _layer_params(student, "bert.encoder.layer", i), _layer_params(teacher, "bert.encoder.layer", source - 1)
        assert s.keys() == t.keys()
        for name in s:
            assert torch.equal(s[name], t[name]), name
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        if ".encoder.layer." not in name:  # embeddings, pooler, classifier head
            assert torch.equal(value, teacher_state[name]), name
    # A copy, not a view: training the student must not move the teacher.
    with torch.no_grad():
        student.bert.encoder.layer[0].output.dense.weight.add_(1.0)
    assert not torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[layers[0] - 1].output.dense.weight
    )


def test_full_depth_student_reproduces_the_teacher():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_layers=3)).eval()
    student = build_student(teacher, [1, 2, 3]).eval()
    ids = torch.randint(5, 30, (2, 9))
    assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_known_bert_base_sizes():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(num_labels=2))
    assert count_parameters(teacher) == (109_483_778, 109_483_778)
    student = build_student(teacher, select_layers("even", 12))
    assert count_parameters(student)[1] == 66_956_546


def test_distilbert_and_roberta_layouts():
    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=50, dim=32, hidden_dim=64, n_layers=4, n_heads=4)
    )
    small = build_student(distil, [2, 4])
    assert small.config.n_layers == 2
    assert torch.equal(
        small.distilbert.transformer.layer[1].ffn.lin1.weight, distil.distilbert.transformer.layer[3].ffn.lin1.weight
    )
    roberta = RobertaForSequenceClassification(
        RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
    )
    small = build_student(roberta, [1, 3])
    assert torch.equal(
        small.roberta.encoder.layer[1].output.dense.weight, roberta.roberta.encoder.layer[2].output.dense.weight
    )
