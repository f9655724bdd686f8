"""``cotune predict RUN_DIR``: batch inference to JSONL, no scoring.

``--data NAME[:PATH] [--split S] [--prompt TEXT] [--limit N]`` answers every sample of a dataset
(NAME: an evaluation task of ``cotune eval --dataset`` or any reader kind; without ``:PATH``, the
zoo's copy of NAME, as for ``eval``; ``--prompt`` replaces the question of each sample); ``--image PATH`` and/or ``--audio
PATH`` with ``--prompt TEXT`` answers one item. One ``{"id", "prompt", "prediction"}`` object per
line (plus ``reference``, the dataset's own answer, for ``--data``) goes to ``--out FILE`` (written
atomically) or to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from cotune.cli.eval import add_generation_arguments, load_for_inference

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from cotune train (or a saved model directory)")
    parser.add_argument("--data", metavar="NAME[:PATH]",
                        help="a dataset, as eval --dataset takes it: a task or reader kind (scienceqa, easyvqa, llava, jsonl, "
                             "...) and its path (without :PATH, the zoo's copy of NAME)")
    parser.add_argument("--split", default="test", help="split of --data (default: test)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N samples of --data")
    parser.add_argument("--image", metavar="PATH", help="one image to ask --prompt about (instead of --data)")
    parser.add_argument("--audio", metavar="PATH", help="one audio clip to ask --prompt about (instead of --data)")
    parser.add_argument("--prompt", metavar="TEXT", help="the question: for one item, or replacing each sample's question")
    add_generation_arguments(parser)
    parser.add_argument("--out", metavar="FILE", help="JSONL output file (default: stdout)")


def _samples(args: argparse.Namespace, report) -> list:
    from cotune.config import ConfigError, DatasetConfig
    from cotune.data.schema import Message, Sample
    from cotune.eval.runner import read_dataset
    from cotune.eval.tasks import parse_data

    if args.data and (args.image or args.audio):
        raise ConfigError("--data and --image/--audio exclude each other: predict a dataset or one item")
    if not args.data:
        if not args.prompt:
            raise ConfigError("cotune predict needs --data NAME[:PATH], or --prompt TEXT (with --image/--audio for media)")
        media = {kind: [Path(p)] for kind, p in (("image", args.image), ("audio", args.audio)) if p}
        return [Sample("input", [Message("user", args.prompt)], media)]
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: must be >= 1, got {args.limit}")
    kind, path = parse_data(args.data)  # eval --dataset's rule: NAME[:PATH], without PATH the zoo's copy
    config = DatasetConfig(kind=kind, path=str(path), split=args.split, name=f"{kind}:{args.split}", limit=args.limit)
    samples = read_dataset(config, report)
    return samples if args.prompt is None else [_with_question(s, args.prompt) for s in samples]


def _with_question(sample, prompt: str):
    """``sample`` with its last user turn replaced by ``prompt`` (its media markers kept)."""
    from cotune.data.schema import MEDIA_MARKERS, Message

    messages = list(sample.messages)
    last = max(i for i, m in enumerate(messages) if m.role == "user")
    markers = "".join(f"{marker}\n" * messages[last].content.count(marker) for marker in MEDIA_MARKERS.values())
    messages[last] = Message("user", markers + prompt)
    return replace(sample, messages=messages)


def run(args: argparse.Namespace) -> int:
    """Generate answers for a dataset or for one image/audio + prompt, as JSONL."""
    from cotune.config import ConfigError
    from cotune.data.dataset import DataError
    from cotune.data.report import DatasetReport
    from cotune.eval.generation import predict_samples
    from cotune.eval.progress import GenerationProgress
    from cotune.fileio import atomic_write_text
    from cotune.model.data_spec import data_spec_from_model
    from cotune.rundir import RunDir

    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    config = RunDir(args.run_dir).config()  # the run, the data and the flags are checked before the weights load
    report = DatasetReport(args.data or "input")
    samples = _samples(args, report)
    model, config = load_for_inference(args, config)
    spec = data_spec_from_model(model, config.data)
    lines = []
    # Progress goes to stderr (bar) or the log; stdout carries only the JSONL.
    progress = GenerationProgress(len(samples), f"predict {args.data or 'input'}", enabled=len(samples) > 1)
    for prediction in predict_samples(model, spec, samples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                      report=report, num_workers=args.num_workers, progress=progress.advance):
        sample = prediction.sample
        record = {"id": sample.id, "prompt": next(m.content for m in reversed(sample.messages) if m.role == "user"),
                  "prediction": prediction.text}
        if sample.messages[-1].role == "assistant":
            record["reference"] = sample.messages[-1].content
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if args.out is None:
            print(lines[-1], end="", flush=True)
    progress.close()
    if not args.data and not lines:  # the one item could not be used: say why
        reason, details = next(iter(report.examples.items()))
        raise DataError(f"{reason}: {details[0]}")
    if args.out is not None:
        atomic_write_text(args.out, "".join(lines))
    skipped = sum(report.skipped.values())
    log.info("%d predictions%s; skipped %d %s", len(lines), f" -> {args.out}" if args.out else "", skipped, dict(report.skipped))
    return 0
