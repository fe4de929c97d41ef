"""LoRA adapters on any sequence classifier: config building, target-module validation, counting, merging.

The adapter is PEFT's (`TaskType.SEQ_CLS`): LoRA matrices on the chosen linear modules plus, trained in full and saved
with the adapter (`modules_to_save`), the whole classification path: the head, what the head reads (BERT's pooler,
DistilBERT's pre_classifier) and every module that loading newly initialised. A frozen pooler is a random projection
when the base never trained it (sentence-transformers encoders such as all-MiniLM-L6-v2 were trained with mean
pooling: their pooler has init statistics), and LoRA on the encoder cannot undo it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .cli import UsageError
from .integrity import tokenizer_fingerprint
from .model_card import write_model_card
from .records import MERGED_SUBDIR, RunRecord

logger = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"
AUTO = "auto"
# Modules between the encoder and the head that the head reads (BERT/ELECTRA-style pooler, DistilBERT).
CLASSIFICATION_PATH = ("pooler", "pre_classifier")


@dataclass
class LoraArguments:
    """The LoRA adapter: rank, scaling, dropout, which modules it adapts, and what is trained in full."""

    lora_r: int = field(default=8, metadata={"help": "Rank of the LoRA update matrices."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA scaling: the update is multiplied by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str = field(
        default="query,value",
        metadata={
            "help": "Comma-separated names (or dotted suffixes) of the linear modules to adapt, or 'all-linear' (every linear layer but the head)."
        },
    )
    modules_to_save: str | None = field(
        default=AUTO,
        metadata={
            "help": "Modules trained in full and saved with the adapter besides the classification head (always "
            "trained): 'auto' (default) = the rest of the classification path (the pooler the head reads) plus every "
            "module loading newly initialised; 'none' = the head only; or comma-separated module names."
        },
    )
    merge: bool = field(
        default=False,
        metadata={
            "help": f"Also write the adapter merged into its base as a plain model in OUTPUT_DIR/{MERGED_SUBDIR}."
        },
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise UsageError(f"--lora_r {self.lora_r}: the rank must be at least 1")
        if self.lora_alpha <= 0:
            raise UsageError(f"--lora_alpha {self.lora_alpha}: must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout {self.lora_dropout}: must be in [0, 1)")
        if not split_names(self.lora_target_modules):
            raise UsageError("--lora_target_modules is empty: give module names like query,value or all-linear")

    @property
    def target_modules(self) -> list[str] | str:
        names = split_names(self.lora_target_modules)
        return ALL_LINEAR if names == [ALL_LINEAR] else names

    @property
    def extra_modules_to_save(self) -> list[str] | None:
        """The names given, or None for `auto` / `none` (resolved against the model by `modules_to_save_for`)."""
        if (self.modules_to_save or "none").strip() in (AUTO, "none"):
            return None
        return split_names(self.modules_to_save) or None


def classification_path_modules(model: torch.nn.Module) -> list[str]:
    """Full names of the modules with weights that sit between the encoder and the head (BERT's `bert.pooler`)."""
    return [
        name
        for name, module in model.named_modules()
        if name.split(".")[-1] in CLASSIFICATION_PATH and any(True for _ in module.parameters())
    ]


def newly_initialised_modules(model: torch.nn.Module, new_parameter_names: list[str]) -> list[str]:
    """The modules owning parameters that loading initialised fresh (its missing or resized keys), head excluded."""
    heads = set(head_module_names(model))
    owners = []
    for key in new_parameter_names:
        owner = key.rsplit(".", 1)[0]
        if owner in heads or any(owner.startswith(h + ".") for h in heads) or owner in owners:
            continue
        owners.append(owner)
    return owners


def modules_to_save_for(
    model: torch.nn.Module, args: "LoraArguments", new_parameter_names: list[str] | None = None
) -> list[str] | None:
    """What is trained in full besides the head: `--modules_to_save` resolved against this model."""
    spec = (args.modules_to_save or "none").strip()
    if spec == "none":
        return None
    if spec != AUTO:
        return args.extra_modules_to_save
    modules = classification_path_modules(model)
    modules += [m for m in newly_initialised_modules(model, new_parameter_names or []) if m not in modules]
    return modules or None


def split_names(spec: str | None) -> list[str]:
    return [name.strip() for name in (spec or "").split(",") if name.strip()]


def _matches(module_name: str, target: str) -> bool:
    # PEFT's rule for a list of targets: the full name, or its last dotted components.
    return module_name == target or module_name.endswith("." + target)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the model's `nn.Linear` modules, the layers LoRA can adapt here."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Modules PEFT's SEQ_CLS task trains in full as the classification head (BERT's `classifier`)."""
    heads = ("classifier", "score")
    return [name for name, _ in model.named_modules() if name.split(".")[-1] in heads]


def validate_target_modules(
    model: torch.nn.Module, targets: list[str] | str, flag: str = "--lora_target_modules"
) -> None:
    """Fail with the model's linear module names when a target matches none of them (or only the head)."""
    if targets == ALL_LINEAR:
        return
    linear = linear_module_names(model)
    short = sorted({name.split(".")[-1] for name in linear})
    heads = set(head_module_names(model))
    spec = ",".join(targets)
    for target in targets:
        matched = [name for name in linear if _matches(name, target)]
        if not matched:
            others = [name for name, _ in model.named_modules() if name and _matches(name, target)]
            what = (
                f"is not a linear module ({type(model.get_submodule(others[0])).__name__})"
                if others
                else "matches no module"
            )
            raise UsageError(
                f"{flag} {spec}: {target!r} {what} of this {model.config.model_type} model; its linear modules are "
                f"named {', '.join(short)} (a dotted suffix such as {_example_suffix(linear)} also works), or use {ALL_LINEAR}"
            )
        if set(matched) <= heads:
            raise UsageError(
                f"{flag} {spec}: {target!r} is the classification head, which is trained in full (modules_to_save); "
                "leave it out"
            )


def _example_suffix(linear: list[str]) -> str:
    deep = [name for name in linear if name.count(".") >= 2]
    return ".".join(deep[0].split(".")[-3:]) if deep else (linear[0] if linear else "query")


def build_lora_config(
    model: torch.nn.Module, args: LoraArguments, new_parameter_names: list[str] | None = None
) -> LoraConfig:
    """A validated SEQ_CLS `LoraConfig` for `model`: its head is added to `modules_to_save` by PEFT, the rest of
    the classification path and the newly initialised modules by us (`--modules_to_save auto`)."""
    targets = args.target_modules
    validate_target_modules(model, targets)
    extra = modules_to_save_for(model, args, new_parameter_names)
    if args.extra_modules_to_save:
        names = [name for name, _ in model.named_modules()]
        for module in extra:
            if not any(_matches(name, module) for name in names):
                raise UsageError(
                    f"--modules_to_save {args.modules_to_save}: {module!r} matches no module of this model "
                    f"(top-level modules: {', '.join(n for n in names if n and '.' not in n)})"
                )
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=extra,
    )


def loadable_name_or_path(name_or_path: str) -> str:
    """Local directories become absolute, so the adapter's `base_model_name_or_path` loads from anywhere."""
    return os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path


def apply_lora(
    model: PreTrainedModel, args: LoraArguments, new_parameter_names: list[str] | None = None
) -> PeftModel:
    """Wrap `model` with a LoRA adapter. The base records where it came from (its `name_or_path`) for reloading.

    `new_parameter_names`: the keys loading initialised fresh (`output_loading_info`'s missing and mismatched keys);
    their modules are trained in full under `--modules_to_save auto`.
    """
    config = build_lora_config(model, args, new_parameter_names)
    peft_model = get_peft_model(model, config)
    counts = parameter_counts(peft_model)
    saved = trained_in_full(peft_model)
    logger.info(
        f"LoRA r={args.lora_r} alpha={args.lora_alpha} on {config.target_modules}, trained in full: "
        f"{', '.join(saved)}: trainable params "
        f"{counts['trainable_params']:,} || all params {counts['total_params']:,} || trainable% {counts['trainable_pct']:.4f}"
    )
    return peft_model


def trained_in_full(peft_model: PeftModel) -> list[str]:
    """The `modules_to_save` entries that name a module of this model (PEFT lists both `classifier` and `score`)."""
    names = [name for name, _ in peft_model.base_model.model.named_modules()]
    listed = peft_model.peft_config[peft_model.active_adapter].modules_to_save or []
    return sorted({m for m in listed if any(_matches(name, m) for name in names)})


def parameter_counts(peft_model: PeftModel) -> dict[str, Any]:
    """The figures `print_trainable_parameters` prints (the head's frozen original copy counts in the total)."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}


def is_distilled_student(config: PretrainedConfig) -> bool:
    """A student written by run_distill.py records the teacher layers it kept."""
    return getattr(config, "distillation_layers", None) is not None


def merge_and_save(
    peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase, output_dir: str, record: dict[str, Any]
) -> PreTrainedModel:
    """Fold the adapter into its base (in place) and save a plain model that `pipeline()` loads, with its card.

    The merged config's `training_record` is the LoRA run's, so the merged model says how it was made. Call it
    after the run's `all_results.json` is written beside the adapter: the card copies its metrics from there.
    """
    merged = peft_model.merge_and_unload()
    merged.config.training_record = record
    merged.save_pretrained(output_dir)
    record = RunRecord.from_model(merged, merged=True)
    record.tokenizer = tokenizer_fingerprint(tokenizer)
    record.save(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_model_card(output_dir)
    logger.info(f"merged model written to {output_dir}")
    return merged
