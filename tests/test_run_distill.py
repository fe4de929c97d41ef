"""run_distill.py end to end on tiny models: outputs, teacher reuse, refusal, argument files, resume."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, common_args, kill_at_checkpoint_then_resume
from tolerances import forward_atol
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import run_distill
import run_finetune

FAST = dict(teacher_num_train_epochs=2, teacher_learning_rate=1e-3)


def run_main(module, argv):
    return module.main([str(a) for a in argv])


def test_teacher_stage_then_even_and_odd_students(tmp_path, tiny_base_model_dir, tiny_data_dir, caplog):
    exp = tmp_path / "EXP"
    argv = common_args(tiny_data_dir, exp / "even", teacher_name_or_path=tiny_base_model_dir, layers="even", **FAST)
    results = run_main(run_distill, argv + ["--class_names", "non-toxic,toxic"])

    teacher_dir, even = exp / "teacher", exp / "even"
    for directory in (teacher_dir, even):
        for name in (
            "model.safetensors",
            "config.json",
            "tokenizer_config.json",
            "all_results.json",
            "trainer_state.json",
        ):
            assert (directory / name).is_file(), f"{directory}/{name}"
        assert not (directory / "pytorch_model.bin").exists()
    config = json.loads((even / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["distillation_layers"] == [2, 4]
    assert config["id2label"] == {"0": "non-toxic", "1": "toxic"}
    record = config["training_record"]
    assert record["teacher"] == str(teacher_dir) and record["layers"] == [2, 4]
    assert (record["alpha_ce"], record["alpha_kl"], record["alpha_cos"], record["temperature"]) == (1.0, 1.0, 1.0, 2.0)
    saved = json.loads((even / "all_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in (
        "train_loss",
        "train_runtime",
        "eval_accuracy",
        "eval_f1",
        "eval_roc_auc",
        "test_accuracy",
        "test_f1",
        "test_roc_auc",
    ):
        assert isinstance(saved[key], float), key
    history = json.loads((even / "trainer_state.json").read_text())["log_history"]
    assert any({"loss", "loss_ce", "loss_kl", "loss_cos"} <= h.keys() for h in history)
    teacher_record = json.loads((teacher_dir / "config.json").read_text())["training_record"]
    assert teacher_record["method"] == "teacher"
    teacher_state = json.loads((teacher_dir / "trainer_state.json").read_text())
    assert teacher_state["global_step"] == 2 * 12  # 2 epochs of 96 rows in batches of 8

    # The odd student reuses EXP/teacher: nothing in it is rewritten.
    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        run_main(
            run_distill,
            common_args(tiny_data_dir, exp / "odd", teacher_name_or_path=tiny_base_model_dir, layers="odd", **FAST),
        )
    assert "Reusing the fine-tuned teacher" in caplog.text
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((exp / "odd" / "config.json").read_text())["distillation_layers"] == [1, 3]

    # Plain transformers.pipeline loads the student and predicts what the model does.
    texts = ["you stupid idiot", "thanks for the citation fix"]
    classifier = pipeline("text-classification", model=str(even), top_k=None)
    model = AutoModelForSequenceClassification.from_pretrained(even).eval()
    tokenizer = AutoTokenizer.from_pretrained(even)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    probs, atol = logits.softmax(-1), forward_atol(logits.numpy())
    for row, p in zip(classifier(texts), probs):
        by_label = {r["label"]: r["score"] for r in row}
        # the pipeline runs one text at a time, the reference a padded batch: float32 rounding apart
        assert by_label["toxic"] == pytest.approx(p[1].item(), rel=0, abs=atol)


def test_a_finetuned_teacher_is_used_as_it_is(tmp_path, tiny_classifier_dir, tiny_data_dir):
    exp = tmp_path / "EXP"
    run_main(
        run_distill,
        common_args(tiny_data_dir, exp / "bottom", teacher_name_or_path=tiny_classifier_dir, layers="bottom"),
    )
    assert not (exp / "teacher").exists()
    config = json.loads((exp / "bottom" / "config.json").read_text())
    assert config["distillation_layers"] == [1, 2] and config["training_record"]["teacher"] == str(tiny_classifier_dir)


def test_run_finetune_is_the_teacher_code_path(tmp_path, tiny_base_model_dir, tiny_data_dir):
    out = tmp_path / "teacher"
    results = run_main(run_finetune, common_args(tiny_data_dir, out, model_name_or_path=tiny_base_model_dir))
    assert results["method"] == "teacher" and "test_roc_auc" in results
    assert json.loads((out / "config.json").read_text())["training_record"]["method"] == "teacher"


def test_yaml_and_json_argument_files(tmp_path, tiny_classifier_dir, tiny_data_dir):
    argv = common_args(
        tiny_data_dir,
        tmp_path / "y",
        teacher_name_or_path=tiny_classifier_dir,
        layers="1,3",
        lr_scheduler_type="constant",
    )
    # Written the way a person writes YAML: unquoted (so `no` and `1e-3` are YAML 1.1 traps we must handle).
    pairs = [(argv[i][2:], argv[i + 1]) for i in range(0, len(argv), 2)]
    (tmp_path / "args.yaml").write_text("".join(f"{k}: {v}\n" for k, v in pairs))
    run_main(run_distill, [tmp_path / "args.yaml"])
    assert json.loads((tmp_path / "y" / "config.json").read_text())["distillation_layers"] == [1, 3]
    as_json = {k: json.loads(v) if v in ("true", "false") or v.isdigit() else v for k, v in pairs}
    as_json["learning_rate"] = float(as_json["learning_rate"])
    as_json["output_dir"] = str(tmp_path / "j")
    (tmp_path / "args.json").write_text(json.dumps(as_json))
    run_main(run_distill, [tmp_path / "args.json"])
    assert (tmp_path / "j" / "all_results.json").is_file()


def _expect_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(run_distill, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and message in err[-1], err


def test_bad_inputs_fail_before_writing(tmp_path, tiny_classifier_dir, tiny_data_dir, capsys):
    out = tmp_path / "EXP" / "even"

    def argv(**kw):
        kw.setdefault("teacher_name_or_path", tiny_classifier_dir)
        return common_args(kw.pop("data", tiny_data_dir), out, **kw)

    _expect_usage_error(capsys, argv(layers="0,2"), "--layers 0,2: teacher layers are numbered 1..4")
    _expect_usage_error(capsys, argv(layers="2,2"), "appears twice")
    _expect_usage_error(
        capsys, argv(text_column="comment"), "no such column; the data set has columns: id, text, label"
    )
    _expect_usage_error(capsys, argv(data=tmp_path / "missing-dir"), "could not load it from the Hugging Face Hub")
    _expect_usage_error(capsys, argv(alpha_ce=0, alpha_kl=0, alpha_cos=0), "at least one loss term")
    _expect_usage_error(capsys, argv(teacher_name_or_path=tmp_path / "nowhere"), "--teacher_name_or_path")
    bad_labels = tmp_path / "bad"
    bad_labels.mkdir()
    (bad_labels / "train.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(30)))
    _expect_usage_error(
        capsys, argv(data=bad_labels, class_names="a,b"), "split 'train', row 2: label 2 is outside the label set [0, 2)"
    )
    assert not (tmp_path / "EXP").exists()


def test_teacher_reuse_follows_the_request(
    tmp_path, tiny_base_model_dir, tiny_classifier_dir, tiny_data_dir, capsys, caplog
):
    """EXP/teacher is reused only for the base model, data set and max length it was made with (issue 11, defect 3)."""
    exp = tmp_path / "EXP"
    teacher_dir = exp / "teacher"
    one_epoch = {"teacher_num_train_epochs": 1, "teacher_learning_rate": 1e-3}

    def argv(name, data=tiny_data_dir, teacher=tiny_base_model_dir, **kw):
        return common_args(data, exp / name, teacher_name_or_path=teacher, **one_epoch, **kw)

    run_main(run_distill, argv("even"))
    record = json.loads((teacher_dir / "config.json").read_text())["training_record"]
    assert record["base_model"] == str(tiny_base_model_dir) and record["max_seq_length"] == 32
    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    ways_out = (
        "pass another --teacher_output_dir to fine-tune a new teacher there, or --overwrite_output_dir to replace "
        "this one"
    )
    refusal = f"error: --teacher_output_dir {teacher_dir} holds a finished teacher that does not match this run: "

    # Another base model (one that does not even exist): refused, naming the differing field, before anything is
    # written (the request fingerprint, distillkit/fingerprint.py).
    with pytest.raises(SystemExit):
        run_main(run_distill, argv("odd", teacher="/nonexistent/model"))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"{refusal}differing fields: base_model (base_model: ")
    assert line.endswith(f"-> /nonexistent/model); {ways_out}")
    # Another data set with the same labels.
    other_data = tmp_path / "other_data"
    shutil.copytree(tiny_data_dir, other_data)
    with pytest.raises(SystemExit):
        run_main(run_distill, argv("odd", data=other_data))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"{refusal}differing fields: dataset (dataset: ") and line.endswith(ways_out)
    # Another --max_seq_length.
    _expect_usage_error(capsys, argv("odd", max_seq_length=16), "differing fields: max_seq_length (max_seq_length: 32 -> 16)")
    assert not (exp / "odd").exists() and (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp

    # The same request, the data set's path spelled differently: reused as it is.
    run_main(run_distill, argv("odd", data=f"{tiny_data_dir}/./", layers="odd"))
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # A teacher that is already a classifier for the label set is used as it is; EXP/teacher is left alone.
    run_main(run_distill, argv("bottom", teacher=tiny_classifier_dir, layers="bottom"))
    bottom = json.loads((exp / "bottom" / "config.json").read_text())["training_record"]
    assert bottom["teacher"] == str(tiny_classifier_dir)
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # The finished teacher passed both ways (how run_compare reuses it): used as it is, with no warning that it is not.
    caplog.clear()
    run_main(run_distill, argv("spread", teacher=teacher_dir, layers="spread", teacher_output_dir=teacher_dir))
    assert "used as the teacher as it is" in caplog.text and "does not match" not in caplog.text
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp

    # The two ways out: a teacher of its own elsewhere, or --overwrite_output_dir replacing EXP/teacher.
    run_main(run_distill, argv("top", data=other_data, layers="top", teacher_output_dir=exp / "teacher_other"))
    other_record = json.loads((exp / "teacher_other" / "config.json").read_text())["training_record"]
    assert other_record["dataset"]["dataset"] == str(other_data)
    run_main(run_distill, argv("odd2", data=other_data, layers="odd", overwrite_output_dir="true"))
    replaced = json.loads((teacher_dir / "config.json").read_text())["training_record"]
    assert replaced["dataset"]["dataset"] == str(other_data)
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns > stamp


def test_finished_run_is_refused_unless_overwrite(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "even"
    argv = [str(a) for a in common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir)]
    run_main(run_distill, argv)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "run_distill.py", *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --output_dir {out} already holds a finished run")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    run_main(run_distill, argv + ["--overwrite_output_dir", "true"])
    assert (out / "model.safetensors").stat().st_mtime_ns > before["model.safetensors"]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_classifier_dir, tiny_data_dir):
    out = tmp_path / "even"
    argv = common_args(
        tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, num_train_epochs=10, save_strategy="steps",
        save_steps=3, save_total_limit=50, logging_steps=1,
    )  # fmt: skip
    state = kill_at_checkpoint_then_resume("run_distill.py", argv, out, checkpoint_step=3)
    assert state["global_step"] == 10 * 12  # 10 epochs of 96 rows in batches of 8


def test_a_resumed_run_records_the_whole_runs_train_loss(tmp_path, tiny_classifier_dir, tiny_data_dir):
    """Killed after a checkpoint and resumed: all_results.json, trainer_state.json and the card say the same
    train_loss as an uninterrupted run (the Trainer alone would average only the steps after the resume)."""
    settings = {"num_train_epochs": 2, "save_strategy": "steps", "save_steps": 4, "save_total_limit": 50}
    settings["logging_steps"] = 1  # the kill-and-resume helper checks every step's loss

    def argv(out):
        return common_args(tiny_data_dir, out, teacher_name_or_path=tiny_classifier_dir, **settings)

    straight = run_main(run_distill, argv(tmp_path / "straight"))
    out = tmp_path / "resumed"
    state = kill_at_checkpoint_then_resume("run_distill.py", argv(out), out, checkpoint_step=4)
    assert state["global_step"] == 24
    resumed = json.loads((out / "all_results.json").read_text())
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-3)
    assert state["log_history"][-1]["train_loss"] == resumed["train_loss"]
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert resumed["train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-6)  # one loss a step here
    card = (out / "README.md").read_text()
    assert f"| final mean training loss | {resumed['train_loss']:.4f} |" in card


def test_the_loss_is_logged_at_every_checkpoint_so_a_resume_can_average_it(tmp_path, tiny_task):
    """--logging_steps 3 and a checkpoint every 2 steps: the log at each checkpoint (and at the end) lets a
    resumed trainer report the whole run's mean loss, equal to an uninterrupted run's."""
    from distill_trainer import DistillationTrainingArguments, whole_run_train_loss
    from distillkit.students import build_student
    from distillkit.training import build_trainer

    _, tokenized, tokenizer, teacher = tiny_task

    def trainer(out):
        torch.manual_seed(0)
        args = DistillationTrainingArguments(
            output_dir=str(out), per_device_train_batch_size=8, max_steps=5, logging_steps=3, save_strategy="steps",
            save_steps=2, use_cpu=True, report_to="none", disable_tqdm=True, seed=0, train_sampling_strategy="sequential",
        )  # fmt: skip
        return build_trainer(build_student(teacher, [2, 4]), args, tokenized, tokenizer, teacher_model=teacher)

    straight = trainer(tmp_path / "a")
    whole = straight.train()
    assert [h["step"] for h in straight.state.log_history if "loss" in h] == [2, 3, 4, 5]
    assert whole.metrics["train_loss"] == pytest.approx(whole_run_train_loss(straight.state.log_history, 5))
    resumed = trainer(tmp_path / "a").train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert resumed.training_loss == pytest.approx(whole.training_loss, abs=1e-6)
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], abs=1e-6)
    assert whole_run_train_loss([{"loss": 1.0, "step": 3}], 5) is None  # steps 4-5 unaccounted for: no guess


@pytest.mark.parametrize("script", ["run_distill", "run_finetune", "run_lora", "run_eval", "run_compare"])
def test_every_script_prints_its_help(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--output_dir" in capsys.readouterr().out or script == "run_compare"
