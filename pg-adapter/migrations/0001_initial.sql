-- vtasks Postgres schema, version 1.
-- Idempotent (IF NOT EXISTS / CREATE OR REPLACE) and transactional: it may be applied by the
-- crate's migrate() or by the Django migration, in any order, any number of times.
-- Contains no percent sign, so it can also go through DB-API drivers unchanged.

CREATE TABLE IF NOT EXISTS vtasks_schema (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Live tasks. state: 'r' ready, 'd' delayed (run_after in the future when written), 'i' in flight.
-- Finished tasks are deleted at once (ack) or moved to vtasks_dead, so the table holds only work.
CREATE TABLE IF NOT EXISTS vtasks_task (
    queue         text NOT NULL,
    id            text NOT NULL,
    state         "char" NOT NULL,
    priority      smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    run_after     timestamptz NOT NULL DEFAULT now(),
    attempt       int NOT NULL DEFAULT 0,
    max_attempts  int NOT NULL DEFAULT 3,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    worker        text,
    token         text,
    deadline      timestamptz,
    unique_key    text,
    error         text,
    failed_at     timestamptz,
    payload       bytea NOT NULL,
    PRIMARY KEY (queue, id)
);
-- Hot table: vacuum early and without throttling, leave room for HOT updates.
ALTER TABLE vtasks_task SET (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
-- Fetch path: ready rows in fetch order.
CREATE INDEX IF NOT EXISTS vtasks_task_ready ON vtasks_task (queue, priority DESC, run_after, seq)
    WHERE state = 'r';
-- Promotion path: delayed rows by due time (so future rows never slow the fetch scan).
CREATE INDEX IF NOT EXISTS vtasks_task_delayed ON vtasks_task (queue, run_after) WHERE state = 'd';
-- Rescue / extend / peek inflight.
CREATE INDEX IF NOT EXISTS vtasks_task_inflight ON vtasks_task (queue, deadline) WHERE state = 'i';

-- Dead-letter entries, capped per queue (vtasks_dlq.count is the exact size).
CREATE TABLE IF NOT EXISTS vtasks_dead (
    queue         text NOT NULL,
    seq           bigint NOT NULL,
    id            text NOT NULL,
    priority      smallint NOT NULL,
    attempt       int NOT NULL,
    max_attempts  int NOT NULL,
    enqueued_at   timestamptz NOT NULL,
    failed_at     timestamptz NOT NULL,
    error         text NOT NULL,
    payload       bytea NOT NULL,
    PRIMARY KEY (queue, seq)
);
CREATE INDEX IF NOT EXISTS vtasks_dead_id ON vtasks_dead (queue, id);

-- Per-queue dead-letter bookkeeping. Its row lock serialises dead-lettering within one queue,
-- which is what keeps the cap exact under concurrent failers (always taken after task rows).
CREATE TABLE IF NOT EXISTS vtasks_dlq (
    queue    text PRIMARY KEY,
    seq      bigint NOT NULL DEFAULT 0,
    count    int NOT NULL DEFAULT 0,
    evicted  bigint NOT NULL DEFAULT 0
);

-- Counters: every operation appends one small delta row (no row is updated, so no hot row and
-- no lock waits, also inside a caller's long Django transaction); maintain() folds the deltas
-- into vtasks_stats. VT.INFO totals = vtasks_stats + sum(vtasks_stats_delta).
CREATE TABLE IF NOT EXISTS vtasks_stats (
    queue           text PRIMARY KEY,
    enqueued_total  bigint NOT NULL DEFAULT 0,
    acked_total     bigint NOT NULL DEFAULT 0,
    failed_total    bigint NOT NULL DEFAULT 0,
    retried_total   bigint NOT NULL DEFAULT 0,
    rescued_total   bigint NOT NULL DEFAULT 0,
    dead_total      bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vtasks_stats_delta (
    queue     text NOT NULL,
    enqueued  int NOT NULL DEFAULT 0,
    acked     int NOT NULL DEFAULT 0,
    failed    int NOT NULL DEFAULT 0,
    retried   int NOT NULL DEFAULT 0,
    rescued   int NOT NULL DEFAULT 0,
    dead      int NOT NULL DEFAULT 0
);
ALTER TABLE vtasks_stats_delta SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- Unique keys (UNIQUE <key> <ttl>): held until expires_at, or until the holder is acked/buried.
CREATE TABLE IF NOT EXISTS vtasks_unique (
    queue       text NOT NULL,
    key         text NOT NULL,
    task_id     text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX IF NOT EXISTS vtasks_unique_expires ON vtasks_unique (expires_at);

-- Periodic schedules. next_run_ms is unix ms of the server clock.
CREATE TABLE IF NOT EXISTS vtasks_schedule (
    queue        text NOT NULL,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('cron', 'every')),
    spec         text NOT NULL,
    priority     smallint NOT NULL DEFAULT 0,
    payload      bytea NOT NULL,
    next_run_ms  bigint NOT NULL,
    PRIMARY KEY (queue, name)
);
CREATE INDEX IF NOT EXISTS vtasks_schedule_due ON vtasks_schedule (next_run_ms);
-- One row per fired tick: the unique key that makes a tick fire exactly once.
CREATE TABLE IF NOT EXISTS vtasks_schedule_tick (
    queue     text NOT NULL,
    name      text NOT NULL,
    tick_ms   bigint NOT NULL,
    task_id   text NOT NULL,
    fired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, name, tick_ms)
);
CREATE INDEX IF NOT EXISTS vtasks_schedule_tick_fired ON vtasks_schedule_tick (fired_at);

-- Task results with a TTL.
CREATE TABLE IF NOT EXISTS vtasks_result (
    id          text PRIMARY KEY,
    data        bytea NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS vtasks_result_expires ON vtasks_result (expires_at);

-- Unix milliseconds of a timestamp (0 for NULL).
CREATE OR REPLACE FUNCTION vtasks_ms(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $fn$ SELECT coalesce(floor(extract(epoch FROM t) * 1000)::bigint, 0) $fn$;

-- Moves one live task (locked by the caller) to the dead-letter table, keeping the cap exact.
CREATE OR REPLACE FUNCTION vtasks_bury(p_queue text, p_id text, p_error text, p_cap int)
RETURNS boolean LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r vtasks_task;
    s bigint;
    c int;
    k int;
BEGIN
    DELETE FROM vtasks_task WHERE queue = p_queue AND id = p_id RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF r.unique_key IS NOT NULL THEN
        DELETE FROM vtasks_unique WHERE queue = p_queue AND key = r.unique_key AND task_id = p_id;
    END IF;
    INSERT INTO vtasks_dlq AS d (queue, seq, count) VALUES (p_queue, 1, 1)
        ON CONFLICT (queue) DO UPDATE SET seq = d.seq + 1, count = d.count + 1
        RETURNING seq, count INTO s, c;
    INSERT INTO vtasks_dead (queue, seq, id, priority, attempt, max_attempts, enqueued_at, failed_at, error, payload)
        VALUES (p_queue, s, r.id, r.priority, r.attempt, r.max_attempts, r.enqueued_at, now(), p_error, r.payload);
    IF c > greatest(p_cap, 0) THEN
        DELETE FROM vtasks_dead WHERE queue = p_queue AND seq IN
            (SELECT seq FROM vtasks_dead WHERE queue = p_queue ORDER BY seq LIMIT c - greatest(p_cap, 0));
        GET DIAGNOSTICS k = ROW_COUNT;
        UPDATE vtasks_dlq SET count = count - k, evicted = evicted + k WHERE queue = p_queue;
    END IF;
    RETURN true;
END
$fn$;

-- Fetch: for each queue in order, promote due delayed rows, then claim up to the remaining count
-- with a SKIP LOCKED CTE + UPDATE ... RETURNING. Never claims more than p_count rows.
-- When nothing was claimed, returns one marker row (queue NULL) whose seq is the number of ms
-- until the next delayed task of these queues is due (NULL: none), so a blocked fetch can sleep.
CREATE OR REPLACE FUNCTION vtasks_fetch(p_queues text[], p_worker text, p_count int, p_lease_ms bigint)
RETURNS TABLE (queue text, id text, token text, attempt int, payload bytea,
               ord int, priority smallint, run_after timestamptz, seq bigint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    q text;
    i int := 0;
    remaining int := p_count;
    got int;
    due bigint;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        i := i + 1;
        EXIT WHEN remaining <= 0;
        WITH d AS (
            SELECT t.id FROM vtasks_task t
            WHERE t.queue = q AND t.state = 'd' AND t.run_after <= now()
            ORDER BY t.run_after LIMIT 1000 FOR UPDATE SKIP LOCKED
        )
        UPDATE vtasks_task t SET state = 'r' FROM d WHERE t.queue = q AND t.id = d.id;
        RETURN QUERY
        WITH c AS (
            SELECT t.id FROM vtasks_task t
            WHERE t.queue = q AND t.state = 'r'
            ORDER BY t.priority DESC, t.run_after, t.seq
            LIMIT remaining FOR UPDATE SKIP LOCKED
        )
        UPDATE vtasks_task t
           SET state = 'i', attempt = t.attempt + 1, worker = p_worker,
               token = substr(md5(random()::text || clock_timestamp()::text || t.id), 1, 16),
               deadline = now() + p_lease_ms * interval '1 millisecond'
          FROM c
         WHERE t.queue = q AND t.id = c.id
        RETURNING t.queue, t.id, t.token, t.attempt, t.payload, i, t.priority, t.run_after, t.seq;
        GET DIAGNOSTICS got = ROW_COUNT;
        remaining := remaining - got;
    END LOOP;
    IF remaining = p_count THEN
        SELECT min(vtasks_ms(n.run_after) - vtasks_ms(now())) INTO due
          FROM unnest(p_queues) AS u(name)
          CROSS JOIN LATERAL (SELECT t.run_after FROM vtasks_task t
                               WHERE t.queue = u.name AND t.state = 'd'
                               ORDER BY t.run_after LIMIT 1) n;
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, 0, NULL::bytea, 0, 0::smallint,
                            NULL::timestamptz, due;
    END IF;
END
$fn$;

-- FAIL: 'retry', 'dead', or NULL for an unknown id / stale token.
CREATE OR REPLACE FUNCTION vtasks_fail(p_queue text, p_id text, p_token text, p_error text,
                                       p_retry_ms bigint, p_cap int)
RETURNS text LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT attempt, max_attempts INTO r FROM vtasks_task
     WHERE queue = p_queue AND id = p_id AND token = p_token AND state = 'i' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_retry_ms IS NOT NULL AND r.attempt < r.max_attempts THEN
        UPDATE vtasks_task
           SET state = CASE WHEN p_retry_ms > 0 THEN 'd' ELSE 'r' END::"char",
               run_after = now() + greatest(p_retry_ms, 0) * interval '1 millisecond',
               worker = NULL, token = NULL, deadline = NULL, error = p_error, failed_at = now()
         WHERE queue = p_queue AND id = p_id;
        INSERT INTO vtasks_stats_delta (queue, failed, retried) VALUES (p_queue, 1, 1);
        RETURN 'retry';
    END IF;
    PERFORM vtasks_bury(p_queue, p_id, p_error, p_cap);
    INSERT INTO vtasks_stats_delta (queue, failed, dead) VALUES (p_queue, 1, 1);
    RETURN 'dead';
END
$fn$;

-- RESCUE: expired leases (p_worker NULL) or every lease of p_worker. Returns tasks made ready;
-- tasks that used max_attempts deliveries are dead-lettered instead (not counted).
CREATE OR REPLACE FUNCTION vtasks_rescue(p_queue text, p_worker text, p_cap int)
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    n int := 0;
    d int := 0;
BEGIN
    FOR r IN SELECT t.id, t.attempt, t.max_attempts, t.worker FROM vtasks_task t
              WHERE t.queue = p_queue AND t.state = 'i'
                AND ((p_worker IS NULL AND t.deadline <= now()) OR t.worker = p_worker)
              ORDER BY t.deadline
              FOR UPDATE SKIP LOCKED
    LOOP
        IF r.attempt >= r.max_attempts THEN
            PERFORM vtasks_bury(p_queue, r.id,
                CASE WHEN p_worker IS NULL
                     THEN 'lease expired after ' || r.attempt || ' attempts'
                     ELSE 'rescued from worker ' || r.worker || ' after ' || r.attempt || ' attempts'
                END, p_cap);
            d := d + 1;
        ELSE
            UPDATE vtasks_task SET state = 'r', run_after = now(), worker = NULL, token = NULL,
                                   deadline = NULL
             WHERE queue = p_queue AND id = r.id;
            n := n + 1;
        END IF;
    END LOOP;
    IF n > 0 OR d > 0 THEN
        INSERT INTO vtasks_stats_delta (queue, rescued, dead) VALUES (p_queue, n, d);
    END IF;
    RETURN n;
END
$fn$;

-- Removes dead entries (all, or by id); returns how many. Takes the dlq row lock first.
CREATE OR REPLACE FUNCTION vtasks_drop_dead(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    k int;
BEGIN
    PERFORM 1 FROM vtasks_dlq WHERE queue = p_queue FOR UPDATE;
    DELETE FROM vtasks_dead WHERE queue = p_queue AND (p_ids IS NULL OR id = ANY (p_ids));
    GET DIAGNOSTICS k = ROW_COUNT;
    IF k > 0 THEN
        UPDATE vtasks_dlq SET count = greatest(count - k, 0) WHERE queue = p_queue;
    END IF;
    RETURN k;
END
$fn$;

-- RETRYDEAD: dead entries back to ready with attempt 0 (newest entry per id).
CREATE OR REPLACE FUNCTION vtasks_retry_dead(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    k int;
    n int;
BEGIN
    PERFORM 1 FROM vtasks_dlq WHERE queue = p_queue FOR UPDATE;
    WITH d AS (
        DELETE FROM vtasks_dead WHERE queue = p_queue AND (p_ids IS NULL OR id = ANY (p_ids))
        RETURNING *
    ), one AS (
        SELECT DISTINCT ON (id) * FROM d ORDER BY id, seq DESC
    ), ins AS (
        INSERT INTO vtasks_task (queue, id, state, priority, run_after, attempt, max_attempts,
                                 enqueued_at, error, failed_at, payload)
        SELECT p_queue, id, 'r', priority, now(), 0, max_attempts, enqueued_at, error, failed_at, payload
          FROM one ORDER BY seq
        ON CONFLICT (queue, id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM ins) INTO k, n;
    IF k > 0 THEN
        UPDATE vtasks_dlq SET count = greatest(count - k, 0) WHERE queue = p_queue;
    END IF;
    RETURN n;
END
$fn$;

-- DELETE: ready/delayed tasks and dead entries with these ids (in-flight tasks are kept).
CREATE OR REPLACE FUNCTION vtasks_delete(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n int;
BEGIN
    WITH d AS (
        DELETE FROM vtasks_task WHERE queue = p_queue AND id = ANY (p_ids) AND state <> 'i'
        RETURNING id, unique_key
    ), u AS (
        DELETE FROM vtasks_unique x USING d
         WHERE x.queue = p_queue AND x.key = d.unique_key AND x.task_id = d.id
    )
    SELECT count(*) INTO n FROM d;
    RETURN n + vtasks_drop_dead(p_queue, p_ids);
END
$fn$;

-- CLEAR: 'ready' (ready + delayed), 'dead', or 'all' (also in flight). Schedules are kept.
CREATE OR REPLACE FUNCTION vtasks_clear(p_queue text, p_what text)
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n int := 0;
BEGIN
    IF p_what IN ('ready', 'all') THEN
        WITH d AS (
            DELETE FROM vtasks_task
             WHERE queue = p_queue AND (state <> 'i' OR p_what = 'all')
            RETURNING id, unique_key
        ), u AS (
            DELETE FROM vtasks_unique x USING d
             WHERE x.queue = p_queue AND x.key = d.unique_key AND x.task_id = d.id
        )
        SELECT count(*) INTO n FROM d;
    END IF;
    IF p_what IN ('dead', 'all') THEN
        n := n + vtasks_drop_dead(p_queue, NULL);
    END IF;
    RETURN n;
END
$fn$;

-- Fires one schedule tick at most once: compare-and-set of next_run_ms (row lock), a unique
-- (queue, name, tick) row, and the task insert, all in this one statement's transaction.
CREATE OR REPLACE FUNCTION vtasks_fire(p_queue text, p_name text, p_tick_ms bigint,
                                       p_next_ms bigint, p_id text, p_max_attempts int,
                                       p_notify boolean)
RETURNS boolean LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    UPDATE vtasks_schedule SET next_run_ms = p_next_ms
     WHERE queue = p_queue AND name = p_name AND next_run_ms = p_tick_ms
    RETURNING priority, payload INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO vtasks_schedule_tick (queue, name, tick_ms, task_id)
        VALUES (p_queue, p_name, p_tick_ms, p_id)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO vtasks_task (queue, id, state, priority, run_after, max_attempts, payload)
        VALUES (p_queue, p_id, 'r', s.priority, now(), p_max_attempts, s.payload)
        ON CONFLICT DO NOTHING;
    INSERT INTO vtasks_stats_delta (queue, enqueued) VALUES (p_queue, 1);
    IF p_notify THEN
        PERFORM pg_notify('vtasks', p_queue);
    END IF;
    RETURN true;
END
$fn$;

-- Folds counter deltas into vtasks_stats (rows taken with SKIP LOCKED; totals locked in queue order).
CREATE OR REPLACE FUNCTION vtasks_compact_stats()
RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    n int;
BEGIN
    WITH d AS (
        DELETE FROM vtasks_stats_delta WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM vtasks_stats_delta LIMIT 200000 FOR UPDATE SKIP LOCKED))
        RETURNING *
    ), g AS (
        SELECT queue, sum(enqueued) AS e, sum(acked) AS a, sum(failed) AS f, sum(retried) AS r,
               sum(rescued) AS s, sum(dead) AS x, count(*) AS c
          FROM d GROUP BY queue ORDER BY queue
    ), up AS (
        INSERT INTO vtasks_stats AS t (queue, enqueued_total, acked_total, failed_total,
                                       retried_total, rescued_total, dead_total)
        SELECT queue, e, a, f, r, s, x FROM g ORDER BY queue
        ON CONFLICT (queue) DO UPDATE SET
            enqueued_total = t.enqueued_total + EXCLUDED.enqueued_total,
            acked_total = t.acked_total + EXCLUDED.acked_total,
            failed_total = t.failed_total + EXCLUDED.failed_total,
            retried_total = t.retried_total + EXCLUDED.retried_total,
            rescued_total = t.rescued_total + EXCLUDED.rescued_total,
            dead_total = t.dead_total + EXCLUDED.dead_total
    )
    SELECT coalesce(sum(c), 0) INTO n FROM g;
    RETURN n;
END
$fn$;

-- The server-side "timer" duties: rescue expired leases on every queue, purge expired unique
-- keys, results and old tick rows, fold counters. Safe to run from any number of workers.
CREATE OR REPLACE FUNCTION vtasks_maintain(p_cap int,
    OUT rescued int, OUT expired_queues int, OUT uniques_purged int, OUT results_purged int,
    OUT ticks_purged int, OUT stats_folded int)
LANGUAGE plpgsql AS $fn$
DECLARE
    q text;
BEGIN
    rescued := 0;
    expired_queues := 0;
    FOR q IN SELECT DISTINCT t.queue FROM vtasks_task t WHERE t.state = 'i' AND t.deadline <= now() LOOP
        rescued := rescued + vtasks_rescue(q, NULL, p_cap);
        expired_queues := expired_queues + 1;
    END LOOP;
    DELETE FROM vtasks_unique WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM vtasks_unique WHERE expires_at <= now() LIMIT 10000 FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS uniques_purged = ROW_COUNT;
    DELETE FROM vtasks_result WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM vtasks_result WHERE expires_at <= now() LIMIT 10000 FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS results_purged = ROW_COUNT;
    DELETE FROM vtasks_schedule_tick WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM vtasks_schedule_tick WHERE fired_at < now() - interval '1 day'
         LIMIT 10000 FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS ticks_purged = ROW_COUNT;
    stats_folded := vtasks_compact_stats();
END
$fn$;

INSERT INTO vtasks_schema (version, name) VALUES (1, 'initial') ON CONFLICT DO NOTHING;
