"""One clear line per failure, not a traceback per retry.

A worker retries what fails (broker down at start-up, a fetch against a server without the module,
Postgres gone under the maintenance loop). :class:`RetryLog` logs such a failure once when it
starts or changes, then a reminder at most every ``remind`` seconds, and once when it clears; the
message is the broker's own (a :class:`~django_vtasks.broker.BrokerError` says what is wrong and
what to do, with secrets masked), never a stack trace (that goes to DEBUG).
"""

from __future__ import annotations

import logging
import time

from .broker import BrokerError
from .redact import redact


def error_text(e: BaseException) -> str:
    """A failure in one line: a BrokerError's message (it says what to do), else type: message."""
    text = str(e) if isinstance(e, BrokerError) else f"{type(e).__name__}: {e}"
    return redact(" ".join(text.split()))


class RetryLog:
    def __init__(self, logger: logging.Logger, what: str, remind: float = 60.0):
        self.logger = logger
        self.what = what
        self.remind = remind
        self._last_text: str | None = None
        self._last_logged = 0.0
        self._repeats = 0

    @property
    def failing(self) -> bool:
        return self._last_text is not None

    def failed(self, e: BaseException, retry_in: float) -> None:
        text = error_text(e)
        now = time.monotonic()
        self.logger.debug("%s failed", self.what, exc_info=e)
        if text != self._last_text or now - self._last_logged >= self.remind:
            again = f" (failed {self._repeats + 1} times)" if text == self._last_text else ""
            self.logger.error(
                "%s failed%s: %s (retrying in %.1fs)", self.what, again, text, retry_in
            )
            self._last_logged = now
            if text != self._last_text:
                self._repeats = 0
        self._repeats += 1
        self._last_text = text

    def ok(self) -> None:
        if self._last_text is not None:
            self.logger.warning("%s works again (after %d failure(s))", self.what, self._repeats)
            self._last_text = None
            self._repeats = 0
