"""``make_report``: the figures of :mod:`cotune.report.plots` and a Markdown summary, for one or more runs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cotune.report import plots
from cotune.report.runs import FINAL_LOSS_STEPS, ReportError, Run, read_runs, summarize

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
#: (file name, what it shows, how it is drawn); skipped when no run has data for it.
FIGURES: tuple[tuple[str, str, Callable[..., bool]], ...] = (
    ("loss.png", "training loss per step and eval loss", plots.plot_loss),
    ("kappa.png", "balance kappa: valid estimates, window means kappa_bar, the 0.5 line", plots.plot_kappa),
    ("lr.png", "learning rate per group (log scale) and the balance multipliers per side", plots.plot_lr),
    ("grad_norm.png", "gradient norm per balance side, else per group (log scale)", plots.plot_grad_norm),
    ("kl.png", "KL divergence per side and joint at valid estimates (log scale)", plots.plot_kl),
)
_HEADER = ("run", "method", "steps", "final loss", "best eval loss (step)", "mean kappa (estimates)", "last multipliers", "tokens/s")


def make_report(run_dirs: Sequence[str | Path] | str | Path, out_dir: str | Path, smooth: int = 1) -> dict:
    """Writes the figures and ``summary.md`` of ``run_dirs`` (overlaid, one colour per run) into ``out_dir``.

    Args:
        run_dirs: run directories written by ``cotune train`` (each holds ``metrics.jsonl``).
        out_dir: created if missing; existing files of the same names are replaced.
        smooth: window of the trailing moving average drawn over the training loss (1: none).

    Returns:
        ``{"written": [paths of the PNGs, then summary.md], "skipped": [figure file names without
        data], "runs": [one summary row per run, see :func:`cotune.report.runs.summarize`]}``.

    Raises:
        FileNotFoundError: a run directory or its metrics.jsonl does not exist.
        ReportError (a ValueError): a metrics.jsonl is empty or corrupt, or ``smooth`` < 1.
        ImportError: matplotlib is not installed.
    """
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ReportError(f"smooth: must be an integer >= 1, got {smooth!r}")
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    runs = read_runs(run_dirs)
    plots.require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for name, _, draw in FIGURES:
        options = {"smooth": smooth} if draw is plots.plot_loss else {}
        if draw(runs, out / name, **options):
            written.append(out / name)
        else:
            skipped.append(name)
            log.info("%s: no run logged the data it needs; skipped", name)
    rows = [summarize(run) for run in runs]
    summary = out / SUMMARY_FILE
    summary.write_text(summary_markdown(runs, rows, [p.name for p in written], skipped, smooth))
    written.append(summary)
    log.info("wrote %d files to %s", len(written), out)
    return {"written": [str(p) for p in written], "skipped": skipped, "runs": rows}


def _cell(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row_cells(row: dict) -> list[str]:
    best = row["best_eval_loss"]
    kappa = row["mean_kappa"]
    return [
        row["name"].replace("|", "\\|"),
        row["method"] or "?",
        str(row["steps"]),
        _cell(row["final_loss"], ".4f"),
        "–" if best is None else f"{best:.4f} ({row['best_eval_step']})",
        "–" if kappa is None else f"{kappa:.3f} ({row['kappa_estimates']})",
        ", ".join(f"{side}={m:.3g}" for side, m in row["multipliers"].items()) or "–",
        _cell(row["tokens_per_s"], ",.0f"),
    ]


def summary_table(rows: list[dict]) -> str:
    """The Markdown table of the summary rows (numbers right-aligned)."""
    align = ["---", "---", "---:", "---:", "---:", "---:", "---", "---:"]
    lines = ["| " + " | ".join(cells) + " |" for cells in (_HEADER, align, *(_row_cells(r) for r in rows))]
    return "\n".join(lines)


def summary_markdown(runs: list[Run], rows: list[dict], written: list[str], skipped: list[str], smooth: int) -> str:
    """summary.md: the table, what its columns mean, the runs' paths, links to the figures, the skipped ones."""
    about = {name: text for name, text, _ in FIGURES}
    parts = [
        "# Training report",
        "",
        summary_table(rows),
        "",
        f"final loss: mean of the last {FINAL_LOSS_STEPS} finite training losses; best eval loss: lowest `eval/loss` "
        "and its step; mean kappa: over valid estimates (their count in brackets); last multipliers: the balance "
        "learning-rate multipliers per side at the last step; tokens/s: mean over steps. –: not logged.",
        "",
        "Runs:",
        "",
        *(f"- {run.label}: `{run.path}`" for run in runs),
        "",
        "## Figures",
        "",
        *(f"- [{name}]({name}): {about[name]}" + (f" (moving average of {smooth})" if name == "loss.png" and smooth > 1 else "") for name in written),
    ]
    if skipped:
        parts += ["", "Skipped, no run logged their data:", "", *(f"- {name}: {about[name]}" for name in skipped)]
    for name in written:
        parts += ["", f"### {name}", "", f"![{name}]({name})"]
    return "\n".join(parts) + "\n"
