"""The exported chat template: transformers' message format rendered as cotune renders a run's prompts.

A processor's ``apply_chat_template`` receives messages whose content is a list of parts,
``[{"type": "image"}, {"type": "text", "text": Q}]``, and ``processor(images=..., text=...)`` then
tokenizes the rendering with the tokenizer's own special tokens (a BOS, for many tokenizers). The
template written here makes that text tokenize to exactly the ids
:func:`cotune.data.templates.encode_prompt` gives the run (its template, system prompt and marker
placement), with the encoder's placeholder standing for each image:

* ``chat``: the parts become one string per message, joined with newlines, each image part the
  placeholder (cotune's jsonl rule, and where cotune puts markers that a prompt leaves out: in
  front of the first user turn); the run's system prompt is added when no system turn is given;
  then the LLM's own template renders them. A BOS the template writes is dropped when the tokenizer
  adds one itself, so the ids hold one BOS, as cotune's do.
* ``lavin``: LaVIN's plain layout (``Image: `` + placeholder per image, or ``Image: N/A``, the
  system prompt and a blank line, the questions, each answer followed by EOS).

:func:`cotune.export.llava` checks the result on probe conversations before anything is written.
"""

from __future__ import annotations

#: Message contents as strings: image parts become the placeholder, text parts their text.
_FLATTEN = """\
{%- set _flat = namespace(list=[]) -%}
{%- for _m in messages -%}
{%- if _m['content'] is string -%}{%- set _text = _m['content'] -%}
{%- else -%}{%- set _parts = namespace(list=[]) -%}
{%- for _p in _m['content'] -%}
{%- if _p['type'] == 'image' -%}{%- set _parts.list = _parts.list + [__PLACEHOLDER__] -%}
{%- elif _p['type'] == 'text' -%}{%- set _parts.list = _parts.list + [_p['text']] -%}{%- endif -%}
{%- endfor -%}{%- set _text = _parts.list | join('\\n') -%}{%- endif -%}
{%- set _flat.list = _flat.list + [{'role': _m['role'], 'content': _text}] -%}
{%- endfor -%}
"""

_SYSTEM = """\
{%- if (_flat.list | selectattr('role', 'equalto', 'system') | list | length) == 0 -%}
{%- set _flat.list = [{'role': 'system', 'content': __SYSTEM__}] + _flat.list -%}{%- endif -%}
"""

_LAVIN = """\
{%- set _n = namespace(images=0, prompt=__SYSTEM_PREFIX__, out=__BOS__) -%}
{%- for _m in _flat.list -%}{%- if _m['role'] == 'system' -%}{%- set _n.prompt = _m['content'] + '\\n\\n' -%}{%- endif -%}
{%- set _n.images = _n.images + (_m['content'].split(__PLACEHOLDER__) | length) - 1 -%}{%- endfor -%}
{%- if _n.images -%}{%- for _i in range(_n.images) -%}{%- set _n.out = _n.out + 'Image: ' + __PLACEHOLDER__ -%}{%- endfor -%}
{%- else -%}{%- set _n.out = _n.out + __NONE__ -%}{%- endif -%}
{%- for _m in _flat.list -%}
{%- if _m['role'] == 'user' -%}{%- set _n.prompt = _n.prompt + _m['content'].replace(__PLACEHOLDER__ + '\\n', '').replace(__PLACEHOLDER__, '') -%}
{%- elif _m['role'] == 'assistant' -%}{%- set _n.out = _n.out + _n.prompt + _m['content'] + eos_token -%}{%- set _n.prompt = '' -%}{%- endif -%}
{%- endfor -%}{{- _n.out + _n.prompt -}}
"""


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template(original: str, placeholder: str, system_prompt: str | None, strip_bos: str | None) -> str:
    """The LLM's own template ``original`` behind the part flattening; ``strip_bos``: the BOS
    string to drop from the start of the rendering (the tokenizer adds it), or None."""
    head = _FLATTEN.replace("__PLACEHOLDER__", _literal(placeholder))
    if system_prompt:
        head += _SYSTEM.replace("__SYSTEM__", _literal(system_prompt))
    head += "{%- set messages = _flat.list -%}\n"
    if strip_bos is None:
        return head + original
    # A block set captures the original's output exactly (no whitespace control inside it).
    return (head + "{%- set _rendered %}" + original + "{% endset -%}\n"
            + "{%- if _rendered.startswith(" + _literal(strip_bos) + ") -%}{{- _rendered[" + str(len(strip_bos))
            + ":] -}}{%- else -%}{{- _rendered -}}{%- endif -%}")


def lavin_template(placeholder: str, system_prompt: str | None, bos: str | None, first_kind: str = "image") -> str:
    """LaVIN's layout as a chat template; ``bos``: the BOS string to write first (None when the
    tokenizer adds it itself, or has none); ``first_kind``: the media kind a text-only prompt
    names (``Image: N/A``: the model's first encoder's kind)."""
    prefix = _literal(f"{system_prompt}\n\n") if system_prompt else "''"
    return (_FLATTEN.replace("__PLACEHOLDER__", _literal(placeholder))
            + _LAVIN.replace("__PLACEHOLDER__", _literal(placeholder)).replace("__SYSTEM_PREFIX__", prefix)
            .replace("__BOS__", _literal(bos) if bos else "''").replace("__NONE__", _literal(f"{first_kind.capitalize()}: N/A")))
