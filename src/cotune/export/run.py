"""``cotune export RUN --format F --out DIR``: one run written in a format other tools load.

The output is staged in a hidden sibling of ``DIR`` and renamed into place only once it is complete
and checked, with a README.md model card. What the run cannot express in the format is said before
any weight is loaded (:func:`cotune.export.llava.refusal`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cotune.config import CotuneConfig
from cotune.export.card import CardFacts, write_card
from cotune.export.errors import ExportError


@dataclass(frozen=True)
class ExportFormat:
    """A format: its writer ``(model, config, staging dir, scratch dir) -> facts for the card``, a
    config check run before loading (a refusal reason or None), and the card's loading snippet."""

    write: Callable[..., dict]
    refusal: Callable[[CotuneConfig], str | None]
    how_to_load: str
    pipeline_tag: str


def _formats() -> dict[str, ExportFormat]:
    from cotune.export import causal_lm, llava

    return {
        "llava": ExportFormat(llava.write_llava, llava.refusal, LLAVA_LOAD, "image-text-to-text"),
        "causal-lm": ExportFormat(causal_lm.write_causal_lm, lambda _config: None, CAUSAL_LM_LOAD, "text-generation"),
    }


FORMATS = ("llava", "causal-lm")

LLAVA_LOAD = """\
```python
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

processor = AutoProcessor.from_pretrained("{out}")
model = LlavaForConditionalGeneration.from_pretrained("{out}")
conversation = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown?"}}]}}]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
inputs = processor(images=Image.open("photo.jpg"), text=prompt, return_tensors="pt")
answer = model.generate(**inputs, max_new_tokens=64, do_sample=False)[0, inputs["input_ids"].shape[1]:]
print(processor.decode(answer, skip_special_tokens=True))
```

Served by vLLM (`vllm serve {out}`) or SGLang (`python -m sglang.launch_server --model-path {out}`)."""

CAUSAL_LM_LOAD = """\
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{out}")
model = AutoModelForCausalLM.from_pretrained("{out}")
```

The text path only (no encoders). Served by vLLM (`vllm serve {out}`) or SGLang."""


def export_run(run: str | Path, out: str | Path, fmt: str, device=None) -> dict:
    """Writes ``run`` (a run directory or a saved model directory) as ``fmt`` into ``out`` (which
    must not exist or be empty); returns what the card reports of the check (e.g. max_logit_diff)."""
    from cotune.rundir import RunDir

    formats = _formats()
    if fmt not in formats:
        raise ExportError(f"--format: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    run, out = Path(run), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose another output directory")
    config = RunDir(run).config()  # the run and the format are checked before any weight loads
    chosen = formats[fmt]
    reason = chosen.refusal(config)
    if reason:
        raise ExportError(f"cannot export {run} as {fmt}: {reason}")
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    scratch = out.parent / f".{out.name}.scratch-{os.getpid()}"
    for folder in (staging, scratch):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    try:
        facts = chosen.write(RunDir(run).load(device)[0], config, staging, scratch)
        extra = [f"Exported with `cotune export --format {fmt}`; on a probe prompt its logits differ from cotune's by at most "
                 f"{facts['max_logit_diff']:.3g}.", ""]
        card = CardFacts(f"{run.name} ({fmt})", chosen.how_to_load.format(out=out), library="transformers",
                         pipeline_tag=chosen.pipeline_tag, extra=extra)
        write_card(staging, config, run, card)
        os.replace(staging, out)  # also replaces an empty directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return facts
