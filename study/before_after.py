#!/usr/bin/env python
"""Two editions of a data set's study stages side by side: macro-F1 and the rarest test class's (label's) F1 per
method, over the seeds both editions have (issue 22's before/after table of the imbalance defaults).

    python study/before_after.py --before docs/results/earlier/first_edition/wiki_toxic --after docs/results/defaults_check/wiki_toxic

Both folders hold study stages (`stages/<method>/seed<S>/`, as study/run_study.py publishes them). Every figure is
recomputed from the stages' predictions at each model's saved decision rule; nothing is copied from a report.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillkit.cli import UsageError, exit_on_usage_error, parse_args  # noqa: E402
from distillkit.report_summary import METHOD_ORDER  # noqa: E402
from distillkit.report_tables import saved_predictions_label_table  # noqa: E402
from study.run_study import load_stages  # noqa: E402


@dataclass
class BeforeAfterArguments:
    before: str = field(metadata={"help": "A data set's stage folder of the earlier edition."})
    after: str = field(metadata={"help": "The same data set's stage folder of the later edition."})
    methods: list[str] = field(
        default_factory=lambda: ["teacher", "odd", "even", "lora"], metadata={"help": "Methods to compare."}
    )

    def __post_init__(self) -> None:
        for name in ("before", "after"):
            if not os.path.isdir(os.path.join(getattr(self, name), "stages")):
                raise UsageError(f"--{name} {getattr(self, name)}: no stages/ folder (a study data set folder)")


def edition(folder: str, methods: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """(method, seed, macro_f1, per-class F1 columns) of every stage of `methods`, and the label names."""
    results, predictions, _, records = load_stages(folder)
    names = list(records[0]["label_names"])
    rows = []
    for row in results[results.method.isin(methods)].itertuples():
        table = pd.DataFrame(saved_predictions_label_table(predictions[row.model], names)).set_index("label")
        rows.append(
            {
                "method": row.method,
                "seed": int(row.seed),
                "macro_f1": float(row.macro_f1),
                **{f"f1:{n}": float(table.loc[n, "f1"]) for n in names},
                **{f"support:{n}": int(table.loc[n, "support"]) for n in names},
            }
        )
    return pd.DataFrame(rows), names


def before_after(before: pd.DataFrame, after: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, str]:
    """Per method, over the seeds both editions have: macro-F1 and the rarest test class's F1, before and after."""
    support = {n: after[f"support:{n}"].iloc[0] for n in names}
    rarest = min(names, key=lambda n: (support[n], -names.index(n)))  # a tie: the later class (binary: positive)
    rows = []
    for method in [m for m in METHOD_ORDER if m in set(after.method)] + sorted(set(after.method) - set(METHOD_ORDER)):
        a = after[after.method == method].set_index("seed")
        b = before[before.method == method].set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        if not seeds:
            continue
        rows.append(
            {
                "method": method,
                "seeds": " ".join(map(str, seeds)),
                "macro_f1_before": b.loc[seeds, "macro_f1"].mean(),
                "macro_f1_after": a.loc[seeds, "macro_f1"].mean(),
                "rarest_f1_before": b.loc[seeds, f"f1:{rarest}"].mean(),
                "rarest_f1_after": a.loc[seeds, f"f1:{rarest}"].mean(),
                "rarest_f1_before_min": b.loc[seeds, f"f1:{rarest}"].min(),
                "rarest_f1_after_min": a.loc[seeds, f"f1:{rarest}"].min(),
            }
        )
    return pd.DataFrame(rows), rarest


def markdown(table: pd.DataFrame, rarest: str, support: int) -> str:
    lines = [
        f"| method | seeds | macro-F1 before → after | F1 of `{rarest}` ({support} test texts) before → after "
        "| its lowest seed before → after |",
        "|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {r.seeds} | {r.macro_f1_before:.3f} → {r.macro_f1_after:.3f} | "
            f"{r.rarest_f1_before:.3f} → {r.rarest_f1_after:.3f} | {r.rarest_f1_before_min:.3f} → {r.rarest_f1_after_min:.3f} |"
        )
    return "\n".join(lines)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> str:
    (args,) = parse_args((BeforeAfterArguments,), argv)
    before, names = edition(args.before, args.methods)
    after, after_names = edition(args.after, args.methods)
    if names != after_names:
        raise UsageError(f"the editions' classes differ: {names} vs {after_names}")
    table, rarest = before_after(before, after, names)
    text = markdown(table, rarest, int(after[f"support:{rarest}"].iloc[0]))
    print(text)
    return text


if __name__ == "__main__":
    main()
