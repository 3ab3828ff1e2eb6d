"""The worker's ack flush on Valkey, packed natively (_native.pack_ack_results, sent by
brokers/resp.py): what the server receives is one SET per stored result and one VT.ACK."""

import asyncio
import os

import pytest
from django.tasks import task_backends

from django_vtasks import _native
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def valkey_broker():
    if not os.environ.get("VTASKS_TEST_VALKEY_URL"):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    return task_backends["valkey"].broker


def test_one_flush_stores_the_results_to_keep_and_acks_every_task(valkey_broker, queue):
    for i in range(4):
        t.add.using(backend="valkey", queue_name=queue).enqueue(i, i)
    broker = valkey_broker
    ds = broker.fetch([queue], "packer", 10)
    assert len(ds) == 4
    # bytes ids and tokens are sent as they are; a result with no data or no TTL is not stored
    pairs = [(d.id, d.token) for d in ds[:3]] + [(ds[3].id.encode(), ds[3].token.encode())]
    results = [
        (ds[0].id, b'{"r": 0}', 60_000),
        (ds[1].id, None, 60_000),
        (ds[2].id, b'{"r": 2}', 0),
        (ds[3].id, b'{"r": "\xc3\xa9"}', 60_000),
    ]
    assert asyncio.run(broker.aack_with_results(queue, pairs, results)) == 4
    assert broker.get_result(ds[0].id) == b'{"r": 0}'
    assert broker.get_result(ds[1].id) is None and broker.get_result(ds[2].id) is None
    assert broker.get_result(ds[3].id) == '{"r": "é"}'.encode()
    info = broker.info(queue)
    assert info["inflight"] == 0 and info["acked_total"] == 4


def test_packed_commands_count_and_bad_arguments():
    packed, n = _native.pack_ack_results("vt:result:", "vt:{q}", [("a", "t")], [("a", b"x", 5)])
    assert n == 2
    assert packed == (
        b"*5\r\n$3\r\nSET\r\n$11\r\nvt:result:a\r\n$1\r\nx\r\n$2\r\nPX\r\n$1\r\n5\r\n"
        b"*4\r\n$6\r\nVT.ACK\r\n$6\r\nvt:{q}\r\n$1\r\na\r\n$1\r\nt\r\n"
    )
    assert _native.pack_ack_results("p:", "k", [], []) == (b"", 0)
    with pytest.raises(TypeError, match="must be str or bytes, not int"):
        _native.pack_ack_results("p:", "k", [(1, "t")], [])
