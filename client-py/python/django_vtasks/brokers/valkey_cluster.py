"""The Valkey backend on a Valkey Cluster (OPTIONS ``CLUSTER: True``).

The VT.* commands are the same; valkey-py's cluster clients route each one by its key (the
module declares key specs, so movable-key commands such as VT.FETCHBATCH route too). What
differs from a single server:

- one VT.FETCHBATCH reads queues of one hash slot only: a worker consuming several queues needs
  a prefix with a hash tag (``VTASKS_VALKEY_PREFIX = "vt:{myapp}:"`` puts every queue key,
  ``vt:{myapp}:{queue}``, in the slot of ``myapp``); ``check_queues`` says so before a worker
  starts;
- commands without a key go to every primary (VT.QUEUES) or every node (CONFIG SET vtasks.*);
- the packed single-connection fast paths of ValkeyBroker need one connection pool: here
  (``packs_commands = False``) the same commands go through cluster pipelines, which split them
  per node.
"""

from __future__ import annotations

import asyncio

import valkey
import valkey.asyncio.cluster as acluster
from valkey.cluster import ValkeyCluster
from valkey.crc import key_slot
from valkey.exceptions import ValkeyClusterException

from ..broker import BrokerError
from ..redact import redact_url
from .valkey import ValkeyBroker, queue_key

CROSSSLOT_HINT = (
    "one VT.FETCHBATCH can only read queues in one hash slot: give the prefix a "
    "hash tag, e.g. VTASKS_VALKEY_PREFIX = 'vt:{myapp}:' (or OPTIONS['PREFIX']), "
    "or run one worker per queue"
)


def in_one_slot(prefix: str, queues) -> bool:
    """Whether one VT.FETCHBATCH can read all ``queues`` (their keys share a hash slot)."""
    return len({key_slot(queue_key(prefix, q).encode()) for q in queues}) <= 1


class ValkeyClusterBroker(ValkeyBroker):
    packs_commands = False  # one pool per node: ValkeyBroker's pipeline paths
    url: str  # always given (ValkeyBroker's may be None with a CONNECTION_POOL)

    def __init__(
        self,
        url: str,
        prefix: str = "vt:",
        max_connections: int = 50,
        connect_options: dict | None = None,
    ):
        super().__init__(None, None, prefix, max_connections, connect_options)
        self.url = url
        self.safe_url = redact_url(url)
        try:
            self._client = ValkeyCluster.from_url(
                url, max_connections=max_connections, **self.connect_options
            )
        except (valkey.ValkeyError, ValkeyClusterException) as e:
            error = self.error(e, "connect")
            if type(error) is BrokerError and "unreachable" in str(error):
                error = BrokerError(
                    f"cannot reach the Valkey cluster at {self.safe_url} "
                    f"({self._redact(e)}); is valkey-server running there in cluster mode "
                    "(with --loadmodule libvtasks.so), and is OPTIONS['BROKER_URL'] right?"
                )
            raise error from e

    # ---- clients --------------------------------------------------------------------------------
    # a cluster client, not a Valkey one: the same commands, routed per slot (packs_commands =
    # False keeps ValkeyBroker's single-pool paths away from it)
    @property
    def aclient(self) -> acluster.ValkeyCluster:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = acluster.ValkeyCluster.from_url(
                self.url, max_connections=self.max_connections, **self.connect_options
            )
            self._aclients[loop] = client
        return client

    def check_queues(self, queues):
        if not in_one_slot(self.prefix, queues):
            raise BrokerError(
                f"queues {sorted(queues)} are in different cluster slots with the "
                f"prefix {self.prefix!r}: {CROSSSLOT_HINT}"
            )

    # ---- enqueue: one cluster pipeline (split per node), each command's refusal reported per
    # request (EnqueueFailed), also when there is one command -------------------------------
    async def aenqueue_now(self, requests):
        commands = self._enqueue_commands(requests)
        async with self.aclient.pipeline() as pipe:
            for args, _ in commands:
                pipe.execute_command(*args)
            replies = await pipe.execute(raise_on_error=False)
        return self._map_enqueue(requests, commands, replies)

    def _enqueue_sync(self, requests):
        commands = self._enqueue_commands(requests)
        pipe = self.client.pipeline()
        for args, _ in commands:
            pipe.execute_command(*args)
        return self._map_enqueue(requests, commands, pipe.execute(raise_on_error=False))

    # ---- acks with results: results first. A cluster pipeline sends each node its commands
    # concurrently, so a VT.ACK could land before the SET of its result on another node; a
    # flow's next task, released by the ack, must find the result (flows.py) ---------------------
    def ack_with_results(self, queue, pairs, results):
        for rid, data, ttl in results:
            self.store_result(rid, data, ttl)
        return self.ack(queue, pairs) if pairs else 0

    async def aack_with_results(self, queue, pairs, results):
        await self.astore_results(results)
        return await self.aack(queue, pairs) if pairs else 0

    # ---- keyless commands: every primary --------------------------------------------------------
    def queues(self):
        replies = self.client.execute_command("VT.QUEUES", target_nodes=ValkeyCluster.PRIMARIES)
        return self._queues([k for keys in replies.values() for k in keys or []])

    async def aqueues(self):
        replies = await self.aclient.execute_command(
            "VT.QUEUES", target_nodes=acluster.ValkeyCluster.PRIMARIES
        )
        return self._queues([k for keys in replies.values() for k in keys or []])

    async def aset_dlq_cap(self, cap: int) -> None:
        # replicas too: the cap must hold on whichever node a failover promotes
        await self.aclient.execute_command(
            "CONFIG",
            "SET",
            "vtasks.dlq-cap",
            int(cap),
            target_nodes=acluster.ValkeyCluster.ALL_NODES,
        )

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self):  # (aclose: ValkeyBroker's closes this loop's cluster client)
        if self._client is not None:
            self._client.close()
