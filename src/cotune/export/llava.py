"""``--format llava``: a LLaVA-style run as a transformers ``LlavaForConditionalGeneration`` directory.

What can be expressed: one image encoder of type ``clip`` or ``siglip`` whose adapter is none or
LoRA (merged into the tower's own weights), selected hidden states as LLaVA selects them (one layer,
or several concatenated feature-wise with ``layer_merge: features``; ``reduce: patches``, or
``all``), an ``mlp2x-gelu`` projector (hidden width = the LLM's) or a ``linear`` one (written as
linear_1, an identity activation and an identity linear_2), and an LLM trained with LoRA (merged),
fully, or not at all. :func:`refusal` says, for anything else, why and what would work.

Weights are copied as they are (LoRA merged by PEFT's own merge) into a model built on the meta
device; the LLM's dtype is kept. Placeholder ids beyond the LLM's vocabulary get rows (zero
embeddings; the generation config suppresses them as outputs). Before anything is written the
export is checked on a probe image and prompt: the processor's ids equal cotune's prompt ids and
the logits equal cotune's (:data:`TOLERANCE`).
"""

from __future__ import annotations

import logging

import torch
import transformers
from PIL import Image

from cotune.config import CotuneConfig
from cotune.export.errors import ExportError
from cotune.export.processor import llava_processor
from cotune.export.weights import fill_buffers

log = logging.getLogger(__name__)

ENCODER_TYPES = ("clip", "siglip")
CONNECTORS = {"mlp2x-gelu": "gelu", "linear": "linear"}
#: Largest |logit difference| accepted between the export and cotune on the probe, relative to
#: max(1, |logits|) (float32 LLMs; half precision adds its rounding of the projector, see docs/export.md).
TOLERANCE = 1e-4
HALF_TOLERANCE = 5e-2


def refusal(config: CotuneConfig) -> str | None:
    """Why ``config``'s model cannot become a LlavaForConditionalGeneration (one line naming what
    would work), or None when it can."""
    model = config.model
    if len(model.encoders) != 1:
        return (f"LLaVA has one vision tower; this run has {len(model.encoders)} encoders ({', '.join(model.encoders) or 'none'}); "
                "export its text path with --format causal-lm")
    name, enc = next(iter(model.encoders.items()))
    key = f"model.encoders.{name}"
    if enc.type not in ENCODER_TYPES:
        return f"{key}.type is {enc.type!r}; LLaVA's vision tower here is one of {', '.join(ENCODER_TYPES)} (audio has no LLaVA form)"
    if enc.adapter.type not in ("none", "lora"):
        return (f"{key}.adapter is {enc.adapter.type!r}: its adapters run outside the tower's own layers, which LLaVA cannot "
                "hold; `cotune merge` folds the linear ones into cotune's own format, or train the encoder with LoRA "
                "(merged into the tower on export) or frozen")
    if enc.connector.type not in CONNECTORS:
        return f"{key}.connector.type is {enc.connector.type!r}; LLaVA's projector is mlp2x-gelu or linear"
    if enc.reduce not in ("patches", "all"):
        return f"{key}.reduce is {enc.reduce!r}; LLaVA keeps every patch token (patches) or every token (all)"
    if len(enc.layers) > 1 and enc.layer_merge != "features":
        return f"{key}.layer_merge is 'tokens'; LLaVA concatenates several layers feature-wise (layer_merge: features)"
    if model.llm.adapter.type not in ("none", "lora"):
        return (f"model.llm.adapter is {model.llm.adapter.type!r}: MM-Adapters route by modality inside the LLM, which a "
                "LlavaForConditionalGeneration cannot do; serve the run with `cotune serve`, or export the text path "
                "(--format causal-lm)")
    if model.llm.adapter.gate == "media":
        return ("model.llm.adapter.gate is 'media': cotune applies the LLM's LoRA to prompts with media only, and a "
                "LlavaForConditionalGeneration has one LLM for every prompt; serve the run with `cotune serve`")
    if enc.quantization is not None or model.llm.quantization is not None:
        return "the run's backbones are 4- or 8-bit; LoRA cannot be merged into quantized weights (train in full precision)"
    return None


def _strategy(encoder, reduce: str) -> str:
    """vision_feature_select_strategy: ``default`` drops one leading token (CLIP's CLS)."""
    prefix = encoder.num_prefix_tokens
    if reduce == "all" or prefix == 0:
        return "full"
    if prefix != 1:
        raise ExportError(f"the vision tower has {prefix} tokens before its patches; LLaVA drops only one (the CLS)")
    return "default"


def _connector_state(connector, d_llm: int) -> dict[str, torch.Tensor]:
    if hasattr(connector, "linear_1"):
        if connector.linear_1.out_features != d_llm:
            raise ExportError(f"connector hidden width {connector.linear_1.out_features} != the LLM's {d_llm}; "
                              "LLaVA's projector is D_enc -> D_llm -> D_llm (set connector.hidden to it, or leave it unset)")
        return dict(connector.state_dict())
    weight, bias = connector.proj.weight, connector.proj.bias
    eye = torch.eye(d_llm, dtype=weight.dtype)
    return {"linear_1.weight": weight, "linear_1.bias": bias, "linear_2.weight": eye, "linear_2.bias": torch.zeros(d_llm, dtype=weight.dtype)}


def llava_state(model, name: str) -> dict[str, torch.Tensor]:
    """The LLaVA state dict of ``model`` (LoRA already merged): tower, projector, decoder, head."""
    llm = model.llm
    d_llm = llm.config.get_text_config().hidden_size
    state = {f"model.vision_tower.{k}": v for k, v in model.encoders[name].backbone.state_dict().items()}
    state.update({f"model.multi_modal_projector.{k}": v for k, v in _connector_state(model.connectors[name], d_llm).items()})
    state.update({f"model.language_model.{k}": v for k, v in llm.base_model.state_dict().items()})
    state["lm_head.weight"] = llm.get_output_embeddings().weight
    return {k: v.detach().cpu() for k, v in state.items()}


def build_llava(model, name: str, tokens: int) -> transformers.LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration equal to ``model`` (LoRA merged) with ``tokens`` tokens per image."""
    enc_cfg = model.config.encoders[name]
    encoder = model.encoders[name]
    text_config = model.llm.config.get_text_config()
    dtype = model.llm.get_input_embeddings().weight.dtype
    layers = list(model.selectors[name].layers)
    config = transformers.LlavaConfig(
        vision_config=encoder.backbone.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=model.placeholder_ids[name], image_seq_length=tokens,
        projector_hidden_act=CONNECTORS[enc_cfg.connector.type], vision_feature_layer=layers[0] if len(layers) == 1 else layers,
        vision_feature_select_strategy=_strategy(encoder, enc_cfg.reduce), multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    config.text_config.dtype = dtype
    state = {k: v.to(dtype) for k, v in llava_state(model, name).items()}
    with torch.device("meta"):
        llava = transformers.LlavaForConditionalGeneration(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    missing, unexpected = llava.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ExportError(f"the run's weights do not fill LLaVA's: {len(missing)} missing (e.g. {missing[:3]}), "
                          f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if config.tie_word_embeddings:
        llava.tie_weights()
    fill_buffers(llava, {"model.vision_tower.": encoder.backbone, "model.language_model.": model.llm.base_model}, dtype)
    _cover_placeholders(llava, max(model.placeholder_ids.values()))
    return llava.eval()


def _cover_placeholders(llava, largest_id: int) -> None:
    """Rows for placeholder ids beyond the vocabulary (their embeddings are always overwritten)."""
    vocab = llava.config.text_config.vocab_size
    if largest_id < vocab:
        return
    llava.resize_token_embeddings(largest_id + 1, mean_resizing=False)
    with torch.no_grad():
        llava.get_input_embeddings().weight[vocab:] = 0
        llava.get_output_embeddings().weight[vocab:] = 0
    llava.generation_config.suppress_tokens = list(range(vocab, largest_id + 1))


def probe_image() -> Image.Image:
    """A small RGB image with structure in both directions (a resize or crop error shows)."""
    pixels = bytes((x * 37 + y * 11) % 256 for y in range(23) for x in range(31) for _ in range(3))
    return Image.frombytes("RGB", (31, 23), pixels)


def _probe(model, spec, name: str, workdir) -> dict:
    """cotune's own ids, pixels and logits for a probe image + question and a text-only question,
    computed before anything is merged (the reference the export must reproduce)."""
    from cotune.data.schema import Message, Sample
    from cotune.data.templates import encode_prompt

    path = workdir / "probe.png"
    probe_image().save(path)
    question = "What is shown here?"
    slots = spec.slots()
    image_ids = encode_prompt(Sample("probe", [Message("user", question)], {"image": [path]}), spec.tokenizer, slots,
                              spec.template, spec.system_prompt)
    text_ids = encode_prompt(Sample("probe-text", [Message("user", question)]), spec.tokenizer, slots, spec.template, spec.system_prompt)
    pixels = spec.encoders[0].preprocess(path, "probe")[None]
    device = model.llm.get_input_embeddings().weight.device
    with torch.no_grad():
        logits = model(torch.tensor([image_ids], device=device), media={name: pixels.to(device)}).logits.float().cpu()
    return {"question": question, "image_ids": image_ids, "text_ids": text_ids, "pixels": pixels, "logits": logits}


def _check(llava, processor, probe: dict) -> float:
    """Raises ExportError unless the processor reproduces cotune's ids and pixels and the model its
    logits on the probe; returns the largest |logit difference|."""
    question = probe["question"]
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(with_image, add_generation_prompt=True)
    inputs = processor(images=probe_image(), text=text, return_tensors="pt")
    plain = processor(text=processor.apply_chat_template(text_only, add_generation_prompt=True), return_tensors="pt")
    for got, want, what in ((inputs["input_ids"][0].tolist(), probe["image_ids"], "image prompt"),
                            (plain["input_ids"][0].tolist(), probe["text_ids"], "text prompt")):
        if got != want:
            raise ExportError(f"the exported chat template does not reproduce cotune's {what}: {len(got)} ids, cotune {len(want)} "
                              f"(first difference at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})")
    pixel_diff = float((inputs["pixel_values"].float() - probe["pixels"]).abs().max())
    if pixel_diff > 1e-5:
        raise ExportError(f"the exported image processor's pixels differ from cotune's by {pixel_diff:.3g}")
    device = llava.get_input_embeddings().weight.device
    with torch.no_grad():
        logits = llava(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()
    reference = probe["logits"]
    diff = float((logits[..., : reference.shape[-1]] - reference).abs().max())
    half = llava.get_input_embeddings().weight.dtype != torch.float32
    if diff > (HALF_TOLERANCE if half else TOLERANCE) * max(1.0, float(reference.abs().max())):
        raise ExportError(f"export check failed: LLaVA's logits differ from cotune's by {diff:.3g} on the probe")
    return diff


def write_llava(model, config: CotuneConfig, directory, workdir) -> dict:
    """Writes ``model`` (a loaded run, changed in place: LoRA merged) as a LLaVA directory;
    returns what the model card reports (the probe's logit difference, tokens per image)."""
    from cotune.merge.model import merge_lora
    from cotune.model.data_spec import data_spec_from_model

    reason = refusal(config)
    if reason:
        raise ExportError(f"cannot export as llava: {reason}")
    name = next(iter(config.model.encoders))
    spec = data_spec_from_model(model, config.data)
    probe = _probe(model, spec, name, workdir)
    merge_lora(model)
    llava = build_llava(model, name, spec.encoders[0].tokens)
    encoder = model.encoders[name]
    processor = llava_processor(spec.encoders[0], spec, llava.config.vision_feature_select_strategy, encoder.num_prefix_tokens,
                                encoder.backbone.config.patch_size)
    diff = _check(llava, processor, probe)
    llava.generation_config.eos_token_id = spec.tokenizer.eos_token_id
    llava.generation_config.pad_token_id = spec.pad_id
    llava.save_pretrained(directory)
    processor.save_pretrained(directory)
    log.info("llava export: max |logit difference| from cotune on the probe %.3g", diff)
    return {"max_logit_diff": diff, "image_tokens": spec.encoders[0].tokens, "template": spec.template}
