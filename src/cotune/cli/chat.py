"""``cotune chat RUN_DIR [--image PATH] [--audio PATH] [--max-new-tokens M] [--temperature T]``:
talk to a trained model in the terminal.

Each line read from stdin is a user turn; the whole conversation so far (with the attached media)
is rendered by the run's template exactly as training renders it (:func:`encode_prompt`), and the
answer is printed token by token as it is generated (a streamer passed through ``generate``).
Commands: ``/image PATH`` and ``/audio PATH`` attach (replace) that kind's item, ``/image`` or
``/audio`` alone detaches it, ``/reset`` forgets the conversation (media stay), ``/quit`` or end of
input leaves. A media file that cannot be used is reported in the chat, which goes on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cotune.data.schema import Message, Sample, SkipSample
from cotune.data.templates import encode_prompt
from cotune.eval.runner import decode
from cotune.model.generate import generate
from cotune.model.stream import AnswerStream

log = logging.getLogger(__name__)

COMMANDS = "/image [PATH], /audio [PATH], /reset, /quit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from cotune train (or a saved model directory)")
    parser.add_argument("--image", metavar="PATH", help="an image to talk about (or /image PATH in the chat)")
    parser.add_argument("--audio", metavar="PATH", help="an audio clip to talk about (or /audio PATH in the chat)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="M", help="most tokens per answer (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T", help="sampling temperature; 0 is greedy (default: 0)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed for sampling (with --temperature > 0)")
    parser.add_argument("--device", help="torch device for the model (default: cuda if available, else cpu)")


class TokenStreamer(AnswerStream):
    """Writes each settled piece of the answer to ``out`` as it is generated (the decoding rules
    are :class:`~cotune.model.stream.AnswerStream`'s, shared with ``cotune serve``), then a newline."""

    def __init__(self, tokenizer, out) -> None:
        super().__init__(tokenizer, on_text=self._write)
        self.out = out

    def _write(self, piece: str) -> None:
        self.out.write(piece)
        self.out.flush()

    def end(self) -> None:
        super().end()
        self._write("\n")


class ChatSession:
    """One conversation: its turns, the attached media (paths and processed inputs) and the
    generation settings."""

    def __init__(self, model, spec, out, max_new_tokens: int = 256, **generate_kwargs) -> None:
        self.model, self.spec, self.out = model, spec, out
        self.settings = {"max_new_tokens": max_new_tokens, **generate_kwargs}
        self.history: list = []
        self.paths: dict[str, Path] = {}
        self.inputs: dict[str, dict] = {}  # kind -> {encoder name: input [1, ...]}

    def say(self, text: str) -> None:
        self.out.write(f"[{text}]\n")
        self.out.flush()

    def attach(self, kind: str, path: str | None) -> None:
        """Attaches (replaces) or, without a path, detaches the item of media ``kind``."""
        if not path:
            self.paths.pop(kind, None)
            self.inputs.pop(kind, None)
            self.say(f"{kind} detached")
            return
        encoders = [e for e in self.spec.encoders if e.kind == kind]
        if not encoders:
            kinds = ", ".join(sorted({e.kind for e in self.spec.encoders})) or "text only"
            self.say(f"error: this model has no {kind} encoder (it reads: {kinds})")
            return
        try:
            inputs = {e.name: e.preprocess(Path(path), f"/{kind}")[None] for e in encoders}
        except SkipSample as skip:
            self.say(f"error: {skip.reason}: {skip.detail}; {kind} unchanged")
            return
        self.paths[kind], self.inputs[kind] = Path(path), inputs
        self.say(f"{kind}: {path}")

    def reset(self) -> None:
        self.history = []
        self.say("conversation cleared")

    def reply(self, text: str) -> str | None:
        """Streams the answer to ``text`` given the conversation so far; None if it cannot be asked."""
        question = Message("user", text)
        sample = Sample("chat", [*self.history, question], {kind: [p] for kind, p in self.paths.items()})
        spec = self.spec
        try:
            ids = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
        except SkipSample as skip:
            self.say(f"error: {skip.reason}: {skip.detail}" + ("; /reset to start over" if skip.reason == "too_long" else ""))
            return None
        log.debug("prompt: %d tokens, %d earlier turns, media: %s", len(ids), len(self.history), ", ".join(sorted(self.paths)) or "none")
        media = {name: tensor for inputs in self.inputs.values() for name, tensor in inputs.items()}
        streamer = TokenStreamer(spec.tokenizer, self.out)
        rows = generate(self.model, torch.tensor([ids]), media=media, streamer=streamer, **self.settings)
        answer = decode(spec.tokenizer, rows[0])
        self.history += [question, Message("assistant", answer)]
        return answer


def chat_loop(session: ChatSession, lines) -> None:
    """Reads user turns and commands from ``lines`` (a text stream) until /quit or its end."""
    interactive = hasattr(lines, "isatty") and lines.isatty()
    while True:
        if interactive:
            session.out.write("you> ")
            session.out.flush()
        line = lines.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            session.reset()
        elif command in ("/image", "/audio"):
            session.attach(command[1:], argument.strip() or None)
        elif command.startswith("/") and " " not in command[1:] and command[1:].isalpha():
            session.say(f"unknown command {command}; commands: {COMMANDS}")
        else:
            session.reply(line)


def run(args: argparse.Namespace) -> int:
    """Chat with a trained model in the terminal (multi-turn; /image, /audio, /reset, /quit)."""
    from cotune.cli.eval import load_for_inference
    from cotune.config import ConfigError
    from cotune.data.spec import data_spec_from_model

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0, got {args.temperature}")
    model, config = load_for_inference(args)
    spec = data_spec_from_model(model, config.data)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    if args.seed is not None:
        torch.manual_seed(args.seed)
    session = ChatSession(model, spec, sys.stdout, args.max_new_tokens, **sampling)
    for kind in ("image", "audio"):
        if getattr(args, kind):
            session.attach(kind, getattr(args, kind))
    if sys.stdin.isatty():
        session.say(f"chatting with {args.run_dir} ({spec.template} template); commands: {COMMANDS}")
    chat_loop(session, sys.stdin)
    return 0
