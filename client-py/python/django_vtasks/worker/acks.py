"""The ack batcher: finished tasks are acked in batches, with their results (one round trip per
queue per flush), and the RUNNING records of tasks that run longer than RUNNING_RECORD_AFTER
are written by the same flusher."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from ..broker import Delivery
from ..results import result_to_json
from .reasons import fail_reason

logger = logging.getLogger("django_vtasks.worker")


class AckBatcher:
    def __init__(self, worker, flush_interval: float):
        self.w = worker
        self.flush_interval = flush_interval
        self._acks: list[tuple[str, str, str, bytes | None]] = []
        #: jobs running for RUNNING_RECORD_AFTER, whose RUNNING result the flusher writes
        self._running_due: list = []
        #: the flusher's RUNNING write in progress: a failure's result waits for it (else the
        #: RUNNING write could land after, and overwrite, the newer result)
        self.running_write: asyncio.Future | None = None
        self._event = asyncio.Event()

    def add(self, d: Delivery, result_json: bytes | None) -> None:
        """Ack ``d`` (storing ``result_json`` first when given) with the next flush."""
        self._acks.append((d.queue, d.id, d.token, result_json))
        self._event.set()

    def running_is_due(self, jobs: list) -> None:
        """Timer callback: the jobs of one fetch have run for RUNNING_RECORD_AFTER; those not
        done are recorded RUNNING with the next flush."""
        due = [j for j in jobs if not j.done]
        if due:
            self._running_due.extend(due)
            self._event.set()

    async def run(self) -> None:
        """The flusher: flush when something is queued (after flush_interval unless a full
        batch of ``concurrency`` acks waits)."""
        while True:
            await self._event.wait()
            if len(self._acks) < self.w.concurrency:
                await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def _record_running(self) -> None:
        """Write the RUNNING results of the jobs that have run for RUNNING_RECORD_AFTER (best
        effort: a failed write is logged, get_result() then reads RUNNING from the broker)."""
        w = self.w
        due, self._running_due = self._running_due, []
        items = []
        for job in due:
            if job.done:
                continue
            try:
                items.append((job.delivery.id, result_to_json(job.result), w.result_ttl_ms))
            except (TypeError, ValueError):
                logger.warning(
                    "the RUNNING result of %s cannot be encoded", job.delivery.id, exc_info=True
                )
        if not items:
            return
        write = self.running_write = asyncio.ensure_future(w.broker.astore_results(items))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("recording %d running task(s) failed: %s", len(items), e)
        finally:
            self.running_write = None

    async def flush(self, final: bool = False) -> None:
        backoff = 0.1
        while self._acks or self._running_due:
            self._event.clear()
            if self._running_due:
                await self._record_running()
            if not self._acks:
                break
            batch, self._acks = self._acks, []
            by_queue: dict[str, list] = defaultdict(list)
            for item in batch:
                by_queue[item[0]].append(item)
            try:
                for queue, items in by_queue.items():
                    try:
                        await self._ack(queue, items)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        # one task's result the broker refuses (too large, say) must not hold
                        # the others: ack them one by one (items shrinks as they go)
                        await self._ack_each(queue, items, e)
                    items.clear()
            except asyncio.CancelledError:
                self._acks[:0] = [i for items in by_queue.values() for i in items]
                raise
            except Exception as e:
                self._acks[:0] = [i for items in by_queue.values() for i in items]
                logger.error("ack failed: %s (retrying in %.1fs)", e, backoff)
                if final and backoff > 5:
                    logger.error(
                        "giving up on %d ack(s); the tasks will be redelivered", len(self._acks)
                    )
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.w.progress()

    async def _ack(self, queue: str, items: list) -> None:
        w = self.w
        pairs = [(i, t) for _, i, t, _ in items]
        results = [(i, r, w.result_ttl_ms) for _, i, _, r in items if r]
        await w.broker.aack_with_results(queue, pairs, results)
        w.slots.settled(queue, len(items))

    async def _ack_each(self, queue: str, items: list, error: Exception) -> None:
        """Ack ``items`` one by one after their batch failed with ``error``. One that fails
        while the broker answers is failed (dead-lettered) with the broker's refusal; when the
        broker does not answer, the error propagates and the rest are retried later."""
        w = self.w
        await w.broker.ainfo(queue)  # raises when the broker is unreachable: retry later
        logger.warning(
            "acking %d task(s) of %s together failed (%s): acking them one by one",
            len(items),
            queue,
            error,
        )
        while items:
            item = items[0]
            try:
                await self._ack(queue, [item])
            except asyncio.CancelledError:
                raise
            except Exception:
                await w.broker.ainfo(queue)  # raises when the broker is unreachable
                try:  # the broker answers: once more, in case that was a passing failure
                    await self._ack(queue, [item])
                    items.pop(0)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as again:
                    e = again
                _, rid, token, data = item
                reason = fail_reason(
                    f"the result of task {rid} ({len(data or b''):,} bytes) could not be stored "
                    f"while the broker took the others ({e}): a result larger than the broker "
                    "accepts (Valkey's proto-max-bulk-len, say)? Return less (e.g. store large "
                    "data elsewhere and return its key)"
                )
                logger.error("task %s on %s failed: %s", rid, queue, reason)
                w.failed += 1
                await w.broker.afail(queue, rid, token, reason, None)
                w.slots.settled(queue)
            items.pop(0)
