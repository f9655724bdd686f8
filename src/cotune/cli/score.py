"""``cotune score TASK``: score saved predictions offline (no model is loaded).

``cotune score scienceqa --problems problems.json --predictions preds.json [--split test]
[--pid-splits pid_splits.json] [--json]`` prints the ScienceQA breakdown; ``cotune score
{vqa,caption,audioqa} --predictions preds.jsonl [--json]`` prints that task's metrics (``caption
--toolkit coco``: pycocoevalcap's own scores, METEOR included); ``cotune
score mme --results DIR [--json]`` prints MME's scores of results in its evaluation tool's layout.
Formats, policies and definitions: docs/eval-metrics.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from cotune.eval.metrics import METRICS, ScoreError
from cotune.eval.metrics.scienceqa import COLUMNS

log = logging.getLogger(__name__)

#: Tasks whose predictions are JSONL records ``{"id", "prediction", "references"}``, with their help.
JSONL_TASKS = {
    "vqa": "VQA accuracy (normalised answers, soft accuracy over 10 references) and exact match",
    "caption": "BLEU-1..4, ROUGE-L and CIDEr-D against reference captions (COCO caption toolkit's tokenization)",
    "audioqa": "ClothoAQA accuracy: yes/no, single-word and overall",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", title="tasks", required=True)
    sqa_help = "ScienceQA accuracy breakdown (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg) of {pid: answer index} predictions"
    sqa = tasks.add_parser("scienceqa", help=sqa_help, description=sqa_help)
    sqa.add_argument("--problems", required=True, metavar="FILE", help="ScienceQA problems.json")
    sqa.add_argument("--predictions", required=True, metavar="FILE", help="JSON {pid: answer index} (-1: none extracted)")
    sqa.add_argument("--split", default="test", help="key of pid_splits.json to score, or 'all' for every problem (default: test)")
    sqa.add_argument("--pid-splits", metavar="FILE", help="pid_splits.json (default: the one beside --problems)")
    sqa.add_argument("--json", action="store_true", help="print one JSON object of the nine columns instead of the table")
    mme_help = "MME: acc, acc+ and score per subtask, perception and cognition totals (as MME's eval tool computes them)"
    mme = tasks.add_parser("mme", help=mme_help, description=mme_help)
    mme.add_argument("--results", required=True, metavar="DIR",
                     help="directory of <subtask>.txt files, lines image<TAB>question<TAB>answer<TAB>prediction, two per image")
    mme.add_argument("--json", action="store_true",
                     help="print one JSON object: perception, cognition, total, subtasks {name: {acc, acc_plus, score}}")
    for task, help_ in JSONL_TASKS.items():
        sub = tasks.add_parser(task, help=help_, description=f"{help_}; predictions and references from a JSONL file.")
        sub.add_argument(
            "--predictions", required=True, metavar="FILE", help='JSONL, one {"id", "prediction", "references": [...]} per line'
        )
        sub.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
        if task == "caption":
            sub.add_argument("--toolkit", choices=("python", "coco"), default="python",
                             help="python: cotune's PTB tokenization and scorers (default); coco: pycocoevalcap itself "
                                  "(extra 'coco', Java; adds METEOR, and SPICE where its models are installed)")


def run(args: argparse.Namespace) -> int:
    """Score saved predictions offline: ScienceQA breakdown, VQA, captioning or audio-QA metrics."""
    if args.task == "scienceqa":
        result = score_scienceqa(args.problems, args.predictions, args.split, args.pid_splits)
        print(json.dumps({column: result[column] for column in COLUMNS}) if args.json else format_scienceqa(result))
        return 0
    if args.task == "mme":
        from cotune.eval.mme_results import read_results

        result = METRICS.get("mme")(read_results(args.results))
        print(json.dumps(result) if args.json else format_mme(result))
        return 0
    _ids, predictions, references = read_jsonl(args.predictions)
    metric = "caption-coco" if getattr(args, "toolkit", "python") == "coco" else args.task
    try:
        result = METRICS.get(metric)(predictions, references)
    except ScoreError as err:
        raise ScoreError(f"{args.predictions}: {err}") from None
    print(json.dumps(result) if args.json else format_metrics(result))
    return 0


def score_scienceqa(
    problems_path: str | Path, predictions_path: str | Path, split: str = "test", pid_splits_path: str | Path | None = None
) -> dict:
    """The :func:`~cotune.eval.metrics.scienceqa.scienceqa` result for files on disk.

    ``predictions_path`` holds ``{pid: index}`` or ``{pid: {"answer": index, "rule": name}}``.
    ``split`` ``"all"`` scores every problem; any other split is read from ``pid_splits_path``
    (default: ``pid_splits.json`` beside ``problems_path``).
    """
    problems_path = Path(problems_path)
    problems = _load_json_object(problems_path)
    predictions, rules = _read_scienceqa_predictions(Path(predictions_path))
    pids = None if split == "all" else _split_pids(problems_path, split, pid_splits_path)
    try:
        return METRICS.get("scienceqa")(problems, predictions, pids, rules)
    except ScoreError as err:
        raise ScoreError(f"{predictions_path} (split {split!r} of {problems_path}): {err}") from None


def _split_pids(problems_path: Path, split: str, pid_splits_path: str | Path | None) -> list:
    path = Path(pid_splits_path) if pid_splits_path else problems_path.parent / "pid_splits.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (pass --pid-splits FILE, or --split all to score every problem)")
    splits = _load_json_object(path)
    if not isinstance(splits.get(split), list):
        available = sorted(k for k, v in splits.items() if isinstance(v, list))
        raise ScoreError(f"{path}: no split {split!r}; available: {', '.join(available)} (or 'all')")
    return splits[split]


def _read_scienceqa_predictions(path: Path) -> tuple[dict, dict | None]:
    """``{pid: index}`` and, when the file gives them, ``{pid: rule}``."""
    raw = _load_json_object(path)
    predictions, rules = {}, {}
    for pid, value in raw.items():
        if isinstance(value, dict):
            if "answer" not in value:
                raise ScoreError(f"{path}: prediction for {pid!r} is an object without 'answer'")
            predictions[pid] = value["answer"]
            if "rule" in value:
                rules[pid] = value["rule"]
        else:
            predictions[pid] = value
    return predictions, (rules or None)


def read_jsonl(path: str | Path) -> tuple[list, list[str], list[list[str]]]:
    """Ids, predictions and reference lists of a JSONL file of ``{"id", "prediction", "references"}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    ids, predictions, references, seen = [], [], [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreError(f"{path}:{number}: not valid JSON ({err})") from None
        if not isinstance(record, dict) or not {"id", "prediction", "references"} <= record.keys():
            raise ScoreError(f'{path}:{number}: expected an object with "id", "prediction" and "references"')
        prediction, refs = record["prediction"], record["references"]
        if not isinstance(prediction, str):
            raise ScoreError(f"{path}:{number}: prediction must be a string, got {prediction!r}")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ScoreError(f"{path}:{number}: references must be a non-empty list of strings, got {refs!r}")
        if record["id"] in seen:
            raise ScoreError(f"{path}:{number}: id {record['id']!r} is repeated")
        seen.add(record["id"])
        ids.append(record["id"])
        predictions.append(prediction)
        references.append(refs)
    if not ids:
        raise ScoreError(f"{path}: no records")
    return ids, predictions, references


def _load_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ScoreError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ScoreError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def format_scienceqa(result: dict) -> str:
    """The breakdown as a text table (accuracy and count rows) and a summary of what counted as wrong."""
    cells = [("", "accuracy", "count")]
    for column in COLUMNS:
        value = result[column]
        cells.append((column, "-" if value is None else f"{value:.2f}", str(result["counts"][column])))
    widths = [max(len(cell[i]) for cell in cells) for i in range(3)]
    width = max(max(len(c) for c in cell) for cell in cells[1:])
    lines = [
        "  ".join([cells[0][row].ljust(widths[1])] + [cell[row].rjust(width) for cell in cells[1:]])
        for row in range(3)
    ]
    lines.append(
        f"{result['total']} problems; wrong without a prediction: {result['missing']}, "
        f"unparsed (-1): {result['unparsed']}, out of range: {result['out_of_range']}"
    )
    if "rules" in result:
        lines.append("extraction rules: " + ", ".join(f"{rule} {n}" for rule, n in result["rules"].items()))
    return "\n".join(lines)


def format_metrics(result: dict) -> str:
    """One ``name  value`` line per metric."""
    width = max(len(name) for name in result)
    lines = []
    for name, value in result.items():
        shown = str(round(value, 4)) if isinstance(value, float) else ("-" if value is None else str(value))
        lines.append(f"{name.ljust(width)}  {shown}")
    return "\n".join(lines)


def format_mme(result: dict) -> str:
    """MME's table: acc, acc+ and score per subtask, then the perception, cognition and total scores."""
    lines = [f"{'subtask':<24}{'acc':>8}{'acc+':>8}{'score':>9}{'images':>8}{'other':>7}"]
    for name, row in result["subtasks"].items():
        lines.append(f"{name:<24}{row['acc']:>8.2f}{row['acc_plus']:>8.2f}{row['score']:>9.2f}{row['images']:>8}{row['other']:>7}")
    totals = ", ".join(f"{key} {'-' if result[key] is None else format(result[key], '.2f')}" for key in ("perception", "cognition", "total"))
    lines.append(f"MME {totals}")
    if result["missing"]:
        lines.append(f"missing subtasks (not in the totals): {', '.join(result['missing'])}")
    if result["incomplete_images"]:
        lines.append(f"images without both questions scored (wrong for acc+): {result['incomplete_images']}")
    return "\n".join(lines)
