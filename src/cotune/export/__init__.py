"""Outputs other tools load: PEFT adapter folders, a transformers LLaVA directory, a plain causal LM,
and model cards.

* :mod:`~cotune.export.peft_adapters`: one PEFT LoRA folder per LoRA-adapted component of a run.
* :mod:`~cotune.export.llava`: a LLaVA-style run as ``LlavaForConditionalGeneration`` with its
  processor and chat template (what vLLM, SGLang and TGI serve).
* :mod:`~cotune.export.causal_lm`: the text path of any run as an ``AutoModelForCausalLM`` directory.
* :mod:`~cotune.export.card`: the README.md model card of a run directory or an export.

Every export checks itself before it is moved into place: the exported model's logits are compared
with cotune's on a probe batch, and the LLaVA processor's prompt ids with cotune's own.
"""

from cotune.export.errors import ExportError
from cotune.export.run import FORMATS, export_run

__all__ = ["FORMATS", "ExportError", "export_run"]
