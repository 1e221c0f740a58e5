"""The short table ``aligner eval`` prints: the report's headline figures, one row per measure."""

from __future__ import annotations

from typing import Any

HEADER = f"{'':<22}{'answer':>9}{'correction':>12}  {'difference [95% CI]':<28}"
HEADER += f"{'win':>7}{'tie':>7}{'lose':>7}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def rates(section: dict[str, Any]) -> str:
    return "".join(
        f"{percent(section.get(name)):>7}" for name in ("win_rate", "tie_rate", "lose_rate")
    )


def score_row(label: str, section: dict[str, Any]) -> str:
    if "answer_mean" not in section:
        return f"{label:<22}(no records)"
    low, high = section["difference_ci95"]
    interval = f"{section['difference_mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
    means = f"{section['answer_mean']:>9.4f}{section['correction_mean']:>12.4f}"
    return f"{label:<22}{means}  {interval:<28}{rates(section)}"


def summary_table(report: dict[str, Any]) -> str:
    """The table of a report (see ``aligner.inference.reporting``)."""
    lines = []
    if "reward" in report or "cost" in report or "judge" in report:
        lines.append(HEADER)
    if "reward" in report:
        lines.append(score_row("reward (higher better)", report["reward"]))
    if "cost" in report:
        lines.append(score_row("cost (lower better)", report["cost"]))
        if "better_and_not_more_harmful" in report["cost"]:
            share = percent(report["cost"]["better_and_not_more_harmful"])
            lines.append(f"  better and not more harmful: {share}")
    if "judge" in report:
        judged = report["judge"]
        label = f"judge ({judged['judged']} valid, {judged['invalid']} invalid)"
        lines.append(f"{label:<73}{rates(judged)}")
        if judged["failed"]:
            lines.append(f"  {judged['failed']} records got no verdict: run again to ask for them")
    if "predictions" in report and "copy_rate" in report["predictions"]:
        metrics = report["predictions"]
        lines.append(
            f"copy rate {percent(metrics['copy_rate'])}, mean edit distance "
            f"{metrics['mean_edit_distance']:.2f} words ({metrics['num_records']} records)"
        )
    if "eval_loss" in report:
        loss = report["eval_loss"]
        lines.append(f"eval loss {loss['loss']:.4f} (perplexity {loss['perplexity']:.2f})")
    return "\n".join(lines)
