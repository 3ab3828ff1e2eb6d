-- vtasks Postgres schema, version 4: cancelling a task by id (PROTOCOL.md, "VT.CANCEL"), the
-- semantics of the module's VT.CANCEL in SQL. Idempotent and transactional, like 0001; no percent
-- sign.
--
-- A ready or delayed task is dead-lettered at once with the cancel error; an in-flight task gets
-- the error in `cancel`: extend stops extending its lease (and names it), fail does not retry
-- it, rescue dead-letters it with that error instead of making it ready. `cancel` is only ever set
-- on rows in state 'i' (the paths out of 'i' bury a cancelled row).

ALTER TABLE vtasks_task ADD COLUMN IF NOT EXISTS cancel text;

-- CANCEL: one task row, locked (lock class 3 of "Lock order"), then vtasks_bury's classes.
-- Returns 'removed', 'flagged', or NULL when no live task has the id.
CREATE OR REPLACE FUNCTION vtasks_cancel(p_queue text, p_id text, p_error text, p_cap int)
RETURNS text LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    st "char";
BEGIN
    SELECT state INTO st FROM vtasks_task WHERE queue = p_queue AND id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF st = 'i' THEN
        UPDATE vtasks_task SET cancel = coalesce(cancel, p_error) WHERE queue = p_queue AND id = p_id;
        RETURN 'flagged';
    END IF;
    PERFORM vtasks_bury(p_queue, p_id, p_error, p_cap);
    INSERT INTO vtasks_stats_delta (queue, dead) VALUES (p_queue, 1);
    RETURN 'removed';
END
$fn$;

-- EXTEND (0003) that leaves cancelled leases alone.
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
         WHERE t.queue = p_queue AND t.state = 'i' AND t.worker = p_worker AND t.cancel IS NULL
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

-- EXTEND ... WITHCANCELLED: vtasks_extend, and the ids (in id order) of the worker's cancelled
-- leases on the queue, which it did not extend.
CREATE OR REPLACE FUNCTION vtasks_extend_cancelled(p_queue text, p_worker text, p_lease_ms bigint,
                                                   OUT extended bigint, OUT cancelled text[])
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $fn$
BEGIN
    extended := vtasks_extend(p_queue, p_worker, p_lease_ms);
    SELECT coalesce(array_agg(t.id ORDER BY t.id), '{}') INTO cancelled FROM vtasks_task t
     WHERE t.queue = p_queue AND t.state = 'i' AND t.worker = p_worker AND t.cancel IS NOT NULL;
END
$fn$;

-- FAIL (0001) that never retries a cancelled task.
CREATE OR REPLACE FUNCTION vtasks_fail(p_queue text, p_id text, p_token text, p_error text,
                                       p_retry_ms bigint, p_cap int)
RETURNS text LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT attempt, max_attempts, cancel INTO r FROM vtasks_task
     WHERE queue = p_queue AND id = p_id AND token = p_token AND state = 'i' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_retry_ms IS NOT NULL AND r.attempt < r.max_attempts AND r.cancel IS NULL THEN
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

-- RESCUE (0003) that dead-letters a cancelled task with its cancel error (it never runs again).
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
    FOR r IN SELECT t.id, t.attempt, t.max_attempts, t.worker, t.cancel FROM vtasks_task t
              WHERE t.queue = p_queue AND t.state = 'i'
                AND ((p_worker IS NULL AND t.deadline <= now()) OR t.worker = p_worker)
              ORDER BY t.id
              FOR UPDATE SKIP LOCKED
    LOOP
        IF r.cancel IS NOT NULL THEN
            PERFORM vtasks_bury(p_queue, r.id, r.cancel, p_cap);
            d := d + 1;
        ELSIF r.attempt >= r.max_attempts THEN
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

INSERT INTO vtasks_schema (version, name) VALUES (4, 'cancel') ON CONFLICT DO NOTHING;
