-- vtasks Postgres schema, version 3: one global lock order (no deadlock between the hot paths) and
-- plans that cannot go stale as the task table swings between empty and a burst (issue 12).
-- PROTOCOL.md, "Lock order", is the contract this file implements.
-- Idempotent and transactional, like 0001; no percent sign.
--
-- Stable plans: a plpgsql statement gets a generic plan after five runs, made with the table
-- statistics of that moment, and keeps it until the next ANALYZE. A plan made while the task
-- table was nearly empty (ack: "index scan on vtasks_task_inflight by queue, then filter 17,000
-- ids", quadratic in the ack batch) then runs against a burst of 30,000 rows: an ack took 82 s.
-- Now no hot statement has a second plan to fall into: ack deletes row by row by primary key;
-- fetch, extend, delete and clear lock their rows, then update or delete exactly those by TID
-- (0001 joined the locked ids back to the table, planned as "every row of the queue x every id"
-- on stale statistics); fetch, extend, rescue and maintain are planned per call with their real
-- arguments and the table's current size (plan_cache_mode = force_custom_plan: about 0.1 ms of
-- planning per call, once per batch).

-- Releases the unique keys still held by tasks that are leaving (ack, bury, delete, clear). A key
-- row locked by someone else is being re-taken (expired) or purged: it is skipped, never waited
-- for, so releasing keys cannot take part in a deadlock.
CREATE OR REPLACE FUNCTION vtasks_release_keys(p_queue text, p_keys text[], p_ids text[])
RETURNS void LANGUAGE sql AS $fn$
    DELETE FROM vtasks_unique x
     WHERE x.ctid = ANY (ARRAY(
        SELECT u.ctid FROM vtasks_unique u
          JOIN unnest(p_keys, p_ids) AS k(key, id) ON u.key = k.key AND u.task_id = k.id
         WHERE u.queue = p_queue AND k.key IS NOT NULL
         ORDER BY u.key
           FOR UPDATE OF u SKIP LOCKED))
$fn$;

-- Enqueue as in 0002, but the rows go in in id order (the lock order: two batches with the same
-- client-chosen ids never wait for each other crosswise) while seq, the FIFO order, still follows
-- the caller's order.
CREATE OR REPLACE FUNCTION vtasks_enqueue(p_queue text, p_ids text[], p_payloads bytea[],
                                          p_priority smallint, p_delay_ms bigint, p_at_ms bigint,
                                          p_ukey text, p_uttl_ms bigint, p_max_attempts int,
                                          p_notify boolean)
RETURNS SETOF text LANGUAGE plpgsql AS $fn$
DECLARE
    ra timestamptz;
    st "char";
    n bigint;
BEGIN
    ra := CASE WHEN p_at_ms IS NOT NULL THEN to_timestamp(p_at_ms / 1000.0)
               WHEN p_delay_ms > 0 THEN now() + p_delay_ms * interval '1 millisecond'
               ELSE now() END;
    st := CASE WHEN ra > now() THEN 'd' ELSE 'r' END;
    IF p_ukey IS NOT NULL THEN
        -- Takes the key only when free or expired; waits for a concurrent holder's commit.
        INSERT INTO vtasks_unique AS u (queue, key, task_id, expires_at)
            VALUES (p_queue, p_ukey, p_ids[1], now() + p_uttl_ms * interval '1 millisecond')
            ON CONFLICT (queue, key) DO UPDATE SET task_id = EXCLUDED.task_id, expires_at = EXCLUDED.expires_at
             WHERE u.expires_at <= now();
        IF NOT FOUND THEN
            RETURN;
        END IF;
        RETURN QUERY
        INSERT INTO vtasks_task AS t (queue, id, state, priority, run_after, max_attempts, unique_key, payload)
            VALUES (p_queue, p_ids[1], st, p_priority, ra, p_max_attempts, p_ukey, p_payloads[1])
            ON CONFLICT (queue, id) DO NOTHING
            RETURNING t.id;
    ELSIF cardinality(p_ids) = 1 THEN
        RETURN QUERY
        INSERT INTO vtasks_task AS t (queue, id, state, priority, run_after, max_attempts, payload)
            VALUES (p_queue, p_ids[1], st, p_priority, ra, p_max_attempts, p_payloads[1])
            ON CONFLICT (queue, id) DO NOTHING
            RETURNING t.id;
    ELSE
        -- seq drawn in the caller's order (volatile target entries are computed after the
        -- subquery's sort), rows inserted in id order.
        RETURN QUERY
        INSERT INTO vtasks_task AS t (queue, id, state, priority, run_after, max_attempts, payload, seq)
            OVERRIDING SYSTEM VALUE
            SELECT p_queue, x.id, st, p_priority, ra, p_max_attempts, x.payload, x.seq
              FROM (SELECT u.id, u.payload,
                           nextval(pg_get_serial_sequence('vtasks_task', 'seq')) AS seq
                      FROM unnest(p_ids, p_payloads) WITH ORDINALITY AS u(id, payload, ord)
                     ORDER BY u.ord) x
             ORDER BY x.id
            ON CONFLICT (queue, id) DO NOTHING
            RETURNING t.id;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        INSERT INTO vtasks_stats_delta (queue, enqueued) VALUES (p_queue, n);
        IF p_notify AND st = 'r' THEN
            PERFORM pg_notify('vtasks', p_queue);
        END IF;
    END IF;
END
$fn$;

-- ACK by (id, token) pairs: deletes the matching in-flight rows one by one in id order (the lock
-- order), releases their unique keys, appends the counter delta. One row per statement, found by
-- the full primary key (queue, id): the only plan that does not depend on the statistics of the
-- moment (a set-based DELETE was planned as "every row of the queue, filtered by the id list"
-- whenever the statistics said the queue was small, which is after every burst). Sequential
-- scans are off for this function, so even a plan made while the table was empty probes the key.
-- No state = 'i' qual: a token is only set while a task is in flight (and the partial indexes
-- stay out of the plan).
CREATE OR REPLACE FUNCTION vtasks_ack(p_queue text, p_ids text[], p_tokens text[])
RETURNS bigint LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
DECLARE
    r record;
    k text;
    keys text[];
    key_ids text[];
    n bigint := 0;
BEGIN
    FOR r IN SELECT a.id, a.token FROM unnest(p_ids, p_tokens) AS a(id, token) ORDER BY a.id LOOP
        DELETE FROM vtasks_task t
         WHERE t.queue = p_queue AND t.id = r.id AND t.token = r.token
        RETURNING t.unique_key INTO k;
        IF FOUND THEN
            n := n + 1;
            IF k IS NOT NULL THEN
                keys := keys || k;
                key_ids := key_ids || r.id;
            END IF;
        END IF;
    END LOOP;
    IF keys IS NOT NULL THEN
        PERFORM vtasks_release_keys(p_queue, keys, key_ids);
    END IF;
    IF n > 0 THEN
        INSERT INTO vtasks_stats_delta (queue, acked) VALUES (p_queue, n);
    END IF;
    RETURN n;
END
$fn$;

-- Moves one live task (locked by the caller) to the dead-letter table, keeping the cap exact.
-- Order: task row (caller), unique key (skipped when locked), dlq row, dead rows.
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
        PERFORM vtasks_release_keys(p_queue, ARRAY[r.unique_key], ARRAY[p_id]);
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

-- Fetch: as in 0001, but each step first locks its rows (SKIP LOCKED: fetch never waits) and
-- collects their ctids, then updates exactly those by ctid in a second statement (a new snapshot,
-- which sees the versions just locked). 0001 joined the locked ids back to the table, and with
-- statistics saying the queue was small (after a TRUNCATE, or analyzed between bursts) that join
-- was planned as "every row of the queue x every claimed id": 20-40 ms per fetch of 100 from a
-- queue of 1,000, quadratic in the queue. A TID scan has no other plan. Planned per call, so the
-- ready index serves the claim whatever the statistics said when the session started.
CREATE OR REPLACE FUNCTION vtasks_fetch(p_queues text[], p_worker text, p_count int, p_lease_ms bigint)
RETURNS TABLE (queue text, id text, token text, attempt int, payload bytea,
               ord int, priority smallint, run_after timestamptz, seq bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    q text;
    i int := 0;
    remaining int := p_count;
    got int;
    due bigint;
    tids tid[];
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        i := i + 1;
        EXIT WHEN remaining <= 0;
        SELECT array_agg(d.ctid) INTO tids FROM (
            SELECT t.ctid FROM vtasks_task t
             WHERE t.queue = q AND t.state = 'd' AND t.run_after <= now()
             ORDER BY t.run_after LIMIT 1000 FOR UPDATE SKIP LOCKED) d;
        IF tids IS NOT NULL THEN
            UPDATE vtasks_task t SET state = 'r' WHERE t.ctid = ANY (tids);
        END IF;
        SELECT array_agg(c.ctid) INTO tids FROM (
            SELECT t.ctid FROM vtasks_task t
             WHERE t.queue = q AND t.state = 'r'
             ORDER BY t.priority DESC, t.run_after, t.seq
             LIMIT remaining FOR UPDATE SKIP LOCKED) c;
        CONTINUE WHEN tids IS NULL;
        RETURN QUERY
        UPDATE vtasks_task t
           SET state = 'i', attempt = t.attempt + 1, worker = p_worker,
               token = substr(md5(random()::text || clock_timestamp()::text || t.id), 1, 16),
               deadline = now() + p_lease_ms * interval '1 millisecond'
         WHERE t.ctid = ANY (tids)
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

-- EXTEND (the worker's heartbeat): every in-flight row of p_worker, locked in id order with SKIP
-- LOCKED (a row locked by someone else is being acked, failed or rescued and needs no longer
-- lease, so the heartbeat never waits for an ack), then updated by TID. Returns how many.
CREATE OR REPLACE FUNCTION vtasks_extend(p_queue text, p_worker text, p_lease_ms bigint)
RETURNS bigint LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    tids tid[];
    n bigint;
BEGIN
    SELECT array_agg(l.ctid) INTO tids FROM (
        SELECT t.ctid FROM vtasks_task t
         WHERE t.queue = p_queue AND t.state = 'i' AND t.worker = p_worker
         ORDER BY t.id FOR UPDATE SKIP LOCKED) l;
    IF tids IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE vtasks_task SET deadline = now() + p_lease_ms * interval '1 millisecond'
     WHERE ctid = ANY (tids);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- RESCUE: expired leases (p_worker NULL) or every lease of p_worker, rows taken in id order with
-- SKIP LOCKED (never waits for a task row). Returns tasks made ready; tasks that used
-- max_attempts deliveries are dead-lettered instead (not counted).
CREATE OR REPLACE FUNCTION vtasks_rescue(p_queue text, p_worker text, p_cap int)
RETURNS int LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    n int := 0;
    d int := 0;
BEGIN
    FOR r IN SELECT t.id, t.attempt, t.max_attempts, t.worker FROM vtasks_task t
              WHERE t.queue = p_queue AND t.state = 'i'
                AND ((p_worker IS NULL AND t.deadline <= now()) OR t.worker = p_worker)
              ORDER BY t.id
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

-- DELETE: ready/delayed tasks and dead entries with these ids (in-flight tasks are kept). Task
-- rows are locked in id order before they are deleted.
CREATE OR REPLACE FUNCTION vtasks_delete(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tids tid[];
    locked text[];
    keys text[];
    n int;
BEGIN
    SELECT array_agg(l.ctid) INTO tids FROM (
        SELECT t.ctid FROM vtasks_task t
         WHERE t.queue = p_queue AND t.id = ANY (p_ids) AND t.state <> 'i'
         ORDER BY t.id FOR UPDATE) l;
    n := 0;
    IF tids IS NOT NULL THEN
        -- A new statement sees the versions just locked; a TID scan is the only plan.
        WITH d AS (
            DELETE FROM vtasks_task WHERE ctid = ANY (tids)
            RETURNING id, unique_key
        )
        SELECT count(*), array_agg(d.unique_key) FILTER (WHERE d.unique_key IS NOT NULL),
               array_agg(d.id) FILTER (WHERE d.unique_key IS NOT NULL)
          INTO n, keys, locked FROM d;
        IF keys IS NOT NULL THEN
            PERFORM vtasks_release_keys(p_queue, keys, locked);
        END IF;
    END IF;
    RETURN n + vtasks_drop_dead(p_queue, p_ids);
END
$fn$;

-- RETRYDEAD: dead entries back to ready with attempt 0 (newest entry per id). Lock order: live
-- rows with those ids (id order), the dlq row, dead rows, then the new rows in id order (seq in
-- dead-letter order, so they queue as they died).
CREATE OR REPLACE FUNCTION vtasks_retry_dead(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    k int;
    n int;
BEGIN
    PERFORM 1 FROM vtasks_task t
     WHERE t.queue = p_queue
       AND t.id IN (SELECT x.id FROM vtasks_dead x
                     WHERE x.queue = p_queue AND (p_ids IS NULL OR x.id = ANY (p_ids)))
     ORDER BY t.id FOR UPDATE;
    PERFORM 1 FROM vtasks_dlq WHERE queue = p_queue FOR UPDATE;
    WITH d AS (
        DELETE FROM vtasks_dead WHERE queue = p_queue AND (p_ids IS NULL OR id = ANY (p_ids))
        RETURNING *
    ), one AS (
        SELECT DISTINCT ON (id) * FROM d ORDER BY id, seq DESC
    ), numbered AS (
        SELECT o.*, nextval(pg_get_serial_sequence('vtasks_task', 'seq')) AS new_seq
          FROM (SELECT * FROM one ORDER BY seq) o
    ), ins AS (
        INSERT INTO vtasks_task (queue, id, state, priority, run_after, attempt, max_attempts,
                                 enqueued_at, error, failed_at, payload, seq)
        OVERRIDING SYSTEM VALUE
        SELECT p_queue, id, 'r', priority, now(), 0, max_attempts, enqueued_at, error, failed_at,
               payload, new_seq
          FROM numbered ORDER BY id
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

-- CLEAR: 'ready' (ready + delayed), 'dead', or 'all' (also in flight). Schedules are kept. Task
-- rows are locked in id order before they are deleted.
CREATE OR REPLACE FUNCTION vtasks_clear(p_queue text, p_what text)
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tids tid[];
    locked text[];
    keys text[];
    n int := 0;
BEGIN
    IF p_what IN ('ready', 'all') THEN
        SELECT array_agg(l.ctid) INTO tids FROM (
            SELECT t.ctid FROM vtasks_task t
             WHERE t.queue = p_queue AND (t.state <> 'i' OR p_what = 'all')
             ORDER BY t.id FOR UPDATE) l;
        IF tids IS NOT NULL THEN
            WITH d AS (
                DELETE FROM vtasks_task WHERE ctid = ANY (tids)
                RETURNING id, unique_key
            )
            SELECT count(*), array_agg(d.unique_key) FILTER (WHERE d.unique_key IS NOT NULL),
                   array_agg(d.id) FILTER (WHERE d.unique_key IS NOT NULL)
              INTO n, keys, locked FROM d;
            IF keys IS NOT NULL THEN
                PERFORM vtasks_release_keys(p_queue, keys, locked);
            END IF;
        END IF;
    END IF;
    IF p_what IN ('dead', 'all') THEN
        n := n + vtasks_drop_dead(p_queue, NULL);
    END IF;
    RETURN n;
END
$fn$;

-- The server-side "timer" duties, in lock order: rescue expired leases queue by queue (in queue
-- order, so two maintainers take dlq rows in the same order), purge expired unique keys, results
-- and old tick rows (SKIP LOCKED, bounded batches), fold counters last. Safe to run from any
-- number of workers at once.
CREATE OR REPLACE FUNCTION vtasks_maintain(p_cap int,
    OUT rescued int, OUT expired_queues int, OUT uniques_purged int, OUT results_purged int,
    OUT ticks_purged int, OUT stats_folded int)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    q text;
BEGIN
    rescued := 0;
    expired_queues := 0;
    FOR q IN SELECT DISTINCT t.queue FROM vtasks_task t WHERE t.state = 'i' AND t.deadline <= now()
             ORDER BY 1 LOOP
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

INSERT INTO vtasks_schema (version, name) VALUES (3, 'lock_order_and_stable_plans') ON CONFLICT DO NOTHING;
