//! Per-queue rate limits on Postgres: the statements over `vtasks_rate` (the token row each
//! limited queue has; `vtasks_fetch` consumes it, see migration 0006 and PROTOCOL.md "Rate
//! limits"). The bucket arithmetic is `vtasks_rate_level` in SQL, the same rule as the module's.

use tokio_postgres::types::Type;
use tokio_postgres::Row;
use vtasks_protocol::limits::{MAX_RATE_PERIOD_MS, MAX_RATE_TOKENS};

use crate::ops::{check_queue, invalid, Stmt};
use crate::Result;

/// A queue's limit as `rate_get` reads it: `tokens` are the whole tokens there are now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: i64,
    pub per_ms: i64,
    pub burst: i64,
    pub tokens: i64,
}

/// Sets `limit` tasks per `per_ms` (with `burst`, default `limit`); the statement returns 1 when
/// the limit was set or changed, 0 when the queue already had exactly this one.
pub fn set_stmt(queue: &str, limit: i64, per_ms: i64, burst: Option<i64>) -> Result<Stmt> {
    check_queue(queue)?;
    let burst = burst.unwrap_or(limit);
    if !(1..=MAX_RATE_TOKENS).contains(&limit) || !(1..=MAX_RATE_TOKENS).contains(&burst) {
        return invalid(format!("rate limit and burst must be in 1..{MAX_RATE_TOKENS} tasks"));
    }
    if !(1..=MAX_RATE_PERIOD_MS).contains(&per_ms) {
        return invalid(format!("rate limit period must be in 1..{MAX_RATE_PERIOD_MS} ms"));
    }
    Ok(Stmt::new("SELECT vtasks_rate_set($1::text, $2::int4, $3::int8, $4::int4)::int4::int8")
        .p(queue.to_string(), Type::TEXT)
        .p(limit as i32, Type::INT4)
        .p(per_ms, Type::INT8)
        .p(burst as i32, Type::INT4))
}

/// Removes a queue's limit: the count of rows removed (0 or 1).
pub fn off_stmt(queue: &str) -> Result<Stmt> {
    check_queue(queue)?;
    Ok(Stmt::new("WITH d AS (DELETE FROM vtasks_rate WHERE queue = $1::text RETURNING 1) SELECT count(*)::int8 FROM d")
        .p(queue.to_string(), Type::TEXT))
}

pub fn get_stmt(queue: &str) -> Result<Stmt> {
    check_queue(queue)?;
    Ok(Stmt::new(
        "SELECT rate_limit::int8, per_ms, burst::int8, \
         vtasks_rate_level(credit, at_ms, rate_limit, per_ms, burst, vtasks_ms(now())) / per_ms \
         FROM vtasks_rate WHERE queue = $1::text",
    )
    .p(queue.to_string(), Type::TEXT))
}

pub fn get_decode(rows: &[Row]) -> Result<Option<RateLimit>> {
    let Some(r) = rows.first() else { return Ok(None) };
    Ok(Some(RateLimit { limit: r.try_get(0)?, per_ms: r.try_get(1)?, burst: r.try_get(2)?, tokens: r.try_get(3)? }))
}
