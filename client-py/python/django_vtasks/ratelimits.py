"""Per-queue rate limits from a backend's OPTIONS["RATE_LIMITS"]: at most N tasks of a queue
start per period across all workers, enforced by the broker (PROTOCOL.md "Rate limits")::

    TASKS = {"default": {
        "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
        "OPTIONS": {
            "BROKER_URL": "valkey://localhost:6379/0",
            "RATE_LIMITS": {
                "emails": "100/s",                      # 100 per second (burst 100)
                "reports": "10/m",                      # 10 per minute
                "api": {"limit": 5, "per": "500ms", "burst": 20},
                "old": None,                            # remove the limit the broker has
            },
        },
    }}

Units: ``ms``, ``s``, ``m``, ``h``, ``d``, with an optional count (``"30/5s"``: 30 per 5 seconds).
The burst (tokens saved up while the queue is idle, default: the limit) is how many may start at
once after a quiet period. Every worker applies the setting when it starts; applying the same
limit again keeps the tokens there are (no fresh burst on restarts). The system check
``django_vtasks.E021`` refuses a malformed entry when Django starts.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

from . import _native

logger = logging.getLogger("django_vtasks.worker")

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d)\s*$")


class RateLimit(NamedTuple):
    """``limit`` tasks per ``per_ms`` milliseconds; ``burst`` tokens at most."""

    limit: int
    per_ms: int
    burst: int


def _period_ms(value, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: bad period {value!r}")
    if isinstance(value, (int, float)):
        ms = int(value * 1000)  # a number is seconds
    else:
        m = _PERIOD.match(str(value))
        if not m:
            raise ValueError(
                f"{where}: bad period {value!r} (use e.g. 's', '5s', '500ms', 'm', 'h')"
            )
        ms = int(float(m.group(1) or 1) * _UNITS_MS[m.group(2)])
    top = _native.LIMITS["max_rate_period_ms"]
    if not 1 <= ms <= top:
        raise ValueError(f"{where}: the period must be 1 ms to {top} ms (a day)")
    return ms


def _tokens(value, where: str, what: str) -> int:
    top = _native.LIMITS["max_rate_tokens"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ValueError(f"{where}: {what} must be an integer from 1 to {top}")
    return value


def parse_rate(value, where: str = "rate limit") -> RateLimit | None:
    """A RATE_LIMITS value as a RateLimit (None: no limit); ValueError says what is wrong."""
    if value is None:
        return None
    if isinstance(value, str):
        count, sep, period = value.partition("/")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"{where}: bad rate {value!r} (use e.g. '100/s', '10/m', '30/5s')")
        limit = _tokens(int(count), where, "the count")
        return RateLimit(limit, _period_ms(period, where), limit)
    if isinstance(value, dict):
        unknown = set(value) - {"limit", "per", "burst"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (use limit, per, burst)")
        limit = _tokens(value.get("limit"), where, "'limit'")
        burst = _tokens(value.get("burst", limit), where, "'burst'")
        return RateLimit(limit, _period_ms(value.get("per", "s"), where), burst)
    raise ValueError(f"{where}: a rate is '100/s', a dict with limit/per/burst, or None")


def configured(options: dict) -> dict[str, RateLimit | None]:
    """{queue: limit or None} of a backend's OPTIONS["RATE_LIMITS"] (ValueError if malformed)."""
    value = options.get("RATE_LIMITS") or {}
    if not isinstance(value, dict):
        raise ValueError("OPTIONS['RATE_LIMITS'] must be a dict of queue -> rate")
    return {q: parse_rate(v, f"OPTIONS['RATE_LIMITS'][{q!r}]") for q, v in value.items()}


async def apply(broker, options: dict) -> None:
    """Puts the configured limits into the broker (a worker does at start). A limit already in
    place is left as it is (its tokens too)."""
    for queue, rl in configured(options).items():
        if rl is None:
            if await broker.arate_limit_off(queue):
                logger.info("rate limit of %s removed", queue)
        elif await broker.arate_limit_set(queue, rl.limit, rl.per_ms, rl.burst):
            logger.info("rate limit of %s: %d per %d ms (burst %d)", queue, *rl)


def rate_limit_checks(backend) -> list:
    """System-check messages about a backend's OPTIONS["RATE_LIMITS"]."""
    from django.core import checks

    try:
        configured(backend.options)
    except ValueError as e:
        return [
            checks.Error(
                f"Task backend {backend.alias!r}: {e}",
                hint='Example: "RATE_LIMITS": {"emails": "100/s", "api": {"limit": 5, '
                '"per": "500ms", "burst": 20}}',
                obj=backend,
                id="django_vtasks.E021",
            )
        ]
    return []
