"""Typed configuration of the instruction data: datasets, mixture weights, template, loading."""

from __future__ import annotations

from dataclasses import dataclass

from cotune.config.io import ConfigError, check_choice


#: ``DatasetConfig.answers`` choices.
ANSWER_FILTERS = ("all", "yes_no", "yes", "no", "open")
#: ``DatasetConfig.polarity`` choices.
POLARITY_FILTERS = ("all", "affirmative", "negated")
#: ``DatasetConfig.targets`` choices.
TARGETS = ("answer", "describe")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset read by a registered reader (``kind``).

    ``path``: the dataset directory or file; ``split``: which split (readers that have splits);
    ``weight``: per-sample sampling rate in a mixture (1: each sample once per epoch, 2: twice);
    ``media_root``: where relative media paths point (default: the reader's convention, e.g.
    ScienceQA's ``<path>/images`` with ``<split>/<pid>/`` below it, else ``path``'s directory); ``prompt_format``: ScienceQA's LaVIN format (e.g. ``QCM-ALE``); ``prompt``: the
    instruction for caption datasets; ``limit``: read at most this many records; ``answers``:
    ``all``, or keep only the samples whose last answer is ``yes``/``no`` (``yes_no``), ``yes``,
    ``no``, or neither (``open``); ``polarity``: ``all``, or keep only the questions with
    (``negated``) or without (``affirmative``) a negation word; filtered samples are counted, not
    skipped. Entries of one dataset with different ``answers``/``polarity`` and weights rebalance a
    set that is mostly yes/no, or whose yes/no answers follow the questions' wording (docs/data.md).
    ``targets``: ``answer`` (the data's own answers) or ``describe``: a yes/no sample is trained to
    name what its media show before it answers (``blue circle: no``), from the description its
    reader knows (``metadata["description"]``); yes/no samples without one are left out (counted as
    filtered). Evaluation reads such answers after their last ``:`` (docs/data.md).
    """

    kind: str
    path: str
    split: str = "train"
    weight: float = 1.0
    name: str | None = None
    media_root: str | None = None
    prompt_format: str = "QCM-ALE"
    use_caption: bool = False
    prompt: str | None = None
    limit: int | None = None
    answers: str = "all"
    polarity: str = "all"
    targets: str = "answer"

    def __post_init__(self) -> None:
        check_choice("answers", self.answers, ANSWER_FILTERS)
        check_choice("polarity", self.polarity, POLARITY_FILTERS)
        check_choice("targets", self.targets, TARGETS)
        if self.weight <= 0:
            raise ConfigError(f"weight: must be > 0, got {self.weight}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        if self.name is None:
            object.__setattr__(self, "name", f"{self.kind}:{self.split}")


@dataclass(frozen=True)
class DataConfig:
    """Training and evaluation data and how it is turned into batches.

    ``template``: ``auto`` (the tokenizer's chat template if it has one, else ``lavin``), ``chat``
    or ``lavin`` (LaVIN's plain layout: BOS, ``Image: `` + image tokens or ``Image: N/A``, prompt,
    answer, EOS). ``max_length``: tokens after media expansion; longer samples are skipped, never cut.
    ``max_skip_fraction``: stop with an error when more of a dataset than this is unusable.
    ``image_transform``: ``processor`` (the encoder's own) or ``square`` (LaVIN: bicubic resize to a
    square, no crop, the processor's mean/std). ``audio_seconds``: crop/pad every clip to this length
    (default: the feature extractor's own chunk, e.g. Whisper's 30 s). ``feature_cache``: a
    directory where the selected features of encoders without trainable parameters are stored once
    and read back instead of decoding and encoding the media every epoch.
    """

    train: tuple[DatasetConfig, ...] = ()
    eval: tuple[DatasetConfig, ...] = ()
    template: str = "auto"
    system_prompt: str | None = None
    max_length: int = 512
    max_skip_fraction: float = 0.01
    image_transform: str = "processor"
    audio_seconds: float | None = None
    feature_cache: str | None = None
    batch_size: int = 4
    num_workers: int = 0
    group_by_length: bool = False
    epoch_size: int | None = None

    def __post_init__(self) -> None:
        check_choice("template", self.template, ("auto", "chat", "lavin"))
        check_choice("image_transform", self.image_transform, ("processor", "square"))
        for name in ("max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"max_skip_fraction: must be in [0, 1], got {self.max_skip_fraction}")
        if self.audio_seconds is not None and self.audio_seconds <= 0:
            raise ConfigError(f"audio_seconds: must be > 0, got {self.audio_seconds}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ConfigError(f"epoch_size: must be >= 1, got {self.epoch_size}")
        names = [d.name for d in (*self.train, *self.eval)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"train/eval: dataset names must be unique, repeated: {duplicates}; set name: on each")
