"""vtasks gauntlet: faults on live traffic, invariants that must hold (issue 6).

The harness process never configures Django: workers and the scheduler run as subprocesses
(`python -m django runworker` with ``gauntlet_settings``); the harness talks to the brokers with
raw VT.* commands (Valkey) or the native ``PgQueue`` (Postgres).
"""
