"""Human-readable view of one grid instance's metrics file (metrics/grid/<dataset>/<vlm>/summary.json)."""

from __future__ import annotations

from zerovlm.scoring.significance import significance_mark

PROMPT_MODES = ("without_view_prompt", "with_view_prompt")
TASKS = ("true_false", "multiple_choice")


def _cell(metrics: dict | None, alpha: float) -> str:
    if not metrics:
        return "-"
    interval = metrics.get("accuracy_ci95")
    spread = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
    text = f"{metrics['accuracy']:.3f}{spread}"
    if "delta_vs_origin" in metrics:
        mark = significance_mark(metrics.get("mcnemar_p_adjusted"), alpha)
        text += f" {metrics['delta_vs_origin']:+.3f}{mark} (p={metrics['mcnemar_p_adjusted']:.3g})"
    return text + f" n={metrics['n_total']}, unparsed={metrics['n_unparseable']}"


def results_table(summary: dict, alpha: float = 0.05) -> str:
    """A Markdown table of one instance: one row per task x configuration, one column per prompt mode."""
    lines = [
        "| task | configuration | chance | " + " | ".join(PROMPT_MODES) + " |",
        "|---|---|---|" + "---|" * len(PROMPT_MODES),
    ]
    for task in TASKS:
        for configuration, modes in summary.get(task, {}).items():
            chance = next(iter(modes.values()))["chance"]
            cells = [_cell(modes.get(mode), alpha) for mode in PROMPT_MODES]
            lines.append(f"| {task} | {configuration} | {chance:.2f} | " + " | ".join(cells) + " |")
    for configuration, reason in sorted(summary.get("not_evaluated", {}).items()):
        lines.append(f"| - | {configuration} | - | not evaluated: {reason} | not evaluated |")
    counts = summary.get("counts", {})
    if counts:
        lines += ["", "counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))]
    overhead = summary.get("overhead", {})
    if overhead:
        lines += ["overhead: " + ", ".join(f"{k}={v}" for k, v in sorted(overhead.items()))]
    return "\n".join(lines)
