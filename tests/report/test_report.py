"""``cotune report``: figures and summary.md from synthetic run directories, and loud errors on bad input.

Two synthetic runs: ``commit-run`` logs balance keys (kappa, KL, multipliers, side norms) and eval
loss; ``plain-run`` logs neither and has one skipped step (NaN loss) and zero gradient norms.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cotune.cli import report as report_cmd
from cotune.report import ReportError, make_report, read_run, summarize
from cotune.report.runs import read_runs
from cotune.report.plots import MISSING_MATPLOTLIB, moving_average

ALL_FIGURES = ["loss.png", "kappa.png", "lr.png", "grad_norm.png", "kl.png"]
GROUPS = {"llm": 1.0, "encoder.image": 0.05, "connector.image": 0.3, "modality_embedding": 0.01}  # group -> grad norm scale


def base_record(step: int, loss: float, lr: float) -> dict:
    record = {"step": step, "epoch": 0, "loss": loss, "tokens_per_s": 1000.0 + step}
    record.update({f"lr/{g}": lr * (0.1 if g == "connector.image" else 1.0) for g in GROUPS})
    record.update({f"grad_norm/{g}": scale * (0.5 + 1 / step) for g, scale in GROUPS.items()})
    return record


def commit_records(steps: int = 60) -> list[dict]:
    """Estimates every 5 steps (one invalid), windows of 20, eval every 20 plus a final eval-only record."""
    records, multipliers = [], {"S": 1.0, "T": 1.0}
    for step in range(1, steps + 1):
        r = base_record(step, 3.0 * math.exp(-step / 30) + 0.5, 1e-3)
        if step % 5 == 0:
            valid = step != 15
            kappa = 0.3 + 0.002 * step if valid else math.nan
            r.update({"balance/kappa": kappa, "balance/kappa_raw": kappa, "balance/valid": float(valid),
                      "balance/kl/S": 1e-5 * step, "balance/kl/T": 2e-5 * step, "balance/kl_joint": 3.2e-5 * step,
                      "balance/kl_interaction": 2e-7, "balance/update_norm/S": 0.1, "balance/update_norm/T": 0.2})
        if step % 20 == 0:
            r["balance/kappa_bar"] = 0.3 + 0.002 * step
            multipliers = {"S": 1.0 + step / 100, "T": 1.0 - step / 200}
            r["eval/loss"] = 2.0 - step / 100
            r["eval/sqa/loss"] = 2.0 - step / 100
        r.update({f"balance/multiplier/{s}": m for s, m in multipliers.items()})
        r.update({"balance/grad_norm/S": 0.2 / step, "balance/grad_norm/T": 0.4 / step})
        records.append(r)
    records.append({"step": steps, "eval/loss": 1.5, "eval/sqa/loss": 1.5})
    return records


def plain_records(steps: int = 40) -> list[dict]:
    records = [base_record(step, 4.0 - step / 20, 2e-4) for step in range(1, steps + 1)]
    records[-3]["loss"] = math.nan  # a skipped step
    records[-3]["skipped"] = 1
    records[0]["grad_norm/modality_embedding"] = 0.0  # nothing to draw on a log axis
    return records


def write_run(path: Path, records: list[dict], method: str | None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if method is not None:
        (path / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": 1e-3}, "balance": {"method": method}}))
    return path


def final_loss(records: list[dict]) -> float:
    losses = [r["loss"] for r in records if "loss" in r and math.isfinite(r["loss"])]
    return float(np.mean(losses[-10:]))


@pytest.fixture
def runs(tmp_path):
    return write_run(tmp_path / "commit-run", commit_records(), "commit"), write_run(tmp_path / "plain-run", plain_records(), "constant")


@pytest.fixture
def matplotlib():
    return pytest.importorskip("matplotlib")


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 600 and image.size[1] >= 300
        image.verify()
    assert path.stat().st_size > 10_000


# ----------------------------------------------------------------- figures and summary
def test_two_runs_give_every_figure_and_a_summary(runs, tmp_path, matplotlib):
    out = tmp_path / "report"
    result = make_report(runs, out, smooth=5)
    assert result["skipped"] == []
    assert result["written"] == [str(out / name) for name in ALL_FIGURES] + [str(out / "summary.md")]
    for name in ALL_FIGURES:
        assert_png(out / name)
    summary = (out / "summary.md").read_text()
    assert "commit-run" in summary and "plain-run" in summary
    assert f"{final_loss(commit_records()):.4f}" in summary
    assert f"{final_loss(plain_records()):.4f}" in summary
    for name in ALL_FIGURES:
        assert f"]({name})" in summary


def test_summary_rows(runs):
    commit, plain = [summarize(run) for run in read_runs(runs)]
    assert commit["method"] == "commit" and commit["label"] == "commit-run (commit)"
    assert commit["steps"] == 60
    assert commit["final_loss"] == pytest.approx(final_loss(commit_records()))
    assert (commit["best_eval_loss"], commit["best_eval_step"]) == (pytest.approx(1.4), 60)
    valid = [0.3 + 0.002 * s for s in range(5, 61, 5) if s != 15]
    assert commit["mean_kappa"] == pytest.approx(np.mean(valid)) and commit["kappa_estimates"] == len(valid)
    assert commit["multipliers"] == {"S": pytest.approx(1.6), "T": pytest.approx(0.7)}
    assert commit["tokens_per_s"] == pytest.approx(1000 + 30.5)
    assert plain["final_loss"] == pytest.approx(final_loss(plain_records()))  # the NaN step is left out
    assert (plain["best_eval_loss"], plain["mean_kappa"], plain["multipliers"]) == (None, None, {})


def test_figures_without_data_are_skipped_and_listed(runs, tmp_path, matplotlib):
    out = tmp_path / "report"
    result = make_report([runs[1]], out)
    assert result["skipped"] == ["kappa.png", "kl.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["loss.png", "lr.png", "grad_norm.png", "summary.md"])
    summary = (out / "summary.md").read_text()
    skipped = summary.split("Skipped, no run logged their data:")[1]
    assert "kappa.png" in skipped and "kl.png" in skipped
    assert "](kappa.png)" not in summary


def test_truncated_last_line_is_skipped(runs):
    metrics = runs[1] / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 41, "epoch": 0, "lo')
    run = read_run(runs[1])
    assert len(run.records) == 40 and summarize(run)["steps"] == 40


def test_same_directory_names_get_distinct_labels(tmp_path):
    a = write_run(tmp_path / "a" / "run", plain_records(), "constant")
    b = write_run(tmp_path / "b" / "run", plain_records(), None)
    assert [run.label for run in read_runs([a, b])] == ["a/run (constant)", "b/run"]


def test_moving_average_is_trailing():
    assert moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert moving_average(np.array([1.0, 3.0]), 1).tolist() == [1.0, 3.0]


# ----------------------------------------------------------------- errors
def test_empty_metrics_file_names_the_file(tmp_path):
    run = write_run(tmp_path / "empty", [], None)
    with pytest.raises(ValueError, match=r"empty.metrics\.jsonl.*empty"):
        make_report([run], tmp_path / "report")
    (run / "metrics.jsonl").write_text('{"step": 1, "lo')  # only a cut line: no record either
    with pytest.raises(ReportError, match="no metrics records"):
        read_run(run)


def test_missing_metrics_file_and_directory(tmp_path):
    (tmp_path / "no-metrics").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no-metrics.metrics\.jsonl"):
        make_report([tmp_path / "no-metrics"], tmp_path / "report")
    with pytest.raises(FileNotFoundError, match="nowhere: no such run directory"):
        make_report([tmp_path / "nowhere"], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_corrupt_line_before_the_last_and_bad_smooth(runs, tmp_path):
    metrics = runs[1] / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ReportError, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        read_run(runs[1])
    with pytest.raises(ValueError, match="smooth"):
        make_report([runs[0]], tmp_path / "report", smooth=0)


def test_missing_matplotlib_says_how_to_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'cotune\[report\]'") as err:
        make_report(runs, tmp_path / "report")
    assert str(err.value) == MISSING_MATPLOTLIB


# ----------------------------------------------------------------- CLI
def test_cli_run(runs, tmp_path, capsys, matplotlib):
    parser = argparse.ArgumentParser()
    report_cmd.add_arguments(parser)
    args = parser.parse_args([str(runs[0]), str(runs[1]), "--out", str(tmp_path / "cli"), "--smooth", "3"])
    assert report_cmd.run(args) == 0
    assert (tmp_path / "cli" / "summary.md").is_file() and (tmp_path / "cli" / "kl.png").is_file()
    table = capsys.readouterr().out
    assert table.startswith("| run | method |") and "commit-run" in table and "plain-run" in table
    assert report_cmd.run.__doc__.splitlines()[0].startswith("Plot training runs")
