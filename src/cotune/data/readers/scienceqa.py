"""ScienceQA in its native layout, as LaVIN trains and evaluates on it.

``<path>/problems.json`` (pid -> problem), ``<path>/pid_splits.json`` (split -> pids), optional
``<path>/captions.json`` (``{"captions": {pid: text}}``, read only with ``use_caption``), and images
at ``<media_root>/<split>/<pid>/<image>`` with ``media_root`` defaulting to ``<path>/images``. The
image directory's ``<split>`` is the problem's own ``split`` field when it has one (so ``minival``
finds its images under ``val``), else ``config.split``.

Each problem becomes one user turn (LaVIN's prompt, no media marker: the template puts the image
first, as LaVIN's ``Image: `` header) and one assistant turn (the target); see
:mod:`cotune.data.scienceqa_prompt` for the formats and docs/data-scienceqa.md for the metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.common import answer_filter_keeps
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample, check_text, resolve_media_path, shown
from cotune.data.scienceqa_prompt import build_prompt, check_format

log = logging.getLogger(__name__)

#: Most choices a problem may have (letters A-Z; ScienceQA has 2-5).
MAX_CHOICES = 26


@READERS.register("scienceqa")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of ``config.split``; files, split and format are checked before the first sample."""
    root = Path(config.path).expanduser()
    check_format(config.prompt_format)
    problems = _load_json(root / "problems.json")
    splits = _load_json(root / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise ValueError(f"{root}: problems.json and pid_splits.json must both be JSON objects")
    if config.split not in splits or not isinstance(splits[config.split], list):
        available = sorted(k for k, v in splits.items() if isinstance(v, list))
        raise ValueError(f"split: {config.split!r} is not in {root / 'pid_splits.json'}; available: {', '.join(available)}")
    captions: dict = {}
    if config.use_caption:
        captions = _load_json(root / "captions.json")
        captions = captions.get("captions") if isinstance(captions, dict) else None
        if not isinstance(captions, dict):
            raise ValueError(f"{root / 'captions.json'}: expected {{\"captions\": {{pid: text}}}}")
    pids = splits[config.split][: config.limit]
    media_root = Path(config.media_root).expanduser() if config.media_root else root / "images"
    if config.media_root and not media_root.is_dir():
        raise FileNotFoundError(f"media_root: {media_root} is not a directory")
    log.info("scienceqa %s: %d problems in split %r, format %s", root, len(pids), config.split, config.prompt_format)
    return _samples(config, report, root / "problems.json", pids, problems, captions, media_root)


def _samples(
    config: DatasetConfig, report: DatasetReport, where: Path, pids: list, problems: dict, captions: dict, media_root: Path
) -> Iterator[Sample]:
    seen: set[str] = set()
    for pid in pids:
        try:
            if not isinstance(pid, str) or pid in seen:
                raise SkipSample("malformed_record", f"pid_splits.json[{config.split!r}]: bad or repeated pid {pid!r}")
            seen.add(pid)
            try:
                sample = _sample(config, pid, problems.get(pid), captions.get(pid, ""), media_root, where)
                check_text(sample)
            except SkipSample:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. a NUL in a path: one problem, not the dataset
                raise SkipSample("malformed_record", f"{where}: {shown(str(pid))}: unusable problem "
                                                     f"({type(err).__name__}: {shown(str(err)):.200})") from None
        except SkipSample as skip:
            report.total += 1
            report.skip(skip.reason, skip.detail)
            continue
        if answer_filter_keeps(sample, config.answers):
            report.total += 1
            yield sample
        else:
            report.filtered += 1


def _sample(config: DatasetConfig, pid: str, problem: Any, caption: Any, media_root: Path, where: Path) -> Sample:
    """One checked problem as a Sample; SkipSample when it cannot be used."""
    if problem is None:
        raise SkipSample("malformed_record", f"{where}: pid {pid} is in split {config.split!r} but not in problems.json")
    if not isinstance(problem, dict):
        raise SkipSample("malformed_record", f"{where}: {pid}: record is a {type(problem).__name__}, not an object")
    _check_fields(problem, f"{where}: {pid}")
    if not isinstance(caption, str):
        raise SkipSample("malformed_record", f"captions.json: {pid}: caption is not a string")
    media = {}
    image = problem.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise SkipSample("malformed_record", f"{where}: {pid}: image must be a file name or null, got {image!r}")
        split_dir = problem.get("split") if isinstance(problem.get("split"), str) else config.split
        media["image"] = [resolve_media_path(media_root, f"{split_dir}/{pid}/{image}", pid)]
    prompt, target = build_prompt(problem, config.prompt_format, config.use_caption, caption)
    metadata = {
        "subject": problem.get("subject"),
        "grade": problem.get("grade"),
        "has_context": bool(problem.get("hint")),
        "has_image": image is not None,
        "answer": problem["answer"],
        "choices": list(problem["choices"]),
        "split": config.split,
        "prompt_format": config.prompt_format,
    }
    return Sample(id=pid, messages=[Message("user", prompt), Message("assistant", target)], media=media, metadata=metadata)


def _check_fields(problem: dict, where: str) -> None:
    """SkipSample unless question, choices and answer are present and well typed."""
    for name in ("question", "choices", "answer"):
        if name not in problem or problem[name] in ("", [], None):
            raise SkipSample("missing_field", f"{where}: {name!r} is absent or empty")
    question, choices, answer = problem["question"], problem["choices"], problem["answer"]
    if not isinstance(question, str):
        raise SkipSample("malformed_record", f"{where}: question is a {type(question).__name__}, not a string")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise SkipSample("malformed_record", f"{where}: choices must be a list of strings, got {choices!r}")
    if not 2 <= len(choices) <= MAX_CHOICES:
        raise SkipSample("malformed_record", f"{where}: {len(choices)} choices, need 2 to {MAX_CHOICES}")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise SkipSample("malformed_record", f"{where}: answer must be a choice index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise SkipSample("malformed_record", f"{where}: answer {answer} is out of range for {len(choices)} choices")
    for name in ("hint", "lecture", "solution"):
        if problem.get(name) is not None and not isinstance(problem[name], str):
            raise SkipSample("malformed_record", f"{where}: {name} is a {type(problem[name]).__name__}, not a string")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"ScienceQA: {path} does not exist (expected the native layout, see docs/data-scienceqa.md)")
    try:
        return json.loads(path.read_bytes())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except ValueError as err:  # JSONDecodeError
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not readable JSON (nested too deeply)") from None
