"""``scienceqa``: synthetic multiple-choice problems in ScienceQA's native layout.

Output, read by the ``scienceqa`` reader (docs/data-scienceqa.md)::

    <out>/problems.json                      {pid: problem}, ScienceQA's fields
    <out>/pid_splits.json                    train, val, test, minitrain, minival, minitest
    <out>/images/<split>/<pid>/image.png     224x224, for problems with an image

Thirteen templates, each fixing the subject, the context (image, text hint, both or neither) and a
grade range, so together they fill every column of the ScienceQA breakdown (NAT SOC LAN TXT IMG
NO G1-6 G7-12). Templates cycle through each split in shuffled order: any split of at least 13
problems (``len(TEMPLATES)``) has every template, hence every column. Splits: 70% train, 10% val,
20% test; each mini split is the first quarter of its split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cotune.data.synth import SYNTHESIZERS, sqa_image, sqa_text
from cotune.data.synth.common import check_count, deck, prepare_out, split_sizes, summary, write_json, write_png

DEFAULT_COUNT = 1200
SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}
MINI_FRACTION = 0.25

#: name -> builder; the docstring of each builder's module says what it asks.
TEMPLATES = {
    "count-shapes": sqa_image.count_shapes,        # NAT IMG G1-2
    "shape-color": sqa_image.shape_color,          # NAT IMG G1-2
    "compare-size": sqa_image.compare_size,        # NAT IMG+TXT G3-6
    "map-direction": sqa_image.map_direction,      # SOC IMG G3-8
    "name-shape": sqa_image.name_shape,            # LAN IMG G1-3
    "motion-speed": sqa_text.motion_speed,         # NAT NO G5-8
    "concentration": sqa_text.concentration,       # NAT TXT G7-9
    "kinetic-energy": sqa_text.kinetic_energy,     # NAT NO G8-11
    "enough-money": sqa_text.enough_money,         # SOC TXT G3-5
    "surplus-shortage": sqa_text.surplus_shortage, # SOC TXT G7-9
    "alphabetical": sqa_text.alphabetical,         # LAN NO G2-4
    "guide-words": sqa_text.guide_words,           # LAN NO G7-8
    "reading": sqa_text.reading,                   # LAN TXT G1-3
}


@SYNTHESIZERS.register("scienceqa")
def synthesize(out_dir: Path, *, seed: int, count: int | None = None) -> dict:
    """Writes ``count`` (default 1200) problems in ScienceQA's layout; returns the summary."""
    total = check_count(count, DEFAULT_COUNT, 3, "scienceqa (one problem per split)")
    out_dir = prepare_out(out_dir)
    rng = np.random.default_rng(seed)
    sizes = split_sizes(total, SPLITS)
    problems: dict[str, dict] = {}
    pid_splits: dict[str, list[str]] = {}
    templates: Counter = Counter()
    for split, n in sizes.items():
        pids = []
        for name in deck(rng, list(TEMPLATES), n):
            pid = str(len(problems) + 1)
            problem = TEMPLATES[name](rng)
            if problem.image is not None:
                write_png(out_dir / "images" / split / pid / "image.png", problem.image)
            problems[pid] = problem.record(split)
            pids.append(pid)
            templates[name] += 1
        pid_splits[split] = pids
    for split in SPLITS:
        pid_splits[f"mini{split}"] = pid_splits[split][: max(1, round(len(pid_splits[split]) * MINI_FRACTION))]
    write_json(out_dir / "problems.json", problems)
    write_json(out_dir / "pid_splits.json", pid_splits)
    images = sum(p["image"] is not None for p in problems.values())
    return summary("scienceqa", out_dir, seed, {s: len(p) for s, p in pid_splits.items()}, images=images,
                   templates=dict(sorted(templates.items())))
