"""The ``cotune`` model of lmms-eval: ``lmms-eval --model cotune --model_args run=RUN_DIR --tasks ...``.

lmms-eval finds it through its plugin entry point (``lmms_eval.models`` in cotune's pyproject,
:mod:`cotune.eval.lmms_plugin`); this module imports lmms-eval and is only loaded by it (extra
``lmms-eval``). ``model_args``: ``run`` (a run or saved model directory, required),
``max_new_tokens`` (default when a task sets none, 64), ``num_workers`` (0); lmms-eval's
``--batch_size`` and ``--device`` are honoured.

A request becomes a cotune :class:`~cotune.data.schema.Sample`: one user turn holding the task's
context, with the document's visuals as media (PIL images written as PNG, audio ``{"array",
"sampling_rate"}`` dicts as 32-bit float WAV, both lossless, to a temporary directory the run's own
preprocessors read, as ``cotune serve`` does with uploads). Prompts are then rendered exactly as
``cotune eval`` renders them (the run's template, system prompt and media expansion), so a task
asking ``cotune eval``'s questions gets ``cotune eval``'s answers.

* ``generate_until``: requests grouped by their generation settings, in order, batched through
  :func:`~cotune.eval.generation.predict_samples` (greedy unless the task sets a temperature > 0),
  each answer cut at the first of the task's ``until`` strings.
* ``loglikelihood``: the continuation's mean negative log-likelihood per token after the prompt
  (the LM loss; teacher-forced, right-padded batches) and whether greedy decoding would produce
  it. lmms-eval's interface text speaks of a log-probability, but its ``multiple_choice`` scoring
  picks the *smallest* value ("we return the actual loss") and its LLaVA models return this loss;
  cotune returns the same so its choices are scored as theirs are.

A request cotune cannot use (video, media the model has no encoder for, a prompt too long) gets
an empty answer / ``(inf, False)`` and is counted in the log. lmms-eval sets PIL's
``LOAD_TRUNCATED_IMAGES`` when it is imported, so inside it a truncated image file is decoded (PIL
fills the missing rows) where ``cotune eval`` skips it as ``unreadable_media``; task images come
decoded already, so this concerns only visuals given as file paths. No parameters are trained here.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from cotune.data.dataset import PreparedDataset
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample, SkipSample
from cotune.data.templates import IGNORE_INDEX, encode_prompt
from cotune.eval.generation import predict_samples
from cotune.model.data_spec import data_spec_from_model
from cotune.rundir import RunDir

log = logging.getLogger(__name__)

#: Generation settings of lmms-eval tasks that map onto transformers' generate.
_GENERATE_KEYS = ("temperature", "top_p", "num_beams", "do_sample")


class CotuneLMM(lmms):
    """lmms-eval's model interface over a cotune run (module docstring)."""

    is_simple = True

    def __init__(self, run: str, batch_size: int | str = 8, device: str | None = None, max_new_tokens: int | str = 64,
                 num_workers: int | str = 0, max_batch_size: int | None = None) -> None:
        super().__init__()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        run_dir = RunDir(run)
        self.config = run_dir.config()
        self.model = run_dir.load(torch.device(device))[0]
        self.model.check_generation()
        self.spec = data_spec_from_model(self.model, self.config.data)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" is not supported: the default
        self.max_new_tokens, self.num_workers = int(max_new_tokens), int(num_workers)

    # ------------------------------------------------------------------------ requests -> samples
    def _samples(self, requests: list[Instance], workdir: Path) -> list[Sample]:
        """One single-turn sample per request, its visuals written under ``workdir``."""
        samples = []
        for index, request in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = request.args[:6]
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
            media = write_visuals(visuals or [], workdir / str(index))
            samples.append(Sample(str(index), [Message("user", context)], media))
        return samples

    # ------------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        report = DatasetReport("lmms-eval")
        with tempfile.TemporaryDirectory(prefix="cotune-lmms-") as workdir:
            for key, indices in groups.items():
                settings = json.loads(key)
                until = settings.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                samples = self._samples([requests[i] for i in indices], Path(workdir))
                for prediction in predict_samples(
                    self.model, self.spec, samples, batch_size=self.batch_size, report=report, num_workers=self.num_workers,
                    max_new_tokens=int(settings.get("max_new_tokens") or self.max_new_tokens), **_sampling(settings),
                ):
                    answers[indices[int(prediction.sample.id)]] = cut(prediction.text, until)
        _log_skips(report)
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("cotune's lmms-eval model answers single-round tasks (generate_until, loglikelihood)")

    # ------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool]] = [(math.inf, False)] * len(requests)
        report = DatasetReport("lmms-eval")
        tokenizer = self.spec.tokenizer
        with tempfile.TemporaryDirectory(prefix="cotune-lmms-") as workdir:
            samples = self._samples(requests, Path(workdir))
            kept, ids, labels = [], [], []
            for index, (sample, request) in enumerate(zip(samples, requests)):
                target = request.args[1]
                continuation = target if isinstance(target, str) else target(self.task_dict[request.args[4]][request.args[5]][request.args[3]])
                try:
                    prompt = encode_prompt(sample, tokenizer, self.spec.slots(), self.spec.template, self.spec.system_prompt, self.spec.max_length)
                except SkipSample as skip:
                    report.skip(skip.reason, skip.detail)
                    continue
                answer = tokenizer(continuation, add_special_tokens=False)["input_ids"]
                kept.append(index)
                ids.append(prompt + answer)
                labels.append([IGNORE_INDEX] * len(prompt) + answer)
            dataset = PreparedDataset("lmms-eval", [samples[i] for i in kept], ids, labels, self.spec)
            was_training = self.model.training
            self.model.eval()
            try:
                for start in range(0, len(kept), self.batch_size):
                    items = [dataset[i] for i in range(start, min(start + self.batch_size, len(kept)))]
                    for position, result in continuation_scores(self.model, items, self.spec.pad_id, report).items():
                        results[kept[start + position]] = result
            finally:
                self.model.train(was_training)
        _log_skips(report)
        return results


def continuation_scores(model, items: list[dict], pad_id: int, report: DatasetReport) -> dict[int, tuple[float, bool]]:
    """Per usable item (its position in ``items``): the mean negative log-probability of its
    supervised tokens and whether each is the argmax, from one right-padded forward pass [B, T]."""
    usable = [(n, item) for n, item in enumerate(items) if "skip" not in item]
    for item in items:
        if "skip" in item:
            report.skip(*item["skip"])
    if not usable:
        return {}
    width = max(len(item["input_ids"]) for _, item in usable)
    ids = torch.full((len(usable), width), pad_id, dtype=torch.long)
    labels = torch.full((len(usable), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(usable), width), dtype=torch.long)
    media: dict[str, list[torch.Tensor]] = {}
    for row, (_, item) in enumerate(usable):
        length = len(item["input_ids"])
        ids[row, :length], labels[row, :length], mask[row, :length] = item["input_ids"], item["labels"], 1
        for name, tensors in item["media"].items():
            media.setdefault(name, []).extend(tensors)
    device = next(model.parameters()).device
    stacked = {name: torch.stack(tensors).to(device) for name, tensors in media.items()}
    logits = model(ids.to(device), mask.to(device), media=stacked).logits.float()  # [B, T, V]
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    targets = labels[:, 1:].to(device)
    scored = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    greedy = logprobs.argmax(-1) == targets
    return {
        n: (-float(picked[row][scored[row]].mean()), bool(greedy[row][scored[row]].all()))
        for row, (n, _) in enumerate(usable)
    }


def write_visuals(visuals: list, directory: Path) -> dict[str, list[Path]]:
    """A document's visuals as files: PIL images -> PNG, ``{"array", "sampling_rate"}`` -> float WAV,
    existing file paths kept (kind from the suffix); anything else (video) is left out and logged."""
    from PIL import Image

    media: dict[str, list[Path]] = {}
    for number, visual in enumerate(visuals):
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(visual, Image.Image):
            path = directory / f"{number}.png"
            visual.save(path)
            media.setdefault("image", []).append(path)
        elif isinstance(visual, dict) and "array" in visual and "sampling_rate" in visual:
            from cotune.data.media import audio_libraries

            soundfile, _ = audio_libraries()
            path = directory / f"{number}.wav"
            soundfile.write(path, visual["array"], int(visual["sampling_rate"]), subtype="FLOAT")
            media.setdefault("audio", []).append(path)
        elif isinstance(visual, (str, Path)) and Path(visual).suffix.lower() in (".png", ".jpg", ".jpeg", ".wav", ".flac"):
            kind = "audio" if Path(visual).suffix.lower() in (".wav", ".flac") else "image"
            media.setdefault(kind, []).append(Path(visual))
        else:
            log.warning("lmms-eval visual of type %s is not an image or audio clip; left out", type(visual).__name__)
    return media


def cut(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any ``until`` string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _sampling(settings: dict) -> dict:
    """lmms-eval generation settings -> generate kwargs: greedy unless temperature > 0."""
    kwargs = {key: settings[key] for key in _GENERATE_KEYS if key in settings and settings[key] is not None}
    if float(kwargs.pop("temperature", 0) or 0) > 0:
        kwargs["do_sample"], kwargs["temperature"] = True, float(settings["temperature"])
    else:
        kwargs["do_sample"] = False
        kwargs.pop("top_p", None)
    return kwargs


def _log_skips(report: DatasetReport) -> None:
    if report.skipped:
        log.warning("lmms-eval requests cotune could not use (empty answers): %s", dict(report.skipped))
