//! vtasks on Postgres: the queue semantics of the `VT.*` Valkey commands (see PROTOCOL.md, section
//! "Postgres schema") on a Postgres schema, with a sync API ([`PgQueue`], r2d2 pool) and an
//! async API ([`AsyncPgQueue`], tokio-postgres + deadpool).
//!
//! Every operation is one statement sent with `query_typed` (unnamed statements), so the crate
//! works behind PgBouncer in transaction pooling mode (with `notify: false`, since LISTEN needs a
//! session). LISTEN/NOTIFY only shortens waits; blocked fetches always poll as well.

mod asynch;
mod connect;
pub mod flows;
pub mod migrate;
pub mod ops;
pub mod ratelimit;
mod sync;

pub use asynch::AsyncPgQueue;
pub use connect::DEFAULT_CONNECT_TIMEOUT;
pub use flows::FlowTask;
pub use ops::{
    ClearWhat, Config, Delivery, EnqueueOpts, PeekState, ScheduleEntry, TaskRecord, INFO_FIELDS, MAINTAIN_FIELDS,
};
pub use sync::PgQueue;

/// Versioned schema migrations: (version, name, sql), one per file of `migrations/`, in order. The
/// single source of truth of the schema; a shipped file is never edited (see [`migrate`]).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "enqueue_ack_functions", include_str!("../migrations/0002_enqueue_ack_functions.sql")),
    (3, "lock_order_and_stable_plans", include_str!("../migrations/0003_lock_order_and_stable_plans.sql")),
    (4, "cancel", include_str!("../migrations/0004_cancel.sql")),
    (5, "flows", include_str!("../migrations/0005_flows.sql")),
    (6, "rate_limits_and_schedule_pause", include_str!("../migrations/0006_rate_limits_and_schedule_pause.sql")),
];

/// Advisory key held (transaction-scoped) while migrating, so concurrent migrators serialise.
pub(crate) const MIGRATE_LOCK: i64 = 0x7674_6173_6b73; // "vtasks"

#[derive(Debug)]
pub enum Error {
    /// Bad arguments (nothing was sent to the server).
    Invalid(String),
    /// An error from Postgres or the connection.
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "{m}"),
            Error::Db(e) => match e.as_db_error() {
                Some(d) => write!(f, "postgres error {}: {}", d.code().code(), d.message()),
                None => write!(f, "postgres: {e}"),
            },
            Error::Pool(m) => write!(f, "postgres pool: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

/// "No connection from the pool", with the causes the pools' own messages hide (deadpool says
/// "error connecting to server" without the "Connection refused" under it), where it tried to
/// connect, and what to check for that cause. Never the password: neither the pools nor the
/// server repeat it, and the DSN itself is not quoted.
pub(crate) fn pool_error(
    e: &(dyn std::error::Error + 'static),
    hosts: &[tokio_postgres::config::Host],
    ports: &[u16],
) -> Error {
    let (msg, sqlstate) = error_chain(e);
    no_connection(&msg, sqlstate.as_deref(), hosts, ports)
}

/// An error and its causes on one line, and the SQLSTATE of the server's error among them.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> (String, Option<String>) {
    let mut msg = e.to_string();
    let mut sqlstate = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        if let Some(db) = c.downcast_ref::<tokio_postgres::Error>().and_then(|pe| pe.as_db_error()) {
            sqlstate = Some(db.code().code().to_string());
        }
        cause = c.source();
    }
    (msg, sqlstate)
}

/// "No connection to host:port (cause); what to check".
pub(crate) fn no_connection(
    msg: &str,
    sqlstate: Option<&str>,
    hosts: &[tokio_postgres::config::Host],
    ports: &[u16],
) -> Error {
    let host = match hosts.first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = ports.first().copied().unwrap_or(5432);
    Error::Pool(format!("no connection to {host}:{port} ({msg}); {}", connect_hint(sqlstate, msg)))
}

/// What to check, by the cause of a failed connection.
fn connect_hint(sqlstate: Option<&str>, msg: &str) -> &'static str {
    let lower = msg.to_ascii_lowercase();
    let has = |s: &str| lower.contains(s);
    match sqlstate {
        // no pg_hba.conf line matched: often a TLS-only server (hostssl) reached in plaintext
        Some("28000") if has("no encryption") => {
            "the server only accepts TLS connections: set sslmode=require (or verify-full with sslrootcert)"
        }
        Some("28000") if has("client certificate") => CLIENT_CERT_HINT,
        Some("28000") => "the server's pg_hba.conf refuses this user/database/address/TLS combination: check them (and sslmode, sslcert)",
        Some("28P01") => "check the user and password",
        Some("3D000") => "check the database name (dbname / NAME)",
        Some(_) => "check the server's log for the reason",
        None if has("server does not support tls") => {
            "the server does not offer TLS: turn ssl on in the server, or use sslmode=prefer/disable"
        }
        None if has("not valid for name") => {
            "connect with a host name that the server's certificate names, or use sslmode=verify-ca to check \
             only that the CA in sslrootcert signed it"
        }
        None if has("unknownissuer") || has("unknown issuer") || has("unknownca") => {
            "the server's certificate is not signed by a CA in sslrootcert: point sslrootcert at the CA that signed it"
        }
        None if has("certificaterequired") || has("client certificate") => CLIENT_CERT_HINT,
        None if has("certificate") || has("tls") || has("handshake") => {
            "check sslmode, sslrootcert (the CA that signed the server's certificate) and sslcert/sslkey"
        }
        None => "is Postgres running there and reachable within connect_timeout, and are the host and port right?",
    }
}

const CLIENT_CERT_HINT: &str =
    "the server asks for a client certificate: set sslcert and sslkey (a certificate whose CN is the user, \
     signed by a CA the server trusts)";

impl Error {
    /// True when the error means the connection is gone (killed backend, server restart, I/O):
    /// the statement did not run to completion and a fresh connection may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Db(e) => is_conn_error(e),
            Error::Pool(_) => true,
            Error::Invalid(_) => false,
        }
    }
}

pub(crate) fn is_conn_error(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::CONNECTION_FAILURE
            || *code == SqlState::CONNECTION_EXCEPTION;
    }
    // No SQLSTATE: an I/O or protocol error on the socket.
    e.as_db_error().is_none()
}

pub type Result<T> = std::result::Result<T, Error>;

/// The SQL of `enqueue` with psycopg `%s` placeholders and its parameters, to run on another
/// driver's connection inside the caller's transaction (Django). Returns (sql, params, ids) where
/// params are, in order: queue, ids, payloads, priority, delay_ms, at_ms, unique key, unique ttl
/// ms, max_attempts, notify.
pub fn enqueue_sql(
    queue: &str,
    payloads: Vec<Vec<u8>>,
    opts: EnqueueOpts,
    max_attempts_default: i32,
) -> Result<(String, ops::EnqueueArgs)> {
    let args = ops::EnqueueArgs::new(queue, payloads, opts, max_attempts_default)?;
    Ok((ops::enqueue_sql_psycopg(), args))
}

/// Debounces producer NOTIFYs: at most one per queue per window per client.
pub(crate) struct Debounce {
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

pub(crate) const NOTIFY_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(5);
/// Longest sleep of a blocked fetch between polls when LISTEN is working.
pub(crate) const POLL_WITH_NOTIFY: std::time::Duration = std::time::Duration::from_millis(250);
/// Sleep of a blocked fetch between polls when notifications are off or the listener is down.
pub(crate) const POLL_WITHOUT_NOTIFY: std::time::Duration = std::time::Duration::from_millis(50);

impl Debounce {
    pub fn new() -> Self {
        Debounce { last: Default::default() }
    }
    pub fn should(&self, queue: &str) -> bool {
        let now = std::time::Instant::now();
        let mut m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(queue) {
            Some(t) if now.duration_since(*t) < NOTIFY_DEBOUNCE => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                if m.len() > 10_000 {
                    m.clear();
                }
                m.insert(queue.to_string(), now);
                true
            }
        }
    }
}

/// When a blocking fetch gives up: `None` = never (`block_ms` 0 waits until a task arrives, as
/// VT.FETCHBATCH BLOCK 0 does). Without `block_ms` the fetch does not block at all: the callers
/// return after the first attempt, whatever this says.
pub(crate) fn block_deadline(block_ms: Option<i64>) -> Result<Option<std::time::Instant>> {
    match block_ms {
        Some(ms) if ms < 0 => Err(Error::Invalid("block_ms must be >= 0".into())),
        Some(0) | None => Ok(None),
        Some(ms) => Ok(Some(std::time::Instant::now() + std::time::Duration::from_millis(ms as u64))),
    }
}

/// How long a blocked fetch sleeps before polling again.
pub(crate) fn next_wait(
    listening: bool,
    due_ms: Option<i64>,
    deadline: Option<std::time::Instant>,
) -> Option<std::time::Duration> {
    use std::time::{Duration, Instant};
    let mut wait = if listening { POLL_WITH_NOTIFY } else { POLL_WITHOUT_NOTIFY };
    if let Some(d) = due_ms {
        wait = wait.min(Duration::from_millis(d.max(0) as u64 + 1));
    }
    if let Some(dl) = deadline {
        let now = Instant::now();
        if now >= dl {
            return None;
        }
        wait = wait.min(dl - now);
    }
    Some(wait)
}
