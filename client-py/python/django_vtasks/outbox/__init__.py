"""Transactional outbox for the Valkey backend (``OPTIONS["OUTBOX"] = True``).

Inside ``transaction.atomic()`` a Valkey enqueue writes the task to the ``vtasks_outbox`` table of
the backend's database, in the caller's transaction; after the commit it is relayed to Valkey at
once, and if Valkey is unreachable then, a worker of the backend relays it later. A committed
transaction never loses its tasks and a rolled-back one never sends them. See docs/tasks.md
("Transactional outbox") and PROTOCOL.md ("Transactional outbox").
"""
