//! Every operation as one SQL statement (a `Stmt`: text + typed parameters) and a decoder of its
//! rows. The sync and async front-ends only differ in how they run a `Stmt`.
//!
//! All statements go through `query_typed` (unnamed statements, parameter types given): nothing is
//! prepared by name, so the crate works behind PgBouncer in transaction pooling mode.

use std::str::FromStr;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use vtasks_protocol::crontab::Cron;
use vtasks_protocol::limits;

use crate::{Error, Result};

/// Maximum tasks per fetch (as `VT.FETCHBATCH`).
pub const MAX_FETCH: i32 = limits::MAX_FETCH as i32;
/// Maximum payload size (as `vtasks.max-payload`).
pub const MAX_PAYLOAD: usize = limits::MAX_PAYLOAD;
/// Maximum id length in bytes.
pub const MAX_ID: usize = limits::MAX_ID_LEN;
/// NOTIFY channel; the payload is the queue name.
pub const CHANNEL: &str = "vtasks";

pub type Param = (Box<dyn ToSql + Sync + Send>, Type);

/// One statement and its parameters.
pub struct Stmt {
    pub sql: &'static str,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: &'static str) -> Self {
        Stmt { sql, params: Vec::new() }
    }
    pub fn p<T: ToSql + Sync + Send + 'static>(mut self, v: T, t: Type) -> Self {
        self.params.push((Box::new(v), t));
        self
    }
    pub fn refs(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params.iter().map(|(v, t)| (&**v as &(dyn ToSql + Sync), t.clone())).collect()
    }
}

/// Client configuration (mirrors the module's configs).
#[derive(Clone, Debug)]
pub struct Config {
    pub pool_size: u32,
    pub dlq_cap: i32,
    pub max_attempts: i32,
    pub default_lease_ms: i64,
    /// Use LISTEN/NOTIFY for wake-ups (polling always stays on as the fallback).
    pub notify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { pool_size: 10, dlq_cap: 1000, max_attempts: 3, default_lease_ms: 30_000, notify: true }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 {
            return invalid("pool_size must be at least 1");
        }
        if self.dlq_cap < 0 {
            return invalid("dlq_cap must be >= 0");
        }
        if self.max_attempts < 1 {
            return invalid("max_attempts must be >= 1");
        }
        if self.default_lease_ms < 1 {
            return invalid("default_lease_ms must be >= 1");
        }
        Ok(())
    }
}

/// Options of an enqueue (all payloads of one call share them).
#[derive(Clone, Debug, Default)]
pub struct EnqueueOpts {
    /// Client ids, one per payload (`None` entries get a UUIDv7). `None`: all generated.
    pub ids: Option<Vec<Option<String>>>,
    pub priority: i16,
    pub delay_ms: Option<i64>,
    pub at_ms: Option<i64>,
    /// (key, ttl_ms): only the first payload can take the key; the others are not added.
    pub unique: Option<(String, i64)>,
    pub max_attempts: Option<i32>,
}

/// One fetched task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub queue: String,
    pub id: String,
    pub token: String,
    pub attempt: i32,
    pub payload: Vec<u8>,
}

/// A task record (`VT.PEEK` / `VT.GET` fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: String,
    pub state: String,
    pub priority: i32,
    pub attempt: i32,
    pub max_attempts: i32,
    pub enqueued_at: i64,
    pub run_at: i64,
    pub worker: String,
    pub token: String,
    pub deadline: i64,
    pub error: String,
    pub failed_at: i64,
    pub payload: Vec<u8>,
}

/// One schedule (`VT.SCHEDULE LIST` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleEntry {
    pub name: String,
    pub kind: String,
    pub spec: String,
    pub next_run_ms: i64,
    pub payload: Vec<u8>,
    /// Paused at runtime (`schedule_pause`): no ticks fire.
    pub paused: bool,
}

/// Peek states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekState {
    Ready,
    Delayed,
    Inflight,
    Dead,
    /// A flow's tasks waiting for their parents (migration 5), in id order.
    Waiting,
}

impl FromStr for PeekState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ready" => Ok(PeekState::Ready),
            "delayed" => Ok(PeekState::Delayed),
            "inflight" => Ok(PeekState::Inflight),
            "dead" => Ok(PeekState::Dead),
            "waiting" => Ok(PeekState::Waiting),
            _ => invalid(format!("unknown state {s:?} (ready|delayed|inflight|dead|waiting)")),
        }
    }
}

/// `clear` targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearWhat {
    Ready,
    Dead,
    All,
}

impl FromStr for ClearWhat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ready" => Ok(ClearWhat::Ready),
            "dead" => Ok(ClearWhat::Dead),
            "all" => Ok(ClearWhat::All),
            _ => invalid(format!("unknown clear target {s:?} (ready|dead|all)")),
        }
    }
}

/// Field names of `info()`, in `VT.INFO` order.
pub const INFO_FIELDS: [&str; 14] = limits::INFO_FIELDS;

/// Field names of `maintain()`.
pub const MAINTAIN_FIELDS: [&str; 7] =
    ["rescued", "expired_queues", "uniques_purged", "results_purged", "ticks_purged", "stats_folded", "tasks_vacuumed"];

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

/// Longest queue name, unique key and schedule name (PROTOCOL.md): the indexes that hold them,
/// two at a time, stay under Postgres's 2,704-byte btree entry limit and a queue name fits a NOTIFY
/// payload (8,000 bytes), so a long name is a clear error here, never a raw index error.
pub const MAX_NAME: usize = limits::MAX_NAME_LEN;

pub(crate) fn check_queue(q: &str) -> Result<()> {
    if q.is_empty() || q.len() > MAX_NAME {
        return invalid(format!("queue name must be 1..{MAX_NAME} bytes"));
    }
    Ok(())
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID {
        return invalid(format!("task id must be 1..{MAX_ID} bytes"));
    }
    Ok(())
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

// ------------------------------------------------------------------------------------ enqueue

/// The enqueue statement (`vtasks_enqueue`, migration 2). Each parameter appears exactly once, in
/// order, so the psycopg form is the same text with `$n` replaced by `%s` (`enqueue_sql_psycopg`).
/// Returns one row `(id)` per task actually inserted; NOTIFY is sent (once per statement) only
/// when `notify` is true and the inserted tasks are ready now.
pub const ENQUEUE_SQL: &str = "SELECT id FROM vtasks_enqueue($1::text, $2::text[], $3::bytea[], $4::int2, \
     $5::int8, $6::int8, $7::text, $8::int8, $9::int4, $10::bool) AS id";

/// Validated enqueue arguments, ready to bind.
pub struct EnqueueArgs {
    pub queue: String,
    pub ids: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
    pub priority: i16,
    pub delay_ms: Option<i64>,
    pub at_ms: Option<i64>,
    pub ukey: Option<String>,
    pub uttl_ms: Option<i64>,
    pub max_attempts: i32,
}

impl EnqueueArgs {
    pub fn new(queue: &str, payloads: Vec<Vec<u8>>, o: EnqueueOpts, default_max: i32) -> Result<Self> {
        check_queue(queue)?;
        if payloads.is_empty() {
            return invalid("at least one payload is required");
        }
        if !(limits::MIN_PRIORITY..=limits::MAX_PRIORITY).contains(&(o.priority as i64)) {
            return invalid("priority must be in -100..100");
        }
        if o.delay_ms.is_some() && o.at_ms.is_some() {
            return invalid("delay_ms and at_ms are exclusive");
        }
        if matches!(o.delay_ms, Some(d) if d < 0) {
            return invalid("delay_ms must be >= 0");
        }
        if matches!(o.at_ms, Some(a) if a < 0) {
            return invalid("at_ms must be >= 0");
        }
        let max_attempts = o.max_attempts.unwrap_or(default_max);
        if max_attempts < 1 {
            return invalid("max_attempts must be >= 1");
        }
        if let Some(p) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
            return invalid(format!("payload of {} bytes exceeds {MAX_PAYLOAD}", p.len()));
        }
        let ids: Vec<String> = match o.ids {
            None => payloads.iter().map(|_| new_id()).collect(),
            Some(ids) => {
                if ids.len() != payloads.len() {
                    return invalid("ids and payloads must have the same length");
                }
                ids.into_iter().map(|i| i.unwrap_or_else(new_id)).collect()
            }
        };
        for id in &ids {
            check_id(id)?;
        }
        let (ukey, uttl_ms) = match o.unique {
            None => (None, None),
            Some((k, ttl)) => {
                if k.is_empty() || k.len() > MAX_NAME {
                    return invalid(format!("unique key must be 1..{MAX_NAME} bytes"));
                }
                if ttl <= 0 {
                    return invalid("unique ttl must be > 0 ms");
                }
                (Some(k), Some(ttl))
            }
        };
        Ok(EnqueueArgs {
            queue: queue.to_string(),
            ids,
            payloads,
            priority: o.priority,
            delay_ms: o.delay_ms,
            at_ms: o.at_ms,
            ukey,
            uttl_ms,
            max_attempts,
        })
    }

    pub fn stmt(self, notify: bool) -> Stmt {
        Stmt::new(ENQUEUE_SQL)
            .p(self.queue, Type::TEXT)
            .p(self.ids, Type::TEXT_ARRAY)
            .p(self.payloads, Type::BYTEA_ARRAY)
            .p(self.priority, Type::INT2)
            .p(self.delay_ms, Type::INT8)
            .p(self.at_ms, Type::INT8)
            .p(self.ukey, Type::TEXT)
            .p(self.uttl_ms, Type::INT8)
            .p(self.max_attempts, Type::INT4)
            .p(notify, Type::BOOL)
    }
}

/// `ENQUEUE_SQL` with psycopg `%s` placeholders (each `$n` appears once, in order).
pub fn enqueue_sql_psycopg() -> String {
    let mut out = String::with_capacity(ENQUEUE_SQL.len());
    let b = ENQUEUE_SQL.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push_str("%s");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Maps the inserted ids back onto the requested ids (None = suppressed).
pub fn enqueue_decode(ids: &[String], rows: &[Row]) -> Result<Vec<Option<String>>> {
    let mut inserted = std::collections::HashSet::with_capacity(rows.len());
    for r in rows {
        inserted.insert(r.try_get::<_, String>(0)?);
    }
    let mut seen = std::collections::HashSet::new();
    Ok(ids
        .iter()
        .map(|id| if inserted.contains(id) && seen.insert(id.clone()) { Some(id.clone()) } else { None })
        .collect())
}

// -------------------------------------------------------------------------------------- fetch

pub const FETCH_SQL: &str = "SELECT queue, id, token, attempt, payload, ord, priority::int4, \
     floor(extract(epoch FROM run_after) * 1000000)::int8, seq \
     FROM vtasks_fetch($1::text[], $2::text, $3::int4, $4::int8)";

pub struct FetchArgs {
    pub queues: Vec<String>,
    pub worker: String,
    pub count: i32,
    pub lease_ms: i64,
}

impl FetchArgs {
    pub fn new(queues: &[String], worker: &str, count: i64, lease_ms: Option<i64>, cfg: &Config) -> Result<Self> {
        if queues.is_empty() {
            return invalid("at least one queue is required");
        }
        for q in queues {
            check_queue(q)?;
        }
        if worker.is_empty() {
            return invalid("worker id must not be empty");
        }
        if count < 1 || count > MAX_FETCH as i64 {
            return invalid(format!("count must be in 1..{MAX_FETCH}"));
        }
        let lease_ms = lease_ms.unwrap_or(cfg.default_lease_ms);
        if lease_ms < 1 {
            return invalid("lease_ms must be >= 1");
        }
        Ok(FetchArgs { queues: queues.to_vec(), worker: worker.to_string(), count: count as i32, lease_ms })
    }

    pub fn stmt(&self) -> Stmt {
        Stmt::new(FETCH_SQL)
            .p(self.queues.clone(), Type::TEXT_ARRAY)
            .p(self.worker.clone(), Type::TEXT)
            .p(self.count, Type::INT4)
            .p(self.lease_ms, Type::INT8)
    }
}

/// Deliveries in fetch order, and (when nothing was fetched) ms until the next delayed task.
pub fn fetch_decode(rows: Vec<Row>) -> Result<(Vec<Delivery>, Option<i64>)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut due = None;
    for r in rows {
        let queue: Option<String> = r.try_get(0)?;
        match queue {
            None => due = r.try_get::<_, Option<i64>>(8)?,
            Some(queue) => {
                let key = (
                    r.try_get::<_, i32>(5)?,
                    -r.try_get::<_, i32>(6)?,
                    r.try_get::<_, i64>(7)?,
                    r.try_get::<_, i64>(8)?,
                );
                out.push((
                    key,
                    Delivery {
                        queue,
                        id: r.try_get(1)?,
                        token: r.try_get(2)?,
                        attempt: r.try_get(3)?,
                        payload: r.try_get(4)?,
                    },
                ));
            }
        }
    }
    out.sort_by_key(|a| a.0);
    Ok((out.into_iter().map(|(_, d)| d).collect(), due))
}

// ------------------------------------------------------------------------ ack / fail / rescue

pub const ACK_SQL: &str = "SELECT vtasks_ack($1::text, $2::text[], $3::text[])";

pub fn ack_stmt(queue: &str, pairs: &[(String, String)]) -> Result<Stmt> {
    check_queue(queue)?;
    let ids: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let toks: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    Ok(Stmt::new(ACK_SQL).p(queue.to_string(), Type::TEXT).p(ids, Type::TEXT_ARRAY).p(toks, Type::TEXT_ARRAY))
}

/// ACK plus result upserts in **one statement** (so one round trip and one transaction): the results
/// CTE always runs (data-modifying CTEs do even when unreferenced), then `vtasks_ack`. Results are
/// stored whether or not the ack's token still matches (the task did run), as `store_result` does.
pub const ACK_RESULTS_SQL: &str = "WITH r AS (\
     INSERT INTO vtasks_result (id, data, expires_at) \
     SELECT x.id, x.data, now() + x.ttl * interval '1 millisecond' \
       FROM unnest($4::text[], $5::bytea[], $6::int8[]) AS x(id, data, ttl) \
     ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at) \
     SELECT vtasks_ack($1::text, $2::text[], $3::text[])";

/// One result to store: `(id, result_json, ttl_ms)`.
pub type ResultRow = (String, Vec<u8>, i64);

/// `ack` and `store_result` for many tasks in one statement. Results with the same id keep the
/// last one; they are upserted in id order (a stable lock order between concurrent workers).
pub fn ack_results_stmt(queue: &str, pairs: &[(String, String)], results: &[ResultRow]) -> Result<Stmt> {
    check_queue(queue)?;
    let mut by_id: std::collections::BTreeMap<&str, (&[u8], i64)> = std::collections::BTreeMap::new();
    for (id, data, ttl) in results {
        check_id(id)?;
        if *ttl < 1 {
            return invalid("ttl_ms must be >= 1");
        }
        by_id.insert(id.as_str(), (data.as_slice(), *ttl));
    }
    let ids: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let toks: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    let rids: Vec<String> = by_id.keys().map(|k| k.to_string()).collect();
    let rdata: Vec<Vec<u8>> = by_id.values().map(|v| v.0.to_vec()).collect();
    let rttl: Vec<i64> = by_id.values().map(|v| v.1).collect();
    Ok(Stmt::new(ACK_RESULTS_SQL)
        .p(queue.to_string(), Type::TEXT)
        .p(ids, Type::TEXT_ARRAY)
        .p(toks, Type::TEXT_ARRAY)
        .p(rids, Type::TEXT_ARRAY)
        .p(rdata, Type::BYTEA_ARRAY)
        .p(rttl, Type::INT8_ARRAY))
}

pub fn fail_stmt(queue: &str, id: &str, token: &str, error: &str, retry_ms: Option<i64>, cap: i32) -> Result<Stmt> {
    check_queue(queue)?;
    if matches!(retry_ms, Some(r) if r < 0) {
        return invalid("retry_ms must be >= 0");
    }
    Ok(Stmt::new("SELECT vtasks_fail($1::text, $2::text, $3::text, $4::text, $5::int8, $6::int4)")
        .p(queue.to_string(), Type::TEXT)
        .p(id.to_string(), Type::TEXT)
        .p(token.to_string(), Type::TEXT)
        .p(error.to_string(), Type::TEXT)
        .p(retry_ms, Type::INT8)
        .p(cap, Type::INT4))
}

pub fn rescue_stmt(queue: &str, worker: Option<&str>, cap: i32) -> Result<Stmt> {
    check_queue(queue)?;
    Ok(Stmt::new("SELECT vtasks_rescue($1::text, $2::text, $3::int4)::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(worker.map(str::to_string), Type::TEXT)
        .p(cap, Type::INT4))
}

pub fn extend_stmt(queue: &str, worker: &str, lease_ms: i64) -> Result<Stmt> {
    check_queue(queue)?;
    if lease_ms < 1 {
        return invalid("lease_ms must be >= 1");
    }
    // vtasks_extend (migration 3): rows in id order with SKIP LOCKED, so the heartbeat never
    // waits for (and never deadlocks with) an ack; PROTOCOL.md, "Lock order".
    Ok(Stmt::new("SELECT vtasks_extend($1::text, $2::text, $3::int8)")
        .p(queue.to_string(), Type::TEXT)
        .p(worker.to_string(), Type::TEXT)
        .p(lease_ms, Type::INT8))
}

/// `vtasks_cancel` (migration 4; PROTOCOL.md "VT.CANCEL"): dead-letters a ready/delayed task with
/// the cancel error (`removed`) or flags an in-flight one (`flagged`); NULL for no live task.
pub fn cancel_stmt(queue: &str, id: &str, reason: &str, cap: i32) -> Result<Stmt> {
    check_queue(queue)?;
    check_id(id)?;
    if reason.len() > MAX_CANCEL_REASON {
        return invalid(format!("reason must be at most {MAX_CANCEL_REASON} bytes"));
    }
    let error = String::from_utf8_lossy(&vtasks_protocol::cancel::cancel_error(reason.as_bytes())).into_owned();
    Ok(Stmt::new("SELECT vtasks_cancel($1::text, $2::text, $3::text, $4::int4)")
        .p(queue.to_string(), Type::TEXT)
        .p(id.to_string(), Type::TEXT)
        .p(error, Type::TEXT)
        .p(cap, Type::INT4))
}

/// Longest cancel reason (the module's: the error `cancelled: <reason>` stays within 64 KiB).
pub const MAX_CANCEL_REASON: usize = 64 * 1024 - 16;

/// `vtasks_extend_cancelled` (migration 4): extends the worker's leases except cancelled ones,
/// and names those (`VT.EXTEND ... WITHCANCELLED`). One row `(extended, cancelled[])`.
pub fn extend_cancelled_stmt(queue: &str, worker: &str, lease_ms: i64) -> Result<Stmt> {
    check_queue(queue)?;
    if lease_ms < 1 {
        return invalid("lease_ms must be >= 1");
    }
    Ok(Stmt::new("SELECT extended, cancelled FROM vtasks_extend_cancelled($1::text, $2::text, $3::int8)")
        .p(queue.to_string(), Type::TEXT)
        .p(worker.to_string(), Type::TEXT)
        .p(lease_ms, Type::INT8))
}

pub fn extend_cancelled_decode(rows: &[Row]) -> Result<(i64, Vec<String>)> {
    match rows.first() {
        Some(r) => Ok((
            r.try_get::<_, Option<i64>>(0)?.unwrap_or(0),
            r.try_get::<_, Option<Vec<String>>>(1)?.unwrap_or_default(),
        )),
        None => Ok((0, Vec::new())),
    }
}

/// First column of the first row as i64 (0 when absent/NULL).
pub fn one_i64(rows: &[Row]) -> Result<i64> {
    match rows.first() {
        Some(r) => Ok(r.try_get::<_, Option<i64>>(0)?.unwrap_or(0)),
        None => Ok(0),
    }
}

pub fn one_opt_string(rows: &[Row]) -> Result<Option<String>> {
    match rows.first() {
        Some(r) => Ok(r.try_get::<_, Option<String>>(0)?),
        None => Ok(None),
    }
}

// ------------------------------------------------------------------------------ info / operator

pub const INFO_SQL: &str = r#"WITH t AS (
  SELECT count(*) FILTER (WHERE state = 'r' OR (state = 'd' AND run_after <= now())) AS r,
         count(*) FILTER (WHERE state = 'd' AND run_after > now()) AS d,
         count(*) FILTER (WHERE state = 'i') AS i
    FROM vtasks_task WHERE queue = $1::text
), s AS (
  SELECT coalesce(sum(e), 0)::int8 AS e, coalesce(sum(a), 0)::int8 AS a, coalesce(sum(f), 0)::int8 AS f,
         coalesce(sum(r), 0)::int8 AS r, coalesce(sum(s), 0)::int8 AS s, coalesce(sum(x), 0)::int8 AS x
    FROM (SELECT enqueued_total AS e, acked_total AS a, failed_total AS f, retried_total AS r,
                 rescued_total AS s, dead_total AS x FROM vtasks_stats WHERE queue = $1::text
          UNION ALL
          SELECT enqueued, acked, failed, retried, rescued, dead FROM vtasks_stats_delta
           WHERE queue = $1::text) z
)
SELECT t.r, t.d, t.i,
       (SELECT count(*) FROM vtasks_dead WHERE queue = $1::text),
       coalesce((SELECT evicted FROM vtasks_dlq WHERE queue = $1::text), 0)::int8,
       s.e, s.a, s.f, s.r, s.s, s.x,
       (SELECT count(*) FROM vtasks_schedule WHERE queue = $1::text),
       (SELECT count(*) FROM vtasks_unique WHERE queue = $1::text AND expires_at > now()),
       (SELECT count(*) FROM vtasks_waiting WHERE queue = $1::text)
  FROM t, s"#;

pub fn info_stmt(queue: &str) -> Stmt {
    Stmt::new(INFO_SQL).p(queue.to_string(), Type::TEXT)
}

pub fn info_decode(rows: &[Row]) -> Result<Vec<(&'static str, i64)>> {
    let r = rows.first().ok_or_else(|| Error::Invalid("info returned no row".into()))?;
    let mut out = Vec::with_capacity(INFO_FIELDS.len());
    for (i, f) in INFO_FIELDS.iter().enumerate() {
        out.push((*f, r.try_get::<_, i64>(i)?));
    }
    Ok(out)
}

pub fn queues_stmt() -> Stmt {
    Stmt::new(
        "SELECT queue FROM vtasks_stats UNION SELECT queue FROM vtasks_stats_delta \
         UNION SELECT queue FROM vtasks_schedule UNION SELECT queue FROM vtasks_dlq ORDER BY 1",
    )
}

pub fn strings_decode(rows: &[Row]) -> Result<Vec<String>> {
    rows.iter().map(|r| Ok(r.try_get::<_, String>(0)?)).collect()
}

macro_rules! live_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, CASE WHEN state = 'i' THEN 'inflight' \
             WHEN state = 'd' AND run_after > now() THEN 'delayed' ELSE 'ready' END, \
             priority::int4, attempt, max_attempts, vtasks_ms(enqueued_at), vtasks_ms(run_after), \
             coalesce(worker, ''), CASE WHEN state = 'i' THEN coalesce(token, '') ELSE '' END, \
             vtasks_ms(deadline), coalesce(error, ''), vtasks_ms(failed_at), payload \
             FROM vtasks_task WHERE queue = $1::text ",
            $tail
        )
    };
}
macro_rules! dead_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, 'dead', priority::int4, attempt, max_attempts, vtasks_ms(enqueued_at), 0::int8, \
             '', '', 0::int8, error, vtasks_ms(failed_at), payload FROM vtasks_dead WHERE queue = $1::text ",
            $tail
        )
    };
}

/// A flow's tasks waiting for their parents (migration 5) as task records.
macro_rules! waiting_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, 'waiting', priority::int4, 0, max_attempts, vtasks_ms(enqueued_at), vtasks_ms(run_after), \
             '', '', 0::int8, '', 0::int8, payload FROM vtasks_waiting WHERE queue = $1::text ",
            $tail
        )
    };
}

pub fn peek_stmt(queue: &str, state: PeekState, offset: i64, count: i64) -> Result<Stmt> {
    check_queue(queue)?;
    if offset < 0 {
        return invalid("offset must be >= 0");
    }
    // COUNT 0 is an empty page, as VT.PEEK answers it
    if !(0..=limits::MAX_PEEK).contains(&count) {
        return invalid("count must be in 0..1000");
    }
    let sql: &'static str = match state {
        PeekState::Ready => live_sql!(
            "AND (state = 'r' OR (state = 'd' AND run_after <= now())) \
             ORDER BY priority DESC, run_after, seq OFFSET $2::int8 LIMIT $3::int8"
        ),
        PeekState::Delayed => {
            live_sql!("AND state = 'd' AND run_after > now() ORDER BY run_after, seq OFFSET $2::int8 LIMIT $3::int8")
        }
        PeekState::Inflight => live_sql!("AND state = 'i' ORDER BY deadline, seq OFFSET $2::int8 LIMIT $3::int8"),
        PeekState::Dead => dead_sql!("ORDER BY seq DESC OFFSET $2::int8 LIMIT $3::int8"),
        PeekState::Waiting => waiting_sql!("ORDER BY id OFFSET $2::int8 LIMIT $3::int8"),
    };
    Ok(Stmt::new(sql).p(queue.to_string(), Type::TEXT).p(offset, Type::INT8).p(count, Type::INT8))
}

pub fn get_stmt(queue: &str, id: &str) -> Result<Stmt> {
    check_queue(queue)?;
    const SQL: &str = concat!(
        "(",
        live_sql!("AND id = $2::text"),
        ") UNION ALL (",
        waiting_sql!("AND id = $2::text"),
        ") UNION ALL (",
        dead_sql!("AND id = $2::text ORDER BY seq DESC LIMIT 1"),
        ") LIMIT 1"
    );
    Ok(Stmt::new(SQL).p(queue.to_string(), Type::TEXT).p(id.to_string(), Type::TEXT))
}

pub fn records_decode(rows: &[Row]) -> Result<Vec<TaskRecord>> {
    rows.iter()
        .map(|r| {
            Ok(TaskRecord {
                id: r.try_get(0)?,
                state: r.try_get(1)?,
                priority: r.try_get(2)?,
                attempt: r.try_get(3)?,
                max_attempts: r.try_get(4)?,
                enqueued_at: r.try_get(5)?,
                run_at: r.try_get(6)?,
                worker: r.try_get(7)?,
                token: r.try_get(8)?,
                deadline: r.try_get(9)?,
                error: r.try_get(10)?,
                failed_at: r.try_get(11)?,
                payload: r.try_get(12)?,
            })
        })
        .collect()
}

pub fn retry_dead_stmt(queue: &str, ids: Option<Vec<String>>) -> Result<Stmt> {
    check_queue(queue)?;
    Ok(Stmt::new("SELECT vtasks_retry_dead($1::text, $2::text[])::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(ids, Type::TEXT_ARRAY))
}

pub fn delete_stmt(queue: &str, ids: Vec<String>) -> Result<Stmt> {
    check_queue(queue)?;
    Ok(Stmt::new("SELECT vtasks_delete($1::text, $2::text[])::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(ids, Type::TEXT_ARRAY))
}

pub fn clear_stmt(queue: &str, what: ClearWhat) -> Result<Stmt> {
    check_queue(queue)?;
    let w = match what {
        ClearWhat::Ready => "ready",
        ClearWhat::Dead => "dead",
        ClearWhat::All => "all",
    };
    Ok(Stmt::new("SELECT vtasks_clear($1::text, $2::text)::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(w.to_string(), Type::TEXT))
}

// ---------------------------------------------------------------------------------- schedules

/// A parsed schedule spec.
pub enum Spec {
    Cron(Box<Cron>, String),
    Every(i64),
}

/// Parses a cron expression the way the module does (crontab's reading: `vtasks_protocol`).
pub fn parse_cron(expr: &str) -> Result<Cron> {
    Cron::parse(expr).map_err(Error::Invalid)
}

impl Spec {
    pub fn new(cron: Option<&str>, every_ms: Option<i64>) -> Result<Self> {
        match (cron, every_ms) {
            (Some(c), None) => Ok(Spec::Cron(Box::new(parse_cron(c)?), c.to_string())),
            (None, Some(e)) if e >= 1 => Ok(Spec::Every(e)),
            (None, Some(_)) => invalid("every_ms must be >= 1"),
            _ => invalid("exactly one of cron and every_ms is required"),
        }
    }

    pub fn parse(kind: &str, spec: &str) -> Result<Self> {
        match kind {
            "cron" => Spec::new(Some(spec), None),
            "every" => {
                Spec::new(None, Some(spec.parse().map_err(|_| Error::Invalid(format!("bad every spec {spec:?}")))?))
            }
            _ => invalid(format!("unknown schedule kind {kind:?}")),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Cron(..) => "cron",
            Spec::Every(_) => "every",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Spec::Cron(_, s) => s.clone(),
            Spec::Every(e) => e.to_string(),
        }
    }

    /// The tick after one that was due at `tick_ms` and fired at `now_ms`. Missed ticks coalesce:
    /// the next tick is always in the future.
    pub fn next(&self, tick_ms: i64, now_ms: i64) -> i64 {
        match self {
            Spec::Every(e) => {
                let n = tick_ms.saturating_add(*e);
                if n > now_ms {
                    n
                } else {
                    now_ms.saturating_add(*e)
                }
            }
            Spec::Cron(s, _) => cron_next(s, now_ms),
        }
    }

    /// First tick of a schedule created at `now_ms`.
    pub fn first(&self, now_ms: i64) -> i64 {
        match self {
            Spec::Every(e) => now_ms.saturating_add(*e),
            Spec::Cron(s, _) => cron_next(s, now_ms),
        }
    }
}

/// First cron tick strictly after `after_ms` (i64::MAX when there is none).
pub fn cron_next(s: &Cron, after_ms: i64) -> i64 {
    s.next_after(after_ms).unwrap_or(i64::MAX)
}

pub fn now_stmt() -> Stmt {
    Stmt::new("SELECT vtasks_ms(now())")
}

pub fn schedule_set_stmt(
    queue: &str,
    name: &str,
    spec: &Spec,
    payload: Vec<u8>,
    priority: i16,
    next_ms: i64,
) -> Result<Stmt> {
    check_queue(queue)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return invalid(format!("schedule name must be 1..{MAX_NAME} bytes"));
    }
    if !(limits::MIN_PRIORITY..=limits::MAX_PRIORITY).contains(&(priority as i64)) {
        return invalid("priority must be in -100..100");
    }
    if payload.len() > MAX_PAYLOAD {
        return invalid("payload too large");
    }
    Ok(Stmt::new(
        "INSERT INTO vtasks_schedule (queue, name, kind, spec, priority, payload, next_run_ms) \
         VALUES ($1::text, $2::text, $3::text, $4::text, $5::int2, $6::bytea, $7::int8) \
         ON CONFLICT (queue, name) DO UPDATE SET kind = EXCLUDED.kind, spec = EXCLUDED.spec, \
         priority = EXCLUDED.priority, payload = EXCLUDED.payload, next_run_ms = EXCLUDED.next_run_ms \
         RETURNING 1::int8",
    )
    .p(queue.to_string(), Type::TEXT)
    .p(name.to_string(), Type::TEXT)
    .p(spec.kind().to_string(), Type::TEXT)
    .p(spec.text(), Type::TEXT)
    .p(priority, Type::INT2)
    .p(payload, Type::BYTEA)
    .p(next_ms, Type::INT8))
}

pub fn schedule_del_stmt(queue: &str, name: &str) -> Stmt {
    Stmt::new(
        "WITH d AS (DELETE FROM vtasks_schedule WHERE queue = $1::text AND name = $2::text RETURNING 1) \
         SELECT count(*)::int8 FROM d",
    )
    .p(queue.to_string(), Type::TEXT)
    .p(name.to_string(), Type::TEXT)
}

pub fn schedule_list_stmt(queue: &str) -> Stmt {
    Stmt::new(
        "SELECT name, kind, spec, next_run_ms, payload, paused FROM vtasks_schedule WHERE queue = $1::text ORDER BY name",
    )
        .p(queue.to_string(), Type::TEXT)
}

pub fn schedule_list_decode(rows: &[Row]) -> Result<Vec<ScheduleEntry>> {
    rows.iter()
        .map(|r| {
            Ok(ScheduleEntry {
                name: r.try_get(0)?,
                kind: r.try_get(1)?,
                spec: r.try_get(2)?,
                next_run_ms: r.try_get(3)?,
                payload: r.try_get(4)?,
                paused: r.try_get(5)?,
            })
        })
        .collect()
}

/// Pauses a schedule: 1 if it exists, else 0.
pub fn schedule_pause_stmt(queue: &str, name: &str) -> Stmt {
    Stmt::new(
        "WITH u AS (UPDATE vtasks_schedule SET paused = true WHERE queue = $1::text AND name = $2::text RETURNING 1) \
         SELECT count(*)::int8 FROM u",
    )
    .p(queue.to_string(), Type::TEXT)
    .p(name.to_string(), Type::TEXT)
}

/// What resuming needs: (kind, spec, next_run_ms, now_ms) of the schedule, if it exists.
pub fn schedule_state_stmt(queue: &str, name: &str) -> Stmt {
    Stmt::new(
        "SELECT kind, spec, next_run_ms, vtasks_ms(now()) FROM vtasks_schedule WHERE queue = $1::text AND name = $2::text",
    )
    .p(queue.to_string(), Type::TEXT)
    .p(name.to_string(), Type::TEXT)
}

/// The next tick of a schedule resumed at the time in `rows` (of `schedule_state_stmt`): its
/// next tick if still ahead, else the first one after now (the ticks missed while paused are not
/// made up). None when there is no such schedule.
pub fn resume_next(rows: &[Row]) -> Result<Option<i64>> {
    let Some(r) = rows.first() else { return Ok(None) };
    let (kind, spec): (String, String) = (r.try_get(0)?, r.try_get(1)?);
    let (next, now): (i64, i64) = (r.try_get(2)?, r.try_get(3)?);
    if next > now {
        return Ok(Some(next));
    }
    Ok(Some(Spec::parse(&kind, &spec)?.first(now)))
}

/// Resumes a schedule with its next tick `next_ms`: 1 if it exists, else 0.
pub fn schedule_resume_stmt(queue: &str, name: &str, next_ms: i64) -> Stmt {
    Stmt::new(
        "WITH u AS (UPDATE vtasks_schedule SET paused = false, \
         next_run_ms = CASE WHEN next_run_ms > vtasks_ms(now()) THEN next_run_ms ELSE $3::int8 END \
         WHERE queue = $1::text AND name = $2::text RETURNING 1) SELECT count(*)::int8 FROM u",
    )
    .p(queue.to_string(), Type::TEXT)
    .p(name.to_string(), Type::TEXT)
    .p(next_ms, Type::INT8)
}

/// Enqueues one task from a schedule now, under `id` (`vtasks_schedule_run`): 1 if enqueued.
pub fn schedule_run_stmt(queue: &str, name: &str, id: &str, max_attempts: i32, notify: bool) -> Stmt {
    Stmt::new("SELECT vtasks_schedule_run($1::text, $2::text, $3::text, $4::int4, $5::bool)::int4::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(name.to_string(), Type::TEXT)
        .p(id.to_string(), Type::TEXT)
        .p(max_attempts, Type::INT4)
        .p(notify, Type::BOOL)
}

/// Due schedules (read without locks; `vtasks_fire` is the compare-and-set).
pub fn due_schedules_stmt() -> Stmt {
    Stmt::new(
        "SELECT queue, name, kind, spec, next_run_ms, vtasks_ms(now()) FROM vtasks_schedule \
         WHERE next_run_ms <= vtasks_ms(now()) AND NOT paused ORDER BY next_run_ms LIMIT 1000",
    )
}

pub struct DueTick {
    pub queue: String,
    pub name: String,
    pub tick_ms: i64,
    pub next_ms: i64,
}

pub fn due_decode(rows: &[Row]) -> Result<Vec<DueTick>> {
    let mut out = Vec::new();
    for r in rows {
        let kind: String = r.try_get(2)?;
        let spec: String = r.try_get(3)?;
        let tick_ms: i64 = r.try_get(4)?;
        let now_ms: i64 = r.try_get(5)?;
        // A row with a spec we cannot parse is skipped (never fired twice, never crashes).
        let Ok(s) = Spec::parse(&kind, &spec) else { continue };
        out.push(DueTick { queue: r.try_get(0)?, name: r.try_get(1)?, tick_ms, next_ms: s.next(tick_ms, now_ms) });
    }
    Ok(out)
}

pub fn fire_stmt(t: &DueTick, max_attempts: i32, notify: bool) -> Stmt {
    Stmt::new("SELECT vtasks_fire($1::text, $2::text, $3::int8, $4::int8, $5::text, $6::int4, $7::bool)::int4::int8")
        .p(t.queue.clone(), Type::TEXT)
        .p(t.name.clone(), Type::TEXT)
        .p(t.tick_ms, Type::INT8)
        .p(t.next_ms, Type::INT8)
        .p(new_id(), Type::TEXT)
        .p(max_attempts, Type::INT4)
        .p(notify, Type::BOOL)
}

// ------------------------------------------------------------------------- maintain / results

pub fn maintain_stmt(cap: i32) -> Stmt {
    Stmt::new(
        "SELECT rescued::int8, expired_queues::int8, uniques_purged::int8, results_purged::int8, \
         ticks_purged::int8, stats_folded::int8 FROM vtasks_maintain($1::int4)",
    )
    .p(cap, Type::INT4)
}

/// The fields of `vtasks_maintain` (all of `MAINTAIN_FIELDS` but the last, `tasks_vacuumed`,
/// which the client adds after `vacuum_due_stmt`).
pub fn maintain_decode(rows: &[Row]) -> Result<Vec<(&'static str, i64)>> {
    let r = rows.first().ok_or_else(|| Error::Invalid("maintain returned no row".into()))?;
    let mut out = Vec::new();
    for (i, f) in MAINTAIN_FIELDS[..MAINTAIN_FIELDS.len() - 1].iter().enumerate() {
        out.push((*f, r.try_get::<_, Option<i64>>(i)?.unwrap_or(0)));
    }
    Ok(out)
}

/// `maintain()` vacuums `vtasks_task` itself once its dead rows exceed `VACUUM_DEAD_MIN` plus
/// `VACUUM_DEAD_PER_LIVE` of its live rows. Autovacuum looks at a database once a minute
/// (`autovacuum_naptime`): bursts of 30,000 tasks leave 60,000 dead rows in seconds (claim and
/// ack), every fetch then walks the ready index through them, and measured Postgres CPU per burst
/// grew 2.3 s, 3.7 s, 7.8 s, 20 s over four consecutive bursts; one VACUUM (0.4 s) brought it back
/// to 2.1 s. Next to a backlog of 970,000 rows, 162,000 dead rows made fetch+ack 1.4x slower
/// (p50 2.8 -> 4.0 ms): the proportional part keeps a big backlog from being vacuumed over and over.
pub const VACUUM_DEAD_MIN: i64 = 20_000;
pub const VACUUM_DEAD_PER_LIVE: f64 = 0.2;

/// One row: whether `vtasks_task` needs the VACUUM of `VACUUM_TASKS_SQL` now (statistics of the
/// cumulative stats system: cheap, and a few seconds behind at most).
pub fn vacuum_due_stmt() -> Stmt {
    Stmt::new(
        "SELECT coalesce((SELECT n_dead_tup > $1::int8 + $2::float8 * n_live_tup FROM pg_stat_user_tables \
         WHERE relid = 'vtasks_task'::regclass), false)",
    )
    .p(VACUUM_DEAD_MIN, Type::INT8)
    .p(VACUUM_DEAD_PER_LIVE, Type::FLOAT8)
}

/// Skips (no wait) when another VACUUM holds the table; a role that does not own the table gets a
/// warning and nothing is done (autovacuum still runs).
pub const VACUUM_TASKS_SQL: &str = "VACUUM (SKIP_LOCKED) vtasks_task";

pub fn bool_decode(rows: &[Row]) -> Result<bool> {
    match rows.first() {
        Some(r) => Ok(r.try_get::<_, Option<bool>>(0)?.unwrap_or(false)),
        None => Ok(false),
    }
}

pub fn store_result_stmt(id: &str, data: Vec<u8>, ttl_ms: i64) -> Result<Stmt> {
    check_id(id)?;
    if ttl_ms < 1 {
        return invalid("ttl_ms must be >= 1");
    }
    Ok(Stmt::new(
        "INSERT INTO vtasks_result (id, data, expires_at) \
         VALUES ($1::text, $2::bytea, now() + $3::int8 * interval '1 millisecond') \
         ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at RETURNING 1::int8",
    )
    .p(id.to_string(), Type::TEXT)
    .p(data, Type::BYTEA)
    .p(ttl_ms, Type::INT8))
}

pub fn get_result_stmt(id: &str) -> Stmt {
    Stmt::new("SELECT data FROM vtasks_result WHERE id = $1::text AND expires_at > now()").p(id.to_string(), Type::TEXT)
}

pub fn bytes_decode(rows: &[Row]) -> Result<Option<Vec<u8>>> {
    match rows.first() {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}
