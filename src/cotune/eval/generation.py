"""The generation loop under ``cotune eval``, ``cotune predict`` and the lmms-eval model: prompts
rendered exactly as in training, media through the run's preprocessors, left-padded batches
generated greedily, each row stopping at the template's end of answer and decoded up to it. Plain
greedy batches run :func:`~cotune.model.greedy.greedy_generate`, which drops a row from the batch
when it ends; other settings (sampling, beams) run transformers' ``generate``.

Samples that cannot be used (a prompt too long, media that does not decode, a media kind the model
has no encoder for) are counted in the caller's report, never raised mid-run. Nothing here has
trainable parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch

from cotune.data.dataset import PreparedDataset
from cotune.data.report import DatasetReport
from cotune.data.schema import Sample, SkipSample
from cotune.data.spec import DataSpec
from cotune.data.templates import IGNORE_INDEX, encode_prompt
from cotune.data.turn_end import stop_ids
from cotune.model.generate import left_pad
from cotune.model.greedy import generate_rows


class Prediction(NamedTuple):
    """One generated answer: the sample, its prompt ids and the decoded continuation."""

    sample: Sample
    prompt_ids: list[int]
    text: str


def decode(tokenizer, row: torch.Tensor, stops: Sequence[int] | None = None) -> str:
    """Generated ids [N] -> text up to the first stop id (default: EOS), special tokens dropped, stripped."""
    ids = row.tolist()
    stops = [tokenizer.eos_token_id] if stops is None else stops
    end = min((ids.index(stop) for stop in stops if stop in ids), default=len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True).strip()


def predict_samples(
    model, spec: DataSpec, samples: Iterable[Sample], *, batch_size: int = 8, max_new_tokens: int = 64,
    report: DatasetReport | None = None, num_workers: int = 0, progress: Callable[[int], None] | None = None,
    **generate_kwargs,
) -> Iterator[Prediction]:
    """Generates an answer to the last user turn of every usable sample, in order.

    Prompts come from :func:`~cotune.data.templates.encode_prompt` with ``spec``'s template and
    system prompt; media go through ``spec``'s preprocessors (in ``num_workers`` loader workers).
    Batches are left-padded [B, T] and decoded greedily unless ``generate_kwargs`` say otherwise;
    a row stops at the template's end of answer (:func:`~cotune.data.turn_end.stop_ids`: EOS, and
    the chat template's end-of-turn token) and leaves the batch there
    (:func:`~cotune.model.greedy.generate_rows` decides: plain greedy settings drop finished rows,
    others go to transformers' ``generate``, where a finished row waits for the batch's longest).
    Samples that cannot be used are counted in ``report`` (a generator: counts are complete once
    it is exhausted). ``progress`` is called with the number of samples each batch finished
    (skipped ones included; :class:`~cotune.eval.progress.GenerationProgress`'s ``advance``).
    """
    model.check_generation()
    report = report if report is not None else DatasetReport("predict")
    slots, kept, prompts = spec.slots(), [], []
    total = 0
    for sample in samples:
        total += 1
        try:
            prompts.append(encode_prompt(sample, spec.tokenizer, slots, spec.template, spec.system_prompt, spec.max_length))
        except SkipSample as skip:
            report.skip(skip.reason, skip.detail)
            continue
        kept.append(sample)
    if progress is not None:  # prompts that could not be rendered are done already
        progress(total - len(kept))
    if not kept:
        return
    dataset = PreparedDataset(report.name, kept, prompts, [[IGNORE_INDEX] * len(p) for p in prompts], spec)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=list, num_workers=num_workers)
    stops = stop_ids(spec.tokenizer, spec.template)
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens, "eos_token_id": list(stops), **generate_kwargs}
    for number, items in enumerate(loader):
        usable = []
        for offset, item in enumerate(items):
            if "skip" in item:
                report.skip(*item["skip"])
            else:
                usable.append((number * batch_size + offset, item))
        if not usable:
            if progress is not None:
                progress(len(items))
            continue
        ids, mask = left_pad([item["input_ids"].tolist() for _, item in usable], spec.pad_id)
        media: dict[str, list[torch.Tensor]] = {}
        for _, item in usable:
            for name, tensors in item["media"].items():
                media.setdefault(name, []).extend(tensors)
        stacked = {name: torch.stack(tensors) for name, tensors in media.items()}
        rows = generate_rows(model, ids, mask, media=stacked, **settings)
        if progress is not None:
            progress(len(items))
        for (index, _), row in zip(usable, rows):
            yield Prediction(kept[index], prompts[index], decode(spec.tokenizer, row, stops))
