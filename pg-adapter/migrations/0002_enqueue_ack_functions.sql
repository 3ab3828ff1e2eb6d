-- vtasks Postgres schema, version 2: enqueue and ack as plpgsql functions.
-- An unnamed statement is planned on every execution (about 1 ms for the enqueue CTE); inside a
-- plpgsql function the plans are cached per session, and the outer SELECT is trivial to plan.
-- Still no named prepared statements, so PgBouncer transaction pooling keeps working.
-- Idempotent and transactional, like 0001; no percent sign.

-- Returns one id per task inserted (missing: suppressed by its unique key or an existing id).
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
    ELSE
        RETURN QUERY
        INSERT INTO vtasks_task AS t (queue, id, state, priority, run_after, max_attempts, payload)
            SELECT p_queue, x.id, st, p_priority, ra, p_max_attempts, x.payload
              FROM unnest(p_ids, p_payloads) WITH ORDINALITY AS x(id, payload, ord)
             ORDER BY x.ord
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

-- ACK by (id, token) pairs: deletes the matching in-flight rows, releases their unique keys.
CREATE OR REPLACE FUNCTION vtasks_ack(p_queue text, p_ids text[], p_tokens text[])
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
BEGIN
    WITH d AS (
        DELETE FROM vtasks_task t USING unnest(p_ids, p_tokens) AS a(id, token)
         WHERE t.queue = p_queue AND t.id = ANY (p_ids)   -- pins the primary-key path
           AND t.id = a.id AND t.token = a.token AND t.state = 'i'
        RETURNING t.id, t.unique_key
    ), u AS (
        DELETE FROM vtasks_unique x USING d
         WHERE x.queue = p_queue AND d.unique_key IS NOT NULL AND x.key = d.unique_key AND x.task_id = d.id
    )
    SELECT count(*) INTO n FROM d;
    IF n > 0 THEN
        INSERT INTO vtasks_stats_delta (queue, acked) VALUES (p_queue, n);
    END IF;
    RETURN n;
END
$fn$;

INSERT INTO vtasks_schema (version, name) VALUES (2, 'enqueue_ack_functions') ON CONFLICT DO NOTHING;
