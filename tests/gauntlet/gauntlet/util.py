"""Small helpers: bounded polling (never fixed sleeps for outcomes), free ports, seeded ids."""

import socket
import time


class Timeout(AssertionError):
    pass


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # a probe may fail while a server restarts
            last_exc = e
        if time.monotonic() >= deadline:
            raise Timeout(
                f"timed out after {timeout:.1f}s waiting for {what}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def now() -> float:
    return time.time()
