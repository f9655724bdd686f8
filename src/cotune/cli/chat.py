"""``cotune chat RUN_DIR [--image PATH] [--audio PATH] [--max-new-tokens M] [--max-length N]
[--temperature T]``: talk to a trained model in the terminal.

Each line read from stdin is a user turn; the conversation so far (with the attached media) is
rendered by the run's template exactly as training renders it (:func:`encode_prompt`), and the
answer is printed token by token as it is generated (a streamer passed through ``generate``).
A prompt holds at most ``--max-length`` tokens (default: the run's ``data.max_length``, the
longest prompt it trained on): when the conversation grows past it, its oldest exchanges are
dropped, and the chat says so. Ctrl-C while an answer is generated stops that answer (what was
shown is kept as the answer) and the chat goes on; at the prompt it leaves, as end of input does.
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
from cotune.data.turn_end import stop_ids
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
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="most tokens of a prompt, history included; the oldest exchanges are dropped to fit "
                             "(default: the run's data.max_length)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T", help="sampling temperature; 0 is greedy (default: 0)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed for sampling (with --temperature > 0)")
    parser.add_argument("--device", help="torch device for the model (default: cuda if available, else cpu)")


class TokenStreamer(AnswerStream):
    """Writes each settled piece of the answer to ``out`` as it is generated (the decoding rules
    are :class:`~cotune.model.stream.AnswerStream`'s, shared with ``cotune serve``), then a newline."""

    def __init__(self, tokenizer, out, stop_ids=None) -> None:
        super().__init__(tokenizer, on_text=self._write, stop_ids=stop_ids)
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

    def __init__(self, model, spec, out, max_new_tokens: int = 256, max_length: int | None = None, **generate_kwargs) -> None:
        self.model, self.spec, self.out = model, spec, out
        self.max_length = max_length or spec.max_length
        # Answers end where training ended them: EOS, or the chat template's end-of-turn token.
        self.stops = stop_ids(spec.tokenizer, spec.template)
        self.settings = {"max_new_tokens": max_new_tokens, "eos_token_id": list(self.stops), **generate_kwargs}
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
        """Streams the answer to ``text`` given the conversation so far; None if it cannot be asked.
        Ctrl-C while it is generated stops the answer: the part shown is kept as the answer."""
        question = Message("user", text)
        ids = self._prompt(question)
        if ids is None:
            return None
        spec = self.spec
        media = {name: tensor for inputs in self.inputs.values() for name, tensor in inputs.items()}
        streamer = TokenStreamer(spec.tokenizer, self.out, self.stops)
        try:
            rows = generate(self.model, torch.tensor([ids]), media=media, streamer=streamer, **self.settings)
        except KeyboardInterrupt:
            answer = streamer.sent
            self.out.write("\n")
            self.say("answer stopped")
            if answer:
                self.history += [question, Message("assistant", answer)]
            return answer
        answer = decode(spec.tokenizer, rows[0], self.stops)
        self.history += [question, Message("assistant", answer)]
        return answer

    def _prompt(self, question: Message) -> list[int] | None:
        """The prompt ids for ``question`` after the history, the oldest exchanges dropped until it
        fits ``max_length`` (said in the chat); None, said why, when it cannot be asked."""
        spec, dropped = self.spec, 0
        media = {kind: [p] for kind, p in self.paths.items()}
        while True:
            sample = Sample("chat", [*self.history[2 * dropped:], question], media)
            try:
                ids = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, self.max_length)
                break
            except SkipSample as skip:
                if skip.reason == "too_long" and 2 * dropped < len(self.history):
                    dropped += 1
                    continue
                hint = "; shorten it, or raise --max-length" if skip.reason == "too_long" else ""
                self.say(f"error: {skip.reason}: {skip.detail}{hint}")
                return None
        if dropped:
            self.history = self.history[2 * dropped:]
            oldest = "the oldest exchange" if dropped == 1 else f"the {dropped} oldest exchanges"
            self.say(f"dropped {oldest} to fit --max-length {self.max_length}")
        log.debug("prompt: %d tokens, %d earlier turns, media: %s", len(ids), len(self.history), ", ".join(sorted(self.paths)) or "none")
        return ids


def chat_loop(session: ChatSession, lines) -> None:
    """Reads user turns and commands from ``lines`` (a text stream) until /quit or its end."""
    interactive = hasattr(lines, "isatty") and lines.isatty()
    while True:
        if interactive:
            session.out.write("you> ")
            session.out.flush()
        try:
            line = lines.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, as end of input does
            session.out.write("\n")
            break
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
    from cotune.model.data_spec import data_spec_from_model

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0, got {args.temperature}")
    if args.max_length is not None and args.max_length < 1:
        raise ConfigError(f"--max-length: must be >= 1, got {args.max_length}")
    model, config = load_for_inference(args)
    spec = data_spec_from_model(model, config.data)
    # A prompt and its answer must fit the LLM's positions: the default leaves the answer its room.
    context = getattr(model.llm.config.get_text_config(), "max_position_embeddings", None) or float("inf")
    max_length = args.max_length or int(min(spec.max_length, context - args.max_new_tokens))
    if max_length < 1 or max_length + args.max_new_tokens > context:
        raise ConfigError(f"--max-length {max_length} plus --max-new-tokens {args.max_new_tokens} is more than the "
                          f"{context} positions the LLM has; lower one of them")
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    if args.seed is not None:
        torch.manual_seed(args.seed)
    session = ChatSession(model, spec, sys.stdout, args.max_new_tokens, max_length, **sampling)
    for kind in ("image", "audio"):
        if getattr(args, kind):
            session.attach(kind, getattr(args, kind))
    if sys.stdin.isatty():
        session.say(f"chatting with {args.run_dir} ({spec.template} template, prompts up to {max_length} tokens); "
                    f"commands: {COMMANDS}; Ctrl-C stops an answer")
    chat_loop(session, sys.stdin)
    return 0
