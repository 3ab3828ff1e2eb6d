"""The job runner: turns a delivery into a job (decode, resolve the task, build its result),
runs it (sync tasks on the worker's threads, async ones on the loop), and settles it: success
to the ack batcher, failure to the broker (retried by the RetryPolicy, else dead-lettered). Single
tasks and batch tasks go through the same preparation and the same failure path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from inspect import iscoroutinefunction
from traceback import format_exception

import orjson
from django.conf import settings as django_settings
from django.db import close_old_connections
from django.tasks.base import TaskError, TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from ..allowlist import TaskRefused
from ..broker import Delivery
from ..conf import settings
from ..context import RunControl, VTaskContext
from ..envelope import decode_envelope
from ..exceptions import TaskCancelled, TimeLimitExceeded
from ..flows import parent_values
from ..result_store import count_not_stored, document
from ..result_store import read as read_stored
from ..results import make_result, resolve_task, result_to_json
from ..retry import RetryPolicy
from ..signals import asend_many, schedule_run
from ..time_limits import TimeLimits
from .reasons import clean_text, fail_reason

logger = logging.getLogger("django_vtasks.worker")

#: seconds a task runs before its worker records it as RUNNING (a result with started_at): tasks
#: that finish sooner cost no extra write (TRACK_RUNNING records every task before it starts)
RUNNING_RECORD_AFTER = 0.2

_set = object.__setattr__


class ResultNotStorable(TypeError):
    """A task's return value cannot be stored as its JSON result."""


# stored in results as the exception's path: keep the name it always had
ResultNotStorable.__module__ = "django_vtasks.worker"


def _call_sync(func, args, kwargs):
    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()


def _exception_path(e: BaseException) -> str:
    t = type(e)
    return f"{t.__module__}.{t.__qualname__}"


class Job:
    """A fetched task, decoded and ready to run."""

    __slots__ = ("delivery", "envelope", "task", "result", "done", "control", "runner")

    def __init__(self, delivery: Delivery, envelope, task, result):
        self.delivery = delivery
        self.envelope = envelope
        self.task = task
        self.result = result
        self.done = False  # finished (its final or retry result is on its way)
        #: what the task observes of its run (cancellation, soft limit; context.py)
        self.control: RunControl | None = None
        #: the asyncio task running an async task function (cancelled on a cancel request)
        self.runner: asyncio.Task | None = None


class JobRunner:
    def __init__(self, worker):
        self.w = worker
        self._task_cache: dict[tuple, object] = {}
        #: seconds a task whose path this code does not know is retried before dead-lettering
        self.unknown_task_grace = float(settings.VTASKS_UNKNOWN_TASK_GRACE or 0)
        #: (queue, id) -> the job running it, for cancel requests (see cancel_requested)
        self.running: dict[tuple[str, str], Job] = {}
        #: VTASKS_TIME_LIMITS, read once; (id(task), queue) -> (task, its TimeLimits)
        self.time_limits_setting = settings.VTASKS_TIME_LIMITS or {}
        self._limits: dict[tuple[int, str], tuple[object, TimeLimits]] = {}

    def limits(self, task, queue: str) -> TimeLimits:
        """TimeLimits.of(task, queue), once per task object and queue (the hot path)."""
        key = (id(task), queue)
        hit = self._limits.get(key)
        if hit is not None and hit[0] is task:
            return hit[1]
        limits = TimeLimits.of(task, queue, self.time_limits_setting)
        if len(self._limits) > 10_000:
            self._limits.clear()
        self._limits[key] = (task, limits)
        return limits

    def overdue(self, grace: float) -> list[tuple[str, str, float]]:
        """(queue, id, limit) of the runs still going ``grace`` seconds after their hard time
        limit: the loop that should have ended them is blocked (an async task that does not
        yield). Called by the heartbeat thread; each run is reported once."""
        now = time.monotonic()
        out: list[tuple[str, str, float]] = []
        try:
            jobs = list(self.running.values())
        except RuntimeError:  # changed while copied (the loop's thread): next beat
            return out
        for job in jobs:
            c = job.control
            if c is None or c.deadline is None or c.limit is None or c.overdue or job.done:
                continue
            if now > c.deadline + grace:
                c.overdue = True
                out.append((job.delivery.queue, job.delivery.id, c.limit))
        return out

    def cancel_requested(self, queue: str, ids: list[str]) -> None:
        """The broker reported these tasks of ``queue`` cancelled (the heartbeat's extend): a
        running async task is cancelled now, a sync task sees ``context.cancel_requested`` (its
        lease is no longer extended). Runs on the loop."""
        for id in ids:
            job = self.running.get((queue, id))
            if job is None or job.control is None or job.control.cancel_requested:
                continue
            job.control.cancel_requested = True
            logger.info("task %s on %s: cancel requested", id, queue)
            if job.runner is not None:
                job.runner.cancel(msg="vtasks: cancel requested")

    # ---- start ----------------------------------------------------------------------------------
    async def start(self, deliveries: list[Delivery], sent: float | None = None) -> None:
        """Prepare and start the fetched ``deliveries`` (a slot taken for each)."""
        w = self.w
        jobs = []
        for d in deliveries:
            try:
                job = await self.prepare(d, own_slot=True)
            except Exception as e:
                await self._hand_back(d, e, own_slot=True)
                continue
            if job is not None:
                jobs.append(job)
        if (
            jobs
            and sent is not None
            and w.fetcher.lease_lapsed(sent, [j.delivery for j in jobs], "prepared")
        ):
            for j in jobs:
                w.slots.settled(j.delivery.queue)
            w.slots.release(len(jobs))
            return
        running: list[Job] = []
        lazy: list[Job] = []
        for j in jobs:
            (running if w.track_running or j.delivery.attempt > 1 else lazy).append(j)
        if lazy and w.result_ttl_ms > 0:
            # one timer per fetch (not per task): those still running then are recorded RUNNING
            asyncio.get_running_loop().call_later(RUNNING_RECORD_AFTER, w.acks.running_is_due, lazy)
        if running and w.result_ttl_ms > 0:
            try:
                await w.broker.astore_results(
                    [(j.delivery.id, result_to_json(j.result), w.result_ttl_ms) for j in running]
                )
            except Exception as e:
                count_not_stored(len(running), f"RUNNING results: {e}")
        for job in jobs:
            w.spawn(self.run(job))

    async def _hand_back(self, d: Delivery, e: Exception, own_slot: bool) -> None:
        """Preparing ``d`` failed on the worker's side (not the task's fault): hand it back
        for a later attempt."""
        logger.exception("could not start task %s on %s", d.id, d.queue, exc_info=e)
        try:
            await self._fail(d, f"worker error before start: {e!r}", self.w.lease_ms, None)
        finally:
            if own_slot:
                self.w.slots.release()

    async def prepare(self, d: Delivery, own_slot: bool = True) -> Job | None:
        """Decode and resolve a delivery; dead-letters it when impossible (and frees its slot
        when it has one of its own: ``own_slot``; a batch's tasks share their batch's)."""
        w = self.w
        try:
            envelope = decode_envelope(d.payload)
        except Exception as e:
            await self._dead_letter(d, f"undecodable payload: {e}", None, own_slot)
            return None
        func_path = envelope["func"]  # a str (decode_envelope checked)
        run_after = None
        try:
            if envelope.get("run_after"):
                run_after = datetime.fromisoformat(envelope["run_after"])
            options = envelope.get("options")
            key = (
                func_path,
                d.queue,
                envelope.get("priority"),
                envelope.get("run_after"),
                tuple(sorted(options.items())) if options else None,
            )
            task = self._task_cache.get(key)
            if task is None:
                task = resolve_task(
                    func_path,
                    queue=d.queue,
                    priority=envelope.get("priority"),
                    run_after=run_after,
                    backend=w.alias,
                    strict=True,
                    options=options,
                )
                if len(self._task_cache) > 10_000:
                    self._task_cache.clear()
                self._task_cache[key] = task
        except Exception as e:
            if isinstance(e, TaskRefused):
                reason = str(e)
            else:
                reason = f"unknown task path {func_path!r}: {e}"
                if isinstance(e, ImportError) and await self._retry_unknown(d, envelope, reason):
                    if own_slot:
                        w.slots.release()
                    return None
                reason = self._unknown_reason(reason, e)
            placeholder = resolve_task(func_path, queue=d.queue, backend=w.alias, strict=False)
            result = self._new_result(d, envelope, placeholder, None)
            result.errors.append(
                TaskError(exception_class_path=_exception_path(e), traceback=clean_text(reason))
            )
            _set(result, "status", TaskResultStatus.FAILED)
            _set(result, "finished_at", timezone.now())
            await self._dead_letter(d, reason, result, own_slot)
            return None
        await self._fill_enqueued_at(d, envelope)
        if envelope.get("after"):
            # a flow's task: the value of the tasks it waited for comes first (flows.py)
            try:
                value = await self._parent_values(envelope)
            except LookupError as e:
                await self._dead_letter(d, str(e), None, own_slot)
                return None
            envelope["args"] = [value, *(envelope.get("args") or [])]
        prior = None
        if d.attempt > 1 and w.result_ttl_ms > 0:
            try:
                raw = await w.broker.aget_result(d.id)
                prior = orjson.loads(read_stored(raw)) if raw else None
            except Exception:
                logger.warning("reading the previous result of %s failed", d.id, exc_info=True)
        try:
            result = self._new_result(d, envelope, task, prior)
        except Exception as e:  # args that cannot be normalised (hand-made payload)
            await self._dead_letter(d, f"invalid task arguments: {e}", None, own_slot)
            return None
        return Job(d, envelope, task, result)

    async def _parent_values(self, envelope: dict):
        """The stored results of the tasks a flow's task waited for, as flows.parent_values
        passes them (the broker released it after they were acked with their results)."""
        after = [str(p) for p in envelope["after"]]
        stored: dict = {}
        for i in range(0, len(after), 500):
            ids = after[i : i + 500]
            raws = await asyncio.gather(*(self.w.broker.aget_result(p) for p in ids))
            stored.update(
                {p: document(raw) for p, raw in zip(ids, raws, strict=True) if raw is not None}
            )
        return parent_values(after, bool(envelope.get("collect")), stored)

    async def _fill_enqueued_at(self, d: Delivery, envelope: dict) -> None:
        """A task fired by a schedule has no client time ("ts"): its enqueued_at is the broker's
        (what get_result() reads before it runs), one VT.GET per scheduled task."""
        if envelope.get("ts"):
            return
        try:
            record = await self.w.broker.aget(d.queue, d.id)
        except Exception as e:
            logger.warning("reading task %s failed: %s", d.id, e)
            return
        if record is not None and record.enqueued_at:
            envelope["ts"] = record.enqueued_at / 1000

    def _new_result(self, d: Delivery, envelope: dict, task, prior: dict | None) -> TaskResult:
        w = self.w
        now = timezone.now()
        enqueued_at = None
        if envelope.get("ts"):
            enqueued_at = datetime.fromtimestamp(float(envelope["ts"]), UTC)
        started_at = now
        errors = []
        worker_ids = []
        if prior:
            if prior.get("started_at"):
                started_at = datetime.fromisoformat(prior["started_at"])
            errors = [TaskError(**e) for e in prior.get("errors") or []]
            worker_ids = list(prior.get("worker_ids") or [])
        # attempts == len(worker_ids): deliveries lost to a crash count too
        while len(worker_ids) < d.attempt - 1:
            worker_ids.append("unknown")
        worker_ids.append(w.worker_id)
        if enqueued_at is not None and not django_settings.USE_TZ:
            enqueued_at = timezone.make_naive(enqueued_at)
        return make_result(
            task,
            d.id,
            TaskResultStatus.RUNNING,
            enqueued_at or now,
            started_at,
            now,
            None,
            envelope.get("args") or [],
            envelope.get("kwargs") or {},
            w.alias,
            errors,
            worker_ids,
        )

    # ---- running --------------------------------------------------------------------------------
    async def _send_task_signal(self, signal, *results: TaskResult) -> None:
        """task_started / task_finished: user sync receivers run in the task threads (where the
        ORM works), Django's log receivers and async receivers on the loop."""
        loop = asyncio.get_running_loop()
        await asend_many(
            signal,
            type(self.w.backend),
            results,
            lambda fn: loop.run_in_executor(self.w.executor, _call_sync, fn, (), {}),
        )

    async def _signal(self, signal, *results: TaskResult) -> None:
        try:
            await self._send_task_signal(signal, *results)
        except Exception:
            logger.exception(
                "a %s receiver failed",
                "task_started" if signal is task_started else "task_finished",
            )

    async def _call(self, func, args, kwargs):
        """Run a task function: async ones on the loop, sync ones on the worker's threads."""
        if iscoroutinefunction(func):
            return await func(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(
            self.w.executor, _call_sync, func, args, kwargs
        )

    async def run(self, job: Job) -> None:
        """Run one task in its slot and settle it (the hot path: no helper coroutines)."""
        w = self.w
        d, task, result = job.delivery, job.task, job.result
        released = False
        try:
            if job.envelope.get("schedule"):
                try:
                    schedule_run.send(
                        type(w.backend), queue=d.queue, schedule=job.envelope["schedule"]
                    )
                except Exception:
                    logger.exception("a schedule_run receiver failed")
            try:
                await self._send_task_signal(task_started, result)
            except Exception:
                logger.exception("a task_started receiver failed")
            args = list(result.args)
            limits = self.limits(task, d.queue)
            control = job.control = RunControl(limits.hard, limits.soft)
            if task.takes_context:
                args.insert(0, VTaskContext(task_result=result, control=control))
            self.running[(d.queue, d.id)] = job
            try:
                if iscoroutinefunction(task.func):
                    job.runner = asyncio.current_task()
                    if limits.hard:
                        value = await self._call_async_limited(
                            task.func(*args, **result.kwargs), limits.hard
                        )
                    else:
                        value = await task.func(*args, **result.kwargs)
                    job.runner = None
                else:
                    fut = asyncio.get_running_loop().run_in_executor(
                        w.executor, _call_sync, task.func, args, result.kwargs
                    )
                    if limits.hard:
                        done, _ = await asyncio.wait([fut], timeout=limits.hard)
                        if not done:
                            # a thread cannot be killed: it keeps its slot until it returns
                            released = True
                            fut.add_done_callback(self._abandoned_done)
                            logger.warning(
                                "task %s %s ran past its time limit (%gs): abandoned, its "
                                "thread keeps a slot until it returns",
                                d.id,
                                task.module_path,
                                limits.hard,
                            )
                            raise TimeLimitExceeded(
                                f"{task.module_path} ran past its time limit of {limits.hard:g}s"
                            )
                    value = await fut
                value = normalize_json(value)
                _set(result, "_return_value", value)
                _set(result, "status", TaskResultStatus.SUCCESSFUL)
                _set(result, "finished_at", timezone.now())
                data = self._success_json(result) if w.result_ttl_ms > 0 else None
            except asyncio.CancelledError as e:
                job.runner = None
                current = asyncio.current_task()
                if control.cancel_requested and current is not None and current.cancelling():
                    current.uncancel()  # our own cancel (cancel_requested), not the worker's
                    self._unfinish(job)
                    await self._task_failed(job, TaskCancelled(f"task {d.id} was cancelled"))
                elif current is not None and current.cancelling():
                    raise
                else:
                    self._unfinish(job)
                    await self._task_failed(job, e)
            except BaseException as e:
                # any exception of the task is its failure: SystemExit (like Django's immediate
                # backend) and KeyboardInterrupt too, which would otherwise take down this
                # worker, then the next one that runs the task again
                job.runner = None
                self._unfinish(job)
                await self._task_failed(job, e)
            else:
                job.done = True
                w.processed += 1
                try:
                    await self._send_task_signal(task_finished, result)
                except Exception:
                    logger.exception("a task_finished receiver failed")
                if control.cancel_requested or control.overdue:
                    # (overdue: set by the heartbeat thread, seen even before the loop ran)
                    current = asyncio.current_task()
                    if control.cancel_requested and current is not None and current.cancelling():
                        current.uncancel()  # the task swallowed our cancel and returned
                    await self._ack_after_cancel(d, data)
                    w.slots.release()
                    released = True
                else:
                    w.slots.release()
                    released = True
                    w.acks.add(d, data)
                w.progress()
        finally:
            job.done = True
            self.running.pop((d.queue, d.id), None)
            if not released:
                w.slots.release()

    @staticmethod
    async def _call_async_limited(coro, seconds: float):
        """Await ``coro`` at most ``seconds``: then it is cancelled and TimeLimitExceeded
        raised (a TimeoutError the task raises itself passes as it is)."""
        try:
            async with asyncio.timeout(seconds) as cm:
                return await coro
        except TimeoutError:
            if cm.expired():
                raise TimeLimitExceeded(f"ran past its time limit of {seconds:g}s") from None
            raise

    def _abandoned_done(self, fut) -> None:
        """The thread of an abandoned sync task returned: its slot is free; its result (or
        error) is discarded."""
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it
        self.w.slots.release()

    async def _ack_after_cancel(self, d: Delivery, data: bytes | None) -> None:
        """A task finished after a cancel request: it stays a success only if the broker still
        holds its lease (else it was dead-lettered as cancelled, and that is its result)."""
        w = self.w
        try:
            acked = await w.broker.aack(d.queue, [(d.id, d.token)])
        except Exception as e:
            logger.warning("acking cancelled task %s failed: %s", d.id, e)
            acked = 0
        w.slots.settled(d.queue)
        if acked and data is not None:
            await self._store_raw(d.id, data)

    async def run_batch(self, queue: str, deliveries: list[Delivery]) -> None:
        """Run the deliveries of a batch queue in one slot: prepared like single tasks, then
        one call per task function with the list of their envelopes, settled like single tasks
        (a failure fails every task of the call, each under its own retry policy)."""
        w = self.w
        try:
            groups: dict[str, list[Job]] = defaultdict(list)
            for d in deliveries:
                try:
                    job = await self.prepare(d, own_slot=False)
                except Exception as e:
                    await self._hand_back(d, e, own_slot=False)
                    continue
                if job is not None:
                    job.envelope["id"] = d.id  # (a scheduled task's envelope has no id)
                    groups[job.task.module_path].append(job)
            for jobs in groups.values():
                await self._run_group(jobs)
            w.progress()
        finally:
            w.slots.release()

    async def _run_group(self, jobs: list[Job]) -> None:
        w = self.w
        task = jobs[0].task
        results = [j.result for j in jobs]
        await self._signal(task_started, *results)
        try:
            await self._call(task.func, [[j.envelope for j in jobs]], {})
        except asyncio.CancelledError as e:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            await self._batch_failed(task, jobs, e)
        except BaseException as e:  # KeyboardInterrupt/SystemExit too: see run()
            await self._batch_failed(task, jobs, e)
        else:
            w.processed += len(jobs)
            now = timezone.now()
            for result in results:
                _set(result, "finished_at", now)
                _set(result, "status", TaskResultStatus.SUCCESSFUL)
            await self._signal(task_finished, *results)
            for job in jobs:
                job.done = True
                w.acks.add(
                    job.delivery, self._result_json(job.result) if w.result_ttl_ms > 0 else None
                )

    async def _batch_failed(self, task, jobs: list[Job], e: BaseException) -> None:
        """Called inside the except: task_finished receivers see the exception."""
        logger.error("batch %s of %d task(s) failed: %s", task.module_path, len(jobs), e)
        for job in jobs:
            self._unfinish(job)
            await self._task_failed(job, e)

    @staticmethod
    def _success_json(result: TaskResult) -> bytes | None:
        try:
            return result_to_json(result)
        except (TypeError, ValueError) as e:  # orjson: ints over 64 bits, lone surrogates
            raise ResultNotStorable(
                f"the return value of {result.task.module_path} cannot be stored as JSON ({e}): "
                "return integers within 64 bits and strings that are valid Unicode (no lone "
                "surrogates), or convert them (e.g. str(value))"
            ) from e

    @staticmethod
    def _unfinish(job: Job) -> None:
        """The task failed after all (or raised): no return value, and no RUNNING record may be
        written from now on (it would overwrite the failure's result)."""
        _set(job.result, "_return_value", None)
        _set(job.result, "status", TaskResultStatus.RUNNING)
        job.done = True

    # ---- failure --------------------------------------------------------------------------------
    async def _task_failed(self, job: Job, e: BaseException) -> None:
        w = self.w
        d, result = job.delivery, job.result
        tb = clean_text("".join(format_exception(e)))
        result.errors.append(TaskError(exception_class_path=_exception_path(e), traceback=tb))
        _set(result, "finished_at", timezone.now())
        cancelled = job.control is not None and job.control.cancel_requested
        retry_ms = RetryPolicy.of(job.task, d.queue).retry_ms_after(d.attempt, e, cancelled)
        if retry_ms is not None:
            _set(result, "status", TaskResultStatus.READY)
            logger.warning(
                "task %s %s failed (attempt %d), retrying in %dms: %s",
                d.id,
                job.task.module_path,
                d.attempt,
                retry_ms,
                e,
            )
        else:
            _set(result, "status", TaskResultStatus.FAILED)
            w.failed += 1
            await self._signal(task_finished, result)  # inside the except
        outcome = await self._fail(d, f"{_exception_path(e)}: {e}\n{tb}", retry_ms, result)
        if retry_ms is not None and outcome == "dead":
            # no attempts left in the broker (crash redeliveries used them)
            _set(result, "status", TaskResultStatus.FAILED)
            w.failed += 1
            await self._store(result)
            await self._signal(task_finished, result)

    async def _store(self, result: TaskResult) -> None:
        if self.w.result_ttl_ms <= 0:
            return
        data = self._result_json(result)
        if data is not None:
            await self._store_raw(result.id, data)

    @staticmethod
    def _result_json(result: TaskResult) -> bytes | None:
        """A failure's result as JSON; None (logged) when it cannot be encoded."""
        try:
            return result_to_json(result)
        except (TypeError, ValueError) as e:
            logger.error("the result of %s cannot be encoded, not stored: %s", result.id, e)
            return None

    async def _store_raw(self, rid: str, data: bytes) -> bool:
        """Store one result once (best effort, logged); whether it was stored."""
        w = self.w
        write = w.acks.running_write
        if write is not None:  # let a RUNNING write in flight land first
            await asyncio.wait([write])
        try:
            await w.broker.astore_result(rid, data, w.result_ttl_ms)
        except Exception as e:
            count_not_stored(1, f"task {rid}: {e}")
            return False
        return True

    async def _fail(
        self, d: Delivery, error: str, retry_ms: int | None, result: TaskResult | None
    ) -> str | None:
        """Store the result, then VT.FAIL (the reason under fail_reason's rule); retried until
        the broker answers. A result that cannot be stored does not hold the task: its failure
        still reaches the broker (get_result then reads the broker's record)."""
        w = self.w
        error = fail_reason(error)
        data = self._result_json(result) if result is not None and w.result_ttl_ms > 0 else None
        backoff = 0.1
        while True:
            if data is not None and await self._store_raw(d.id, data):
                data = None
            try:
                outcome = await w.broker.afail(d.queue, d.id, d.token, error, retry_ms)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.error("failing task %s failed: %s (retrying in %.1fs)", d.id, e, backoff)
                if backoff > 5 and w.stopping:
                    outcome = None  # give up: the lease expires and the task comes back
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        w.slots.settled(d.queue)
        return outcome

    async def _dead_letter(
        self, d: Delivery, reason: str, result: TaskResult | None, own_slot: bool
    ) -> None:
        reason = fail_reason(reason)
        logger.error("task %s on %s dead-lettered: %s", d.id, d.queue, reason)
        self.w.failed += 1
        try:
            await self._fail(d, reason, None, result)
        finally:
            if own_slot:
                self.w.slots.release()

    def _unknown_reason(self, reason: str, e: Exception) -> str:
        if isinstance(e, ImportError) and self.unknown_task_grace > 0:
            return (
                f"{reason} (still unknown after VTASKS_UNKNOWN_TASK_GRACE="
                f"{self.unknown_task_grace:g}s)"
            )
        return reason

    async def _retry_unknown(self, d: Delivery, envelope: dict, reason: str) -> bool:
        """A task path this code cannot import, within VTASKS_UNKNOWN_TASK_GRACE of the enqueue:
        in a rolling deploy an old worker sees a task only the new code has. Hand it back for a
        later attempt (spread so the last attempt falls at the end of the grace) and return True;
        False once the grace or the attempts are used up (the caller dead-letters it)."""
        grace = self.unknown_task_grace
        if grace <= 0:
            return False
        try:
            record = await self.w.broker.aget(d.queue, d.id)
        except Exception as e:
            logger.warning("reading task %s failed: %s", d.id, e)
            record = None
        if record is None:
            return False
        enqueued = float(envelope.get("ts") or record.enqueued_at / 1000)
        left = grace - (time.time() - enqueued)
        attempts_left = record.max_attempts - d.attempt
        if left <= 0 or attempts_left <= 0:
            return False
        retry_ms = max(1, int(left * 1000 / attempts_left))
        logger.warning(
            "task %s on %s: %s; retrying in %.1fs (a deploy in progress? "
            "VTASKS_UNKNOWN_TASK_GRACE leaves %.0fs)",
            d.id,
            d.queue,
            reason,
            retry_ms / 1000,
            left,
        )
        await self._fail(
            d, f"{reason} (retried for VTASKS_UNKNOWN_TASK_GRACE={grace:g}s)", retry_ms, None
        )
        return True
