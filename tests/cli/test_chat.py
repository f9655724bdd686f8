"""``cotune chat`` driven through stdin: streamed answers, multi-turn history and /reset, media
commands whose errors stay in the chat, end of input."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys

import torch
from PIL import Image

from cotune.cli.chat import TokenStreamer
from cotune.cli.main import main
from cotune.testing import tiny


class Recording(io.StringIO):
    """A text stream that also keeps every write call (to see an answer arrive in pieces)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class CtrlCOnce(Recording):
    """Presses Ctrl-C (a real SIGINT to this process) right after the first piece of an answer."""

    def __init__(self) -> None:
        super().__init__()
        self.pressed = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if not self.pressed and text.strip() and not text.startswith("["):
            self.pressed = True
            signal.raise_signal(signal.SIGINT)
        return written


def chat(monkeypatch, run_dir, lines: str, *args: str, out: Recording | None = None) -> tuple[int, Recording, str]:
    """Runs ``cotune chat`` in this process with ``lines`` as stdin; (exit code, stdout, stderr)."""
    out, err = out or Recording(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = main(["--log-level", "debug", "chat", str(run_dir), "--max-new-tokens", "6", *args])
    return code, out, err.getvalue()


def prompts(err: str) -> list[tuple[int, int, str]]:
    """(prompt tokens, earlier turns, media kinds) of every answered turn, from the debug log."""
    found = re.findall(r"prompt: (\d+) tokens, (\d+) earlier turns, media: (.*)", err)
    return [(int(a), int(b), media) for a, b, media in found]


def test_streamer_writes_each_token_and_waits_for_whole_characters():
    tok = tiny.make_tokenizer()
    text = "the red circle é"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # é is two byte-level tokens
    out = Recording()
    streamer = TokenStreamer(tok, out)
    streamer.put(torch.tensor([[5, 6, 7]]))  # the prompt, pushed first by generate: not shown
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.put(torch.tensor([tok.eos_token_id]))
    streamer.end()
    assert out.getvalue() == text + "\n"
    assert len(out.writes) >= len(text.split()) + 1 and not any("\ufffd" in w for w in out.writes)


def test_history_reset_and_streamed_answers(monkeypatch, trained_run):
    code, out, err = chat(monkeypatch, trained_run, "what colour\nand the shape\n/reset\nwhat colour\n/quit\nnever asked\n")
    assert code == 0
    (first, turns1, _), (second, turns2, _), (third, turns3, media) = prompts(err)
    assert (turns1, turns2, turns3, media) == (0, 2, 0, "none")
    assert second > first and third == first  # the history grew the prompt; /reset emptied it
    lines = out.getvalue().splitlines()
    assert lines[2] == "[conversation cleared]" and len(lines) == 4
    assert lines[0] == lines[3] and lines[0]  # same prompt after /reset: same greedy answer
    pieces = out.writes[: out.writes.index("\n")]
    assert len(pieces) >= 2 and "".join(pieces) == lines[0]  # written as it was generated


def test_media_commands_and_errors_stay_in_the_chat(monkeypatch, trained_run, tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    script = (
        f"what colour\n/image {tmp_path / 'missing.png'}\n/image {tmp_path / 'bad.png'}\n/audio {tmp_path / 'a.wav'}\n"
        "/reset\nwhat colour\n/image\n/reset\nwhat colour\n"
    )  # ends without /quit: end of input leaves
    code, out, err = chat(monkeypatch, trained_run, script, "--image", str(tmp_path / "red.png"))
    assert code == 0
    messages = [line for line in out.getvalue().splitlines() if line.startswith("[")]
    assert messages[0] == f"[image: {tmp_path / 'red.png'}]"
    assert messages[1].startswith("[error: missing_media: ") and messages[1].endswith("image unchanged]")
    assert messages[2].startswith("[error: unreadable_media: ") and str(tmp_path / "bad.png") in messages[2]
    assert messages[3] == "[error: this model has no audio encoder (it reads: image)]"
    assert messages[5] == "[image detached]"
    # Failed /image commands left the image attached; /image alone detached it.
    assert [(turns, media) for _, turns, media in prompts(err)] == [(0, "image"), (0, "image"), (0, "none")]
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("[")]
    assert len(lines) == 3 and lines[0] == lines[1]


def test_end_of_input_ends_a_chat_process(trained_run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "cotune", "--log-level", "warning", "chat", str(trained_run), "--max-new-tokens", "3"],
                          input="what colour\n", capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and "you>" not in done.stdout and "Traceback" not in done.stderr


def test_a_long_conversation_drops_its_oldest_exchanges_to_fit(monkeypatch, trained_run):
    script = "what colour\n" * 3
    code, _, err = chat(monkeypatch, trained_run, script, "--max-length", "250")
    (p1, t1, _), (p2, t2, _), (p3, t3, _) = prompts(err)
    assert code == 0 and (t1, t2, t3) == (0, 2, 4) and p1 < p2 < p3
    # One token short of the third prompt: it drops its oldest exchange(s) until it fits, and says so.
    limit = p3 - 1
    code, out, err = chat(monkeypatch, trained_run, script, "--max-length", str(limit))
    (q1, u1, _), (q2, u2, _), (q3, u3, _) = prompts(err)
    assert code == 0 and (q1, u1, q2, u2) == (p1, 0, p2, 2) and u3 < 4 and q3 <= limit
    dropped = (4 - u3) // 2
    oldest = "the oldest exchange" if dropped == 1 else f"the {dropped} oldest exchanges"
    assert [line for line in out.getvalue().splitlines() if line.startswith("[")] == [f"[dropped {oldest} to fit --max-length {limit}]"]
    assert len([line for line in out.getvalue().splitlines() if not line.startswith("[")]) == 3  # three answers
    # A question that cannot fit alone is said in the chat, which goes on.
    code, out, err = chat(monkeypatch, trained_run, "what colour\n/reset\n", "--max-length", str(p1 - 1))
    lines = out.getvalue().splitlines()
    assert code == 0 and lines[0].startswith("[error: too_long: ") and lines[0].endswith("raise --max-length]")
    assert lines[1] == "[conversation cleared]"


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(monkeypatch, trained_run):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # SIGINT raises KeyboardInterrupt
    code, out, err = chat(monkeypatch, trained_run, "what colour\nwhat colour\n", "--max-new-tokens", "12", out=CtrlCOnce())
    lines = out.getvalue().splitlines()
    assert code == 0 and out.pressed and lines[1] == "[answer stopped]" and len(lines) == 3, lines
    full = lines[2]  # the second answer ran to its end
    assert full and lines[0] and len(lines[0]) <= len(full)
    # The part shown was kept as the first answer: the second question had it as history.
    assert [turns for _, turns, _ in prompts(err)] == [0, 2]
