"""The exported LLaVA processor: the run's image preprocessing, tokenizer and chat template.

* ``data.image_transform: processor``: the encoder's own image processor, as cotune loaded it.
* ``square`` (LaVIN: bicubic resize to a square, no crop, the processor's mean and std): a
  ``CLIPImageProcessor`` with those parameters; Pillow resizes in both, so the pixels are equal.

The tokenizer is the run's, placeholders included; the processor's image token is the encoder's
placeholder, expanded to as many tokens as one image becomes. Nothing here has parameters.
"""

from __future__ import annotations

import warnings

import transformers

from cotune.export.errors import ExportError
from cotune.export.template import chat_template, lavin_template


def square_image_processor(preprocess):
    """A CLIPImageProcessor equal to cotune's ``square`` transform of ``preprocess``
    (:class:`~cotune.data.media.MediaPreprocessor`): size x size bicubic, no crop, /255, mean/std."""
    size, mean, std = preprocess._square
    with warnings.catch_warnings():  # without torchvision transformers falls back to its Pillow backend
        warnings.simplefilter("ignore")
        return transformers.CLIPImageProcessor(
            do_resize=True, size={"height": size, "width": size}, resample=transformers.image_utils.PILImageResampling.BICUBIC,
            do_center_crop=False, crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
            do_normalize=True, image_mean=list(mean), image_std=list(std), do_convert_rgb=True,
        )


def special_tokens_added(tokenizer) -> tuple[list[int], list[int]]:
    """(ids the tokenizer puts before a text, ids it puts after) when called with its defaults."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        raise ExportError("the tokenizer's special-token handling changes the text's own tokens; cannot export a processor for it")
    return full[:start], full[start + len(plain):]


def exported_template(tokenizer, spec, placeholder: str) -> str:
    """The chat template the processor renders with (:mod:`cotune.export.template`) for
    ``spec`` (the run's :class:`~cotune.data.spec.DataSpec`)."""
    before, after = special_tokens_added(tokenizer)
    if after:
        raise ExportError(f"the tokenizer appends {after} to every text it encodes, which cotune's prompts do not end with; "
                          "save the tokenizer without that post-processor and export again")
    bos_added = before == [tokenizer.bos_token_id] and tokenizer.bos_token_id is not None
    if before and not bos_added:
        raise ExportError(f"the tokenizer puts {before} before every text, not its BOS; cannot match cotune's prompts")
    if spec.template == "lavin":
        bos = None if bos_added or tokenizer.bos_token is None else tokenizer.bos_token
        return lavin_template(placeholder, spec.system_prompt, bos, next(iter(spec.slots()), "image"))
    return chat_template(tokenizer.chat_template, placeholder, spec.system_prompt, tokenizer.bos_token if bos_added else None)


def llava_processor(encoder, spec, strategy: str, prefix_tokens: int, patch_size: int):
    """The ``LlavaProcessor`` of a LLaVA export. ``encoder``: the run's image
    :class:`~cotune.data.spec.EncoderInput`; ``strategy``: the config's vision_feature_select_strategy;
    ``prefix_tokens``: the vision tower's tokens before its patches (CLIP's CLS: 1, SigLIP: 0)."""
    preprocess = encoder.preprocess
    image_processor = square_image_processor(preprocess) if preprocess.image_transform == "square" else preprocess.processor
    tokenizer = spec.tokenizer
    return transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy=strategy,
        chat_template=exported_template(tokenizer, spec, encoder.placeholder), image_token=encoder.placeholder,
        num_additional_image_tokens=prefix_tokens,
    )
