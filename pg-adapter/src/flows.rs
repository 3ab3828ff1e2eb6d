//! Flows (`vtasks_enqueue_flow`, migration 5): a chain or group added in one statement; the
//! tasks that wait are released by `vtasks_ack` of their last parent (PROTOCOL.md "Flows").

use std::collections::HashSet;

use tokio_postgres::types::Type;
use tokio_postgres::Row;
use vtasks_protocol::limits;

use crate::ops::{check_id, check_queue, invalid, Stmt, MAX_PAYLOAD};
use crate::Result;

/// One task of a flow: its id, priority, max attempts (None: the queue's default), absolute
/// run time in unix ms (None: now; for a waiting task, the earliest time once released), the
/// ids of the earlier tasks of the flow it waits for, and its payload.
#[derive(Clone, Debug)]
pub struct FlowTask {
    pub id: String,
    pub priority: i32,
    pub max_attempts: Option<i32>,
    pub at_ms: Option<i64>,
    pub parents: Vec<String>,
    pub payload: Vec<u8>,
}

pub const ENQUEUE_FLOW_SQL: &str = "SELECT id FROM vtasks_enqueue_flow($1::text, $2::text[], $3::int4[], \
     $4::int4[], $5::int8[], $6::int4[], $7::text[], $8::bytea[], $9::bool) AS id";

/// The statement that adds `tasks` to `queue`, after the checks `VT.FLOW` makes (nothing is sent
/// when one fails).
pub fn enqueue_flow_stmt(queue: &str, tasks: Vec<FlowTask>, default_max: i32, notify: bool) -> Result<Stmt> {
    check_queue(queue)?;
    if tasks.is_empty() || tasks.len() > limits::MAX_FLOW_TASKS {
        return invalid(format!("a flow has 1 to {} tasks (got {})", limits::MAX_FLOW_TASKS, tasks.len()));
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(tasks.len());
    for t in &tasks {
        check_id(&t.id)?;
        if !(limits::MIN_PRIORITY..=limits::MAX_PRIORITY).contains(&(t.priority as i64)) {
            return invalid("priority must be in -100..100");
        }
        if matches!(t.max_attempts, Some(m) if !(1..=limits::MAX_ATTEMPTS).contains(&(m as i64))) {
            return invalid(format!("max_attempts must be in 1..{}", limits::MAX_ATTEMPTS));
        }
        if matches!(t.at_ms, Some(a) if a < 0) {
            return invalid("at_ms must be >= 0");
        }
        if t.payload.len() > MAX_PAYLOAD {
            return invalid(format!("payload of {} bytes exceeds {MAX_PAYLOAD}", t.payload.len()));
        }
        let mut mine: HashSet<&str> = HashSet::with_capacity(t.parents.len());
        for p in &t.parents {
            if !seen.contains(p.as_str()) {
                return invalid(format!(
                    "parent '{p}' of task '{}' is not an earlier task of this flow (a flow names its tasks in order, parents first)",
                    t.id
                ));
            }
            if !mine.insert(p) {
                return invalid(format!("task '{}' names parent '{p}' twice", t.id));
            }
        }
        if !seen.insert(&t.id) {
            return invalid(format!("task id '{}' appears twice in the flow", t.id));
        }
    }
    let mut ids = Vec::with_capacity(tasks.len());
    let mut prios = Vec::with_capacity(tasks.len());
    let mut maxes = Vec::with_capacity(tasks.len());
    let mut ats = Vec::with_capacity(tasks.len());
    let mut nparents = Vec::with_capacity(tasks.len());
    let mut parents = Vec::new();
    let mut payloads = Vec::with_capacity(tasks.len());
    for t in tasks {
        ids.push(t.id);
        prios.push(t.priority);
        maxes.push(t.max_attempts.unwrap_or(default_max));
        ats.push(t.at_ms.unwrap_or(0));
        nparents.push(t.parents.len() as i32);
        parents.extend(t.parents);
        payloads.push(t.payload);
    }
    Ok(Stmt::new(ENQUEUE_FLOW_SQL)
        .p(queue.to_string(), Type::TEXT)
        .p(ids, Type::TEXT_ARRAY)
        .p(prios, Type::INT4_ARRAY)
        .p(maxes, Type::INT4_ARRAY)
        .p(ats, Type::INT8_ARRAY)
        .p(nparents, Type::INT4_ARRAY)
        .p(parents, Type::TEXT_ARRAY)
        .p(payloads, Type::BYTEA_ARRAY)
        .p(notify, Type::BOOL))
}

/// The ids in order, or None when the flow was not added (one of its ids was taken).
pub fn enqueue_flow_decode(rows: &[Row]) -> Result<Option<Vec<String>>> {
    let ids: Vec<String> = rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<std::result::Result<_, _>>()?;
    Ok(if ids.is_empty() { None } else { Some(ids) })
}
