"""Captioning metrics as coco-caption computes them: BLEU-1..4, ROUGE-L and CIDEr-D.

Written here from the published definitions and checked against pycocoevalcap's scorers
(tests/eval/test_metrics.py, tests/eval/test_caption_coco.py); pycocoevalcap itself is the optional extra
``coco`` (a 100 MB wheel whose tokenizer and METEOR need Java).

* Tokens: coco-caption's (Stanford's PTBTokenizer, lower-cased, its punctuation tokens dropped),
  reproduced in Python by :func:`cotune.eval.metrics.ptb.tokenize`; every result names it under
  ``tokenizer`` (``ptb-python``). The toolkit itself (its Java tokenizer, METEOR, SPICE) is
  :mod:`cotune.eval.metrics.coco`.
* BLEU-n (Papineni et al. 2002): corpus level; clipped n-gram counts and candidate n-gram counts
  are summed over the whole set, precisions of orders 1..n combined by their geometric mean, times
  the brevity penalty ``exp(1 - r / c)`` when ``c < r`` (``c`` total candidate length, ``r`` the
  sum of each item's closest reference length, the shorter on ties). No smoothing, but
  coco-caption's epsilons: each precision is ``(matches + 1e-15) / (n-grams + 1e-9)`` and the length
  ratio ``(c + 1e-15) / (r + 1e-9)``, so an order without a match scores a small positive number
  exactly as the toolkit does (3e-5 for BLEU-4 of a short set is printed by papers as 0.003).
* ROUGE-L (Lin 2004, coco-caption's variant): per item, the LCS precision and recall against each
  reference, their maxima over the references combined as
  ``(1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``; averaged over items.
* CIDEr-D (Vedantam et al. 2015, coco-caption's ``Cider``): n-grams 1..4 weighted by TF-IDF, the
  document frequency of an n-gram being the number of items whose references contain it (counted
  over the evaluated set); per order, the candidate's clipped vector ``min(g_c, g_r)`` dotted with
  each reference's vector over the product of the unclipped norms, times a Gaussian length penalty
  ``exp(-(l_c - l_r)^2 / (2 * 6^2))``; averaged over references, orders and items, times 10.
  Lengths are word counts (coco-caption counts bigrams, which differs only for empty captions).

Scores are returned as coco-caption returns them (BLEU and ROUGE-L in [0, 1], CIDEr-D in [0, 10]),
unrounded; papers usually print them times 100.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from cotune.eval.metrics import METRICS, ScoreError
from cotune.eval.metrics.ptb import tokenize
from cotune.eval.metrics.vqa import check_items

#: The ``tokenizer`` every caption score names: coco-caption's PTB tokenization, in Python.
TOKENIZER = "ptb-python"

Tokens = Sequence[str]


def ngrams(tokens: Tokens, n: int) -> Counter:
    """Counts of every 1..n-gram of ``tokens`` (tuples)."""
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def corpus_bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..BLEU-n of tokenised ``candidates`` against their ``references`` (module docstring)."""
    correct, guessed = [0] * n, [0] * n
    cand_len = ref_len = 0
    for candidate, refs in zip(candidates, references):
        counts = ngrams(candidate, n)
        max_ref = Counter()
        for ref in refs:
            max_ref |= ngrams(ref, n)  # |: element-wise maximum
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guessed[k] += max(len(candidate) - k, 0)
        cand_len += len(candidate)
        ref_len += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
    # coco-caption's epsilons, kept so a zero count gives its small value rather than 0 or a division by zero.
    tiny, small = 1e-15, 1e-9
    ratio = (cand_len + tiny) / (ref_len + small)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guessed[k] + small)
        scores.append(penalty * product ** (1 / (k + 1)))
    return scores


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            previous_diagonal, row[j] = row[j], previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: Tokens, references: Sequence[Tokens], beta: float = 1.2) -> float:
    """coco-caption's sentence ROUGE-L F-measure (max precision and max recall over references)."""
    if not candidate:
        return 0.0
    lcs = [lcs_length(candidate, ref) for ref in references]
    precision = max(common / len(candidate) for common in lcs)
    recall = max(common / len(ref) if ref else 0.0 for common, ref in zip(lcs, references))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def cider_d(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-item CIDEr-D scores (their mean is the corpus CIDEr-D); document frequencies from ``references``."""
    doc_freq = Counter()
    for refs in references:
        doc_freq.update(set().union(*(ngrams(ref, n) for ref in refs)))
    log_items = math.log(len(references))

    def vector(tokens: Tokens) -> tuple[list[dict], list[float]]:
        vec = [{} for _ in range(n)]
        for gram, tf in ngrams(tokens, n).items():
            vec[len(gram) - 1][gram] = tf * (log_items - math.log(max(1.0, doc_freq[gram])))
        return vec, [math.sqrt(sum(w * w for w in v.values())) for v in vec]

    scores = []
    for candidate, refs in zip(candidates, references):
        cand_vec, cand_norm = vector(candidate)
        total = 0.0
        for ref in refs:
            ref_vec, ref_norm = vector(ref)
            penalty = math.exp(-((len(candidate) - len(ref)) ** 2) / (2 * sigma**2))
            for k in range(n):
                if cand_norm[k] and ref_norm[k]:
                    dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in cand_vec[k].items())
                    total += penalty * dot / (cand_norm[k] * ref_norm[k])
        scores.append(10.0 * total / (n * len(refs)))
    return scores


@METRICS.register("caption")
def caption(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU-1..4, ROUGE-L and CIDEr-D of caption strings against their reference strings.

    Returns ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "count", "tokenizer"}``.
    """
    check_items(predictions, references)
    candidates = [tokenize(p) for p in predictions]
    refs = [[tokenize(r) for r in item] for item in references]
    if not any(candidates) or not any(any(item) for item in refs):
        raise ScoreError("every caption or every reference is empty after tokenisation")
    result = {f"BLEU-{k}": score for k, score in enumerate(corpus_bleu(candidates, refs), start=1)}
    result["ROUGE-L"] = sum(rouge_l(c, r) for c, r in zip(candidates, refs)) / len(candidates)
    result["CIDEr-D"] = sum(cider_d(candidates, refs)) / len(candidates)
    result["count"] = len(candidates)
    result["tokenizer"] = TOKENIZER
    return result
