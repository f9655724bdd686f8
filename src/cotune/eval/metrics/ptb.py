"""The COCO caption toolkit's tokenization, in Python: Stanford's PTBTokenizer (CoreNLP 3.4.1, run
by coco-caption as ``PTBTokenizer -preserveLines -lowerCase``) followed by coco-caption's removal of
punctuation tokens.

Written from that tokenizer's observed output (tests/eval/test_caption_coco.py compares both on a fixed
set of captions whenever Java and pycocoevalcap are installed, and keeps the Java tokens as golden
values otherwise). What it reproduces:

* lower-case; clitics split off: ``doesn't`` -> ``does n't``, ``can't`` -> ``ca n't``, ``dog's`` ->
  ``dog 's``, ``they're`` -> ``they 're``; ``cannot``, ``gonna``, ``gotta``, ``wanna``, ``lemme``,
  ``gimme`` split in two (``can not``, ``gon na``, ...);
* kept whole: hyphenated and slashed words (``t-shirt``, ``road/path``), numbers with ``. , : /``
  (``3.5``, ``1,000``, ``10:30``, ``24/7``), acronyms (``u.s.``, ``e.g.``, ``p.m.``), the common
  abbreviations with their full stop (``mr.``, ``st.``, ``etc.``, ``jan.``, ``no.`` before a number),
  ``@name`` and ``#tag``, ``'60s``, emoticons (``:)`` -> ``:-rrb-``), and words run together over
  ``. ! ?`` without a space (``horse.a``);
* split off as tokens: every other symbol (``$``, ``%``, ``&``, ``+``, ``#`` before a digit);
  brackets become ``-lrb-``, ``-rrb-``, ``-lsb-``, ``-rsb-``, ``-lcb-``, ``-rcb-`` and are *kept*:
  coco-caption's punctuation list spells them in upper case, which the lower-cased output never
  matches;
* dropped (coco-caption's punctuation list): quotes, ``. , ; : ! ? - -- ...``, dashes.

Known differences, all rare in captions: Stanford's rules that look at case before lower-casing
(``AT&T`` stays whole there, ``at&t`` splits) and its full abbreviation list (the few dozen
common ones checked against it are here).
"""

from __future__ import annotations

import re

#: Abbreviations Stanford's tokenizer keeps with their full stop (checked against it).
ABBREVIATIONS = (
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gov", "ave", "blvd", "rd", "dept", "univ", "capt", "col", "gen",
    "sgt", "lt", "rev", "mt", "vs", "etc", "inc", "co", "corp", "ltd", "ft", "est", "bldg", "sen", "rep", "pres", "al",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
)
#: coco-caption's PUNCTUATIONS as they appear in lower-cased output, plus the raw quote and dashes
#: the tokenizer would have turned into `` '' and --.
DROPPED = frozenset(("''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"', "\u2013", "\u2014", "\u2026"))
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

_SPLIT_WORDS = {
    "cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me", "gimme": "gim me",
    "'tis": "'t is", "'twas": "'t was",
}
_SPLIT = re.compile(r"(?<![^\W_])(" + "|".join(_SPLIT_WORDS) + r")\b", re.IGNORECASE)
_Y = re.compile(r"(?<![^\W_])(y')(?=[^\W_])", re.IGNORECASE)  # y'all, y'know -> y' all, y' know
_NT = re.compile(r"(?<=[^\W_])n't\b", re.IGNORECASE)
_CLITIC = re.compile(r"(?<=[^\W_])'(s|re|ve|ll|d|m)(?=\W|$)|(?<=[^\W_])'(n')", re.IGNORECASE)
_L = r"[^\W_]"  # a letter or digit
_TOKEN = re.compile(
    rf"""(?-i:[A-Z]+&[A-Z]+)                               # AT&T (the tokenizer looks at case here)
    | \.\.\.+ | --+ | [!?]{{2,}}
    | n't\b | '(?:s|re|ve|ll|d|m|t)\b | 'n'?(?!{_L})       # clitics already set apart
    | y'(?=\s)
    | '\d+s(?!{_L})                                        # '60s
    | [:;]-?[()dp](?!{_L})                                 # emoticons :) ;( :D :-)
    | <{_L}+>
    | (?:[^\W\d_]\.){{2,}}(?!{_L})                        # acronyms: u.s. e.g. p.m.
    | (?:{"|".join(ABBREVIATIONS)})\.(?!{_L})             # abbreviations keep their full stop
    | no\.(?=\s*\d)                                       # no. 5
    | [@\#][^\W\d_]{_L}*                                  # @name, #tag
    | \d+(?:[.,:/]\d+)+(?:-{_L}+)*                        # 3.5  1,000  10:30  24/7  3.5-meter
    | {_L}+(?:['\-/.!?]{_L}+)*                            # words: t-shirt, road/path, o'clock, horse.a
    | \S""",
    re.VERBOSE | re.IGNORECASE,
)


def ptb_tokens(text: str) -> list[str]:
    """Every token Stanford's PTBTokenizer gives ``text`` (lower-cased), punctuation included."""
    text = _SPLIT.sub(lambda m: _SPLIT_WORDS[m.group(1).lower()], text.replace("\n", " "))
    text = _Y.sub(r"\1 ", text)
    text = _CLITIC.sub(lambda m: f" '{m.group(1) or m.group(2)} ", _NT.sub(" n't", text))
    return [_brackets(token) for token in (t.lower() for t in _TOKEN.findall(text))]


def _brackets(token: str) -> str:
    """A bracket, alone or closing an emoticon (``:)`` -> ``:-rrb-``), as the tokenizer escapes it."""
    if token in BRACKETS:
        return BRACKETS[token]
    return token[:-1] + BRACKETS[token[-1]] if len(token) > 1 and token[0] in ":;" and token[-1] in BRACKETS else token


def tokenize(text: str) -> list[str]:
    """coco-caption's tokens of ``text``: :func:`ptb_tokens` without its punctuation tokens."""
    return [token for token in ptb_tokens(text) if token not in DROPPED]
