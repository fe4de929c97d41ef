"""The identity-bias comparison with the teacher (distillkit/bias_report.py) on hand-made bias_summary / bias.csv
tables: the paired t-test per (method, measure), Holm over the bias family (every method × measure, one family per
report), and the call — corrected p below 0.05 and the interval excluding 0, never with one seed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from distillkit.bias_report import (
    BIAS_VS_TEACHER_FILE,
    COMPARED,
    DIFFERS,
    NO_CALL,
    compare_with_teacher,
    write_bias_section,
)
from distillkit.stats import NOT_DISTINGUISHABLE

IDENTITIES = ("gay", "muslim", "blind")
MEASURES = [column for column, _ in COMPARED]  # final_metric, power_mean_bpsn_auc, fped
# p-values of the same t statistic computed two ways (numpy mean/std here, scipy's ttest inside): they differ only by
# float64 rounding of sums of a handful of numbers (~1e-16 relative), magnified by the t tail's slope; 1e-9 relative is
# far above that and far below any difference a wrong test (another df, one-sided, unpaired) would make (> 1e-2).
P_REL = 1e-9


def summary_and_table(values: dict[str, dict[str, list[float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """values: method → measure → one value per seed (seeds 0, 1, ...). The other bias_summary columns are filled
    with constants; bias.csv gets one row per model × identity with a made-up FPR (only the FPR-change list reads
    it)."""
    summary_rows, table_rows = [], []
    for method, measures in values.items():
        for seed in range(len(next(iter(measures.values())))):
            model = f"seed{seed}-{method}"
            row = {"model": model, "method": method, "seed": seed, "n": 60, "identities": len(IDENTITIES)}
            row |= {m: measures[m][seed] for m in MEASURES}
            row |= {"overall_auc": 0.9, "power_mean_subgroup_auc": 0.8, "power_mean_bnsp_auc": 0.8, "fpr": 0.1}
            row |= {"fnr": 0.1, "fned": 0.2, "worst_bpsn": "gay; muslim; blind"}
            summary_rows.append(row)
            for i, identity in enumerate(IDENTITIES):
                fpr = 0.1 + 0.01 * i + (0.05 if method != "teacher" else 0.0) * (i == 0)
                table_rows.append({"model": model, "identity": identity, "n": 20, "subgroup_auc": 0.8,
                                   "bpsn_auc": 0.8 - 0.1 * i, "bnsp_auc": 0.8, "fpr": fpr, "fnr": 0.1})  # fmt: skip
    return pd.DataFrame(table_rows), pd.DataFrame(summary_rows)


TEACHER = {"final_metric": [0.90, 0.91, 0.89, 0.90], "power_mean_bpsn_auc": [0.80, 0.82, 0.79, 0.81],
           "fped": [1.00, 1.10, 0.95, 1.05]}  # fmt: skip


def shifted(diffs: dict[str, list[float]]) -> dict[str, list[float]]:
    return {m: list(np.add(TEACHER[m], diffs[m])) for m in MEASURES}


# odd: its final metric is above the teacher's in every seed, raw p ≈ 0.02 (< 0.05) but not after Holm over 6 tests.
ODD = {"final_metric": [0.010, 0.004, 0.009, 0.005], "power_mean_bpsn_auc": [0.01, -0.02, 0.00, 0.01],
       "fped": [0.05, -0.04, 0.02, -0.01]}  # fmt: skip
# even: its final metric is clearly below the teacher's (−0.050 ± 0.001), p ~ 1e-6: called even after Holm.
EVEN = {"final_metric": [-0.050, -0.051, -0.049, -0.050], "power_mean_bpsn_auc": [0.01, 0.00, -0.01, 0.02],
        "fped": [0.03, -0.02, 0.00, -0.03]}  # fmt: skip


def hand_p(diffs: list[float]) -> float:
    """Two-sided paired t-test across seeds by hand: t = mean / (sd / √n), n − 1 degrees of freedom."""
    d = np.asarray(diffs, dtype=float)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return float(2 * scipy_stats.t.sf(abs(t), len(d) - 1))


def test_holm_over_the_bias_family_by_hand_and_the_calls():
    table, summary = summary_and_table({"teacher": TEACHER, "odd": shifted(ODD), "even": shifted(EVEN)})
    got = compare_with_teacher(table, summary).set_index(["method", "measure"])
    assert len(got) == 6 and set(got.family_size) == {6} and set(got.correction) == {"holm"}

    raw = {(method, m): hand_p(diffs[m]) for method, diffs in (("odd", ODD), ("even", EVEN)) for m in MEASURES}
    for key, p in raw.items():
        assert got.loc[key, "p_value"] == pytest.approx(p, rel=P_REL)
    # Holm by hand: sort the 6 raw p ascending, multiply the i-th (from 0) by 6 − i, keep the running max, cap at 1.
    ordered = sorted(raw, key=raw.get)
    running = 0.0
    for i, key in enumerate(ordered):
        running = max(running, min(1.0, raw[key] * (6 - i)))
        assert got.loc[key, "p_adjusted"] == pytest.approx(running, rel=P_REL)
    assert ordered[:2] == [("even", "final_metric"), ("odd", "final_metric")]  # the two smallest, as designed

    # odd: a raw p below 0.05 and a 95% t interval above 0 (the old, uncorrected rule called it "higher") ...
    odd = got.loc[("odd", "final_metric")]
    assert odd.p_value < 0.05 and odd.ci_low > 0
    # ... but the Holm-adjusted p (5 × its raw p) is above 0.05: not distinguishable.
    assert odd.p_adjusted == pytest.approx(5 * odd.p_value, rel=P_REL) and odd.p_adjusted > 0.05
    assert odd.verdict == NOT_DISTINGUISHABLE

    # even: clearly lower than its teacher, called with the sign of method − teacher.
    even = got.loc[("even", "final_metric")]
    assert even["diff"] == pytest.approx(-0.050, abs=1e-12) and even.ci_high < 0 and even.p_adjusted < 0.05
    assert even.verdict == f"{DIFFERS} (lower)"
    # Nothing else is called.
    others = got.drop(index=[("even", "final_metric")])
    assert set(others.verdict) == {NOT_DISTINGUISHABLE}


def test_a_clear_rise_is_called_higher():
    rise = {m: [-d for d in EVEN[m]] for m in MEASURES}
    table, summary = summary_and_table({"teacher": TEACHER, "lora": shifted(rise)})
    got = compare_with_teacher(table, summary).set_index("measure")
    assert got.loc["final_metric", "diff"] == pytest.approx(0.050, abs=1e-12)
    assert got.loc["final_metric", "verdict"] == f"{DIFFERS} (higher)"


def test_one_seed_is_never_called_and_counts_as_p_one_in_the_family():
    one_seed = {m: [TEACHER[m][0]] for m in MEASURES}
    far = {m: [v[0] + 0.3] for m, v in one_seed.items()}
    table, summary = summary_and_table({"teacher": one_seed, "odd": far})
    got = compare_with_teacher(table, summary)
    assert set(got.verdict) == {NO_CALL} and got.p_value.isna().all() and got.p_adjusted.isna().all()

    # Beside a method with 4 seeds, a 1-seed method still widens the family (its rows count as p = 1).
    teacher = {m: TEACHER[m] for m in MEASURES}
    table, summary = summary_and_table({"teacher": teacher, "even": shifted(EVEN)})
    lone = summary_and_table({"lora": {m: [TEACHER[m][0] + 0.3] for m in MEASURES}})
    table, summary = pd.concat([table, lone[0]]), pd.concat([summary, lone[1]], ignore_index=True)
    got = compare_with_teacher(table, summary).set_index(["method", "measure"])
    assert set(got.family_size) == {6}
    assert set(got.loc["lora"].verdict) == {NO_CALL}
    raw = [hand_p(EVEN[m]) for m in MEASURES]
    assert got.loc[("even", "final_metric"), "p_adjusted"] == pytest.approx(6 * min(raw), rel=P_REL)


def test_report_paragraph_and_table_name_the_calls(tmp_path):
    table, summary = summary_and_table({"teacher": TEACHER, "odd": shifted(ODD), "even": shifted(EVEN)})
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    write_bias_section(str(report), table, summary, "bias_madlibs")
    text = report.read_text()
    assert "6 tests" in text and "Holm" in text
    claim = "Differ from their teacher after the correction (method − teacher): **even** (final metric -0.050 ["
    assert claim in text
    header = "| method | measure | seeds | method | teacher | method − teacher | 95% t interval | p | corrected p "
    header += "| call |"
    assert header in text
    odd_row = next(line for line in text.splitlines() if line.startswith("| odd | final metric |"))
    assert odd_row.endswith(f"| {NOT_DISTINGUISHABLE} |")
    even_row = next(line for line in text.splitlines() if line.startswith("| even | final metric |"))
    assert even_row.endswith(f"| {DIFFERS} (lower) |") and "| -0.050 |" in even_row
    assert f"{DIFFERS}: final metric lower by 0.050" in text
    saved = pd.read_csv(tmp_path / BIAS_VS_TEACHER_FILE)
    assert {"p_value", "p_adjusted", "correction", "family_size", "verdict"} <= set(saved.columns)


def test_report_with_one_seed_says_no_call(tmp_path):
    one_seed = {m: [TEACHER[m][0]] for m in MEASURES}
    table, summary = summary_and_table({"teacher": one_seed, "odd": {m: [v[0] + 0.3] for m, v in one_seed.items()}})
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    write_bias_section(str(report), table, summary, "bias_madlibs")
    text = report.read_text()
    assert "Every method has one seed: no interval and no p-value, so no difference from the teacher is called." in text
    assert "one seed: no interval, so no call" in text and f"{DIFFERS} (" not in text
