//! Sync API: `postgres` + `r2d2_postgres`. Methods block the calling thread (the Python binding
//! releases the GIL around them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ops::{self, Config, Delivery, EnqueueOpts, ScheduleEntry, Stmt, TaskRecord};
use crate::{block_deadline, next_wait, Debounce, Result};

/// Wake-ups from the LISTEN thread to blocked fetches.
struct Waker {
    gen: Mutex<u64>,
    cv: Condvar,
    stop: AtomicBool,
    listening: AtomicBool,
}

impl Waker {
    fn gen(&self) -> u64 {
        *self.gen.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bump(&self) {
        *self.gen.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }
    fn wait(&self, seen: u64, d: Duration) {
        let g = self.gen.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(g, d, |g| *g == seen);
    }
}

/// A queue client on a pool of blocking connections.
pub struct PgQueue {
    pool: r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>,
    pg: postgres::Config,
    tls: MakeRustlsConnect,
    /// How long a checkout waits while the pool has no connection (the server may be down).
    connect_wait: Duration,
    last_connect_error: LastConnectError,
    cfg: Config,
    waker: Arc<Waker>,
    listener: Mutex<bool>,
    debounce: Debounce,
}

impl Drop for PgQueue {
    fn drop(&mut self) {
        self.waker.stop.store(true, Ordering::SeqCst);
    }
}

/// How long a checkout waits for a busy pool that has live connections.
const POOL_WAIT: Duration = Duration::from_secs(15);

/// How often a checkout on a pool without connections looks for a failed connection attempt.
const CONNECT_POLL: Duration = Duration::from_millis(50);

/// Why the pool's last connection attempt failed, with its causes, and when: r2d2 keeps only the
/// error's top line ("db error"), which hides "no pg_hba.conf entry ... no encryption" or the
/// certificate the handshake refused. Cleared when a connection is made.
#[derive(Clone, Debug, Default)]
struct LastConnectError(Arc<Mutex<Option<Failure>>>);

/// When a connection attempt failed, its message (with causes) and the server's SQLSTATE.
type Failure = (Instant, String, Option<String>);

impl LastConnectError {
    /// The failure, if the last attempt failed at or after `start`.
    fn since(&self, start: Instant) -> Option<(String, Option<String>)> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((at, msg, sqlstate)) if *at >= start => Some((msg.clone(), sqlstate.clone())),
            _ => None,
        }
    }
}

impl r2d2::HandleError<postgres::Error> for LastConnectError {
    fn handle_error(&self, e: postgres::Error) {
        let (msg, sqlstate) = crate::error_chain(&e);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), msg, sqlstate));
    }
}

impl r2d2::HandleEvent for LastConnectError {
    fn handle_acquire(&self, _: r2d2::event::AcquireEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl PgQueue {
    /// A client for `dsn` (URL or key=value form). Connections are opened lazily.
    pub fn new(dsn: &str, cfg: Config) -> Result<Self> {
        cfg.validate()?;
        let settings = crate::connect::settings(dsn)?;
        let pg = postgres::Config::from(settings.pg);
        let manager = PostgresConnectionManager::new(pg.clone(), settings.tls.clone());
        let last_connect_error = LastConnectError::default();
        let pool = r2d2::Pool::builder()
            .max_size(cfg.pool_size)
            .min_idle(Some(0))
            // Broken connections are found by is_closed() on return and by the retry below;
            // a per-checkout ping would double the round trips.
            .test_on_check_out(false)
            .connection_timeout(POOL_WAIT)
            .error_handler(Box::new(last_connect_error.clone()))
            .event_handler(Box::new(last_connect_error.clone()))
            .idle_timeout(Some(Duration::from_secs(300)))
            .build_unchecked(manager);
        Ok(PgQueue {
            pool,
            pg,
            tls: settings.tls,
            // the socket is bounded by connect_timeout; TLS and authentication get a second more
            connect_wait: settings.connect_timeout + Duration::from_secs(1),
            last_connect_error,
            cfg,
            waker: Arc::new(Waker {
                gen: Mutex::new(0),
                cv: Condvar::new(),
                stop: AtomicBool::new(false),
                listening: AtomicBool::new(false),
            }),
            listener: Mutex::new(false),
            debounce: Debounce::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A pooled connection. While the pool holds no connection at all the server may be down or
    /// refusing us: the first connection attempt that fails during this checkout is reported at
    /// once with its cause, and no attempt waits past connect_timeout; not the pool's 15 s.
    fn checkout(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>> {
        let start = Instant::now();
        let no_connection = |e: r2d2::Error| match self.last_connect_error.since(start) {
            Some((msg, sqlstate)) => {
                crate::no_connection(&msg, sqlstate.as_deref(), self.pg.get_hosts(), self.pg.get_ports())
            }
            None => crate::pool_error(&e, self.pg.get_hosts(), self.pg.get_ports()),
        };
        if self.pool.state().connections > 0 {
            return self.pool.get_timeout(POOL_WAIT).map_err(no_connection);
        }
        loop {
            match self.pool.get_timeout(CONNECT_POLL) {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() >= self.connect_wait || self.last_connect_error.since(start).is_some() => {
                    return Err(no_connection(e))
                }
                Err(_) => {}
            }
        }
    }

    /// Runs one statement; a connection-level failure (killed backend, restart) is retried on a
    /// fresh connection (the statement did not complete, so nothing happened).
    fn run(&self, st: &Stmt) -> Result<Vec<Row>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut c = self.checkout()?;
            match c.query_typed(st.sql, &st.refs()) {
                Ok(rows) => return Ok(rows),
                Err(e) if crate::is_conn_error(&e) && tries <= 3 => {
                    drop(c);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Applies pending migrations in order, once each, in one transaction (`migrate::plan`: an
    /// edited shipped migration is refused); concurrent callers serialise on a transaction-level
    /// advisory lock, so this is safe behind PgBouncer too.
    pub fn migrate(&self) -> Result<()> {
        let mut c = self.checkout()?;
        let mut tx = c.transaction()?;
        tx.batch_execute(&crate::migrate::prelude_sql())?;
        let applied = crate::migrate::applied_from_simple(tx.simple_query(crate::migrate::APPLIED_SQL)?);
        for step in crate::migrate::plan(&applied, None)? {
            tx.batch_execute(step.sql)?;
            tx.batch_execute(&step.record)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn enqueue(&self, queue: &str, payloads: Vec<Vec<u8>>, opts: EnqueueOpts) -> Result<Vec<Option<String>>> {
        let args = ops::EnqueueArgs::new(queue, payloads, opts, self.cfg.max_attempts)?;
        let ids = args.ids.clone();
        let notify = self.cfg.notify && self.debounce.should(queue);
        let rows = self.run(&args.stmt(notify))?;
        ops::enqueue_decode(&ids, &rows)
    }

    /// Adds a flow (a chain or a group with its callback) in one statement; the ids in order, or
    /// None when one of its ids was already a live or waiting task (nothing added).
    pub fn enqueue_flow(&self, queue: &str, tasks: Vec<crate::FlowTask>) -> Result<Option<Vec<String>>> {
        let notify = self.cfg.notify && self.debounce.should(queue);
        let st = crate::flows::enqueue_flow_stmt(queue, tasks, self.cfg.max_attempts, notify)?;
        crate::flows::enqueue_flow_decode(&self.run(&st)?)
    }

    /// Fetches up to `count` tasks from `queues` (in order). `block_ms`: None = never wait
    /// (returns `Some(vec)`, maybe empty); `Some(0)` = wait forever; `Some(ms)` = wait at most
    /// that long and return `None` when nothing came.
    pub fn fetch(
        &self,
        queues: &[String],
        worker: &str,
        count: i64,
        lease_ms: Option<i64>,
        block_ms: Option<i64>,
    ) -> Result<Option<Vec<Delivery>>> {
        let args = ops::FetchArgs::new(queues, worker, count, lease_ms, &self.cfg)?;
        let st = args.stmt();
        let deadline = block_deadline(block_ms)?;
        if block_ms.is_some() && self.cfg.notify {
            self.ensure_listener();
        }
        loop {
            let seen = self.waker.gen();
            let (got, due) = ops::fetch_decode(self.run(&st)?)?;
            if !got.is_empty() || block_ms.is_none() {
                return Ok(Some(got));
            }
            let listening = self.cfg.notify && self.waker.listening.load(Ordering::Relaxed);
            match next_wait(listening, due, deadline) {
                None => return Ok(None),
                Some(w) => self.waker.wait(seen, w),
            }
        }
    }

    fn ensure_listener(&self) {
        let mut started = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        *started = true;
        let pg = self.pg.clone();
        let tls = self.tls.clone();
        let w = self.waker.clone();
        let _ = std::thread::Builder::new().name("vtasks-listen".into()).spawn(move || listen_loop(pg, tls, w));
    }

    /// Ack `pairs` and store `results` `(id, result_json, ttl_ms)` in one statement (one round
    /// trip, one transaction). Returns the number acked; stale tokens count 0 (results are still stored).
    pub fn ack_with_results(&self, queue: &str, pairs: &[(String, String)], results: &[ops::ResultRow]) -> Result<i64> {
        if results.is_empty() {
            return self.ack(queue, pairs);
        }
        ops::one_i64(&self.run(&ops::ack_results_stmt(queue, pairs, results)?)?)
    }

    /// Upsert many results in one statement.
    pub fn store_results(&self, results: &[ops::ResultRow]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        self.run(&ops::ack_results_stmt("_", &[], results)?)?;
        Ok(())
    }

    pub fn ack(&self, queue: &str, pairs: &[(String, String)]) -> Result<i64> {
        if pairs.is_empty() {
            return Ok(0);
        }
        ops::one_i64(&self.run(&ops::ack_stmt(queue, pairs)?)?)
    }

    pub fn fail(
        &self,
        queue: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_ms: Option<i64>,
    ) -> Result<Option<String>> {
        ops::one_opt_string(&self.run(&ops::fail_stmt(queue, id, token, error, retry_ms, self.cfg.dlq_cap)?)?)
    }

    pub fn rescue(&self, queue: &str, worker: Option<&str>) -> Result<i64> {
        ops::one_i64(&self.run(&ops::rescue_stmt(queue, worker, self.cfg.dlq_cap)?)?)
    }

    pub fn extend(&self, queue: &str, worker: &str, lease_ms: i64) -> Result<i64> {
        ops::one_i64(&self.run(&ops::extend_stmt(queue, worker, lease_ms)?)?)
    }

    pub fn extend_cancelled(&self, queue: &str, worker: &str, lease_ms: i64) -> Result<(i64, Vec<String>)> {
        ops::extend_cancelled_decode(&self.run(&ops::extend_cancelled_stmt(queue, worker, lease_ms)?)?)
    }

    pub fn cancel(&self, queue: &str, id: &str, reason: &str) -> Result<Option<String>> {
        ops::one_opt_string(&self.run(&ops::cancel_stmt(queue, id, reason, self.cfg.dlq_cap)?)?)
    }

    pub fn info(&self, queue: &str) -> Result<Vec<(&'static str, i64)>> {
        ops::info_decode(&self.run(&ops::info_stmt(queue))?)
    }

    pub fn queues(&self) -> Result<Vec<String>> {
        ops::strings_decode(&self.run(&ops::queues_stmt())?)
    }

    pub fn peek(&self, queue: &str, state: &str, offset: i64, count: i64) -> Result<Vec<TaskRecord>> {
        let st = ops::peek_stmt(queue, state.parse()?, offset, count)?;
        ops::records_decode(&self.run(&st)?)
    }

    pub fn get(&self, queue: &str, id: &str) -> Result<Option<TaskRecord>> {
        Ok(ops::records_decode(&self.run(&ops::get_stmt(queue, id)?)?)?.into_iter().next())
    }

    pub fn retry_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Result<i64> {
        ops::one_i64(&self.run(&ops::retry_dead_stmt(queue, ids)?)?)
    }

    pub fn delete(&self, queue: &str, ids: Vec<String>) -> Result<i64> {
        if ids.is_empty() {
            return Ok(0);
        }
        ops::one_i64(&self.run(&ops::delete_stmt(queue, ids)?)?)
    }

    pub fn clear(&self, queue: &str, what: &str) -> Result<i64> {
        ops::one_i64(&self.run(&ops::clear_stmt(queue, what.parse()?)?)?)
    }

    pub fn schedule_set(
        &self,
        queue: &str,
        name: &str,
        payload: Vec<u8>,
        cron: Option<&str>,
        every_ms: Option<i64>,
        priority: i16,
    ) -> Result<()> {
        let spec = ops::Spec::new(cron, every_ms)?;
        let now = ops::one_i64(&self.run(&ops::now_stmt())?)?;
        self.run(&ops::schedule_set_stmt(queue, name, &spec, payload, priority, spec.first(now))?)?;
        Ok(())
    }

    pub fn schedule_del(&self, queue: &str, name: &str) -> Result<bool> {
        Ok(ops::one_i64(&self.run(&ops::schedule_del_stmt(queue, name))?)? > 0)
    }

    pub fn schedule_list(&self, queue: &str) -> Result<Vec<ScheduleEntry>> {
        ops::schedule_list_decode(&self.run(&ops::schedule_list_stmt(queue))?)
    }

    /// Pauses a schedule (no ticks fire until `schedule_resume`); false if there is none.
    pub fn schedule_pause(&self, queue: &str, name: &str) -> Result<bool> {
        Ok(ops::one_i64(&self.run(&ops::schedule_pause_stmt(queue, name))?)? > 0)
    }

    /// Resumes a schedule at its next tick after now; false if there is none.
    pub fn schedule_resume(&self, queue: &str, name: &str) -> Result<bool> {
        let Some(next) = ops::resume_next(&self.run(&ops::schedule_state_stmt(queue, name))?)? else {
            return Ok(false);
        };
        Ok(ops::one_i64(&self.run(&ops::schedule_resume_stmt(queue, name, next))?)? > 0)
    }

    /// Enqueues one task from a schedule now (paused or not; its ticks are unchanged): the task
    /// id, or None if there is no such schedule.
    pub fn schedule_run(&self, queue: &str, name: &str) -> Result<Option<String>> {
        let id = ops::new_id();
        let st = ops::schedule_run_stmt(queue, name, &id, self.cfg.max_attempts, self.cfg.notify);
        Ok((ops::one_i64(&self.run(&st)?)? > 0).then_some(id))
    }

    /// Sets a queue's rate limit (see `crate::ratelimit`); false when it already had this one.
    pub fn rate_set(&self, queue: &str, limit: i64, per_ms: i64, burst: Option<i64>) -> Result<bool> {
        Ok(ops::one_i64(&self.run(&crate::ratelimit::set_stmt(queue, limit, per_ms, burst)?)?)? > 0)
    }

    /// Removes a queue's rate limit; false if it had none.
    pub fn rate_off(&self, queue: &str) -> Result<bool> {
        Ok(ops::one_i64(&self.run(&crate::ratelimit::off_stmt(queue)?)?)? > 0)
    }

    pub fn rate_get(&self, queue: &str) -> Result<Option<crate::ratelimit::RateLimit>> {
        crate::ratelimit::get_decode(&self.run(&crate::ratelimit::get_stmt(queue)?)?)
    }

    /// Fires every due tick exactly once across all callers; returns the tasks enqueued.
    pub fn schedule_tick(&self) -> Result<i64> {
        let due = ops::due_decode(&self.run(&ops::due_schedules_stmt())?)?;
        let mut n = 0;
        for t in &due {
            n += ops::one_i64(&self.run(&ops::fire_stmt(t, self.cfg.max_attempts, self.cfg.notify))?)?;
        }
        Ok(n)
    }

    /// Server-side "timer" duties (rescue expired leases everywhere, purge expired keys/results,
    /// fold counters).
    /// `vtasks_maintain` (rescue, purges, stats folding), then a VACUUM of the task table when
    /// autovacuum has fallen behind (`ops::VACUUM_DEAD_MIN`).
    pub fn maintain(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = ops::maintain_decode(&self.run(&ops::maintain_stmt(self.cfg.dlq_cap))?)?;
        let due = ops::bool_decode(&self.run(&ops::vacuum_due_stmt())?)?;
        if due {
            self.run(&ops::Stmt::new(ops::VACUUM_TASKS_SQL))?;
        }
        out.push(("tasks_vacuumed", due as i64));
        Ok(out)
    }

    pub fn store_result(&self, id: &str, data: Vec<u8>, ttl_ms: i64) -> Result<()> {
        self.run(&ops::store_result_stmt(id, data, ttl_ms)?)?;
        Ok(())
    }

    pub fn get_result(&self, id: &str) -> Result<Option<Vec<u8>>> {
        ops::bytes_decode(&self.run(&ops::get_result_stmt(id))?)
    }
}

/// The LISTEN connection: bumps the waker on every notification and after each (re)connect.
fn listen_loop(pg: postgres::Config, tls: MakeRustlsConnect, w: Arc<Waker>) {
    let mut backoff = Duration::from_millis(100);
    while !w.stop.load(Ordering::SeqCst) {
        let mut c = match pg.connect(tls.clone()) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if c.batch_execute(&format!("LISTEN {}", ops::CHANNEL)).is_err() {
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        w.listening.store(true, Ordering::SeqCst);
        w.bump();
        while !w.stop.load(Ordering::SeqCst) {
            let next = {
                let mut n = c.notifications();
                let mut it = n.timeout_iter(Duration::from_millis(200));
                fallible_iterator::FallibleIterator::next(&mut it).transpose()
            };
            match next {
                Some(Ok(_)) => w.bump(),
                Some(Err(_)) => break,
                None => {
                    if c.is_closed() {
                        break;
                    }
                }
            }
        }
        w.listening.store(false, Ordering::SeqCst);
    }
}
