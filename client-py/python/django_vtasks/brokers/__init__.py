"""The brokers: the Broker contract (``django_vtasks.broker``) implemented over each store.

- ``valkey``: the VT.* commands of the vtasks module (``resp`` holds its packed fast path,
  ``valkey_errors`` the errors it raises); ``valkey_cluster``: the same on a Valkey Cluster;
- ``postgres``: the same semantics in Postgres, through the native extension (pg-adapter).

They know nothing of Django's task backends (``django_vtasks.backends``), which build them from
TASKS OPTIONS and hold one each.
"""
