"""The old import path of the Valkey Cluster broker (now ``django_vtasks.brokers.valkey_cluster``);
a cluster is configured on ValkeyTaskBackend with ``OPTIONS["CLUSTER"] = True``."""

from ..brokers.valkey_cluster import CROSSSLOT_HINT, ValkeyClusterBroker, in_one_slot

__all__ = ["CROSSSLOT_HINT", "ValkeyClusterBroker", "in_one_slot"]
