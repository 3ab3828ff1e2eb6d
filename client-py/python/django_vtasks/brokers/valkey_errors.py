"""The errors of the Valkey brokers, and the one function that turns a valkey-py error into the
BrokerError that says what is wrong and what to do (never a secret or a command argument)."""

from __future__ import annotations

import ssl
from pathlib import Path

import valkey
from valkey.exceptions import ValkeyClusterException

from ..broker import BrokerError
from ..redact import redact

#: what a dead or module-less Valkey raises under a command (cluster clients: their own type)
CLIENT_ERRORS = (
    valkey.ConnectionError,
    valkey.TimeoutError,
    valkey.ResponseError,
    ValkeyClusterException,
)


class ModuleMissing(BrokerError):
    """The Valkey server answers but the vtasks module is not loaded."""


class NotDurable(BrokerError):
    """OPTIONS["DURABLE"]: the tasks went into the primary but the replicas / AOF fsync did not
    confirm them in time. ``ids``: the ids enqueued (they may run; a retry would duplicate);
    ``results``: their TaskResults (sync enqueue/enqueue_many)."""

    def __init__(self, message: str, ids: list[str]):
        super().__init__(message)
        self.ids = ids
        self.results: list = []


class AccessDenied(BrokerError):
    """Valkey refused the credentials (WRONGPASS/NOAUTH) or the user's ACL (NOPERM): a
    configuration error, not an outage."""


def server_words(e: BaseException) -> str:
    """A client error's message without the command valkey-py quotes for pipelines
    ("Command # 2 (VT.ENQUEUE ... <payloads>) of pipeline caused error: ..."): the server's own
    words, never the arguments (task payloads, results)."""
    text = str(e.args[0]) if getattr(e, "args", None) else str(e)
    head, sep, tail = text.rpartition(" of pipeline caused error: ")
    if sep and head.startswith("Command # "):
        text = tail
    # "unknown command 'X', with args beginning with: <the first arguments>"
    text = text.split(", with args beginning with:", 1)[0]
    return text if len(text) <= 500 else text[:500] + "..."


def describe_error(e: BaseException, doing: str, where: str, redact_text=redact) -> BrokerError:
    """The BrokerError for a valkey-py error ``e`` raised while ``doing`` (a verb: "enqueue",
    "fetch", "connect"...) against the server at ``where`` (a redacted URL): what is wrong and
    what to do, in one line, with no secret and no command argument."""
    if isinstance(e, BrokerError):
        return e
    words = redact_text(server_words(e))
    upper = words.upper()
    if (
        isinstance(e, valkey.AuthenticationError)
        or upper.startswith(("WRONGPASS", "NOAUTH"))
        or "INVALID PASSWORD" in upper
        or "INVALID USERNAME-PASSWORD" in upper
    ):
        return AccessDenied(
            f"cannot {doing}: Valkey at {where} refused the credentials ({words}); check the user "
            "and password (OPTIONS['PASSWORD'] / OPTIONS['USERNAME'] or BROKER_URL)"
        )
    if upper.startswith("NOPERM") or isinstance(e, valkey.exceptions.NoPermissionError):
        return AccessDenied(
            f"cannot {doing}: the Valkey user of {where} lacks an ACL permission ({words}); grant "
            "it the VT.* commands it needs and the queue and result keys of the prefix"
        )
    if (
        isinstance(e, valkey.ResponseError)
        and "unknown command" in words.lower()
        and "'vt." in words.lower()
    ):
        return ModuleMissing(
            f"cannot {doing}: Valkey at {where} does not have the vtasks module ({words}); start "
            f"it with --loadmodule {module_path_hint()} (or MODULE LOAD it)"
        )
    if isinstance(e, valkey.ResponseError):  # e.g. OOM: the server's own words
        return BrokerError(f"Valkey at {where} refused the {doing}: {words}")
    if _tls_failure(e, words):
        return BrokerError(
            f"cannot {doing}: the TLS handshake with Valkey at {where} failed ({words}); the "
            "server's certificate must chain to a CA you trust (add ?ssl_ca_certs=/path/ca.pem to "
            "BROKER_URL for a private CA) and name the host of BROKER_URL (connect by that name, "
            "or set OPTIONS['SSL_CHECK_HOSTNAME'] = False for a server reached by IP address)"
        )
    if isinstance(
        e, (valkey.ConnectionError, valkey.TimeoutError, ValkeyClusterException, OSError)
    ):
        return BrokerError(
            f"cannot {doing}: Valkey at {where} is unreachable ({words}); is valkey-server "
            "running there (with --loadmodule libvtasks.so), and is OPTIONS['BROKER_URL'] right?"
        )
    return BrokerError(f"cannot {doing} on Valkey at {where}: {type(e).__name__}: {words}")


def module_path_hint() -> str:
    try:
        import django_vtasks

        root = Path(django_vtasks.__file__).resolve().parents[3]
        candidate = root / "target" / "release" / "libvtasks.so"
        if candidate.exists():
            return str(candidate)
    except Exception:
        pass
    return "/path/to/libvtasks.so"


def _tls_failure(e: BaseException, words: str) -> bool:
    """A TLS handshake failure (untrusted certificate, host name mismatch), which valkey-py
    reports as a ConnectionError like an unreachable server."""
    seen: BaseException | None = e
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in words or "[SSL:" in words
