"""How far a generation loop (``cotune eval``, ``cotune predict``) has got, with samples/s and an ETA.

On a terminal (stderr is a TTY) a tqdm bar, as training shows its steps; otherwise (a log file, a
pipe, CI) one log line every ``interval`` seconds and one at the end, so a long evaluation is
never silent and a log does not fill with carriage returns. Samples that are skipped count as done
(the ETA is about what is left to look at). Nothing here touches the model.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class GenerationProgress:
    """Progress over ``total`` samples: :meth:`advance` after each batch, :meth:`close` (or the
    ``with`` block's end) when done. ``enabled=False`` shows nothing; ``stream`` is where a bar
    goes (default stderr) and decides bar or log lines by its ``isatty()``."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, interval: float = 10.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.interval, self.clock = total, label, interval, clock
        self.done = 0
        self.enabled = enabled and total > 0
        self.started = self.last_line = clock()
        self.bar = None
        stream = stream if stream is not None else sys.stderr
        if self.enabled and hasattr(stream, "isatty") and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="samples", file=stream, dynamic_ncols=True)

    def __enter__(self) -> GenerationProgress:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def rate(self) -> float | None:
        """Samples per second so far (None before the first sample)."""
        elapsed = self.clock() - self.started
        return self.done / elapsed if self.done and elapsed > 0 else None

    def describe(self) -> str:
        """``label: done/total samples (pct), R samples/s, ETA H:MM:SS``."""
        rate = self.rate()
        eta = clock_text((self.total - self.done) / rate) if rate else "?"
        speed = f"{rate:.2f} samples/s" if rate else "- samples/s"
        return f"{self.label}: {self.done}/{self.total} samples ({100 * self.done / self.total:.0f}%), {speed}, ETA {eta}"

    def advance(self, count: int) -> None:
        """``count`` more samples are done (answered or skipped)."""
        if not self.enabled or count <= 0:
            return
        self.done = min(self.total, self.done + count)
        if self.bar is not None:
            self.bar.update(count)
        elif self.clock() - self.last_line >= self.interval and self.done < self.total:
            self.last_line = self.clock()
            log.info("%s", self.describe())

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        else:
            elapsed = self.clock() - self.started
            rate = self.rate()
            log.info("%s: %d/%d samples in %s%s", self.label, self.done, self.total, clock_text(elapsed),
                     f" ({rate:.2f} samples/s)" if rate else "")
        self.enabled = False
