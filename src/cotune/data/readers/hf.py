"""The optional ``hf`` reader: Hugging Face datasets in the Hub's usual forms.

Needs the ``datasets`` package (``pip install 'cotune[hf-datasets]'``), imported only when the
reader runs. ``path`` is one of (:mod:`cotune.data.readers.hf_open`):

- a ``save_to_disk`` folder of a ``Dataset`` (``split`` is ignored) or of a ``DatasetDict``
  (``split`` picks one; a missing split is an error listing the splits);
- a ``.parquet`` or ``.arrow`` file (arrow files as ``datasets`` writes them);
- a folder of such files: those of the split, named ``<split>.*``, ``<split>-*`` (the Hub's
  ``data/train-00000-of-00002.parquet``), ``*_<split>.*``, or inside a ``<split>/`` folder;
- a Hub id, ``owner/name`` or ``owner/name/config``, read from the ``datasets`` cache (nothing is
  downloaded).

The conversation comes from the first of these layouts present (:data:`LAYOUTS`): ``messages``
(roles and contents, contents as strings or lists of parts), ``conversations`` (LLaVA turns),
``texts`` (the Cauldron's ``[{"user", "assistant"}]`` turns), ``instruction``/``output`` with
optional ``input`` (Alpaca), or a question column (``question``, ``query``, ``prompt``) with an
answer column (``answer``, ``response``, ``completion``). Media: ``image``/``images`` and
``audio``/``audios`` columns hold a path, a list of paths, or ``datasets`` Image/Audio values
(``{"bytes", "path"}``). Paths are relative to ``config.media_root`` (default: ``path`` if it is a
folder, else its folder); bytes are written once to cotune's content-addressed media cache
(:mod:`cotune.data.readers.hf_media`) and the sample names that file. Optional ``id`` column
(default ``<path stem>-<row index>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cotune.config.data import DatasetConfig
from cotune.data.readers import READERS
from cotune.data.readers.alpaca import alpaca_messages
from cotune.data.readers.common import as_object, chat_messages, check_markers, conversation, emit, media_root, record_id
from cotune.data.readers.hf_media import media_cell
from cotune.data.readers.hf_open import HUB_ID, open_dataset
from cotune.data.readers.llava import llava_messages
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample, resolve_media_path

MEDIA_COLUMNS = {"image": ("image", "images"), "audio": ("audio", "audios")}
QUESTION_COLUMNS = ("question", "query", "prompt")
ANSWER_COLUMNS = ("answer", "response", "completion")


@READERS.register("hf")
def read(config: DatasetConfig, report: DatasetReport) -> Iterator[Sample]:
    """Samples of a Hugging Face dataset (module docstring)."""
    datasets = _import_datasets()
    path = Path(config.path).expanduser()
    columns, records = open_dataset(datasets, path, config.split)
    media = {kind: next((c for c in names if c in columns), None) for kind, names in MEDIA_COLUMNS.items()}
    local = path.exists() or not HUB_ID.fullmatch(str(path))
    make = partial(
        _sample,
        stem=path.stem if local else str(path).split("/")[1],  # a Hub id: its dataset name
        to_messages=conversation_layout(columns, path),
        media_columns={kind: column for kind, column in media.items() if column},
        root=media_root(config, (path if path.is_dir() else path.parent) if local else Path.cwd()),
    )
    return emit(config, report, records, make)


def _import_datasets():
    try:
        import datasets
    except ImportError as err:
        from cotune.extras import missing

        raise missing("the hf reader (data kind: hf)", "datasets", "hf-datasets") from err
    return datasets


def _sample(
    row: Any,
    index: int,
    *,
    stem: str,
    to_messages: Callable[[dict], list[Message]],
    media_columns: dict[str, str],
    root: Path,
) -> Sample:
    row = as_object(row)
    sample_id = record_id(row, f"{stem}-{index}")
    messages = to_messages(row)
    cells = {kind: media_cell(row.get(column), column) for kind, column in media_columns.items()}
    check_markers(sample_id, messages, {kind: len(paths) + len(files) for kind, (paths, files) in cells.items()})
    media = {}
    for kind, (paths, files) in cells.items():
        if paths or files:
            media[kind] = files or [_resolve(root, p, sample_id) for p in paths]
    return Sample(sample_id, messages, media)


def _resolve(root: Path, relative: str, sample_id: str) -> Path:
    try:
        return resolve_media_path(root, relative, sample_id)
    except (OSError, ValueError) as err:  # e.g. a NUL byte or an over-long name
        raise SkipSample("malformed_record", f"{sample_id}: unusable path {relative!r:.80} ({err})") from None


# --- conversation layouts -------------------------------------------------------------------


def _texts_messages(row: dict) -> list[Message]:
    """The Cauldron's ``texts``: ``[{"user": ..., "assistant": ...}, ...]``, one exchange each."""
    turns = row.get("texts")
    if not isinstance(turns, list) or not turns:
        raise SkipSample("missing_field", "no 'texts'")
    pairs = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SkipSample("malformed_record", f"texts[{i}] must be an object with 'user' and 'assistant'")
        pairs += [("user", turn.get("user")), ("assistant", turn.get("assistant"))]
    return conversation(pairs, "texts")


def _question_answer(question: str, answer: str) -> Callable[[dict], list[Message]]:
    def messages(row: dict) -> list[Message]:
        q, a = row.get(question), row.get(answer)
        for column, value in ((question, q), (answer, a)):
            if value is None or (isinstance(value, str) and not value.strip() and column == question):
                raise SkipSample("missing_field", f"no {column!r}")
            if not isinstance(value, str):
                raise SkipSample("malformed_record", f"{column!r} must be a string, got {type(value).__name__}")
        return conversation([("user", q), ("assistant", a)], f"{question}/{answer}")

    return messages


#: Layouts in the order they are tried: (columns that must all be present, row -> messages).
LAYOUTS: tuple[tuple[tuple[str, ...], Callable[[dict], list[Message]]], ...] = (
    (("messages",), lambda row: chat_messages(row.get("messages"), "messages")),
    (("conversations",), lambda row: llava_messages(row.get("conversations"))),
    (("texts",), _texts_messages),
    (("instruction", "output"), alpaca_messages),
    *(((q, a), _question_answer(q, a)) for q in QUESTION_COLUMNS for a in ANSWER_COLUMNS),
)


def conversation_layout(columns: list[str], path: Path) -> Callable[[dict], list[Message]]:
    """The first of :data:`LAYOUTS` whose columns ``columns`` all has."""
    for needed, to_messages in LAYOUTS:
        if all(c in columns for c in needed):
            return to_messages
    known = "; ".join(" + ".join(needed) for needed, _ in LAYOUTS)
    raise ValueError(f"{path}: no conversation columns (one of: {known}); columns: {', '.join(columns)}")
