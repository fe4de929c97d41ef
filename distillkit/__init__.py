"""Shared building blocks for distilling and LoRA-adapting BERT text classifiers.

Each concept has one module: `data` (loading, presets, tokenisation), `students` (layer selection),
`losses` (pure loss functions), `metrics`, `teacher` (resolving or fine-tuning the teacher),
`cli` (argument files, output directories, errors) and `training` (the train/evaluate/save flow).
"""

__version__ = "0.1.0"
