//! Async API: `tokio-postgres` + `deadpool-postgres`. Must be used inside a tokio runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ops::{self, Config, Delivery, EnqueueOpts, ScheduleEntry, Stmt, TaskRecord};
use crate::{block_deadline, next_wait, Debounce, Error, Result};

struct AWaker {
    gen: AtomicU64,
    notify: Notify,
    listening: AtomicBool,
    started: AtomicBool,
}

impl AWaker {
    fn bump(&self) {
        self.gen.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A queue client on a pool of async connections. Cheap to share (`Arc`) between tasks.
pub struct AsyncPgQueue {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    cfg: Config,
    waker: Arc<AWaker>,
    debounce: Debounce,
}

impl AsyncPgQueue {
    /// A client for `dsn` (URL or key=value form). Connections are opened lazily.
    pub fn new(dsn: &str, cfg: Config) -> Result<Self> {
        cfg.validate()?;
        let settings = crate::connect::settings(dsn)?;
        let pg = settings.pg;
        let mgr = Manager::from_config(
            pg.clone(),
            settings.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(15)))
            // one whole attempt (socket, TLS, authentication), as libpq's connect_timeout
            .create_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(AsyncPgQueue {
            pool,
            pg,
            tls: settings.tls,
            cfg,
            waker: Arc::new(AWaker {
                gen: AtomicU64::new(0),
                notify: Notify::new(),
                listening: AtomicBool::new(false),
                started: AtomicBool::new(false),
            }),
            debounce: Debounce::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    async fn run(&self, st: &Stmt) -> Result<Vec<Row>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let c = match self.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    if tries <= 3 {
                        if let deadpool_postgres::PoolError::Backend(ref be) = e {
                            if crate::is_conn_error(be) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                    return Err(crate::pool_error(&e, self.pg.get_hosts(), self.pg.get_ports()));
                }
            };
            match c.query_typed(st.sql, &st.refs()).await {
                Ok(rows) => return Ok(rows),
                Err(e) if crate::is_conn_error(&e) && tries <= 3 => {
                    drop(c);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// As [`crate::PgQueue::migrate`] (pending migrations in order, once each, in one transaction).
    pub async fn migrate(&self) -> Result<()> {
        let c = self.pool.get().await.map_err(|e| crate::pool_error(&e, self.pg.get_hosts(), self.pg.get_ports()))?;
        let r: Result<()> = async {
            c.batch_execute(&format!("BEGIN; {}", crate::migrate::prelude_sql())).await?;
            let applied = crate::migrate::applied_from_simple(c.simple_query(crate::migrate::APPLIED_SQL).await?);
            for step in crate::migrate::plan(&applied, None)? {
                c.batch_execute(step.sql).await?;
                c.batch_execute(&step.record).await?;
            }
            Ok(c.batch_execute("COMMIT").await?)
        }
        .await;
        if r.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        r
    }

    pub async fn enqueue(&self, queue: &str, payloads: Vec<Vec<u8>>, opts: EnqueueOpts) -> Result<Vec<Option<String>>> {
        let args = ops::EnqueueArgs::new(queue, payloads, opts, self.cfg.max_attempts)?;
        let ids = args.ids.clone();
        let notify = self.cfg.notify && self.debounce.should(queue);
        let rows = self.run(&args.stmt(notify)).await?;
        ops::enqueue_decode(&ids, &rows)
    }

    /// As [`crate::PgQueue::enqueue_flow`].
    pub async fn enqueue_flow(&self, queue: &str, tasks: Vec<crate::FlowTask>) -> Result<Option<Vec<String>>> {
        let notify = self.cfg.notify && self.debounce.should(queue);
        let st = crate::flows::enqueue_flow_stmt(queue, tasks, self.cfg.max_attempts, notify)?;
        crate::flows::enqueue_flow_decode(&self.run(&st).await?)
    }

    /// As [`crate::PgQueue::fetch`].
    pub async fn fetch(
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
        if block_ms.is_some() && self.cfg.notify && !self.waker.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen_task(self.pg.clone(), self.tls.clone(), Arc::downgrade(&self.waker)));
        }
        loop {
            let notified = self.waker.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, due) = ops::fetch_decode(self.run(&st).await?)?;
            if !got.is_empty() || block_ms.is_none() {
                return Ok(Some(got));
            }
            let listening = self.cfg.notify && self.waker.listening.load(Ordering::Relaxed);
            match next_wait(listening, due, deadline) {
                None => return Ok(None),
                Some(w) => {
                    let _ = tokio::time::timeout(w, notified).await;
                }
            }
        }
    }

    /// Ack `pairs` and store `results` `(id, result_json, ttl_ms)` in one statement (one round
    /// trip, one transaction). Returns the number acked; stale tokens count 0 (results are still stored).
    pub async fn ack_with_results(
        &self,
        queue: &str,
        pairs: &[(String, String)],
        results: &[ops::ResultRow],
    ) -> Result<i64> {
        if results.is_empty() {
            return self.ack(queue, pairs).await;
        }
        ops::one_i64(&self.run(&ops::ack_results_stmt(queue, pairs, results)?).await?)
    }

    /// Upsert many results in one statement.
    pub async fn store_results(&self, results: &[ops::ResultRow]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        self.run(&ops::ack_results_stmt("_", &[], results)?).await?;
        Ok(())
    }

    pub async fn ack(&self, queue: &str, pairs: &[(String, String)]) -> Result<i64> {
        if pairs.is_empty() {
            return Ok(0);
        }
        ops::one_i64(&self.run(&ops::ack_stmt(queue, pairs)?).await?)
    }

    pub async fn fail(
        &self,
        queue: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_ms: Option<i64>,
    ) -> Result<Option<String>> {
        ops::one_opt_string(&self.run(&ops::fail_stmt(queue, id, token, error, retry_ms, self.cfg.dlq_cap)?).await?)
    }

    pub async fn rescue(&self, queue: &str, worker: Option<&str>) -> Result<i64> {
        ops::one_i64(&self.run(&ops::rescue_stmt(queue, worker, self.cfg.dlq_cap)?).await?)
    }

    pub async fn extend(&self, queue: &str, worker: &str, lease_ms: i64) -> Result<i64> {
        ops::one_i64(&self.run(&ops::extend_stmt(queue, worker, lease_ms)?).await?)
    }

    pub async fn extend_cancelled(&self, queue: &str, worker: &str, lease_ms: i64) -> Result<(i64, Vec<String>)> {
        ops::extend_cancelled_decode(&self.run(&ops::extend_cancelled_stmt(queue, worker, lease_ms)?).await?)
    }

    pub async fn cancel(&self, queue: &str, id: &str, reason: &str) -> Result<Option<String>> {
        ops::one_opt_string(&self.run(&ops::cancel_stmt(queue, id, reason, self.cfg.dlq_cap)?).await?)
    }

    pub async fn info(&self, queue: &str) -> Result<Vec<(&'static str, i64)>> {
        ops::info_decode(&self.run(&ops::info_stmt(queue)).await?)
    }

    pub async fn queues(&self) -> Result<Vec<String>> {
        ops::strings_decode(&self.run(&ops::queues_stmt()).await?)
    }

    pub async fn peek(&self, queue: &str, state: &str, offset: i64, count: i64) -> Result<Vec<TaskRecord>> {
        let st = ops::peek_stmt(queue, state.parse()?, offset, count)?;
        ops::records_decode(&self.run(&st).await?)
    }

    pub async fn get(&self, queue: &str, id: &str) -> Result<Option<TaskRecord>> {
        Ok(ops::records_decode(&self.run(&ops::get_stmt(queue, id)?).await?)?.into_iter().next())
    }

    pub async fn retry_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Result<i64> {
        ops::one_i64(&self.run(&ops::retry_dead_stmt(queue, ids)?).await?)
    }

    pub async fn delete(&self, queue: &str, ids: Vec<String>) -> Result<i64> {
        if ids.is_empty() {
            return Ok(0);
        }
        ops::one_i64(&self.run(&ops::delete_stmt(queue, ids)?).await?)
    }

    pub async fn clear(&self, queue: &str, what: &str) -> Result<i64> {
        ops::one_i64(&self.run(&ops::clear_stmt(queue, what.parse()?)?).await?)
    }

    pub async fn schedule_set(
        &self,
        queue: &str,
        name: &str,
        payload: Vec<u8>,
        cron: Option<&str>,
        every_ms: Option<i64>,
        priority: i16,
    ) -> Result<()> {
        let spec = ops::Spec::new(cron, every_ms)?;
        let now = ops::one_i64(&self.run(&ops::now_stmt()).await?)?;
        let st = ops::schedule_set_stmt(queue, name, &spec, payload, priority, spec.first(now))?;
        self.run(&st).await?;
        Ok(())
    }

    pub async fn schedule_del(&self, queue: &str, name: &str) -> Result<bool> {
        Ok(ops::one_i64(&self.run(&ops::schedule_del_stmt(queue, name)).await?)? > 0)
    }

    pub async fn schedule_list(&self, queue: &str) -> Result<Vec<ScheduleEntry>> {
        ops::schedule_list_decode(&self.run(&ops::schedule_list_stmt(queue)).await?)
    }

    pub async fn schedule_tick(&self) -> Result<i64> {
        let due = ops::due_decode(&self.run(&ops::due_schedules_stmt()).await?)?;
        let mut n = 0;
        for t in &due {
            n += ops::one_i64(&self.run(&ops::fire_stmt(t, self.cfg.max_attempts, self.cfg.notify)).await?)?;
        }
        Ok(n)
    }

    /// As [`crate::PgQueue::maintain`].
    pub async fn maintain(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = ops::maintain_decode(&self.run(&ops::maintain_stmt(self.cfg.dlq_cap)).await?)?;
        let due = ops::bool_decode(&self.run(&ops::vacuum_due_stmt()).await?)?;
        if due {
            self.run(&ops::Stmt::new(ops::VACUUM_TASKS_SQL)).await?;
        }
        out.push(("tasks_vacuumed", due as i64));
        Ok(out)
    }

    pub async fn store_result(&self, id: &str, data: Vec<u8>, ttl_ms: i64) -> Result<()> {
        self.run(&ops::store_result_stmt(id, data, ttl_ms)?).await?;
        Ok(())
    }

    pub async fn get_result(&self, id: &str) -> Result<Option<Vec<u8>>> {
        ops::bytes_decode(&self.run(&ops::get_result_stmt(id)).await?)
    }
}

/// The LISTEN connection of an async client; ends when the client is dropped.
async fn listen_task(pg: tokio_postgres::Config, tls: MakeRustlsConnect, w: Weak<AWaker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if w.strong_count() == 0 {
            return;
        }
        let (client, mut conn) = match pg.connect(tls.clone()).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let drive = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        if client.batch_execute(&format!("LISTEN {}", ops::CHANNEL)).await.is_err() {
            drive.abort();
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        match w.upgrade() {
            Some(s) => {
                s.listening.store(true, Ordering::SeqCst);
                s.bump();
            }
            None => {
                drive.abort();
                return;
            }
        }
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(()) => match w.upgrade() {
                        Some(s) => s.bump(),
                        None => { drive.abort(); return; }
                    },
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if w.strong_count() == 0 { drive.abort(); return; }
                }
            }
        }
        if let Some(s) = w.upgrade() {
            s.listening.store(false, Ordering::SeqCst);
        }
        drop(client);
    }
}
