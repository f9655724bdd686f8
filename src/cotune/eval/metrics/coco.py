"""``caption-coco``: caption scores from the COCO caption toolkit itself (pycocoevalcap 1.2, the
optional extra ``coco``; its tokenizer, METEOR and SPICE run on Java).

Captions and references go through the toolkit's own Stanford PTBTokenizer (Java), then its scorers:
``Bleu(4)``, ``Meteor`` (Java), ``Rouge``, ``Cider`` (CIDEr-D) and, only where the Stanford CoreNLP
models SPICE needs are already installed beside pycocoevalcap (``spice/lib/stanford-corenlp-3.6.0*.jar``),
``Spice`` (Java). cotune never downloads them: without them ``SPICE`` is None and ``spice_missing``
says what to install. Results name the tokenizer (``ptb-java``) as :func:`caption
<cotune.eval.metrics.caption.caption>` names its Python one; on the same captions the BLEU,
ROUGE-L and CIDEr-D of both are equal (tests/eval/test_caption_coco.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from cotune.eval.metrics import METRICS, ScoreError
from cotune.eval.metrics.vqa import check_items
from cotune.extras import MissingExtra, missing

TOKENIZER = "ptb-java"


def require_toolkit() -> None:
    """MissingExtra (naming the extra ``coco``) without pycocoevalcap; ScoreError without ``java``."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as err:
        raise missing("the COCO caption toolkit (--toolkit coco)", "pycocoevalcap", "coco") from err
    if shutil.which("java") is None:
        raise ScoreError("the COCO caption toolkit runs its tokenizer and METEOR on Java, and no 'java' is on PATH")


def toolkit_problem() -> str | None:
    """Why the toolkit cannot run here, or None."""
    try:
        require_toolkit()
    except (MissingExtra, ScoreError) as err:
        return str(err)
    return None


def spice_models() -> Path | None:
    """The CoreNLP jar SPICE needs when it is installed beside pycocoevalcap, else None."""
    import pycocoevalcap.spice as spice

    jar = Path(spice.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar"
    return jar if jar.is_file() and jar.with_name("stanford-corenlp-3.6.0-models.jar").is_file() else None


def coco_tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    """{item: [caption, ...]} -> the same captions as the toolkit's space-joined tokens."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": text} for text in value] for key, value in texts.items()})


@METRICS.register("caption-coco")
def coco_caption(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE where installed) by pycocoevalcap.

    Returns the keys of :func:`~cotune.eval.metrics.caption.caption` plus ``METEOR`` and ``SPICE``
    (None when its models are not installed, with ``spice_missing``), on the toolkit's scale
    (0-1, CIDEr-D 0-10). MissingExtra without pycocoevalcap, ScoreError without Java.
    """
    check_items(predictions, references)
    require_toolkit()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    result_tokens = coco_tokenize({i: [p] for i, p in enumerate(predictions)})
    reference_tokens = coco_tokenize({i: list(refs) for i, refs in enumerate(references)})
    if not any(c[0] for c in result_tokens.values()) or not any(any(r) for r in reference_tokens.values()):
        raise ScoreError("every caption or every reference is empty after tokenisation")
    bleu, _ = Bleu(4).compute_score(reference_tokens, result_tokens, verbose=0)
    result = {f"BLEU-{k}": float(score) for k, score in enumerate(bleu, start=1)}
    result["METEOR"] = float(Meteor().compute_score(reference_tokens, result_tokens)[0])
    result["ROUGE-L"] = float(Rouge().compute_score(reference_tokens, result_tokens)[0])
    result["CIDEr-D"] = float(Cider().compute_score(reference_tokens, result_tokens)[0])
    if spice_models() is not None:
        from pycocoevalcap.spice.spice import Spice

        result["SPICE"] = float(Spice().compute_score(reference_tokens, result_tokens)[0])
    else:
        result["SPICE"] = None
        result["spice_missing"] = "SPICE needs Stanford CoreNLP 3.6.0 and its models jar in pycocoevalcap/spice/lib (not downloaded by cotune)"
    result["count"] = len(predictions)
    result["tokenizer"] = TOKENIZER
    return result
