"""``textqa``: a text-only retention set from :mod:`~cotune.data.synth.facts` in Alpaca JSON.

Output, read by the ``alpaca`` reader (``split: train`` / ``test``)::

    <out>/train.json, <out>/test.json
    [{"id": "train-0000", "instruction": "Which city is the capital of France?", "input": "",
      "output": "The capital of France is Paris.", "answers": ["Paris"]}, ...]

The seed draws ``count`` facts (default: the whole pool) and splits them by fact, 70% train /
30% test, so no test fact appears in train in any wording. Train holds every verified phrasing of
its facts (target: the fact's statement); test holds one phrasing per fact, drawn by the seed.
Every test question is one the demo's base LLM answered correctly (see facts.py), so the test
file measures what fine-tuning keeps of the base model: ``text-match`` on ``answers``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cotune.config import ConfigError
from cotune.data.synth import SYNTHESIZERS
from cotune.data.synth.common import check_count, pick, prepare_out, summary, write_json
from cotune.data.synth.facts import FACTS, Fact

TEST_FRACTION = 0.3


@SYNTHESIZERS.register("textqa")
def synthesize(out_dir: Path, *, seed: int, count: int | None = None) -> dict:
    """Writes train.json and test.json from ``count`` facts of the pool; returns the summary."""
    n_facts = check_count(count, len(FACTS), 4, "textqa (facts drawn from the pool)")
    if n_facts > len(FACTS):
        raise ConfigError(f"--count: the textqa pool holds {len(FACTS)} facts, asked for {n_facts}")
    out_dir = prepare_out(out_dir)
    rng = np.random.default_rng(seed)
    facts = [FACTS[i] for i in rng.permutation(len(FACTS))[:n_facts]]
    n_test = max(1, round(n_facts * TEST_FRACTION))
    test_facts, train_facts = facts[:n_test], facts[n_test:]
    pairs = [(fact, question) for fact in train_facts for question in fact.questions()]
    train = [_record(f"train-{k:04d}", *pairs[i]) for k, i in enumerate(rng.permutation(len(pairs)))]
    test = [_record(f"test-{k:04d}", fact, pick(rng, fact.questions())) for k, fact in enumerate(test_facts)]
    write_json(out_dir / "train.json", train)
    write_json(out_dir / "test.json", test)
    splits = {"train": len(train), "test": len(test)}
    return summary("textqa", out_dir, seed, splits, facts={"train": len(train_facts), "test": len(test_facts)})


def _record(record_id: str, fact: Fact, question: str) -> dict:
    return {"id": record_id, "instruction": question, "input": "", "output": fact.statement(), "answers": list(fact.answers)}
