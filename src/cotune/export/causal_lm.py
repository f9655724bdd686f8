"""``--format causal-lm``: the text path of any run as a plain ``AutoModelForCausalLM`` directory.

The LLM with what the run trained in it: LoRA merged (PEFT's merge; LoRA gated by media left out,
since text-only prompts never run it), a fully trained LLM as it is,
and linear adapters (RepAdapter, MM-Adapters routed by modality) folded with the weights the
``text`` modality row selects, so the directory computes what cotune computes for text-only input.
Encoders and connectors are left out. A fold adds a bias to layers that had none; the family's
config must be able to hold it (``attention_bias`` / ``mlp_bias`` in Llama-style configs, zeros
for the other layers they add), else the export is refused naming the layer.

The tokenizer is the LLM's own (no placeholders), with a chat template that renders prompts as the
run does (its template and system prompt, :mod:`cotune.export.template`). The export is checked on
a probe prompt before it is written: the template's ids equal cotune's and the logits equal
cotune's within :data:`TOLERANCE` (relative to max(1, |logits|)).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from cotune.config import CotuneConfig
from cotune.export.errors import ExportError
from cotune.export.weights import fill_buffers

log = logging.getLogger(__name__)

#: LoRA alone is exact to float rounding; folds round once more (see cotune.merge.model.FP32_TOLERANCE).
TOLERANCE = 1e-3
HALF_TOLERANCE = 5e-2
BIAS_FLAGS = ("attention_bias", "mlp_bias")


def _text_llm(model) -> nn.Module:
    """``model``'s LLM with its adapters merged for text-only input (the model is changed in place)."""
    from cotune.merge.fold import ModalityLinear
    from cotune.merge.model import merge_lora, merge_model

    if model.config.llm.adapter.type in ("none", "lora"):
        # LoRA gated by media never touches a text-only prompt: the text path is the untuned LLM.
        merge_lora(model.llm, discard=model.config.llm.adapter.gate == "media")
        return model.llm
    if "text" not in model.modality_keys:
        raise ExportError(f"model.routing.modality_keys {model.modality_keys} has no 'text' row: the run has no text-only "
                          "routing to fold its MM-Adapters with")
    merged = merge_model(model)  # verified against the unmerged model on its own probe batch
    text_row = merged.modality_keys.index("text")
    for path, module in list(merged.llm.named_modules()):
        if isinstance(module, ModalityLinear):
            chosen = module.set_of_row[text_row]
            plain = nn.Linear(module.in_features, module.out_features, device=module.weight.device, dtype=module.weight.dtype)
            plain.weight.data.copy_(module.weight[chosen])
            plain.bias.data.copy_(module.bias[chosen])
            parent, _, child = path.rpartition(".")
            setattr(merged.llm.get_submodule(parent), child, plain)
    return merged.llm


def _original_layout(llm: nn.Module, reference: nn.Module) -> dict[str, torch.Tensor]:
    """``llm``'s state with folded layers written as the family stores them (a Conv1D keeps its
    [in, out] weight), compared against ``reference`` (the family's model built from its config)."""
    state = llm.state_dict()
    own = reference.state_dict()
    for path, module in reference.named_modules():
        if isinstance(module, Conv1D) and f"{path}.weight" in state and state[f"{path}.weight"].shape != own[f"{path}.weight"].shape:
            state[f"{path}.weight"] = state[f"{path}.weight"].t().contiguous()
    return state


def plain_causal_lm(llm: nn.Module) -> nn.Module:
    """A fresh model of ``llm``'s class holding ``llm``'s weights, its config given biases where
    folds added them (raises ExportError when the family cannot hold them)."""
    config = llm.config
    cls = type(llm)
    with torch.device("meta"):
        reference = cls(config)
    state = _original_layout(llm, reference)
    extra = sorted(set(state) - set(reference.state_dict()))
    if extra:
        flags = [f for f in BIAS_FLAGS if hasattr(config, f)]
        if not flags or any(not k.endswith(".bias") for k in extra):
            raise ExportError(f"folding the adapters gave {extra[0]} (and {len(extra) - 1} more), which {cls.__name__} cannot hold; "
                              "export the run with cotune merge, or train the LLM with LoRA")
        config = config.__class__.from_dict({**config.to_dict(), **{f: True for f in flags}})
        with torch.device("meta"):
            reference = cls(config)
        state = _original_layout(llm, reference)
    own = reference.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ExportError(f"{unexpected[0]} has no place in {cls.__name__} even with {', '.join(BIAS_FLAGS)} set")
    for key, value in own.items():
        if key not in state and key.endswith(".bias"):
            state[key] = torch.zeros(value.shape, dtype=value.dtype)  # a bias the flag added that no fold set
    reference.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        reference.tie_weights()
    fill_buffers(reference, {"": llm}, llm.get_input_embeddings().weight.dtype)
    return reference.eval()


def _probe_ids(spec) -> list[int]:
    from cotune.data.schema import Message, Sample
    from cotune.data.templates import encode_prompt

    sample = Sample("probe-text", [Message("user", "What is the answer?")])
    return encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt)


def write_causal_lm(model, config: CotuneConfig, directory, workdir=None) -> dict:
    """Writes ``model``'s text path (a loaded run, changed in place) as a causal LM directory."""
    from cotune.backbones.llm import load_tokenizer
    from cotune.export.processor import exported_template
    from cotune.zoo.sources import resolve_sources
    from cotune.model.data_spec import data_spec_from_model

    if any(e.quantization is not None for e in config.model.encoders.values()) or config.model.llm.quantization is not None:
        raise ExportError("the run's backbones are 4- or 8-bit; adapters cannot be merged into quantized weights")
    spec = data_spec_from_model(model, config.data)
    ids = _probe_ids(spec)
    device = model.llm.get_input_embeddings().weight.device
    with torch.no_grad():
        reference = model(torch.tensor([ids], device=device)).logits.float().cpu()
    llm = plain_causal_lm(_text_llm(model))
    # The LLM's own tokenizer (no placeholders), from where the model's weights came: a hub id the
    # run names may be read from the zoo's copy or a cached snapshot offline.
    tokenizer = load_tokenizer(resolve_sources(config.model).llm)
    placeholder = next(iter(config.model.encoders.values())).placeholder if config.model.encoders else "<image>"
    tokenizer.chat_template = exported_template(tokenizer, replace(spec, tokenizer=tokenizer), placeholder)
    rendered = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "What is the answer?"}], tokenize=False,
                                                       add_generation_prompt=True))["input_ids"]
    if rendered != ids:
        raise ExportError("the exported chat template does not reproduce cotune's text prompt; export with data.template: chat or lavin")
    with torch.no_grad():
        logits = llm(torch.tensor([ids], device=device)).logits.float().cpu()
    diff = float((logits - reference).abs().max())
    half = llm.get_input_embeddings().weight.dtype != torch.float32
    if diff > (HALF_TOLERANCE if half else TOLERANCE) * max(1.0, float(reference.abs().max())):
        raise ExportError(f"export check failed: the causal LM's logits differ from cotune's by {diff:.3g} on the probe")
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    log.info("causal-lm export: max |logit difference| from cotune on the probe %.3g", diff)
    return {"max_logit_diff": diff, "template": spec.template}
