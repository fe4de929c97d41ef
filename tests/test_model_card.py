"""Model cards: written into every saved directory, YAML the Hub parses, numbers equal to all_results.json."""

import json
import re
import shutil

import pytest
import yaml
from conftest import common_args
from huggingface_hub import ModelCard
from transformers import AutoConfig

import run_distill
import run_lora
from distillkit.model_card import METRICS, SPLITS, read_run_records, write_model_card
from distillkit.records import RECORD_FILE


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base_model_dir, tiny_data_dir):
    """Every kind of saved directory, as the scripts write it: run_distill.py from a headless base (EXP/teacher,
    EXP/even), run_lora.py --merge on that headless base with named labels (EXP/lora, EXP/lora/merged), and
    run_lora.py on the student (EXP/lora_even)."""
    exp = tmp_path_factory.mktemp("card") / "EXP"
    run_distill.main(
        common_args(
            tiny_data_dir, exp / "even", teacher_name_or_path=tiny_base_model_dir, layers="even",
            teacher_num_train_epochs=1, teacher_learning_rate=1e-3,
        )
    )  # fmt: skip
    run_lora.main(
        common_args(tiny_data_dir, exp / "lora", model_name_or_path=tiny_base_model_dir, lora_r=4, lora_alpha=8)
        + ["--merge", "true", "--class_names", "non-toxic,toxic"]
    )
    run_lora.main(common_args(tiny_data_dir, exp / "lora_even", model_name_or_path=exp / "even"))
    return exp


@pytest.fixture(scope="module")
def student_dir(experiment):
    return experiment / "even"


@pytest.fixture(scope="module")
def adapter_dir(experiment):
    return experiment / "lora"


def front_matter(path) -> dict:
    text = path.read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "the card must start with a YAML block"
    return yaml.safe_load(match.group(1))


def assert_model_index_equals_results(card: ModelCard, results: dict) -> None:
    """Every eval_/test_ metric of all_results.json is in the model-index, with exactly its value."""
    found = {}
    for r in card.data.eval_results:
        prefix = {split: p for p, split in SPLITS}[r.dataset_split]
        key = next(
            k for k, (_, _, label) in METRICS.items() if r.metric_name == f"{r.dataset_split.capitalize()} {label}"
        )
        found[f"{prefix}_{key}"] = r.metric_value
    expected = {f"{p}_{k}": results[f"{p}_{k}"] for p, _ in SPLITS for k in METRICS if f"{p}_{k}" in results}
    assert expected, "the run recorded metrics"
    assert found == expected


def python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


@pytest.mark.parametrize("saved", ["teacher", "even", "lora", "lora/merged", "lora_even"])
def test_every_saved_directory_has_a_card_equal_to_its_results(experiment, saved):
    """The card the scripts themselves wrote (nothing here rewrites it): YAML that parses, the run's numbers."""
    directory = experiment / saved
    assert (directory / "README.md").is_file(), f"{saved} has no model card"
    meta = front_matter(directory / "README.md")
    assert meta["pipeline_tag"] == "text-classification" and meta["model-index"]
    # A merged model has no all_results.json of its own: its numbers are the adapter run's.
    results_dir = directory.parent if saved.endswith("/merged") else directory
    results = json.loads((results_dir / "all_results.json").read_text())
    card = ModelCard.load(directory / "README.md")
    assert_model_index_equals_results(card, results)
    assert f"trainable parameters | {results['trainable_params']:,}" in card.text
    assert f"total parameters | {results['total_params']:,} |" in card.text
    for split, key in (("train", "train_samples"), ("validation", "eval_samples"), ("test", "test_samples")):
        assert f"{split} rows | {results[key]:,} |" in card.text


def test_distilled_student_card(student_dir, capsys):
    results = json.loads((student_dir / "all_results.json").read_text())
    record = json.loads((student_dir / "config.json").read_text())["training_record"]
    meta = front_matter(student_dir / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-classification"
    assert {"distillation", "text-classification", "bert"} <= set(meta["tags"])
    assert {"accuracy", "f1", "roc_auc"} <= set(meta["metrics"])
    # Local paths are not Hub ids: they stay out of base_model/datasets (the body names them).
    assert "base_model" not in meta and "datasets" not in meta

    card = ModelCard.load(student_dir / "README.md")  # what the Hub's parser sees
    assert card.data.model_name == "even"
    assert {r.dataset_split for r in card.data.eval_results} == {"validation", "test"}
    assert_model_index_equals_results(card, results)

    body = card.text
    assert f"teacher `{record['teacher']}`" in body
    assert "keeping teacher layers 2, 4" in body
    for name in ("alpha_ce", "alpha_kl", "alpha_cos"):
        assert f"loss weight `{name}` | {record[name]} |" in body
    assert f"trainable parameters | {results['trainable_params']:,}" in body
    weights = json.loads((student_dir / "run_record.json").read_text())["class_weights"]
    assert weights["policy"] == "auto" and f"class weights of the CE term | `auto` → `{weights['resolved']}`" in body
    assert (
        f"train rows | {results['train_samples']:,} |" in body and f"test rows | {results['test_samples']:,} |" in body
    )
    saved = json.loads((student_dir / "config.json").read_text()).get("id2label")
    if saved:  # transformers leaves the default LABEL_0/LABEL_1 out of config.json
        assert f"labels | 0 = `{saved['0']}`, 1 = `{saved['1']}` |" in body
    id2label = AutoConfig.from_pretrained(student_dir).id2label

    # The usage snippet runs as written against the saved directory.
    exec(python_block(body), {})  # noqa: S102 -- the card's own snippet, run as a reader would
    printed = capsys.readouterr().out
    # Decided by the threshold tuned on validation (the default rule): the snippet prints the class name.
    assert printed.strip().splitlines()[-1] in id2label.values(), printed


@pytest.mark.parametrize("layout", ["run_record", "legacy"])
def test_hub_ids_become_metadata(student_dir, tmp_path, layout):
    """A teacher fine-tuned from a Hub model and Hub data: base_model, datasets and the model-index name them.
    The card reads them from run_record.json, or from config.json's training_record in an older directory."""
    copy = tmp_path / "even"
    shutil.copytree(student_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"0": "non-toxic", "1": "toxic"}
    if layout == "legacy":
        (copy / RECORD_FILE).unlink()
        record = config["training_record"]
    else:
        record = json.loads((copy / RECORD_FILE).read_text())
    record["teacher_base_model"] = "google-bert/bert-base-uncased"
    record["dataset"]["dataset"] = "OxAISH-AL-LLM/wiki_toxic"
    (copy / "config.json").write_text(json.dumps(config))
    if layout == "run_record":
        (copy / RECORD_FILE).write_text(json.dumps(record))
    write_model_card(str(copy), repo_id="someone/bert-even-wiki-toxic")
    card = ModelCard.load(copy / "README.md")
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.datasets == ["OxAISH-AL-LLM/wiki_toxic"]
    assert card.data.model_name == "someone/bert-even-wiki-toxic"
    assert {r.dataset_type for r in card.data.eval_results} == {"OxAISH-AL-LLM/wiki_toxic"}
    assert 'pipeline("text-classification", model="someone/bert-even-wiki-toxic"' in card.text
    assert "labels | 0 = `non-toxic`, 1 = `toxic` |" in card.text


def test_adapter_card(adapter_dir, capsys):
    write_model_card(str(adapter_dir))
    results = json.loads((adapter_dir / "all_results.json").read_text())
    meta = front_matter(adapter_dir / "README.md")
    assert meta["library_name"] == "peft"
    assert {"lora", "peft", "text-classification"} <= set(meta["tags"])
    card = ModelCard.load(adapter_dir / "README.md")
    assert_model_index_equals_results(card, results)
    lora = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert lora["r"] == 4 and "LoRA rank `r` | 4 |" in card.text
    assert f"`lora_alpha` | {lora['lora_alpha']} |" in card.text
    assert "target modules | query, value |" in card.text
    assert f"trainable parameters | {results['trainable_params']:,}" in card.text
    exec(python_block(card.text), {})  # noqa: S102 -- the card's snippet: AutoPeftModel… on its local base
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] in results["id2label"].values(), printed


def test_lora_on_a_student_card(experiment):
    card = ModelCard.load(experiment / "lora_even" / "README.md")
    assert f"trained on top of `{experiment / 'even'}`" in card.text
    assert "method | `lora_even` |" in card.text and "teacher layers kept (1-based) | 2, 4 |" in card.text
    assert "| teacher |" not in card.text  # trained without a distillation teacher: no teacher row


def test_adapter_base_model_from_adapter_config(adapter_dir, tmp_path):
    copy = tmp_path / "lora"
    shutil.copytree(adapter_dir, copy)
    adapter_config = json.loads((copy / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    (copy / "adapter_config.json").write_text(json.dumps(adapter_config))
    write_model_card(str(copy))
    assert ModelCard.load(copy / "README.md").data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    write_model_card(str(copy / "merged"))
    assert ModelCard.load(copy / "merged" / "README.md").data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_merged_card_reads_its_adapter_records(adapter_dir, capsys):
    merged = adapter_dir / "merged"
    write_model_card(str(merged))
    records = read_run_records(str(merged))
    assert records.merged and records.adapter["r"] == 4
    meta = front_matter(merged / "README.md")
    assert meta["library_name"] == "transformers"
    assert {"lora", "merged"} <= set(meta["tags"])
    card = ModelCard.load(merged / "README.md")
    assert card.data.model_name == f"{adapter_dir.name}-merged" and "peft" not in meta["tags"]
    assert_model_index_equals_results(card, json.loads((adapter_dir / "all_results.json").read_text()))
    exec(python_block(card.text), {})  # noqa: S102 -- the card's snippet: a plain pipeline
    labels = json.loads((adapter_dir / "all_results.json").read_text())["id2label"].values()
    assert capsys.readouterr().out.strip().splitlines()[-1] in labels


def test_a_directory_without_a_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json or adapter_config.json"):
        write_model_card(str(tmp_path))
