"""Benchmark helpers that decide what a result says: the demo's verdict over seeds, and which
balance_zoo runs may be read back instead of trained again."""

from __future__ import annotations

import dataclasses
import json

from benchmarks.balance_zoo import RESULT_FILE, Plan, reused, run_plan
from benchmarks.demo_seeds import verdict


def test_a_target_over_seeds_needs_its_mean_and_the_worst_seed_within_three_points():
    assert verdict([98.5, 96.5, 97.0], 90.0) == ">= 90: mean met, worst -0.8 (met)"
    assert verdict([91.3, 89.0, 85.3], 80.0) == ">= 80: mean met, worst -3.2 (NOT met)"
    assert verdict([70.0, 80.0, 90.0], 81.0) == ">= 81: mean NOT met, worst -10.0 (NOT met)"
    assert verdict([1.0, 2.0], None) == ""


def test_a_finished_run_is_read_back_only_for_the_same_plan(tmp_path):
    run = tmp_path / "runs" / "image" / "constant"
    run.mkdir(parents=True)
    records = [{"step": 5, "eval/loss": 0.5}, {"step": 10, "eval/loss": 0.4}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plan = Plan(seed=1)
    assert reused(run, plan) is None  # nothing recorded yet
    (run / RESULT_FILE).write_text(json.dumps({"plan": run_plan(plan), "accuracy": 71.4, "run_seconds": 12.0}))
    assert reused(run, plan) == {"accuracy": 71.4, "run_seconds": 12.0, "records": records}
    # Other methods alongside do not change a run; another seed, length or rule does.
    assert reused(run, dataclasses.replace(plan, methods=("constant",))) is not None
    for other in (dataclasses.replace(plan, seed=2), dataclasses.replace(plan, steps=40), dataclasses.replace(plan, rule="kl_equalise")):
        assert reused(run, other) is None
