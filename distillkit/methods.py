"""The methods a comparison can run, one entry each: which script trains it, with which flags, starting from what.

`run_compare.py --methods ...` and the study driver (`study/run_study.py`) read this registry; adding a method is
one `Method(...)` line in `METHODS`. A method's output directory is `EXP/seed<S>/<name>/`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cli import UsageError
from .losses import teacher_terms

PRETRAINED = "pretrained"  # `base`: the pretrained --teacher_name_or_path itself, not a stage of the comparison


@dataclass(frozen=True)
class Method:
    """One way to get a classifier.

    kind: `teacher` (full fine-tuning with run_finetune.py), `student` (layer-dropping distillation from the
    fine-tuned teacher with run_distill.py), `lora` (run_lora.py on `base`) or `export` (no training:
    run_export.py turns `base` into ONNX; run_eval.py scores its fp32 and int8 models as `<name>` and `<name>-int8`).
    base: the stage it starts from (`teacher`, `even`, ...) or PRETRAINED.
    flags: the method's own flags, appended to the script's command.
    epochs_factor: the method trains for this many times the run's epochs (and `--max_steps`, when one is given):
    `run_compare.py` scales the effective `--num_train_epochs` of this method's command (`scaled_training_flags`).
    Every other method keeps 1. `lora_steps` has 2: LoRA for as many optimizer steps as the teacher and a student
    of the same rows, batch size and epochs cost together (the equal-steps arm of the study, ANALYSIS_PLAN.md §6).
    """

    name: str
    kind: str
    base: str
    flags: tuple[str, ...] = ()
    summary: str = ""
    epochs_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.epochs_factor > 0:
            raise ValueError(f"method {self.name}: epochs_factor must be > 0, not {self.epochs_factor}")

    @property
    def script(self) -> str:
        return {
            "teacher": "run_finetune.py",
            "student": "run_distill.py",
            "lora": "run_lora.py",
            "export": "run_export.py",
        }[self.kind]


# No teacher signal (every term that needs the teacher at 0): the control for distillation itself.
_CE_ONLY = tuple(x for term in teacher_terms() for x in (f"--{term.weight_flag}", "0"))

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("teacher", "teacher", PRETRAINED, summary="the full model, fine-tuned"),
        Method(
            "odd",
            "student",
            "teacher",
            ("--layers", "odd"),
            "odd teacher layers, distilled (CE + KL + cosine)",
        ),
        Method(
            "even",
            "student",
            "teacher",
            ("--layers", "even"),
            "even teacher layers, distilled",
        ),
        Method(
            "bottom",
            "student",
            "teacher",
            ("--layers", "bottom"),
            "the first k teacher layers, distilled",
        ),
        Method(
            "top",
            "student",
            "teacher",
            ("--layers", "top"),
            "the last k teacher layers, distilled",
        ),
        Method(
            "spread",
            "student",
            "teacher",
            ("--layers", "spread"),
            "k layers from first to last, distilled",
        ),
        Method(
            "auto",
            "student",
            "teacher",
            ("--layers", "auto"),
            "k layers chosen for the data on the fine-tuned teacher (distillkit/layer_selection.py), distilled",
        ),
        Method(
            "odd_ce",
            "student",
            "teacher",
            ("--layers", "odd", *_CE_ONLY),
            "odd layers, CE only (control)",
        ),
        Method(
            "even_ce",
            "student",
            "teacher",
            ("--layers", "even", *_CE_ONLY),
            "even layers, CE only (control)",
        ),
        Method(
            "bottom_ce",
            "student",
            "teacher",
            ("--layers", "bottom", *_CE_ONLY),
            "the first k layers, CE only (control)",
        ),
        Method(
            "top_ce",
            "student",
            "teacher",
            ("--layers", "top", *_CE_ONLY),
            "the last k layers, CE only (control)",
        ),
        Method(
            "spread_ce",
            "student",
            "teacher",
            ("--layers", "spread", *_CE_ONLY),
            "k layers from first to last, CE only (control)",
        ),
        Method("lora", "lora", PRETRAINED, summary="LoRA on the pretrained model"),
        Method(
            "lora_steps",
            "lora",
            PRETRAINED,
            summary="LoRA on the pretrained model for the optimizer steps of teacher + student (2x the epochs)",
            epochs_factor=2.0,
        ),
        Method("lora_even", "lora", "even", summary="LoRA on the distilled even student"),
        Method(
            "even_onnx",
            "export",
            "even",
            ("--quantize", "int8"),
            "the even student exported to ONNX Runtime, fp32 and int8 (run_export.py)",
        ),
    )
}
DEFAULT_METHODS = ("teacher", "odd", "even", "lora", "lora_even")
EVAL_STEP = "eval"  # not a method: scores every finished model with run_eval.py
# The CE-only control of each layer choice: "does distillation itself help, for these layers?" (same teacher layers,
# labels only), so every layer choice is compared with its own control, not odd/even's.
CONTROLS = {"odd": "odd_ce", "even": "even_ce", "bottom": "bottom_ce", "top": "top_ce", "spread": "spread_ce"}


def check_methods(names: list[str]) -> list[str]:
    """Names in registry order (a base runs before what starts from it); unknown names fail with the choices."""
    unknown = [n for n in names if n not in METHODS and n != EVAL_STEP]
    if unknown:
        raise UsageError(f"--methods {unknown[0]}: unknown method; choose from {' '.join(METHODS)} {EVAL_STEP}")
    if len(set(names)) != len(names):
        raise UsageError(f"--methods {' '.join(names)}: a method appears twice")
    return [n for n in METHODS if n in names]


def dependencies(name: str, lora_base: str = PRETRAINED) -> list[str]:
    """The stages `name` needs finished first, nearest last: lora_even → [teacher, even]."""
    base = base_stage(name, lora_base)
    return [] if base == PRETRAINED else [*dependencies(base, lora_base), base]


def base_stage(name: str, lora_base: str = PRETRAINED) -> str:
    """What `name` starts from; `--lora_base finetuned` makes the pretrained-based LoRA adapt the teacher instead."""
    method = METHODS[name]
    if method.kind == "lora" and method.base == PRETRAINED and lora_base == "finetuned":
        return "teacher"
    return method.base
