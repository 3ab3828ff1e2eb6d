from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:  # the app registry imports models early: no native extension at import time
    from ..broker import EnqueueRequest


class OutboxTask(models.Model):
    """A task enqueued inside a transaction, not yet relayed to Valkey (one EnqueueRequest)."""

    id = models.CharField(primary_key=True, max_length=128)  # the task (= TaskResult) id
    backend = models.CharField(max_length=200)  # the TASKS alias that relays it
    queue = models.TextField()
    payload = models.BinaryField()
    priority = models.SmallIntegerField(default=0)
    run_at_ms = models.BigIntegerField(null=True)  # absolute: a late relay is not a later run
    unique_key = models.TextField(null=True)
    unique_ttl_ms = models.BigIntegerField(null=True)
    max_attempts = models.IntegerField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "vtasks_outbox"
        indexes = [models.Index(fields=["backend", "created_at"], name="vtasks_outbox_relay")]

    @classmethod
    def of(cls, alias: str, request: EnqueueRequest, now) -> OutboxTask:
        unique = request.unique
        return cls(
            id=request.id,
            backend=alias,
            queue=request.queue,
            payload=request.payload,
            priority=request.priority,
            run_at_ms=request.at_ms,
            unique_key=unique[0] if unique else None,
            unique_ttl_ms=unique[1] if unique else None,
            max_attempts=request.max_attempts,
            created_at=now,
        )

    def request(self) -> EnqueueRequest:
        from ..broker import EnqueueRequest

        unique = None
        if self.unique_key is not None:
            unique = (self.unique_key, int(self.unique_ttl_ms or 1))
        return EnqueueRequest(
            queue=self.queue,
            id=self.id,
            payload=bytes(self.payload),
            priority=self.priority,
            at_ms=self.run_at_ms,
            unique=unique,
            max_attempts=self.max_attempts,
        )
