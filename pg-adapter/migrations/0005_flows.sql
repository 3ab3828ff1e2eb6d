-- vtasks Postgres schema, version 5: flows (chains and groups; PROTOCOL.md "Flows"). A task of a
-- flow that waits for others is a row of vtasks_waiting (never fetched) with one vtasks_flow_edge
-- per parent not acked yet; the ack of its last parent moves it to vtasks_task in the same
-- transaction. A parent that is dead-lettered takes its waiting descendants to the dead-letter
-- table; a deleted or cleared one removes them.
-- Idempotent and transactional, like 0001; no percent sign. Lock order (PROTOCOL.md): waiting
-- rows come right after task rows, in id order.

CREATE TABLE IF NOT EXISTS vtasks_waiting (
    queue         text NOT NULL,
    id            text NOT NULL,
    priority      smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    max_attempts  int NOT NULL,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    -- earliest run time once released
    run_after     timestamptz NOT NULL,
    -- parents not acked yet (= its vtasks_flow_edge rows); updated under the row lock, so two
    -- parents acked at once never both see the other still pending
    pending       int NOT NULL CHECK (pending > 0),
    payload       bytea NOT NULL,
    PRIMARY KEY (queue, id)
);

CREATE TABLE IF NOT EXISTS vtasks_flow_edge (
    queue   text NOT NULL,
    parent  text NOT NULL,
    child   text NOT NULL,
    PRIMARY KEY (queue, parent, child)
);
CREATE INDEX IF NOT EXISTS vtasks_flow_edge_child ON vtasks_flow_edge (queue, child);

-- Adds a flow: the tasks without parents to vtasks_task, the others to vtasks_waiting with their
-- edges. p_parents lists every task's parents one after the other (p_nparents[i] of them for
-- task i); the client checked that they are earlier tasks of the flow. Whole or nothing: no row
-- when one of the ids is already a live or waiting task of the queue.
CREATE OR REPLACE FUNCTION vtasks_enqueue_flow(p_queue text, p_ids text[], p_priorities int[],
                                               p_max_attempts int[], p_at_ms bigint[],
                                               p_nparents int[], p_parents text[],
                                               p_payloads bytea[], p_notify boolean)
RETURNS SETOF text LANGUAGE plpgsql AS $fn$
DECLARE
    ready boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM vtasks_task t WHERE t.queue = p_queue AND t.id = ANY (p_ids))
       OR EXISTS (SELECT 1 FROM vtasks_waiting w WHERE w.queue = p_queue AND w.id = ANY (p_ids)) THEN
        RETURN;
    END IF;
    -- set-based, one statement: one INSERT per table (data-modifying CTEs always run). Roots:
    -- seq drawn in the flow's order, rows inserted in id order (the lock order), as
    -- vtasks_enqueue does; edges from the flat parents list by each task's offset in it.
    WITH f AS MATERIALIZED (
        SELECT u.ord, u.id, u.priority, u.max_attempts,
               CASE WHEN u.at_ms > 0 THEN to_timestamp(u.at_ms / 1000.0) ELSE now() END AS ra,
               u.np, (sum(u.np) OVER (ORDER BY u.ord) - u.np)::int AS off, u.payload
          FROM unnest(p_ids, p_priorities, p_max_attempts, p_at_ms, p_nparents, p_payloads)
               WITH ORDINALITY AS u(id, priority, max_attempts, at_ms, np, payload, ord)
    ), roots AS (
        INSERT INTO vtasks_task (queue, id, state, priority, run_after, max_attempts, payload, seq)
            OVERRIDING SYSTEM VALUE
            SELECT p_queue, x.id, CASE WHEN x.ra > now() THEN 'd' ELSE 'r' END::"char",
                   x.priority, x.ra, x.max_attempts, x.payload, x.seq
              FROM (SELECT r.*, nextval(pg_get_serial_sequence('vtasks_task', 'seq')) AS seq
                      FROM (SELECT * FROM f WHERE f.np = 0 ORDER BY f.ord) r) x
             ORDER BY x.id
        RETURNING 1
    ), waiting AS (
        INSERT INTO vtasks_waiting (queue, id, priority, max_attempts, run_after, pending, payload)
            SELECT p_queue, f.id, f.priority, f.max_attempts, f.ra, f.np, f.payload
              FROM f WHERE f.np > 0 ORDER BY f.id
        RETURNING 1
    ), edges AS (
        INSERT INTO vtasks_flow_edge (queue, parent, child)
            SELECT p_queue, p_parents[f.off + g], f.id FROM f, generate_series(1, f.np) AS g
        RETURNING 1
    )
    SELECT coalesce(bool_or(f.np = 0 AND f.ra <= now()), false) INTO ready FROM f;
    INSERT INTO vtasks_stats_delta (queue, enqueued) VALUES (p_queue, cardinality(p_ids));
    IF p_notify AND ready THEN
        PERFORM pg_notify('vtasks', p_queue);
    END IF;
    RETURN QUERY SELECT unnest(p_ids);
END
$fn$;

-- The parents p_parents were acked: each child loses them from its pending count (rows locked in
-- id order); a child that waits for nothing more moves to vtasks_task (ready, or delayed until its
-- run time). Returns how many were released.
CREATE OR REPLACE FUNCTION vtasks_release_children(p_queue text, p_parents text[])
RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    left_ int;
    w vtasks_waiting;
    n int := 0;
    ready boolean := false;
BEGIN
    FOR r IN WITH e AS (
                DELETE FROM vtasks_flow_edge x WHERE x.queue = p_queue AND x.parent = ANY (p_parents)
                RETURNING x.child)
             SELECT e.child, count(*)::int AS k FROM e GROUP BY e.child ORDER BY e.child
    LOOP
        UPDATE vtasks_waiting x SET pending = x.pending - r.k
         WHERE x.queue = p_queue AND x.id = r.child AND x.pending > r.k
        RETURNING x.pending INTO left_;
        CONTINUE WHEN FOUND;
        DELETE FROM vtasks_waiting x WHERE x.queue = p_queue AND x.id = r.child RETURNING * INTO w;
        CONTINUE WHEN NOT FOUND;
        -- (an id is never live and waiting at once; should an operator's RETRYDEAD of a reused id
        -- make it so, the ack still commits)
        INSERT INTO vtasks_task (queue, id, state, priority, run_after, max_attempts, enqueued_at, payload)
            VALUES (p_queue, w.id, CASE WHEN w.run_after > now() THEN 'd' ELSE 'r' END::"char",
                    w.priority, w.run_after, w.max_attempts, w.enqueued_at, w.payload)
            ON CONFLICT (queue, id) DO NOTHING;
        ready := ready OR w.run_after <= now();
        n := n + 1;
    END LOOP;
    IF ready THEN
        PERFORM pg_notify('vtasks', p_queue);
    END IF;
    RETURN n;
END
$fn$;

-- Tasks p_ids left the queue without succeeding: every waiting task that waits for one of them,
-- transitively, is dead-lettered with p_error (moved through vtasks_task, so vtasks_bury stays
-- the one definition of dead-lettering) or, with p_error NULL, removed. Returns how many.
CREATE OR REPLACE FUNCTION vtasks_drop_dependents(p_queue text, p_ids text[], p_error text, p_cap int)
RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    kids text[];
    w vtasks_waiting;
    n int := 0;
BEGIN
    WITH RECURSIVE d(id) AS (
        SELECT e.child FROM vtasks_flow_edge e WHERE e.queue = p_queue AND e.parent = ANY (p_ids)
        UNION
        SELECT e.child FROM vtasks_flow_edge e JOIN d ON e.queue = p_queue AND e.parent = d.id
    )
    SELECT array_agg(d.id ORDER BY d.id) INTO kids FROM d;
    IF kids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM vtasks_waiting x WHERE x.queue = p_queue AND x.id = ANY (kids) ORDER BY x.id FOR UPDATE;
    DELETE FROM vtasks_flow_edge e
     WHERE e.queue = p_queue AND (e.child = ANY (kids) OR e.parent = ANY (p_ids) OR e.parent = ANY (kids));
    FOR w IN DELETE FROM vtasks_waiting x WHERE x.queue = p_queue AND x.id = ANY (kids) RETURNING * LOOP
        n := n + 1;
        IF p_error IS NOT NULL THEN
            INSERT INTO vtasks_task (queue, id, state, priority, run_after, max_attempts, enqueued_at, payload)
                VALUES (p_queue, w.id, 'd', w.priority, 'infinity', w.max_attempts, w.enqueued_at, w.payload)
                ON CONFLICT (queue, id) DO NOTHING;
            IF FOUND THEN
                PERFORM vtasks_bury(p_queue, w.id, p_error, p_cap);
            END IF;
        END IF;
    END LOOP;
    IF p_error IS NOT NULL AND n > 0 THEN
        INSERT INTO vtasks_stats_delta (queue, dead) VALUES (p_queue, n);
    END IF;
    RETURN n;
END
$fn$;

-- BURY as in 0003, then the task's waiting dependents follow it to the dead-letter table.
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
    IF EXISTS (SELECT 1 FROM vtasks_flow_edge e WHERE e.queue = p_queue AND e.parent = p_id) THEN
        PERFORM vtasks_drop_dependents(p_queue, ARRAY[p_id],
            'not run: task ' || p_id || ' that it waits for failed', p_cap);
    END IF;
    RETURN true;
END
$fn$;

-- ACK as in 0003, then the tasks that waited only for the acked ones are released.
CREATE OR REPLACE FUNCTION vtasks_ack(p_queue text, p_ids text[], p_tokens text[])
RETURNS bigint LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
DECLARE
    r record;
    k text;
    keys text[];
    key_ids text[];
    acked text[];
    n bigint := 0;
BEGIN
    FOR r IN SELECT a.id, a.token FROM unnest(p_ids, p_tokens) AS a(id, token) ORDER BY a.id LOOP
        DELETE FROM vtasks_task t
         WHERE t.queue = p_queue AND t.id = r.id AND t.token = r.token
        RETURNING t.unique_key INTO k;
        IF FOUND THEN
            n := n + 1;
            acked := acked || r.id;
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
        IF EXISTS (SELECT 1 FROM vtasks_flow_edge e WHERE e.queue = p_queue AND e.parent = ANY (acked)) THEN
            PERFORM vtasks_release_children(p_queue, acked);
        END IF;
    END IF;
    RETURN n;
END
$fn$;

-- ENQUEUE as in 0003, but an id that a waiting task holds is taken like a live one (nil).
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
        IF EXISTS (SELECT 1 FROM vtasks_waiting w WHERE w.queue = p_queue AND w.id = p_ids[1]) THEN
            RETURN;
        END IF;
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
            SELECT p_queue, p_ids[1], st, p_priority, ra, p_max_attempts, p_payloads[1]
             WHERE NOT EXISTS (SELECT 1 FROM vtasks_waiting w WHERE w.queue = p_queue AND w.id = p_ids[1])
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
             WHERE NOT EXISTS (SELECT 1 FROM vtasks_waiting w WHERE w.queue = p_queue AND w.id = x.id)
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

-- DELETE as in 0003; a deleted task (or waiting task) removes what waits for it.
CREATE OR REPLACE FUNCTION vtasks_delete(p_queue text, p_ids text[])
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tids tid[];
    locked text[];
    keys text[];
    gone text[];
    n int;
    w int;
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
               array_agg(d.id) FILTER (WHERE d.unique_key IS NOT NULL), array_agg(d.id)
          INTO n, keys, locked, gone FROM d;
        IF keys IS NOT NULL THEN
            PERFORM vtasks_release_keys(p_queue, keys, locked);
        END IF;
    END IF;
    -- waiting tasks named directly (locked in id order), then everything that waits for what went
    WITH d AS (
        DELETE FROM vtasks_waiting x WHERE x.queue = p_queue AND x.id = ANY (ARRAY(
            SELECT y.id FROM vtasks_waiting y WHERE y.queue = p_queue AND y.id = ANY (p_ids)
             ORDER BY y.id FOR UPDATE))
        RETURNING x.id
    )
    SELECT count(*), coalesce(gone, '{}') || coalesce(array_agg(d.id), '{}') INTO w, gone FROM d;
    IF w > 0 THEN
        DELETE FROM vtasks_flow_edge e WHERE e.queue = p_queue AND e.child = ANY (gone);
    END IF;
    IF cardinality(gone) > 0 THEN
        w := w + vtasks_drop_dependents(p_queue, gone, NULL, 0);
    END IF;
    RETURN n + w + vtasks_drop_dead(p_queue, p_ids);
END
$fn$;

-- CLEAR as in 0003; 'ready' and 'all' also remove the waiting tasks (they wait for tasks such a
-- clear removes).
CREATE OR REPLACE FUNCTION vtasks_clear(p_queue text, p_what text)
RETURNS int LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    tids tid[];
    locked text[];
    keys text[];
    n int := 0;
    w int;
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
        DELETE FROM vtasks_waiting x WHERE x.queue = p_queue AND x.id = ANY (ARRAY(
            SELECT y.id FROM vtasks_waiting y WHERE y.queue = p_queue ORDER BY y.id FOR UPDATE));
        GET DIAGNOSTICS w = ROW_COUNT;
        DELETE FROM vtasks_flow_edge e WHERE e.queue = p_queue;
        n := n + w;
    END IF;
    IF p_what IN ('dead', 'all') THEN
        n := n + vtasks_drop_dead(p_queue, NULL);
    END IF;
    RETURN n;
END
$fn$;

INSERT INTO vtasks_schema (version, name) VALUES (5, 'flows') ON CONFLICT DO NOTHING;
