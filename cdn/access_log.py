"""Access logs: one JSON object per request, as a plain line on stdout, through the `cdn.access` logger.

An operator who configures the `cdn.access` logger (handlers, level) keeps that
configuration; otherwise the first service that asks for the logger gives it a
`StdoutLines` handler.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

ACCESS_LOGGER = "cdn.access"
BACKLOG = 10_000  # lines waiting to be written before new ones are dropped
WRITE_INTERVAL = 0.05  # seconds between writes: one write of many lines, not a thread wake-up per request
_setting_up = threading.Lock()


class StdoutLines(logging.Handler):
    """Each record's message as one line on stdout, written by a thread of its own every `WRITE_INTERVAL`.

    The request path only appends the line to a list, so a stdout that is slow or not read at all
    (a pipe nobody drains, a stalled log shipper) never blocks the event loop; while `backlog`
    lines wait, new ones are dropped and counted in `dropped`.
    """

    def __init__(self, backlog: int = BACKLOG) -> None:
        super().__init__()
        self.backlog = backlog
        self.dropped = 0
        self._pending: list[str] = []  # guarded by the handler's lock, which `handle` holds around `emit`
        self._writing = False
        # Never stopped, not even by close(): logging.config.dictConfig (uvicorn runs it at start-up)
        # closes every existing handler but leaves it attached to its logger, still in use.
        self._writer = threading.Thread(target=self._write_forever, name="cdn-access-log", daemon=True)
        self._writer.start()

    @property
    def unwritten(self) -> int:
        """Lines waiting to be written (not counting a write under way)."""
        return len(self._pending)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._pending) >= self.backlog:
            self.dropped += 1
        else:
            self._pending.append(record.getMessage())

    def flush(self) -> None:
        """Wait until the waiting lines are written, at most a second (stdout may be stalled); logging calls it at exit."""
        deadline = time.monotonic() + 1.0
        while (self._pending or self._writing) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _write_forever(self) -> None:
        while True:
            time.sleep(WRITE_INTERVAL)
            with self.lock:
                lines, self._pending = self._pending, []
                self._writing = bool(lines)
            if not lines:
                continue
            try:
                # sys.stdout looked up per write: tests and servers may swap it.
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # closed or broken stdout: the lines are lost, say how many
                with self.lock:
                    self.dropped += len(lines)
            self._writing = False


def access_logger() -> logging.Logger | None:
    """The `cdn.access` logger, given a `StdoutLines` handler if it has none; None when it would drop INFO lines."""
    logger = logging.getLogger(ACCESS_LOGGER)
    with _setting_up:
        if not logger.handlers:
            logger.addHandler(StdoutLines())
            logger.propagate = False  # lines on stdout only, not again through the root logger's handlers
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
    return logger if logger.isEnabledFor(logging.INFO) else None


def dropped_lines() -> int:
    """Access log lines this process dropped because stdout could not keep up."""
    return sum(h.dropped for h in logging.getLogger(ACCESS_LOGGER).handlers if isinstance(h, StdoutLines))
