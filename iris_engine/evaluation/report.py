"""Evaluation report writer: Markdown + JSON + a PNG bar plot, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from iris_engine.io.atomic import atomic_write
from iris_engine.metrics import BOOTSTRAP_RESAMPLES, bootstrap_group_means, interval, json_safe

BASELINES = ("baseline_copy_support", "baseline_intensity_knn")
STRATEGY_ORDER = ("one_shot", "context_ensemble_k3", "context_ensemble_k5", "memory_bank", "in_context_tuning",
                  *BASELINES)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))


def _cell(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    mean, std = _mean_std(values)
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def group_summary(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean over the tasks of a group of each strategy's mean Dice."""
    summary: dict[str, dict[str, list[float]]] = {}
    for task in payload["tasks"]:
        for strategy, values in task["dice"].items():
            mean, _ = _mean_std(values)
            if not math.isnan(mean):
                summary.setdefault(task["group"], {}).setdefault(strategy, []).append(mean)
    return {g: {s: float(np.mean(v)) for s, v in per.items()} for g, per in summary.items()}


def common_task_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """Mean Dice over the tasks where every support-based strategy and baseline ran (a like-for-like row).

    The memory bank is left out of the requirement: it has no entry for unseen classes and datasets.
    """
    required = [s for s in _strategies(payload) if s != "memory_bank"]
    means = [{s: _mean_std(t["dice"].get(s, []))[0] for s in required} for t in payload["tasks"]]
    common = [row for row in means if all(not math.isnan(v) for v in row.values())]
    return {"tasks": len(common), "of": len(means),
            "dice": {s: float(np.mean([row[s] for row in common])) if common else float("nan") for s in required}}


def baseline_margins(payload: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Per task, one-shot minus the better non-learned baseline (by its mean over support draws): the mean paired
    difference over query cases and support draws, and its 95 % bootstrap interval (each draw's query cases
    resampled with replacement, the same cases for both)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in payload["tasks"]:
        per_case = task.get("case_dice", {})
        means = {b: _mean_std(task["dice"][b])[0] for b in BASELINES if per_case.get(b)}
        means = {b: m for b, m in means.items() if not math.isnan(m)}
        if not per_case.get("one_shot") or not means:
            continue
        best = max(means, key=means.__getitem__)
        gaps = [np.array([shot[c] - base[c] for c in shot]) for shot, base in
                zip(per_case["one_shot"], per_case[best], strict=True)]
        low, high = interval(bootstrap_group_means(gaps, rng))
        rows.append({"group": task["group"], "task": f"{task['dataset']} / {task['class_name']}", "baseline": best,
                     "margin": float(np.mean([g.mean() for g in gaps])), "low": low, "high": high,
                     "cases": int(np.mean([len(g) for g in gaps]))})
    return rows


def _strategies(payload: dict[str, Any]) -> list[str]:
    seen = {s for task in payload["tasks"] for s in task["dice"]}
    return [s for s in STRATEGY_ORDER if s in seen] + sorted(seen - set(STRATEGY_ORDER))


def _scoring_line(config: dict[str, Any], bank_fine: list[str], calibration: dict[str, Any] | None = None) -> str:
    """How slices were scored (reports written before the scoring grid was configurable: the model's grid; before
    the support calibration: no mention of it)."""
    scale = config.get("score_scale", 1)
    thickness = config.get("fine_scale_thickness", 0.0)
    grid = "the model's input grid" if scale == 1 else f"a grid {scale} x the model's input (area-averaged down " \
        "for the model, its probabilities resized back up)"
    fine = f"supports thinner than {thickness:g} model-grid pixels run at twice the input size" if thickness > 0 \
        else "every task at the model's input size"
    if thickness > 0 and calibration and calibration.get("enabled"):
        fine += (" with the threshold calibrated on the support (the one that best reproduces its own mask, "
                 f"taken where it lies at least {calibration['dead_zone']:g} from 0.5)")
    bank = f"memory bank at twice the input size for the {len(bank_fine)} classes with a fine entry, else at the " \
        "model's input size" if bank_fine else "memory bank at the model's input size"
    return f"- scoring: Dice on {grid}; {fine}; {bank}; baselines at the model's input size."


def render_markdown(payload: dict[str, Any]) -> str:
    strategies = _strategies(payload)
    summary = group_summary(payload)
    lines = [
        "# IRIS evaluation report",
        "",
        f"- checkpoint: `{payload['checkpoint']}` (model version `{payload['model_version']}`)",
        f"- split seed {payload['split_seed']} (fingerprint `{payload['split_fingerprint']}`); held-out datasets: "
        f"{', '.join(payload['held_out_datasets']) or 'none'}; held-out classes: "
        f"{', '.join('/'.join(p) for p in payload['held_out_classes']) or 'none'}",
        f"- support draws (seeds): {payload['config']['seeds']}; at most {payload['config']['max_queries']} query "
        f"slices per task; in-context tuning: {payload['config']['tuning_steps']} steps",
        "- queries: slices of TEST patients showing the class; supports: the middle class slice of OTHER patients "
        "(training patients where the dataset has them). Dice per query case over its slices, averaged over cases; "
        "mean ± std over support draws. HD95 (3D sets): mean per-slice HD95 in pixels of the 128 x 128 model grid.",
        _scoring_line(payload["config"], payload.get("memory_bank_fine", []), payload.get("support_calibration")),
        f"- evaluation time: {payload['seconds']} s",
        "",
        "## Summary: mean Dice over the tasks of each group",
        "",
        "| group | tasks | " + " | ".join(strategies) + " |",
        "|---|---|" + "---|" * len(strategies),
    ]
    for group, per in summary.items():
        count = sum(1 for t in payload["tasks"] if t["group"] == group)
        cells = [f"{per[s]:.3f}" if s in per else "n/a" for s in strategies]
        lines.append(f"| {group} | {count} | " + " | ".join(cells) + " |")
    common = common_task_summary(payload)
    lines += ["", f"Like for like, over the {common['tasks']} of {common['of']} tasks where every support-based "
              "strategy and baseline ran (all groups together):", "",
              "| " + " | ".join(common["dice"]) + " |", "|" + "---|" * len(common["dice"]),
              "| " + " | ".join(f"{v:.3f}" for v in common["dice"].values()) + " |"]
    lines += ["", "## Per task (Dice, mean ± std over support draws)", ""]
    lines.append("| group | dataset / class | " + " | ".join(strategies) + " | query patients |")
    lines.append("|---|---|" + "---|" * len(strategies) + "---|")
    for task in payload["tasks"]:
        cells = [_cell(task["dice"].get(s)) for s in strategies]
        lines.append(f"| {task['group']} | {task['dataset']} / {task['class_name']} | " + " | ".join(cells)
                     + f" | {len(task['query_patients'])} |")
    margins = baseline_margins(payload)
    if margins:
        lines += ["", "## One-shot against the better non-learned baseline (paired over query cases)", "",
                  "One-shot minus the baseline with the higher mean (copying the support mask or intensity k-NN), "
                  "per query case and support draw; 95 % bootstrap interval with each draw's cases resampled "
                  f"({BOOTSTRAP_RESAMPLES} draws, seed 0). With few query patients the interval is wide: read it "
                  "before a 0.15 margin.", "",
                  "| group | dataset / class | baseline | one-shot − baseline [95 % interval] | query cases |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['task']} | {r['baseline']} | {r['margin']:+.3f} [{r['low']:+.3f}, "
                  f"{r['high']:+.3f}] | {r['cases']} |" for r in margins]
    hd_tasks = [t for t in payload["tasks"] if t["hd95"]]
    if hd_tasks:
        lines += ["", "## HD95 (3D sets, pixels of the model grid; lower is better)", ""]
        lines.append("| dataset / class | " + " | ".join(strategies) + " |")
        lines.append("|---|" + "---|" * len(strategies))
        for task in hd_tasks:
            lines.append(f"| {task['dataset']} / {task['class_name']} | "
                         + " | ".join(_cell(task["hd95"].get(s)) for s in strategies) + " |")
    lines += ["", "## Context sensitivity (same queries, supports of two different structures)", ""]
    lines.append("| dataset | A | B | queries | Dice(A→A) | Dice(B→B) | Dice(A→B) | Dice(B→A) "
                 "| overlap of the two masks |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for row in payload["context_sensitivity"]:
        lines.append(
            f"| {row['dataset']} | {row['class_a']} | {row['class_b']} | {row['queries']} | {row['dice_a_vs_a']:.3f} "
            f"| {row['dice_b_vs_b']:.3f} | {row['dice_a_vs_b']:.3f} | {row['dice_b_vs_a']:.3f} "
            f"| {row['mask_overlap_a_b']:.3f} |"
        )
    notes = [(t["dataset"], t["class_name"], n) for t in payload["tasks"] for n in t["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {d}/{c}: {n}" for d, c, n in notes]
    return "\n".join(lines) + "\n"


def _plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = group_summary(payload)
    strategies = _strategies(payload)
    groups = list(summary)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(strategies)), 4))
    width = 0.8 / max(1, len(groups))
    for i, group in enumerate(groups):
        values = [summary[group].get(s, np.nan) for s in strategies]
        ax.bar(np.arange(len(strategies)) + i * width, values, width, label=group)
    ax.set_xticks(np.arange(len(strategies)) + width * (len(groups) - 1) / 2)
    ax.set_xticklabels(strategies, rotation=30, ha="right")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_report(payload: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.md, report.json and report.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "summary": group_summary(payload), "common_task_summary": common_task_summary(payload)}
    paths = {"markdown": out / "report.md", "json": out / "report.json", "plot": out / "report.png"}
    atomic_write(paths["markdown"], lambda tmp: tmp.write_text(render_markdown(payload), encoding="utf-8"))
    atomic_write(paths["json"], lambda tmp: tmp.write_text(json.dumps(json_safe(payload), indent=2), encoding="utf-8"))
    _plot(payload, paths["plot"])
    return paths
