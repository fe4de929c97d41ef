"""`DistillationTrainer`: a `Trainer` whose loss adds soft-target KL and hidden-state cosine terms to the CE.

The loss itself is the pure function `distillkit.losses.distillation_loss`; this class gathers its inputs
(the student's and the frozen teacher's outputs), logs each component, and returns only logits for evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import TrainOutput

from .cli import UsageError, parse_class_names
from .deepspeed_teacher import prepare_deepspeed_teacher
from .losses import GOLD_TERM, LossWeights, distillation_loss, flag_list, join_and, loss_terms, teacher_terms
from .tasks import MULTI_LABEL, SINGLE_LABEL, class_weight_choice, explicit_class_weights
from .teacher_logits import TEACHER_LOGITS_COLUMN, add_teacher_logits, default_cache_dir, precision_name

logger = logging.getLogger(__name__)


_UNSET: Any = object()


def with_loss_weight_fields(cls: type | None = None, *, teacher_default: Any = _UNSET, teacher_help: str = ""):
    """Class decorator (under `@dataclass`): one `alpha_<name>` field per registered loss term, so a new term in
    distillkit/losses.py is a flag of every training script without editing them.

    A term that runs on live teacher outputs defaults to None, resolved in `__post_init__` (1, or 0 with
    --cache_teacher_logits). `teacher_default` / `teacher_help` replace the default and extend the help of every term
    that needs a teacher (run_finetune.py: 0, there is none; run_lora.py: None until a teacher is given).
    """

    def add(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        added = {}
        for term in loss_terms():
            if term.uses_teacher and teacher_default is not _UNSET:
                default, text = teacher_default, f"{term.help} {teacher_help}".strip()
            elif term.needs_live_teacher:
                default, text = None, f"{term.help} Default {term.default_weight:g}, or 0 with --cache_teacher_logits."
            else:
                default, text = term.default_weight, term.help
            added[term.weight_flag] = float | None
            setattr(cls, term.weight_flag, field(default=default, metadata={"help": text}))
        cls.__annotations__ = {**added, **{k: v for k, v in own.items() if k not in added}}
        return cls

    return add if cls is None else add(cls)


@dataclass
@with_loss_weight_fields
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the distillation loss weights (`--alpha_<term>`, one per term registered in
    distillkit/losses.py); defaults suit our scripts (train, evaluate, test)."""

    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the KL term."})
    cache_teacher_logits: bool = field(
        default=False,
        metadata={
            "help": "Compute the teacher's logits on the training set once (batched, no grad, in the run's precision), cache them on disk and train the KL term on them instead of running the teacher every step. The cosine term needs the live teacher, so it is off unless --alpha_cos is given."
        },
    )
    teacher_logits_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where --cache_teacher_logits keeps its files, one folder per teacher + training tokens + precision (default: `teacher_logits` beside --output_dir)."
        },
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names in label-id order, space- or comma-separated (become id2label/label2id)."},
    )
    class_weights: str = field(
        default="auto",
        metadata={
            "help": "Weights of the gold-label CE term for imbalanced data: auto (default: balanced when the train "
            "split's rarest class has under half the share it would have if classes were even, i.e. under 25%% "
            "positive for binary data, 16.7%% for 3 classes; a multi-label label under 25%% positive; else none; a "
            "class or label with no example in train keeps weight 1), none, "
            "balanced (n / (k · count of the class) on the train split; multi-label: BCE's pos_weight, negatives / "
            "positives per label), or one number per class or label (1,3.5). Evaluation losses stay unweighted."
        },
    )
    tune_decision: bool | None = field(
        default=None,
        metadata={
            "help": "After training, choose the decision rule on the validation split (distillkit/decision.py): a "
            "binary task's threshold on p(positive) maximising its F1, a multi-class task's per-class logit offsets "
            "maximising macro-F1, a multi-label task's per-label thresholds maximising each label's F1. Saved in "
            "config.json (decision_thresholds / decision_logit_offsets) and run_record.json, where evaluation, the "
            "web app, ONNX exports and the model card find it. Default: on (there is always a validation split); "
            "false: plain argmax / 0.5."
        },
    )
    tune_thresholds: bool | None = field(
        default=None, metadata={"help": "Former name of --tune_decision (kept so old commands still run)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in --output_dir: a previous run's files (finished or killed) are removed first."
        },
    )
    skip_if_finished: bool = field(
        default=False,
        metadata={
            "help": "When --output_dir holds a finished run of this very request (the same request fingerprint), "
            "exit 0 without training; a finished run of another request is an error naming what differs "
            "(run_compare.py's stage skip)."
        },
    )
    # Defaults that differ from TrainingArguments: our scripts train, evaluate and test in one go.
    do_train: bool = field(default=True, metadata={"help": "Train (default True)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split (default True)."})
    do_predict: bool = field(default=True, metadata={"help": "Evaluate on the test split (default True)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    logging_steps: float = field(
        default=10, metadata={"help": "Log every X updates steps (or a ratio of the run if < 1)."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Sampler for training: 'group_by_length' (default: batches of similar length, little padding), 'random', 'sequential', 'batch_rebalance'.",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every parameter takes part in the loss, so DDP need not search for unused ones."},
    )

    def __post_init__(self) -> None:
        # A hidden-state term needs the live teacher: cached logits turn an unset one off (the trainer logs which).
        unset = [t for t in loss_terms() if getattr(self, t.weight_flag) is None]
        self.terms_off_for_cached_logits = tuple(
            t.name for t in unset if t.needs_live_teacher and self.cache_teacher_logits
        )
        for term in unset:
            off = term.name in self.terms_off_for_cached_logits
            setattr(self, term.weight_flag, 0.0 if off else term.default_weight)
        super().__post_init__()
        # Values TrainingArguments takes without a word and that fail (or train nothing) once training starts.
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} {getattr(self, flag)}: must be at least 1")
        if not self.learning_rate >= 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"--learning_rate {self.learning_rate}: must be a finite number >= 0")
        for term in loss_terms():
            if getattr(self, term.weight_flag) < 0:
                raise ValueError(f"--{term.weight_flag} {getattr(self, term.weight_flag)}: loss weights must be >= 0")
        if not self.loss_weights.active():
            raise ValueError(f"{flag_list(loss_terms())} are all 0: at least one loss term must be on")
        if self.class_weights not in ("none", "balanced", "auto"):
            explicit_class_weights(self.class_weights)  # the count is checked against the data once it is loaded
        if self.tune_decision is None and self.tune_thresholds is not None:
            self.tune_decision = self.tune_thresholds  # the former flag name
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be > 0")
        if self.cache_teacher_logits and not self.loss_weights.needs_teacher_logits:
            logit_terms = [t for t in loss_terms() if t.needs_teacher_logits]
            titles, flags = join_and([t.title for t in logit_terms]), flag_list(logit_terms)
            raise ValueError(
                f"--cache_teacher_logits caches the teacher's logits for the {titles} term, but {flags} is 0: "
                f"set {flags} > 0 or drop the flag"
            )
        # TrainingArguments' `label_names` is the batch key of the labels, always "labels" here (PEFT-wrapped models
        # hide `labels` from the Trainer's signature check, so it is set); class names have their own flag.
        if self.label_names not in (None, ["labels"]):
            raise UsageError(
                f"--label_names {' '.join(self.label_names)}: it names the batch key of the labels (always labels "
                "here); pass class names with --class_names"
            )
        self.label_names = ["labels"]
        self.class_names = parse_class_names(self.class_names)

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(**{t.name: getattr(self, t.weight_flag) for t in loss_terms()})

    def loss_record(self) -> dict[str, float]:
        """What a run records about its loss: every `alpha_<term>` and the temperature."""
        return {**{t.weight_flag: getattr(self, t.weight_flag) for t in loss_terms()}, "temperature": self.temperature}

    @property
    def cosine_off_for_cached_logits(self) -> bool:
        """Whether --cache_teacher_logits turned an unset hidden-state term off."""
        return bool(self.terms_off_for_cached_logits)

    @property
    def uses_teacher(self) -> bool:
        return any(t.uses_teacher for t in self.loss_weights.active())

    @property
    def needs_live_teacher(self) -> bool:
        """Whether the teacher runs every training step (cached logits spare it unless a hidden-state term is on)."""
        weights = self.loss_weights
        return weights.needs_hidden_states or (weights.needs_teacher_logits and not self.cache_teacher_logits)


def hidden_state_layer_map(
    weights: LossWeights, student_config: Any, teacher_config: Any, layer_map: list[int] | None = None
) -> list[int] | None:
    """The 1-based teacher layer each student layer is compared with by the hidden-state terms (the cosine term),
    or None when none is on; `layer_map` defaults to the student's recorded `distillation_layers`.

    One policy for every script (run_distill.py, run_lora.py): a hidden-state term the user has on is never
    dropped silently. It compares hidden vectors one to one, so different hidden sizes, or layers that cannot be
    paired, are a one-line error naming the flag that turns it off. Dropping it quietly would make the run's
    record, and its comparison with other runs, mean another loss than the one asked for.
    """
    terms = [t for t in weights.active() if t.needs_hidden_states]
    if not terms:
        return None
    asked = ", ".join(f"--{t.weight_flag} {weights[t.name]:g}" for t in terms)
    off = "set " + join_and([f"--{t.weight_flag} 0" for t in terms])
    what = f"{asked}: the {join_and([t.title for t in terms])} term compares hidden states one to one"
    s_hidden, t_hidden = getattr(student_config, "hidden_size", None), getattr(teacher_config, "hidden_size", None)
    if s_hidden != t_hidden:
        raise ValueError(f"{what}, but student hidden_size {s_hidden} != teacher {t_hidden}; {off}")
    s_layers, t_layers = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    if layer_map is None:
        layer_map = getattr(student_config, "distillation_layers", None)
    if layer_map is None:
        if s_layers != t_layers:
            raise ValueError(
                f"{what}, but the student has {s_layers} layers, the teacher {t_layers}, and no layer map (the "
                f"teacher layer each student layer was copied from, `distillation_layers`); {off}"
            )
        layer_map = list(range(1, t_layers + 1))
    layer_map = list(layer_map)
    if len(layer_map) != s_layers or any(not 1 <= k <= t_layers for k in layer_map):
        raise ValueError(f"layer_map {layer_map}: need {s_layers} teacher layers numbered 1..{t_layers}; {off}")
    return layer_map


def _config_of(model: nn.Module):
    return getattr(model, "config", None)


class LogAtCheckpoints(TrainerCallback):
    """Log the training loss at every checkpoint and at the last step, whatever --logging_steps says.

    Then the loss history restored from a checkpoint covers every step before it, and `whole_run_train_loss` can
    give a resumed run the same `train_loss` as an uninterrupted one (the Trainer's own averages only the steps of
    the current `train()` call).
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop:
            control.should_log = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


def whole_run_train_loss(log_history: list[dict], global_step: int) -> float | None:
    """The mean training loss over steps 1..global_step from the logged interval means, or None if a step is
    not covered (a history written without `LogAtCheckpoints`)."""
    total, last = 0.0, 0
    for entry in sorted((h for h in log_history if "loss" in h), key=lambda h: h["step"]):
        total += float(entry["loss"]) * (entry["step"] - last)
        last = entry["step"]
    return total / global_step if global_step and last == global_step else None


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order (batches of similar length), drawn from a generator seeded with
    `seed + epoch` instead of the global torch RNG.

    The stock sampler permutes with the global RNG as it stands when an epoch starts. After the first epoch that
    state is wherever the previous epoch's dropout left it, which a run resumed from a checkpoint never reproduces
    (it restores the RNG only after the resumed epoch's order is drawn): the order of every epoch after the first
    differed on resume. Seeding per epoch, as accelerate's SeedableRandomSampler does for `random`, makes the order
    a function of (seed, epoch) alone, so a resumed run replays exactly the batches the uninterrupted run saw.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (and accelerate's DataLoaderShard) before each epoch."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        self.epoch += 1  # a caller that never calls set_epoch still gets a new order each pass
        return iter(indices)


class DistillationTrainer(Trainer):
    """Trains `model` (the student) against a frozen `teacher_model`.

    `layer_map[i]` is the 1-based teacher layer that student layer i+1 is compared with in the cosine term;
    by default the `distillation_layers` a student built by `build_student` records in its config.
    With every term that needs the teacher at 0 (`alpha_kl = alpha_cos = 0`) no teacher is needed and this is plain
    fine-tuning. With `cache_teacher_logits` the teacher's logits are computed once for the training set (see
    distillkit/teacher_logits.py) and the teacher only runs during training if a hidden-state term is on.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: DistillationTrainingArguments,
        teacher_model: PreTrainedModel | None = None,
        layer_map: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(model=model, args=args, **kwargs)
        # Our loss is a per-batch mean: let the Trainer divide it for gradient accumulation, and never
        # rescale it by the number of processes (see ../shared/README.md).
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.loss_weights = args.loss_weights
        self.temperature = args.temperature
        self.layer_map: list[int] | None = None
        self.teacher: nn.Module | None = None
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        # The task type decides the gold and KD terms (softmax CE/KL, or per-label BCE/binary KL).
        self.multi_label = getattr(_config_of(self.model), "problem_type", None) == MULTI_LABEL
        self.class_weights = self._resolve_class_weights(args.class_weights)
        self.add_callback(LogAtCheckpoints())
        if args.uses_teacher:
            self._attach_teacher(teacher_model, layer_map)

    def _attach_teacher(self, teacher_model: PreTrainedModel | None, layer_map: list[int] | None) -> None:
        """Check the teacher against the student, freeze it, map the student's layers onto its layers, then cache its
        logits and/or keep it for live use, as the arguments ask."""
        if teacher_model is None:
            terms = teacher_terms()
            raise ValueError(
                f"{flag_list(terms)}: a term that needs the teacher is on but no teacher_model was given "
                "(set them to 0 for plain fine-tuning)"
            )
        self._check_compatible(teacher_model)
        self.layer_map = hidden_state_layer_map(
            self.loss_weights, _config_of(self.model), _config_of(teacher_model), layer_map
        )
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        if self.args.cache_teacher_logits:
            self.train_dataset = self._with_cached_teacher_logits(teacher_model)
        if self.args.needs_live_teacher:
            self.teacher = self._prepare_teacher(teacher_model)

    def _get_train_sampler(self, train_dataset=None):
        """The default `group_by_length` sampler, seeded per epoch so that a resumed run is exact
        (`SeededLengthGroupedSampler`); every other strategy is transformers' own."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        name = self.processing_class.model_input_names[0] if self.processing_class is not None else "input_ids"
        column = self.args.length_column_name
        if column in getattr(dataset, "column_names", ()):
            lengths = list(dataset[column])
        elif name in getattr(dataset, "column_names", ()):
            lengths = [len(ids) for ids in dataset[name]]
        else:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(batch, lengths, seed)

    def train(self, *args, **kwargs) -> TrainOutput:
        """`Trainer.train`, with `train_loss` the mean over the whole run, also after a resume."""
        output = super().train(*args, **kwargs)
        loss = whole_run_train_loss(self.state.log_history, self.state.global_step)
        if loss is None:
            return output
        metrics = dict(output.metrics or {}, train_loss=loss)
        final = self.state.log_history[-1] if self.state.log_history else {}
        if "train_loss" in final:  # the summary the Trainer logged: trainer_state.json must agree
            final["train_loss"] = loss
        return TrainOutput(output.global_step, loss, metrics)

    def _with_cached_teacher_logits(self, teacher: nn.Module):
        off = [t for t in loss_terms() if t.name in self.args.terms_off_for_cached_logits]
        live = [t for t in self.loss_weights.active() if t.needs_live_teacher]
        if off:
            logger.warning(
                f"--cache_teacher_logits: the {join_and([t.title for t in off])} term needs the live teacher, so it is "
                f"off ({flag_list(off)} 0); pass {flag_list(off)} explicitly to keep it"
            )
        elif live:
            asked = ", ".join(f"--{t.weight_flag} {self.loss_weights[t.name]}" for t in live)
            logger.warning(
                f"--cache_teacher_logits with {asked}: the logit terms read the cached logits, but the teacher still "
                "runs on every step for its hidden states, so caching saves little"
            )
        if self.train_dataset is None:
            raise ValueError("--cache_teacher_logits needs a training set to compute the teacher's logits on")
        cache_dir = self.args.teacher_logits_cache_dir or default_cache_dir(self.args.output_dir)
        # The main process computes and writes the cache; the others then read its file.
        with self.args.main_process_first(desc="caching the teacher's logits"):
            return add_teacher_logits(
                self.train_dataset,
                teacher,
                self.data_collator,
                cache_dir,
                batch_size=self.args.per_device_eval_batch_size,
                device=self.args.device,
                precision=precision_name(self.args),
                autocast=self.accelerator.autocast,  # the precision the live teacher would run in
            )

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer keeps only the columns the model's forward takes; the cached logits must reach compute_loss.
        super()._set_signature_columns_if_needed()
        if TEACHER_LOGITS_COLUMN not in self._signature_columns:
            self._signature_columns.append(TEACHER_LOGITS_COLUMN)

    def _check_compatible(self, teacher: PreTrainedModel) -> None:
        s_cfg, t_cfg = _config_of(self.model), _config_of(teacher)
        if s_cfg is None or t_cfg is None:
            return
        if getattr(s_cfg, "vocab_size", None) != getattr(t_cfg, "vocab_size", None):
            raise ValueError(
                f"student vocab_size {s_cfg.vocab_size} != teacher vocab_size {t_cfg.vocab_size}: "
                "teacher and student must share a tokenizer"
            )
        if s_cfg.num_labels != t_cfg.num_labels:
            raise ValueError(f"student has {s_cfg.num_labels} labels, teacher {t_cfg.num_labels}: they must match")
        s_type, t_type = (getattr(c, "problem_type", None) or SINGLE_LABEL for c in (s_cfg, t_cfg))
        if s_type != t_type:
            raise ValueError(f"student is a {s_type} model, teacher a {t_type} one: they must match")

    def _resolve_class_weights(self, spec: str) -> torch.Tensor | None:
        """--class_weights as a tensor (balanced and auto: from the train split's labels); None for plain CE.

        `self.class_weight_record` says what was asked, what it resolved to and the weights, for the run record.
        """
        self.class_weight_record: dict[str, Any] = {"policy": spec}
        if spec == "none" or self.train_dataset is None:
            return None
        labels = np.asarray(self.train_dataset["label"]) if spec in ("balanced", "auto") else np.zeros(0)
        choice = class_weight_choice(spec, labels, self.model.config.num_labels, self.multi_label)
        weights = choice.pop("weights")
        self.class_weight_record.update(choice)
        if spec == "auto":
            what = "label" if self.multi_label else "class"
            logger.info(
                f"--class_weights auto: the rarest {what} is {choice['rarest_share']:.1%} of train "
                f"({'under' if choice['resolved'] == 'balanced' else 'not under'} {choice['rare_below']:.1%}): "
                f"{choice['resolved']}"
            )
        if weights is None:
            return None
        self.class_weight_record["weights"] = [round(w, 6) for w in weights]
        logger.info(f"class weights of the CE term: {weights}")
        return torch.tensor(weights, dtype=torch.float32)

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        if self.is_deepspeed_enabled:
            return prepare_deepspeed_teacher(teacher, self.accelerator)
        # DDP, FSDP, one device: placed on the device under the same autocast as the student, but never wrapped
        # for training. FSDP would shard it for an optimizer and all-gather every layer on each teacher forward
        # (FSDP2 even refuses a model outside prepare(model, optimizer)); a BERT-size teacher fits whole.
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        labels = inputs["labels"]
        cached_logits = inputs.get(TEACHER_LOGITS_COLUMN)
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", TEACHER_LOGITS_COLUMN)}
        # Evaluation and prediction score the student alone, by its cross-entropy.
        weights = self.loss_weights if model.training else LossWeights.only(GOLD_TERM)
        want_hidden = weights.needs_hidden_states
        run_teacher = self._must_run_teacher(weights, cached_logits)
        outputs = model(**model_inputs, output_hidden_states=want_hidden)
        teacher_logits = cached_logits if weights.needs_teacher_logits else None
        student_hidden = teacher_hidden = None
        if run_teacher:
            teacher_logits, student_hidden, teacher_hidden = self._teacher_signals(
                model_inputs, outputs, teacher_logits, want_hidden
            )
        attention_mask = model_inputs.get("attention_mask")
        if want_hidden and attention_mask is None:
            attention_mask = torch.ones(labels.shape[0], outputs.hidden_states[-1].shape[1], device=labels.device)
        loss, components = distillation_loss(
            outputs.logits,
            labels,
            weights,
            self.temperature,
            teacher_logits=teacher_logits,
            student_hidden=student_hidden,
            teacher_hidden=teacher_hidden,
            attention_mask=attention_mask,
            multi_label=self.multi_label,
            class_weights=self.class_weights if model.training else None,
        )
        if model.training:
            self._accumulate_components(components)
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def _must_run_teacher(self, weights: LossWeights, cached_logits: torch.Tensor | None) -> bool:
        """Whether this batch needs a teacher forward (hidden-state terms, or logit terms without cached logits);
        an error when it does and the teacher was not kept for live use."""
        run_teacher = weights.needs_hidden_states or (weights.needs_teacher_logits and cached_logits is None)
        if run_teacher and self.teacher is None:
            raise ValueError(
                f"this training batch has no {TEACHER_LOGITS_COLUMN!r} and the teacher was not kept for live use: "
                "train on the dataset the trainer cached them in (trainer.train_dataset)"
            )
        return run_teacher

    def _teacher_signals(
        self,
        model_inputs: dict[str, torch.Tensor],
        student_outputs: Any,
        teacher_logits: torch.Tensor | None,
        want_hidden: bool,
    ) -> tuple[torch.Tensor, Any, list[torch.Tensor] | None]:
        """The live teacher's forward on the batch: its logits (unless cached ones were given) and, for the hidden-state
        terms, the student's layer outputs with the teacher layers `layer_map` pairs them with."""
        with torch.no_grad():
            teacher_out = self.teacher(**model_inputs, output_hidden_states=want_hidden)
        if teacher_logits is None:
            teacher_logits = teacher_out.logits
        student_hidden = teacher_hidden = None
        if want_hidden:
            # hidden_states[0] is the embedding output; hidden_states[k] is layer k's output.
            student_hidden = student_outputs.hidden_states[1:]
            teacher_hidden = [teacher_out.hidden_states[k] for k in self.layer_map]
        return teacher_logits, student_hidden, teacher_hidden

    def _accumulate_components(self, components: dict[str, torch.Tensor]) -> None:
        for name, value in components.items():
            self._component_sums[name] = self._component_sums.get(name, 0.0) + value.detach().float()
        self._component_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log ("loss") is emitted on every rank at once, so the cross-rank mean is safe here.
        if "loss" in logs and self._component_steps:
            for name, total in self._component_sums.items():
                mean = torch.as_tensor(total / self._component_steps, device=self.args.device)
                logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
            self._component_sums, self._component_steps = {}, 0
        super().log(logs, start_time)
