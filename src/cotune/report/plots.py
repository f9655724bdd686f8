"""The report's figures, one PNG each; several runs share the axes, one colour per run.

matplotlib is an optional extra (``pip install 'cotune[report]'``), imported when a figure is
drawn. Figures are drawn on the Agg canvas directly (no pyplot, no display, no global backend
switch). Each ``plot_*`` function returns False, writing nothing, when no run has data for it.
Non-finite values are dropped, and so are values <= 0 on log axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cotune.report.runs import Run

MISSING_MATPLOTLIB = "cotune report needs matplotlib: pip install 'cotune[report]'"
# matplotlib's tab10: one colour per run, in the order the runs were given.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# One line style (and marker, for sparse series) per group or side, the same in every run.
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
STYLE_COLOUR = "0.35"


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def moving_average(values: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean over the last ``n`` values (fewer at the start), float64 [len(values)]."""
    if n <= 1 or values.size == 0:
        return values
    sums = np.concatenate(([0.0], np.cumsum(values)))
    end = np.arange(1, values.size + 1)
    start = np.maximum(end - n, 0)
    return (sums[end] - sums[start]) / (end - start)


def _positive(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = values > 0
    return steps[keep], values[keep]


def _style(index: int, marker: bool = False) -> dict:
    style = {"linestyle": LINESTYLES[index % len(LINESTYLES)]}
    if marker:
        style.update(marker=MARKERS[index % len(MARKERS)], markersize=3.5)
    return style


def require_matplotlib() -> None:
    """Raises ImportError, saying how to install it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        from cotune.extras import MissingExtra

        raise MissingExtra(MISSING_MATPLOTLIB) from err


def _figure(panels: int = 1):
    """A new Agg figure with ``panels`` stacked axes sharing the step axis."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4 + 2.6 * panels), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    return fig, list(axes)


def _line_handle(label: str, **style):
    from matplotlib.lines import Line2D

    return Line2D([], [], label=label, **style)


def _save(fig, path: Path, title: str, drawn: dict[str, str], legends: list[tuple[object, str, dict[str, dict]]]) -> None:
    """Adds the run legend (below the axes) and each axes' style legend (right of it), then saves.

    ``drawn``: run label -> colour, for the runs that have data here. ``legends``: (axes, title,
    {series name: line style}) for axes that show more than one kind of series per run.
    """
    fig.suptitle(title)
    runs = [_line_handle(label, color=c, linewidth=2) for label, c in drawn.items()]
    fig.legend(handles=runs, loc="outside lower center", ncols=min(len(runs), 3), frameon=False, fontsize="small")
    for ax, name, styles in legends:
        if len(styles) > 1:
            handles = [_line_handle(label, **{"color": STYLE_COLOUR, **style}) for label, style in styles.items()]
            ax.legend(handles=handles, title=name, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small")
    fig.savefig(path, dpi=110)


def plot_loss(runs: list[Run], path: Path, smooth: int = 1) -> bool:
    """Training loss per step (faint raw curve under its moving average when ``smooth`` > 1) and
    eval loss as markers."""
    fig, (ax,) = _figure()
    drawn: dict[str, str] = {}
    styles: dict[str, dict] = {}
    for i, run in enumerate(runs):
        steps, loss = run.series("loss")
        eval_steps, eval_loss = run.series("eval/loss")
        if smooth > 1 and loss.size:
            ax.plot(steps, loss, color=colour(i), alpha=0.25, linewidth=0.8)
            ax.plot(steps, moving_average(loss, smooth), color=colour(i), linewidth=1.6)
            styles.update({"train": {"alpha": 0.4, "linewidth": 0.8}, f"train, mean of {smooth}": {"linewidth": 1.6}})
        elif loss.size:
            ax.plot(steps, loss, color=colour(i), linewidth=1.2)
            styles["train"] = {"linewidth": 1.2}
        if eval_loss.size:
            ax.plot(eval_steps, eval_loss, color=colour(i), linestyle="--", marker="o", markersize=5)
            styles["eval"] = {"linestyle": "--", "marker": "o", "markersize": 5}
        if loss.size or eval_loss.size:
            drawn[run.label] = colour(i)
    if not drawn:
        return False
    ax.set_ylabel("loss")
    _save(fig, path, "Loss", drawn, [(ax, "series", styles)])
    return True


def plot_kappa(runs: list[Run], path: Path) -> bool:
    """kappa at each valid estimate (points), its window mean kappa_bar (line), and the 0.5 balance line."""
    point = {"linestyle": "none", "marker": "o", "markersize": 4.5, "alpha": 0.7}
    bar_line = {"linewidth": 1.8, "marker": "s", "markersize": 4}
    fig, (ax,) = _figure()
    drawn: dict[str, str] = {}
    styles: dict[str, dict] = {}
    for i, run in enumerate(runs):
        steps, kappa = run.series("balance/kappa", where="balance/valid")
        bar_steps, bar = run.series("balance/kappa_bar")
        if kappa.size:
            ax.plot(steps, kappa, color=colour(i), **point)
            styles["kappa (valid estimate)"] = point
        if bar.size:
            ax.plot(bar_steps, bar, color=colour(i), **bar_line)
            styles["kappa_bar (window mean)"] = bar_line
        if kappa.size or bar.size:
            drawn[run.label] = colour(i)
    if not drawn:
        return False
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1.2)
    styles["0.5 (balanced)"] = {"linestyle": ":", "color": "black"}
    ax.set_ylabel("kappa (feature side's share)")
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.0), max(high, 1.0))
    _save(fig, path, "Balance: kappa", drawn, [(ax, "series", styles)])
    return True


def _plot_keyed(ax, runs: list[Run], keys: list[str], prefix: str, log: bool, marker: bool = False, where: str | None = None,
                steps_post: bool = False) -> tuple[dict[str, str], dict[str, dict]]:
    """Draws ``prefix + key`` of every run, one line style per key; returns (drawn runs, styles).

    ``steps_post``: draw as a step function (a value holds until the next one)."""
    drawn: dict[str, str] = {}
    styles: dict[str, dict] = {}
    for i, run in enumerate(runs):
        for k, key in enumerate(keys):
            steps, values = run.series(prefix + key, where=where)
            if log:
                steps, values = _positive(steps, values)
            if values.size:
                ax.plot(steps, values, color=colour(i), linewidth=1.2, drawstyle="steps-post" if steps_post else "default", **_style(k, marker))
                styles[key] = _style(k, marker)
                drawn[run.label] = colour(i)
    if log and drawn:
        ax.set_yscale("log")
    return drawn, styles


def _union_keys(runs: list[Run], prefix: str) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update((key[len(prefix):], None) for key in run.keys(prefix))
    return list(keys)


def plot_lr(runs: list[Run], path: Path) -> bool:
    """Learning rate per parameter group (log scale); the balance multipliers per side below when logged."""
    groups, sides = _union_keys(runs, "lr/"), _union_keys(runs, "balance/multiplier/")
    fig, axes = _figure(2 if sides else 1)
    drawn, styles = _plot_keyed(axes[0], runs, groups, "lr/", log=True)
    if not drawn:
        return False
    axes[0].set_ylabel("learning rate")
    legends = [(axes[0], "group", styles)]
    if sides:
        drawn_m, styles_m = _plot_keyed(axes[1], runs, sides, "balance/multiplier/", log=False, steps_post=True)
        drawn.update(drawn_m)
        axes[1].axhline(1.0, color="black", linestyle=":", linewidth=1.0)
        axes[1].set_ylabel("balance multiplier")
        legends.append((axes[1], "side", styles_m))
    _save(fig, path, "Learning rates", drawn, legends)
    return True


def plot_grad_norm(runs: list[Run], path: Path) -> bool:
    """Gradient norm per balance side when every run logged them, else per parameter group (log scale)."""
    sides = _union_keys(runs, "balance/grad_norm/")
    by_side = bool(sides) and all(r.keys("balance/grad_norm/") for r in runs if r.keys("grad_norm/"))
    prefix = "balance/grad_norm/" if by_side else "grad_norm/"
    keys = sides if by_side else _union_keys(runs, "grad_norm/")
    fig, (ax,) = _figure()
    drawn, styles = _plot_keyed(ax, runs, keys, prefix, log=True)
    if not drawn:
        return False
    ax.set_ylabel("gradient norm")
    _save(fig, path, f"Gradient norm per {'side' if by_side else 'group'}", drawn, [(ax, "side" if by_side else "group", styles)])
    return True


def plot_kl(runs: list[Run], path: Path) -> bool:
    """KL per side and the joint KL at each valid estimate (log scale)."""
    keys = [f"kl/{side}" for side in _union_keys(runs, "balance/kl/")] + ["kl_joint"]
    fig, (ax,) = _figure()
    drawn, styles = _plot_keyed(ax, runs, keys, "balance/", log=True, marker=True, where="balance/valid")
    if not drawn:
        return False
    styles = {key.replace("kl/", "").replace("kl_joint", "joint"): style for key, style in styles.items()}
    ax.set_ylabel("KL divergence")
    _save(fig, path, "Balance: KL per side", drawn, [(ax, "side", styles)])
    return True
