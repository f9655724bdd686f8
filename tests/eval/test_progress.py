"""Evaluation a person can watch: samples/s and an ETA as log lines away from a terminal (one per
interval and one at the end), a bar on a terminal, and ``cotune eval`` / ``predict`` reporting
their progress on stderr while stdout keeps only results."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cotune.cli.main import main
from cotune.eval.progress import GenerationProgress, clock_text
from cotune.testing import corpus
from cotune.testing import tiny


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_every_interval_with_rate_and_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="cotune.eval.progress")
    with GenerationProgress(10, "eval demo", interval=5.0, stream=io.StringIO(), clock=clock) as progress:
        clock.now += 2
        progress.advance(4)  # 2 s in: before the interval, no line
        assert caplog.messages == []
        clock.now += 4
        progress.advance(2)  # 6 s, 6 samples: 1 sample/s, 4 left
        assert caplog.messages == ["eval demo: 6/10 samples (60%), 1.00 samples/s, ETA 0:00:04"]
        clock.now += 1
        progress.advance(1)  # within the next interval: no line
        clock.now += 3
        progress.advance(3)
    assert len(caplog.messages) == 2 and caplog.messages[-1] == "eval demo: 10/10 samples in 0:00:10 (1.00 samples/s)"


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog):
    terminal = Terminal()
    caplog.set_level(logging.INFO, logger="cotune.eval.progress")
    with GenerationProgress(12, "predict data", stream=terminal) as progress:
        for _ in range(3):
            progress.advance(4)
    shown = terminal.getvalue()
    assert "predict data" in shown and "12/12" in shown and "samples/s" in shown and caplog.messages == []


def test_disabled_or_empty_shows_nothing(caplog):
    caplog.set_level(logging.INFO, logger="cotune.eval.progress")
    for progress in (GenerationProgress(5, "x", enabled=False, stream=Terminal()), GenerationProgress(0, "y")):
        progress.advance(3)
        progress.close()
    assert caplog.messages == [] and clock_text(3725) == "1:02:05"


@pytest.fixture(scope="module")
def image_run(tiny_root, tmp_path_factory):
    return tiny.save_image_run(tiny_root, tmp_path_factory.mktemp("progress-run") / "model", seed=3)


def test_eval_and_predict_report_progress_on_stderr(image_run, tmp_path, capsys):
    data = corpus.write_easyvqa(tmp_path, "test", [["what color is the shape?", "red", i % 2] for i in range(6)])
    assert main(["--log-level", "info", "eval", str(image_run), "--dataset", f"easyvqa:{data}", "--out", str(tmp_path / "o"),
                 "--batch-size", "4", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "eval easyvqa:test: 6/6 samples in 0:00:" in err and "samples/s" in err
    assert main(["--log-level", "info", "predict", str(image_run), "--data", f"easyvqa:{data}", "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert "predict easyvqa:" in err and "6/6 samples" in err
    assert len([json.loads(line) for line in out.splitlines()]) == 6  # stdout: the JSONL only
