"""Human-readable views of the metrics files."""

from __future__ import annotations

PROMPT_MODES = ("without_view_prompt", "with_view_prompt")


def _cell(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    interval = metrics.get("accuracy_ci95")
    spread = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
    return f"{metrics['accuracy']:.3f}{spread} (n={metrics['n_total']}, unparsed={metrics['n_unparseable']})"


def results_table(summary: dict) -> str:
    """A Markdown table: one row per dataset x task x configuration, one column per prompt mode."""
    lines = ["| dataset | task | configuration | chance | " + " | ".join(PROMPT_MODES) + " |",
             "|---|---|---|---|" + "---|" * len(PROMPT_MODES)]
    for dataset, tasks in summary.items():
        for task, configurations in tasks.items():
            for configuration, modes in configurations.items():
                chance = next(iter(modes.values()))["chance"]
                cells = [_cell(modes.get(mode)) for mode in PROMPT_MODES]
                lines.append(f"| {dataset} | {task} | {configuration} | {chance:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
