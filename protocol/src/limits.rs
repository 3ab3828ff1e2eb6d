//! The limits of PROTOCOL.md ("Limits") and the field names of `VT.INFO`, one definition for the
//! Valkey module, the Postgres adapter and (through the native extension) Python. A change here
//! is a protocol change: PROTOCOL.md's table is checked against these values by a test
//! (client-py/tests/test_units.py).

/// Most tasks one `VT.FETCHBATCH` (or Postgres fetch) returns (`COUNT`).
pub const MAX_FETCH: i64 = 10_000;
/// Task ids are 1..=this many bytes.
pub const MAX_ID_LEN: usize = 128;
/// Queue names, unique keys and schedule names are 1..=this many bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Worker ids are 1..=this many bytes.
pub const MAX_WORKER_LEN: usize = 256;
/// The default (and, on Postgres, fixed) largest payload in bytes (`vtasks.max-payload`).
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Priorities are in `MIN_PRIORITY..=MAX_PRIORITY` (higher first).
pub const MIN_PRIORITY: i64 = -100;
pub const MAX_PRIORITY: i64 = 100;
/// `VT.PEEK ... COUNT` is in `0..=MAX_PEEK` (0: an empty page).
pub const MAX_PEEK: i64 = 1_000;
/// Most payloads one `VT.ENQUEUE` takes.
pub const MAX_ENQUEUE_ITEMS: usize = 100_000;
/// Most queues one `VT.FETCHBATCH` reads (`numqueues`).
pub const MAX_FETCH_QUEUES: i64 = 1_000;
/// `MAXATTEMPTS` is in `1..=MAX_ATTEMPTS`.
pub const MAX_ATTEMPTS: i64 = 1_000_000;
/// Most tasks one flow (`VT.FLOW`, a chain or a group with its callback) adds.
pub const MAX_FLOW_TASKS: usize = 10_000;
/// A rate limit's tasks per period and its burst are in `1..=MAX_RATE_TOKENS`.
pub const MAX_RATE_TOKENS: i64 = 1_000_000;
/// A rate limit's period (ms) is in `1..=MAX_RATE_PERIOD_MS` (a day).
pub const MAX_RATE_PERIOD_MS: i64 = 86_400_000;

/// (name, value) of every limit above, for the native extension and the PROTOCOL.md check.
pub const LIMITS: [(&str, i64); 15] = [
    ("max_fetch", MAX_FETCH),
    ("max_id_len", MAX_ID_LEN as i64),
    ("max_name_len", MAX_NAME_LEN as i64),
    ("max_worker_len", MAX_WORKER_LEN as i64),
    ("max_payload", MAX_PAYLOAD as i64),
    ("min_priority", MIN_PRIORITY),
    ("max_priority", MAX_PRIORITY),
    ("max_peek", MAX_PEEK),
    ("max_enqueue_items", MAX_ENQUEUE_ITEMS as i64),
    ("max_fetch_queues", MAX_FETCH_QUEUES),
    ("max_attempts", MAX_ATTEMPTS),
    ("min_attempts", 1),
    ("max_flow_tasks", MAX_FLOW_TASKS as i64),
    ("max_rate_tokens", MAX_RATE_TOKENS),
    ("max_rate_period_ms", MAX_RATE_PERIOD_MS),
];

/// Field names of `VT.INFO` (and of `info()` on Postgres), in reply order.
pub const INFO_FIELDS: [&str; 14] = [
    "ready",
    "delayed",
    "inflight",
    "dead",
    "dead_evicted",
    "enqueued_total",
    "acked_total",
    "failed_total",
    "retried_total",
    "rescued_total",
    "dead_total",
    "schedules",
    "unique_keys",
    "waiting",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_limit_once() {
        let mut names: Vec<_> = LIMITS.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), LIMITS.len());
        const { assert!(MIN_PRIORITY < 0 && MAX_PRIORITY > 0 && MAX_PEEK > 0) };
    }
}
