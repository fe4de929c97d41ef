"""--cache_teacher_logits: the cached logits are the live teacher's, computed once, reused, and the teacher stays idle."""

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, common_args

import run_distill
import run_finetune
import run_lora
from distill_trainer import DistillationTrainingArguments
from distillkit.data import tokenize_splits
from distillkit.students import build_student
from distillkit.teacher_logits import LOGITS_FILE, RECORD_FILE, TEACHER_LOGITS_COLUMN, cache_key, teacher_input_columns
from distillkit.training import build_trainer


def make_args(tmp_path, **kw):
    base = {
        "output_dir": str(tmp_path / "out"),
        "teacher_logits_cache_dir": str(tmp_path / "cache"),
        "per_device_train_batch_size": 8,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }
    base.update(kw)
    return DistillationTrainingArguments(**base)


class CountingForward:
    def __init__(self, module):
        self.calls = 0
        self.hidden = []
        module.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        self.calls += 1
        self.hidden.append(output.hidden_states is not None)


def cache_entries(tmp_path):
    return sorted(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))


def test_alpha_cos_is_off_with_cached_logits_unless_asked_for(tmp_path):
    plain = make_args(tmp_path)
    assert (plain.alpha_cos, plain.cache_teacher_logits, plain.needs_live_teacher) == (1.0, False, True)
    cached = make_args(tmp_path, cache_teacher_logits=True)
    assert (cached.alpha_cos, cached.cosine_off_for_cached_logits, cached.needs_live_teacher) == (0.0, True, False)
    asked = make_args(tmp_path, cache_teacher_logits=True, alpha_cos=0.5)
    assert (asked.alpha_cos, asked.cosine_off_for_cached_logits, asked.needs_live_teacher) == (0.5, False, True)
    with pytest.raises(ValueError, match="--cache_teacher_logits caches the teacher's logits for the KL term"):
        make_args(tmp_path, cache_teacher_logits=True, alpha_kl=0.0)


def test_cached_and_live_kl_are_equal_on_the_same_batch(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    student = build_student(teacher, [1])
    with torch.no_grad():  # a head that disagrees with the teacher's, so the KL is far from 0
        student.classifier.weight.normal_(std=1.0, generator=torch.Generator().manual_seed(1))
    kl_only = {"alpha_ce": 0.0, "alpha_cos": 0.0, "temperature": 3.0}
    live = build_trainer(student, make_args(tmp_path, **kl_only), tokenized, tokenizer, teacher_model=teacher)
    cached = build_trainer(
        student, make_args(tmp_path, cache_teacher_logits=True, **kl_only), tokenized, tokenizer, teacher_model=teacher
    )
    assert cached.teacher is None  # not even placed on the device
    rows = [0, 5, 17, 42, 60, 77]
    live_batch = live.data_collator([tokenized["train"][i] for i in rows])
    cached_batch = cached.data_collator([cached.train_dataset[i] for i in rows])
    assert torch.equal(live_batch["input_ids"], cached_batch["input_ids"])
    assert TEACHER_LOGITS_COLUMN not in live_batch and cached_batch[TEACHER_LOGITS_COLUMN].shape == (len(rows), 2)

    counter = CountingForward(teacher)
    student.train()
    live_kl = live.compute_loss(student, dict(live_batch))
    assert counter.calls == 1
    cached_kl = cached.compute_loss(student, dict(cached_batch))
    assert counter.calls == 1  # the cached loss did not run the teacher
    assert live_kl.item() > 1e-2
    # The cached logits came from other (length-sorted) batches: equal up to float32 rounding of a tiny
    # default-initialised teacher (|logits| < 1: a few EPS32, ~1e-7), so the KL (> 1e-2) agrees to ~1e-5.
    assert cached_kl.item() == pytest.approx(live_kl.item(), rel=1e-5)
    # The stored logits are the teacher's on these rows (computed in other, length-sorted batches).
    inputs = {k: v for k, v in live_batch.items() if k != "labels"}
    with torch.no_grad():
        expected = teacher(**inputs).logits
    torch.testing.assert_close(cached_batch[TEACHER_LOGITS_COLUMN], expected, rtol=1e-5, atol=1e-6)  # ~10 EPS32


def test_a_cached_run_never_runs_the_teacher_and_the_cache_is_reused(tiny_task, tmp_path):
    data, tokenized, tokenizer, teacher = tiny_task
    counter = CountingForward(teacher)
    args = make_args(tmp_path, cache_teacher_logits=True, per_device_eval_batch_size=64)
    trainer = build_trainer(build_student(teacher, [2, 4]), args, tokenized, tokenizer, teacher_model=teacher)
    rows = len(tokenized["train"])
    assert counter.calls == math.ceil(rows / 64)  # computed once, in inference batches
    (entry,) = cache_entries(tmp_path)
    record = json.loads((entry / RECORD_FILE).read_text())
    assert (record["rows"], record["precision"], record["num_labels"]) == (rows, "fp32", 2)
    assert record["input_columns"] == ["attention_mask", "input_ids", "token_type_ids"]

    counter.calls = 0
    trainer.train()
    assert trainer.state.global_step == rows // 8 and counter.calls == 0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all("loss_kl" in h and "loss_ce" in h and "loss_cos" not in h for h in logs)

    # Another student of the same teacher on the same tokens: the file is read, the teacher never runs.
    stamp = (entry / LOGITS_FILE).stat().st_mtime_ns
    again = build_trainer(build_student(teacher, [1, 3]), args, tokenized, tokenizer, teacher_model=teacher)
    assert counter.calls == 0 and cache_entries(tmp_path) == [entry]
    assert (entry / LOGITS_FILE).stat().st_mtime_ns == stamp
    assert again.train_dataset[TEACHER_LOGITS_COLUMN] == trainer.train_dataset[TEACHER_LOGITS_COLUMN]

    # A shorter --max_seq_length changes the tokens, so it gets logits of its own.
    shorter = tokenize_splits(data, tokenizer, 8)
    build_trainer(build_student(teacher, [2, 4]), args, shorter, tokenizer, teacher_model=teacher)
    assert counter.calls > 0 and len(cache_entries(tmp_path)) == 2


def test_the_cache_key_follows_what_the_teacher_computes(tiny_task):
    _, tokenized, _, teacher = tiny_task
    train = tokenized["train"]
    columns = teacher_input_columns(teacher, train)
    key, record = cache_key(teacher, train, columns, "fp32")
    assert record["rows"] == len(train) and record["max_length"] <= 32

    renamed = copy.deepcopy(teacher)
    renamed.config._name_or_path = "/somewhere/else"
    renamed.config.training_record = {"method": "teacher"}
    assert cache_key(renamed, train, columns, "fp32")[0] == key  # same weights, same logits
    assert cache_key(teacher, train, columns, "bf16")[0] != key
    assert cache_key(teacher, train.select(range(len(train) - 1)), columns, "fp32")[0] != key
    assert cache_key(teacher, train.select(range(len(train) - 1, -1, -1)), columns, "fp32")[0] != key  # row order
    with torch.no_grad():
        renamed.classifier.bias.add_(1e-3)
    assert cache_key(renamed, train, columns, "fp32")[0] != key


def test_asking_for_the_cosine_term_keeps_the_live_teacher_for_hidden_states(tiny_task, tmp_path, caplog):
    _, tokenized, tokenizer, teacher = tiny_task
    args = make_args(tmp_path, cache_teacher_logits=True, alpha_cos=1.0)
    with caplog.at_level("WARNING"):
        trainer = build_trainer(build_student(teacher, [2, 4]), args, tokenized, tokenizer, teacher_model=teacher)
    assert "the teacher still runs on every step for its hidden states" in caplog.text
    counter = CountingForward(teacher)
    trainer.train()
    assert counter.calls == trainer.state.global_step and all(counter.hidden)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all({"loss_ce", "loss_kl", "loss_cos"} <= h.keys() for h in logs)


def test_run_distill_caches_once_and_a_second_run_reuses_the_file(tmp_path, tiny_classifier_dir, tiny_data_dir, caplog):
    exp = tmp_path / "EXP"

    def argv(layers):
        return common_args(
            tiny_data_dir,
            exp / layers,
            teacher_name_or_path=tiny_classifier_dir,
            layers=layers,
            cache_teacher_logits=True,
        )

    with caplog.at_level("INFO"):
        results = run_distill.main(argv("even"))
    assert "the hidden-state cosine term needs the live teacher, so it is off" in caplog.text
    assert "teacher logits: computing them for 96 training rows" in caplog.text
    assert results["train_loss"] > 0 and "test_f1" in results
    history = json.loads((exp / "even" / "trainer_state.json").read_text())["log_history"]
    assert any({"loss", "loss_ce", "loss_kl"} <= h.keys() for h in history)
    assert not any("loss_cos" in h for h in history)
    record = json.loads((exp / "even" / "config.json").read_text())["training_record"]
    assert (record["alpha_kl"], record["alpha_cos"], record["cache_teacher_logits"]) == (1.0, 0.0, True)
    (entry,) = list((exp / "teacher_logits").iterdir())  # beside --output_dir by default
    assert json.loads((entry / RECORD_FILE).read_text())["teacher"] == str(tiny_classifier_dir)
    stamp = (entry / LOGITS_FILE).stat().st_mtime_ns

    caplog.clear()
    with caplog.at_level("INFO"):
        run_distill.main(argv("odd"))
    assert f"teacher logits: reusing {entry}" in caplog.text and "computing them" not in caplog.text
    assert list((exp / "teacher_logits").iterdir()) == [entry]
    assert (entry / LOGITS_FILE).stat().st_mtime_ns == stamp
    assert (exp / "odd" / "all_results.json").is_file()


def test_run_lora_distils_from_cached_logits(tmp_path, tiny_base_model_dir, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "lora"
    results = run_lora.main(
        common_args(
            tiny_data_dir,
            out,
            model_name_or_path=tiny_base_model_dir,
            teacher_name_or_path=tiny_classifier_dir,
            cache_teacher_logits=True,
        )
    )
    assert (results["alpha_kl"], results["alpha_cos"], results["cache_teacher_logits"]) == (1.0, 0.0, True)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss_kl" in h for h in history) and not any("loss_cos" in h for h in history)
    assert len(list((tmp_path / "teacher_logits").iterdir())) == 1


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (run_lora, "--cache_teacher_logits caches a teacher's logits: pass --teacher_name_or_path"),
        (run_finetune, "--cache_teacher_logits caches the teacher's logits for the KL term, but --alpha_kl is 0"),
    ],
)
def test_the_flag_without_a_teacher_is_a_usage_error(
    module, message, tmp_path, tiny_base_model_dir, tiny_data_dir, capsys
):
    argv = common_args(
        tiny_data_dir, tmp_path / "out", model_name_or_path=tiny_base_model_dir, cache_teacher_logits=True
    )
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_cache_is_computed_in_the_runs_precision(tiny_task, tmp_path):
    _, tokenized, tokenizer, teacher = tiny_task
    seen = set()
    # A Linear inside the encoder: its output dtype is the precision the matmul ran in.
    teacher.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
    args = make_args(tmp_path, cache_teacher_logits=True, bf16=True)
    trainer = build_trainer(build_student(teacher, [2, 4]), args, tokenized, tokenizer, teacher_model=teacher)
    assert seen == {torch.bfloat16}
    (entry,) = cache_entries(tmp_path)
    assert json.loads((entry / RECORD_FILE).read_text())["precision"] == "bf16"
    # Stored as float32 all the same, and the teacher's own weights were not cast.
    assert trainer.train_dataset.features[TEACHER_LOGITS_COLUMN].feature.dtype == "float32"
    assert all(v.dtype == torch.float32 for v in teacher.state_dict().values())


def test_two_processes_compute_the_cache_once(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "EXP" / "even"
    argv = common_args(
        tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, cache_teacher_logits=True,
        per_device_train_batch_size=4, log_level_replica="info",
    )  # fmt: skip
    config = REPO / "configs" / "accelerate" / "cpu_ddp_2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "run_distill.py", *argv]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Process rank: 1, world size: 2" in log
    # The main process computes and writes; the other waits for it, then reads the file.
    assert log.count("teacher logits: computing them") == 1 and log.count("teacher logits: reusing") == 1
    assert len(list((tmp_path / "EXP" / "teacher_logits").iterdir())) == 1
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss_kl" in h for h in history) and not any("loss_cos" in h for h in history)
