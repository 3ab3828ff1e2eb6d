"""Contract rules shared with the Postgres backend (vtasks-protocol): cron expressions read as
crontab reads them, and only the canonical lease-token form is accepted."""

import pytest
import valkey

from conftest import fetch, info

Q = "vt:{c}"
DAY = 86_400_000


def weekday(ms: int) -> int:
    """0 = Sunday, 1 = Monday, ... (UTC). 1970-01-01 was a Thursday."""
    return (ms // DAY + 4) % 7


def next_run(c, name):
    return {s[0].decode(): s[3] for s in c.execute_command("VT.SCHEDULE", "LIST", Q)}[name]


def test_five_field_day_of_week_is_crontab(r):
    for name, expr in [
        ("mon", "0 9 * * 1"),
        ("sun0", "0 9 * * 0"),
        ("sun7", "0 9 * * 7"),
        ("sat", "0 9 * * 6"),
        ("fri", "0 9 * * fri"),
        ("secs", "0 0 9 * * 1"),
    ]:
        assert (
            r.execute_command("VT.SCHEDULE", "SET", Q, name, "CRON", expr, "PAYLOAD", "p") == b"OK"
        )
    m = next_run(r, "mon")
    assert weekday(m) == 1 and m % DAY == 9 * 3_600_000, "0 9 * * 1 fires on Monday at 09:00 UTC"
    assert [weekday(next_run(r, n)) for n in ("sun0", "sun7", "sat", "fri", "secs")] == [
        0,
        0,
        6,
        5,
        1,
    ]
    with pytest.raises(valkey.ResponseError, match="out of range"):
        r.execute_command("VT.SCHEDULE", "SET", Q, "bad", "CRON", "0 9 * * 8", "PAYLOAD", "p")


def test_either_day_field_when_both_are_restricted(r):
    # crontab: the 13th OR any Friday (not only Friday the 13th)
    r.execute_command("VT.SCHEDULE", "SET", Q, "f13", "CRON", "0 0 13 * 5", "PAYLOAD", "p")
    r.execute_command("VT.SCHEDULE", "SET", Q, "fri", "CRON", "0 0 * * 5", "PAYLOAD", "p")
    r.execute_command("VT.SCHEDULE", "SET", Q, "13th", "CRON", "0 0 13 * *", "PAYLOAD", "p")
    assert next_run(r, "f13") == min(next_run(r, "fri"), next_run(r, "13th"))


def test_macros(r):
    for m in ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"):
        r.execute_command("VT.SCHEDULE", "SET", Q, m, "CRON", m, "PAYLOAD", "p")
    assert next_run(r, "@hourly") % 3_600_000 == 0
    assert next_run(r, "@daily") % DAY == 0 and next_run(r, "@daily") == next_run(r, "@midnight")
    w = next_run(r, "@weekly")
    assert w % DAY == 0 and weekday(w) == 0
    assert next_run(r, "@monthly") % DAY == 0 and next_run(r, "@yearly") == next_run(r, "@annually")
    listed = {s[0].decode(): s[2].decode() for s in r.execute_command("VT.SCHEDULE", "LIST", Q)}
    assert listed["@weekly"] == "@weekly"  # the spec is kept as given
    with pytest.raises(valkey.ResponseError, match="macro"):
        r.execute_command("VT.SCHEDULE", "SET", Q, "x", "CRON", "@reboot", "PAYLOAD", "p")


def test_schedule_survives_reload_with_the_same_reading(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "mon", "CRON", "0 9 * * 1", "PAYLOAD", "p")
    before = next_run(r, "mon")
    r.execute_command("DEBUG", "RELOAD")
    assert next_run(r, "mon") == before and weekday(before) == 1


def test_only_canonical_tokens_are_accepted(r):
    n = 200
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", *[x for i in range(n) for x in (f"t{i}", "x")])
    got = {e[1]: e[2].decode() for e in fetch(r, Q, count=n)}
    assert all(t == t.lower() and len(t) == 16 for t in got.values())
    # a token with a leading 0 is where "+" + the other 15 digits parsed to the same number
    zero = next((i for i, t in got.items() if t.startswith("0")), None)
    # another task than `zero` (each is acked once below)
    lettered = next(i for i, t in got.items() if i != zero and any(ch in "abcdef" for ch in t))
    cases = [(lettered, got[lettered].upper())]
    if zero is not None:
        cases += [
            (zero, "+" + got[zero][1:]),
            (zero, " " + got[zero][1:]),
            (zero, "0x" + got[zero][2:]),
        ]
    for i, v in cases:
        assert r.execute_command("VT.ACK", Q, i, v) == 0, v
        assert r.execute_command("VT.FAIL", Q, i, v, "e") is None, v
    for i, t in [(lettered, got[lettered]), (zero, got.get(zero))]:
        if i is not None:
            assert r.execute_command("VT.ACK", Q, i, t[:15]) == 0
            assert r.execute_command("VT.ACK", Q, i, t + "0") == 0
            assert r.execute_command("VT.ACK", Q, i, t) == 1
    assert info(r, Q)["inflight"] == n - len({lettered, zero} - {None})
