-- vtasks Postgres schema, version 6: per-queue rate limits (a token row per queue, consumed by
-- vtasks_fetch) and runtime control of schedules (pause, resume, run now). PROTOCOL.md,
-- "Rate limits" and "Schedules at runtime", is the contract this file implements.
-- Idempotent and transactional, like 0001; no percent sign.

-- One token bucket per rate-limited queue. One token is per_ms units of credit; the bucket gains
-- rate_limit units per millisecond of the server clock, up to burst * per_ms. credit is the level
-- at at_ms: the level now is computed (vtasks_rate_level), never stored by a timer.
CREATE TABLE IF NOT EXISTS vtasks_rate (
    queue       text PRIMARY KEY,
    rate_limit  int NOT NULL CHECK (rate_limit BETWEEN 1 AND 1000000),
    per_ms      bigint NOT NULL CHECK (per_ms BETWEEN 1 AND 86400000),
    burst       int NOT NULL CHECK (burst BETWEEN 1 AND 1000000),
    credit      bigint NOT NULL CHECK (credit >= 0),
    at_ms       bigint NOT NULL
);

-- Runtime state of a schedule: settings say which schedules exist, an operator pauses them.
-- schedule_set (an upsert) leaves the column alone, so a pause survives re-registration.
ALTER TABLE vtasks_schedule ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false;

-- Credit of a bucket at p_now_ms (a clock that went back refills nothing). The elapsed time is
-- capped before the multiplication (no overflow): past a full refill the level is the cap.
CREATE OR REPLACE FUNCTION vtasks_rate_level(p_credit bigint, p_at_ms bigint, p_limit int,
                                             p_per_ms bigint, p_burst int, p_now_ms bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $fn$
    SELECT least(p_burst::bigint * p_per_ms,
                 p_credit + least(greatest(p_now_ms - p_at_ms, 0),
                                  p_burst::bigint * p_per_ms / p_limit + 1) * p_limit)
$fn$;

-- Sets a queue's limit; false when it already had exactly this one. A changed limit keeps the
-- whole tokens there are (up to the new burst), so applying the settings at every worker start
-- never hands out a fresh burst; a new limit starts with a full bucket.
CREATE OR REPLACE FUNCTION vtasks_rate_set(p_queue text, p_limit int, p_per_ms bigint, p_burst int)
RETURNS boolean LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    nowms bigint := vtasks_ms(now());
    tokens bigint;
BEGIN
    SELECT * INTO r FROM vtasks_rate WHERE queue = p_queue FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO vtasks_rate (queue, rate_limit, per_ms, burst, credit, at_ms)
            VALUES (p_queue, p_limit, p_per_ms, p_burst, p_burst::bigint * p_per_ms, nowms)
            ON CONFLICT (queue) DO NOTHING;
        RETURN FOUND;
    END IF;
    IF r.rate_limit = p_limit AND r.per_ms = p_per_ms AND r.burst = p_burst THEN
        RETURN false;
    END IF;
    tokens := least(p_burst, vtasks_rate_level(r.credit, r.at_ms, r.rate_limit, r.per_ms, r.burst, nowms)
                             / r.per_ms);
    UPDATE vtasks_rate SET rate_limit = p_limit, per_ms = p_per_ms, burst = p_burst,
                           credit = tokens * p_per_ms, at_ms = greatest(r.at_ms, nowms)
     WHERE queue = p_queue;
    RETURN true;
END
$fn$;

-- 0003's fetch, with the rate limit: the bucket rows of the fetched queues are locked first, in
-- queue order (PROTOCOL.md "Lock order"), a queue hands out at most its whole tokens, and the
-- tokens taken are subtracted in the same transaction. When nothing was fetched, the sentinel
-- row's due is also the wait until the next token of a limited queue that has ready tasks: the
-- client sleeps until then (no polling for tokens).
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
    want int;
    got int;
    due bigint;
    rate_due bigint;
    tids tid[];
    rl record;
    limited boolean;
    lvl bigint;
    nowms bigint := vtasks_ms(now());
BEGIN
    PERFORM 1 FROM vtasks_rate r WHERE r.queue = ANY (p_queues) ORDER BY r.queue FOR UPDATE;
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
        want := remaining;
        SELECT * INTO rl FROM vtasks_rate r WHERE r.queue = q;
        limited := FOUND;
        IF limited THEN
            lvl := vtasks_rate_level(rl.credit, rl.at_ms, rl.rate_limit, rl.per_ms, rl.burst, nowms);
            want := least(remaining, lvl / rl.per_ms);
            IF want <= 0 THEN
                IF EXISTS (SELECT 1 FROM vtasks_task t WHERE t.queue = q AND t.state = 'r') THEN
                    rate_due := least(rate_due, (rl.per_ms - lvl + rl.rate_limit - 1) / rl.rate_limit);
                END IF;
                CONTINUE;
            END IF;
        END IF;
        SELECT array_agg(c.ctid) INTO tids FROM (
            SELECT t.ctid FROM vtasks_task t
             WHERE t.queue = q AND t.state = 'r'
             ORDER BY t.priority DESC, t.run_after, t.seq
             LIMIT want FOR UPDATE SKIP LOCKED) c;
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
        IF limited AND got > 0 THEN
            UPDATE vtasks_rate r SET credit = lvl - got * rl.per_ms, at_ms = greatest(rl.at_ms, nowms)
             WHERE r.queue = q;
        END IF;
    END LOOP;
    IF remaining = p_count THEN
        SELECT min(vtasks_ms(n.run_after) - vtasks_ms(now())) INTO due
          FROM unnest(p_queues) AS u(name)
          CROSS JOIN LATERAL (SELECT t.run_after FROM vtasks_task t
                               WHERE t.queue = u.name AND t.state = 'd'
                               ORDER BY t.run_after LIMIT 1) n;
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, 0, NULL::bytea, 0, 0::smallint,
                            NULL::timestamptz, least(due, rate_due);
    END IF;
END
$fn$;

-- 0001's fire, which now leaves a paused schedule alone (the compare-and-set also checks the
-- pause, so a schedule paused between the read of due schedules and this call does not fire).
CREATE OR REPLACE FUNCTION vtasks_fire(p_queue text, p_name text, p_tick_ms bigint,
                                       p_next_ms bigint, p_id text, p_max_attempts int,
                                       p_notify boolean)
RETURNS boolean LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    UPDATE vtasks_schedule SET next_run_ms = p_next_ms
     WHERE queue = p_queue AND name = p_name AND next_run_ms = p_tick_ms AND NOT paused
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

-- Runs a schedule now (the admin's and the management command's "run now"): one task from the
-- schedule's payload under the caller's id, paused or not; its ticks are unchanged. False when
-- there is no such schedule (or the id exists: a retried call enqueues nothing more).
CREATE OR REPLACE FUNCTION vtasks_schedule_run(p_queue text, p_name text, p_id text,
                                               p_max_attempts int, p_notify boolean)
RETURNS boolean LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    SELECT priority, payload INTO s FROM vtasks_schedule WHERE queue = p_queue AND name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO vtasks_task (queue, id, state, priority, run_after, max_attempts, payload)
        VALUES (p_queue, p_id, 'r', s.priority, now(), p_max_attempts, s.payload)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO vtasks_stats_delta (queue, enqueued) VALUES (p_queue, 1);
    IF p_notify THEN
        PERFORM pg_notify('vtasks', p_queue);
    END IF;
    RETURN true;
END
$fn$;

INSERT INTO vtasks_schema (version, name) VALUES (6, 'rate_limits_and_schedule_pause') ON CONFLICT DO NOTHING;
