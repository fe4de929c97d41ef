#!/usr/bin/env python
"""Which of the first edition's calls changed (docs/results/ANALYSIS_PLAN.md §9): the two editions' `paired.csv`
compared row by row, for every (a, b, metric) row both have.

    python study/calls_changed.py --output docs/results/calls_changed.csv

Per data set, `--before` and `--after` hold one folder each (a study data set folder with its `paired.csv`). A row
is "changed" when its verdict differs: "A better", "B better" or "not distinguishable", each edition under its own
rule (the first edition uncorrected, the second under its declared correction). Rows only one
edition has (the second edition's new arms) are listed with the other side empty, so nothing is dropped silently.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillkit.cli import UsageError, exit_on_usage_error, parse_args  # noqa: E402

KEY = ["dataset", "a", "b", "metric"]
COLUMNS = ["n_seeds", "diff", "ci_low", "ci_high", "verdict"]


@dataclass
class CallsChangedArguments:
    output: str = field(metadata={"help": "The CSV to write (the table is also printed as markdown)."})
    before: str = field(
        default="docs/results/earlier/first_edition", metadata={"help": "The first edition's results folder."}
    )
    after: str = field(default="docs/results", metadata={"help": "The second edition's results folder."})
    datasets: list[str] = field(
        default_factory=lambda: ["wiki_toxic", "hate_speech18", "go_emotions"], metadata={"help": "Data sets."}
    )


def read_pairs(results_dir: str, dataset: str) -> pd.DataFrame:
    path = os.path.join(results_dir, dataset, "paired.csv")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file (a study data set folder has paired.csv once two seeds finished)")
    return pd.read_csv(path).assign(dataset=dataset)


def compare_calls(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, a, b, metric) in either edition: both editions' figures and whether the verdict changed."""
    merged = before[KEY + COLUMNS].merge(
        after[KEY + COLUMNS], on=KEY, how="outer", suffixes=("_first", "_second"), indicator=True
    )
    merged["in"] = merged.pop("_merge").map({"both": "both", "left_only": "first only", "right_only": "second only"})
    merged["changed"] = (merged["in"] == "both") & (merged.verdict_first != merged.verdict_second)
    return merged.sort_values(KEY, kind="stable").reset_index(drop=True)


def calls_markdown(table: pd.DataFrame) -> str:
    both = table[table["in"] == "both"]
    lines = [
        f"{int(both.changed.sum())} of {len(both)} calls both editions made changed "
        f"({int((table['in'] == 'second only').sum())} rows are new in the second edition, "
        f"{int((table['in'] == 'first only').sum())} are only in the first).",
        "",
        "| data set | a − b | metric | first edition: diff [CI], call | second edition: diff [CI], call |",
        "|---|---|---|---|---|",
    ]

    def cell(row: pd.Series, side: str) -> str:
        if pd.isna(row[f"verdict_{side}"]):
            return "—"
        return (
            f"{row[f'diff_{side}']:+.3f} [{row[f'ci_low_{side}']:+.3f}, {row[f'ci_high_{side}']:+.3f}], "
            f"{row[f'verdict_{side}']} (n={int(row[f'n_seeds_{side}'])})"
        )

    for _, row in both[both.changed].iterrows():
        lines.append(
            f"| {row.dataset} | {row.a} − {row.b} | {row.metric} | {cell(row, 'first')} | {cell(row, 'second')} |"
        )
    return "\n".join(lines)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> pd.DataFrame:
    (args,) = parse_args((CallsChangedArguments,), argv)
    before = pd.concat([read_pairs(args.before, d) for d in args.datasets], ignore_index=True)
    after = pd.concat([read_pairs(args.after, d) for d in args.datasets], ignore_index=True)
    table = compare_calls(before, after)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    table.to_csv(args.output, index=False)
    print(calls_markdown(table))
    return table


if __name__ == "__main__":
    main()
