//! `django_vtasks._native`: the Postgres queue (pg-adapter) for Python, sync and asyncio, plus the
//! task-envelope codec. The API is the contract in
//! `client-py/python/django_vtasks/_native.pyi`.

use std::io::Read;
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};

mod bridge;
mod resp;

use vtasks_pg::{Config, Delivery, EnqueueOpts, ScheduleEntry, TaskRecord};

create_exception!(_native, PgError, PyRuntimeError, "An error from Postgres or its connection pool.");

const ZSTD_PREFIX: &[u8] = b"zstd:";
/// Refuse to inflate a payload beyond this whatever the caller asks (a corrupt or hostile frame);
/// callers pass their own, smaller limit (VTASKS_MAX_PAYLOAD).
const MAX_DECODED: u64 = 1 << 30;

fn to_py(e: vtasks_pg::Error) -> PyErr {
    match e {
        vtasks_pg::Error::Invalid(m) => PyValueError::new_err(m),
        other => PgError::new_err(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------- conversions

/// Owned bytes that become a Python `bytes`.
struct Bytes(Vec<u8>);

impl<'py> IntoPyObject<'py> for Bytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;
    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// Ordered (field, int) pairs that become a dict.
struct Pairs(Vec<(&'static str, i64)>);

impl<'py> IntoPyObject<'py> for Pairs {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let d = PyDict::new(py);
        for (k, v) in self.0 {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// A task record as a dict with the VT.PEEK field names.
struct Rec(TaskRecord);

impl<'py> IntoPyObject<'py> for Rec {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let r = self.0;
        let d = PyDict::new(py);
        d.set_item("id", r.id)?;
        d.set_item("state", r.state)?;
        d.set_item("priority", r.priority)?;
        d.set_item("attempt", r.attempt)?;
        d.set_item("max_attempts", r.max_attempts)?;
        d.set_item("enqueued_at", r.enqueued_at)?;
        d.set_item("run_at", r.run_at)?;
        d.set_item("worker", r.worker)?;
        d.set_item("token", r.token)?;
        d.set_item("deadline", r.deadline)?;
        d.set_item("error", r.error)?;
        d.set_item("failed_at", r.failed_at)?;
        d.set_item("payload", PyBytes::new(py, &r.payload))?;
        Ok(d)
    }
}

type DeliveryT = (String, String, String, i32, Bytes);
type ScheduleT = (String, String, String, i64, Bytes, bool);

fn delivery(d: Delivery) -> DeliveryT {
    (d.queue, d.id, d.token, d.attempt, Bytes(d.payload))
}

fn deliveries(v: Option<Vec<Delivery>>) -> Option<Vec<DeliveryT>> {
    v.map(|v| v.into_iter().map(delivery).collect())
}

fn schedule(s: ScheduleEntry) -> ScheduleT {
    (s.name, s.kind, s.spec, s.next_run_ms, Bytes(s.payload), s.paused)
}

fn bytes_vec(v: Vec<PyBackedBytes>) -> Vec<Vec<u8>> {
    v.iter().map(|b| b.to_vec()).collect()
}

/// One task of a flow from Python: (id, priority, max_attempts, at_ms, parents, payload).
type FlowTaskT = (String, i32, Option<i32>, Option<i64>, Vec<String>, PyBackedBytes);

fn flow_tasks(v: Vec<FlowTaskT>) -> Vec<vtasks_pg::FlowTask> {
    v.into_iter()
        .map(|(id, priority, max_attempts, at_ms, parents, payload)| vtasks_pg::FlowTask {
            id,
            priority,
            max_attempts,
            at_ms,
            parents,
            payload: payload.to_vec(),
        })
        .collect()
}

fn result_rows(v: Vec<(String, PyBackedBytes, i64)>) -> Vec<vtasks_pg::ops::ResultRow> {
    v.into_iter().map(|(id, data, ttl)| (id, data.to_vec(), ttl)).collect()
}

fn priority16(p: i64) -> PyResult<i16> {
    if !(-100..=100).contains(&p) {
        return Err(PyValueError::new_err("priority must be in -100..100"));
    }
    Ok(p as i16)
}

#[allow(clippy::too_many_arguments)]
fn opts(
    ids: Option<Vec<Option<String>>>,
    priority: i64,
    delay_ms: Option<i64>,
    at_ms: Option<i64>,
    unique: Option<(String, i64)>,
    max_attempts: Option<i32>,
) -> PyResult<EnqueueOpts> {
    Ok(EnqueueOpts { ids, priority: priority16(priority)?, delay_ms, at_ms, unique, max_attempts })
}

fn config(pool_size: u32, dlq_cap: i32, max_attempts: i32, default_lease_ms: i64, notify: bool) -> Config {
    Config { pool_size, dlq_cap, max_attempts, default_lease_ms, notify }
}

// ---------------------------------------------------------------------------------------- codec

/// JSON bytes -> wire payload: over `threshold` bytes, `b"zstd:" + zstd(level 3)`.
#[pyfunction]
#[pyo3(signature = (data, threshold = 1024))]
fn encode_payload<'py>(py: Python<'py>, data: PyBackedBytes, threshold: usize) -> PyResult<Bound<'py, PyBytes>> {
    if data.len() <= threshold {
        return Ok(PyBytes::new(py, &data));
    }
    let c = py.detach(|| zstd::bulk::compress(&data, 3)).map_err(|e| PyValueError::new_err(format!("zstd: {e}")))?;
    let mut out = Vec::with_capacity(ZSTD_PREFIX.len() + c.len());
    out.extend_from_slice(ZSTD_PREFIX);
    out.extend_from_slice(&c);
    Ok(PyBytes::new(py, &out))
}

/// Inverse of `encode_payload`; ValueError on a corrupt frame or when the decoded bytes would
/// exceed `max_size`. Decompression streams into a buffer that never grows past `max_size` + 1
/// bytes: a small hostile frame cannot inflate to gigabytes first.
#[pyfunction]
#[pyo3(signature = (data, max_size = MAX_DECODED))]
fn decode_payload<'py>(py: Python<'py>, data: PyBackedBytes, max_size: u64) -> PyResult<Bound<'py, PyBytes>> {
    let max_size = max_size.min(MAX_DECODED);
    if !data.starts_with(ZSTD_PREFIX) {
        if data.len() as u64 > max_size {
            return Err(PyValueError::new_err(format!(
                "payload of {} bytes exceeds the limit of {max_size} bytes",
                data.len()
            )));
        }
        return Ok(PyBytes::new(py, &data));
    }
    let out = py
        .detach(|| inflate(&data[ZSTD_PREFIX.len()..], max_size + 1))
        .map_err(|e| PyValueError::new_err(format!("corrupt zstd payload: {e}")))?;
    if out.len() as u64 > max_size {
        return Err(PyValueError::new_err(format!("payload decodes to more than the limit of {max_size} bytes")));
    }
    Ok(PyBytes::new(py, &out))
}

/// The first `limit` bytes `decode_payload` would return (previews: the admin lists tasks
/// without inflating whole payloads). Never errors on size; a corrupt frame gives what decoded.
#[pyfunction]
fn decode_payload_prefix<'py>(py: Python<'py>, data: PyBackedBytes, limit: u64) -> Bound<'py, PyBytes> {
    if !data.starts_with(ZSTD_PREFIX) {
        let n = (limit as usize).min(data.len());
        return PyBytes::new(py, &data[..n]);
    }
    let out = py.detach(|| {
        let mut out = Vec::new();
        if let Ok(mut d) = zstd::stream::read::Decoder::new(&data[ZSTD_PREFIX.len()..]) {
            let _ = (&mut d).take(limit).read_to_end(&mut out);
        }
        out
    });
    PyBytes::new(py, &out)
}

/// Stream-decompress a zstd frame, reading at most `cap` bytes of output.
fn inflate(frame: &[u8], cap: u64) -> std::io::Result<Vec<u8>> {
    let mut d = zstd::stream::read::Decoder::new(frame)?;
    let mut out = Vec::new();
    (&mut d).take(cap).read_to_end(&mut out)?;
    Ok(out)
}

/// Checks a cron expression as both backends read it (`vtasks-protocol`): ValueError with the
/// reason if it does not parse or never fires.
#[pyfunction]
fn cron_check(expr: &str) -> PyResult<()> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    cron_next(expr, now).map(|_| ())
}

/// The first tick of `expr` strictly after `after_ms` (unix ms, UTC).
#[pyfunction]
fn cron_next(expr: &str, after_ms: i64) -> PyResult<i64> {
    let c = vtasks_protocol::crontab::Cron::parse(expr).map_err(PyValueError::new_err)?;
    c.next_after(after_ms).ok_or_else(|| PyValueError::new_err(format!("cron expression {expr:?} never fires")))
}

/// (version, name, sql) of every schema migration.
#[pyfunction]
fn migrations() -> Vec<(i32, String, String)> {
    vtasks_pg::MIGRATIONS.iter().map(|(v, n, s)| (*v, n.to_string(), s.to_string())).collect()
}

/// (prelude_sql, applied_sql) of a migration run (vtasks_pg::migrate): the Django migrations run
/// them, and then `migration_plan`'s steps, on Django's connection inside its transaction.
#[pyfunction]
fn migration_sql() -> (String, &'static str) {
    (vtasks_pg::migrate::prelude_sql(), vtasks_pg::migrate::APPLIED_SQL)
}

/// The migrations to apply, as (version, name, sql, record_sql), given the rows of the applied
/// query; ValueError when a shipped migration was edited after it was applied.
#[pyfunction]
#[pyo3(signature = (applied, upto = None))]
fn migration_plan(
    applied: Vec<(i32, Option<String>)>,
    upto: Option<i32>,
) -> PyResult<Vec<(i32, String, String, String)>> {
    let steps = vtasks_pg::migrate::plan(&applied, upto).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(steps.into_iter().map(|s| (s.version, s.name.to_string(), s.sql.to_string(), s.record)).collect())
}

// -------------------------------------------------------------------------------------- PgQueue

/// Sync Postgres queue (r2d2 pool). Every call releases the GIL while it waits on Postgres.
#[pyclass(frozen, module = "django_vtasks._native")]
struct PgQueue {
    inner: Arc<vtasks_pg::PgQueue>,
}

#[pymethods]
impl PgQueue {
    #[new]
    #[pyo3(signature = (dsn, pool_size = 10, dlq_cap = 1000, max_attempts = 3, default_lease_ms = 30000, notify = true))]
    fn new(
        dsn: &str,
        pool_size: u32,
        dlq_cap: i32,
        max_attempts: i32,
        default_lease_ms: i64,
        notify: bool,
    ) -> PyResult<Self> {
        let q = vtasks_pg::PgQueue::new(dsn, config(pool_size, dlq_cap, max_attempts, default_lease_ms, notify))
            .map_err(to_py)?;
        Ok(PgQueue { inner: Arc::new(q) })
    }

    fn migrate(&self, py: Python<'_>) -> PyResult<()> {
        let q = &self.inner;
        py.detach(|| q.migrate()).map_err(to_py)
    }

    #[pyo3(signature = (queue, payloads, ids = None, priority = 0, delay_ms = None, at_ms = None, unique = None, max_attempts = None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        py: Python<'_>,
        queue: &str,
        payloads: Vec<PyBackedBytes>,
        ids: Option<Vec<Option<String>>>,
        priority: i64,
        delay_ms: Option<i64>,
        at_ms: Option<i64>,
        unique: Option<(String, i64)>,
        max_attempts: Option<i32>,
    ) -> PyResult<Vec<Option<String>>> {
        let o = opts(ids, priority, delay_ms, at_ms, unique, max_attempts)?;
        let p = bytes_vec(payloads);
        let q = &self.inner;
        py.detach(|| q.enqueue(queue, p, o)).map_err(to_py)
    }

    fn enqueue_flow(&self, py: Python<'_>, queue: &str, tasks: Vec<FlowTaskT>) -> PyResult<Option<Vec<String>>> {
        let t = flow_tasks(tasks);
        let q = &self.inner;
        py.detach(|| q.enqueue_flow(queue, t)).map_err(to_py)
    }

    #[pyo3(signature = (queues, worker, count, lease_ms = None, block_ms = None))]
    fn fetch(
        &self,
        py: Python<'_>,
        queues: Vec<String>,
        worker: &str,
        count: i64,
        lease_ms: Option<i64>,
        block_ms: Option<i64>,
    ) -> PyResult<Option<Vec<DeliveryT>>> {
        let q = &self.inner;
        let r = py.detach(|| q.fetch(&queues, worker, count, lease_ms, block_ms)).map_err(to_py)?;
        Ok(deliveries(r))
    }

    /// `results`: optional `[(id, result_json, ttl_ms)]` stored in the same statement as the ack.
    #[pyo3(signature = (queue, pairs, results = None))]
    fn ack(
        &self,
        py: Python<'_>,
        queue: &str,
        pairs: Vec<(String, String)>,
        results: Option<Vec<(String, PyBackedBytes, i64)>>,
    ) -> PyResult<i64> {
        let results = result_rows(results.unwrap_or_default());
        let q = &self.inner;
        py.detach(|| q.ack_with_results(queue, &pairs, &results)).map_err(to_py)
    }

    /// Upserts many results `[(id, result_json, ttl_ms)]` in one statement.
    fn store_results(&self, py: Python<'_>, results: Vec<(String, PyBackedBytes, i64)>) -> PyResult<()> {
        let results = result_rows(results);
        let q = &self.inner;
        py.detach(|| q.store_results(&results)).map_err(to_py)
    }

    #[pyo3(signature = (queue, id, token, error, retry_ms = None))]
    fn fail(
        &self,
        py: Python<'_>,
        queue: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_ms: Option<i64>,
    ) -> PyResult<Option<String>> {
        let q = &self.inner;
        py.detach(|| q.fail(queue, id, token, error, retry_ms)).map_err(to_py)
    }

    #[pyo3(signature = (queue, worker = None))]
    fn rescue(&self, py: Python<'_>, queue: &str, worker: Option<&str>) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.rescue(queue, worker)).map_err(to_py)
    }

    fn extend(&self, py: Python<'_>, queue: &str, worker: &str, lease_ms: i64) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.extend(queue, worker, lease_ms)).map_err(to_py)
    }

    fn extend_cancelled(
        &self,
        py: Python<'_>,
        queue: &str,
        worker: &str,
        lease_ms: i64,
    ) -> PyResult<(i64, Vec<String>)> {
        let q = &self.inner;
        py.detach(|| q.extend_cancelled(queue, worker, lease_ms)).map_err(to_py)
    }

    #[pyo3(signature = (queue, id, reason = ""))]
    fn cancel(&self, py: Python<'_>, queue: &str, id: &str, reason: &str) -> PyResult<Option<String>> {
        let q = &self.inner;
        py.detach(|| q.cancel(queue, id, reason)).map_err(to_py)
    }

    fn info(&self, py: Python<'_>, queue: &str) -> PyResult<Pairs> {
        let q = &self.inner;
        py.detach(|| q.info(queue)).map(Pairs).map_err(to_py)
    }

    fn queues(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let q = &self.inner;
        py.detach(|| q.queues()).map_err(to_py)
    }

    #[pyo3(signature = (queue, state, offset = 0, count = 10))]
    fn peek(&self, py: Python<'_>, queue: &str, state: &str, offset: i64, count: i64) -> PyResult<Vec<Rec>> {
        let q = &self.inner;
        let r = py.detach(|| q.peek(queue, state, offset, count)).map_err(to_py)?;
        Ok(r.into_iter().map(Rec).collect())
    }

    fn get(&self, py: Python<'_>, queue: &str, id: &str) -> PyResult<Option<Rec>> {
        let q = &self.inner;
        Ok(py.detach(|| q.get(queue, id)).map_err(to_py)?.map(Rec))
    }

    #[pyo3(signature = (queue, ids = None))]
    fn retry_dead(&self, py: Python<'_>, queue: &str, ids: Option<Vec<String>>) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.retry_dead(queue, ids)).map_err(to_py)
    }

    fn delete(&self, py: Python<'_>, queue: &str, ids: Vec<String>) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.delete(queue, ids)).map_err(to_py)
    }

    fn clear(&self, py: Python<'_>, queue: &str, what: &str) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.clear(queue, what)).map_err(to_py)
    }

    #[pyo3(signature = (queue, name, payload, cron = None, every_ms = None, priority = 0))]
    #[allow(clippy::too_many_arguments)]
    fn schedule_set(
        &self,
        py: Python<'_>,
        queue: &str,
        name: &str,
        payload: PyBackedBytes,
        cron: Option<&str>,
        every_ms: Option<i64>,
        priority: i64,
    ) -> PyResult<()> {
        let p = priority16(priority)?;
        let payload = payload.to_vec();
        let q = &self.inner;
        py.detach(|| q.schedule_set(queue, name, payload, cron, every_ms, p)).map_err(to_py)
    }

    fn schedule_del(&self, py: Python<'_>, queue: &str, name: &str) -> PyResult<bool> {
        let q = &self.inner;
        py.detach(|| q.schedule_del(queue, name)).map_err(to_py)
    }

    fn schedule_list(&self, py: Python<'_>, queue: &str) -> PyResult<Vec<ScheduleT>> {
        let q = &self.inner;
        Ok(py.detach(|| q.schedule_list(queue)).map_err(to_py)?.into_iter().map(schedule).collect())
    }

    fn schedule_tick(&self, py: Python<'_>) -> PyResult<i64> {
        let q = &self.inner;
        py.detach(|| q.schedule_tick()).map_err(to_py)
    }

    fn schedule_pause(&self, py: Python<'_>, queue: &str, name: &str) -> PyResult<bool> {
        let q = &self.inner;
        py.detach(|| q.schedule_pause(queue, name)).map_err(to_py)
    }

    fn schedule_resume(&self, py: Python<'_>, queue: &str, name: &str) -> PyResult<bool> {
        let q = &self.inner;
        py.detach(|| q.schedule_resume(queue, name)).map_err(to_py)
    }

    fn schedule_run(&self, py: Python<'_>, queue: &str, name: &str) -> PyResult<Option<String>> {
        let q = &self.inner;
        py.detach(|| q.schedule_run(queue, name)).map_err(to_py)
    }

    #[pyo3(signature = (queue, limit, per_ms, burst = None))]
    fn rate_set(&self, py: Python<'_>, queue: &str, limit: i64, per_ms: i64, burst: Option<i64>) -> PyResult<bool> {
        let q = &self.inner;
        py.detach(|| q.rate_set(queue, limit, per_ms, burst)).map_err(to_py)
    }

    fn rate_off(&self, py: Python<'_>, queue: &str) -> PyResult<bool> {
        let q = &self.inner;
        py.detach(|| q.rate_off(queue)).map_err(to_py)
    }

    /// (limit, per_ms, burst, tokens now), or None without a limit.
    fn rate_get(&self, py: Python<'_>, queue: &str) -> PyResult<Option<(i64, i64, i64, i64)>> {
        let q = &self.inner;
        let r = py.detach(|| q.rate_get(queue)).map_err(to_py)?;
        Ok(r.map(|r| (r.limit, r.per_ms, r.burst, r.tokens)))
    }

    fn maintain(&self, py: Python<'_>) -> PyResult<Pairs> {
        let q = &self.inner;
        py.detach(|| q.maintain()).map(Pairs).map_err(to_py)
    }

    fn store_result(&self, py: Python<'_>, id: &str, result_json: PyBackedBytes, ttl_ms: i64) -> PyResult<()> {
        let data = result_json.to_vec();
        let q = &self.inner;
        py.detach(|| q.store_result(id, data, ttl_ms)).map_err(to_py)
    }

    fn get_result(&self, py: Python<'_>, id: &str) -> PyResult<Option<Bytes>> {
        let q = &self.inner;
        Ok(py.detach(|| q.get_result(id)).map_err(to_py)?.map(Bytes))
    }

    /// One INSERT statement with psycopg `%s` placeholders and its params, to run on another
    /// connection inside the caller's transaction. It returns one row `(id,)` per task inserted.
    #[staticmethod]
    #[pyo3(signature = (queue, payloads, ids, priority = 0, delay_ms = None, at_ms = None, unique = None, max_attempts = None, max_attempts_default = 3, notify = true))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_sql<'py>(
        py: Python<'py>,
        queue: &str,
        payloads: Vec<PyBackedBytes>,
        ids: Vec<Option<String>>,
        priority: i64,
        delay_ms: Option<i64>,
        at_ms: Option<i64>,
        unique: Option<(String, i64)>,
        max_attempts: Option<i32>,
        max_attempts_default: i32,
        notify: bool,
    ) -> PyResult<(String, Bound<'py, PyList>)> {
        let o = opts(Some(ids), priority, delay_ms, at_ms, unique, max_attempts)?;
        let (sql, a) = vtasks_pg::enqueue_sql(queue, bytes_vec(payloads), o, max_attempts_default).map_err(to_py)?;
        let params = PyList::empty(py);
        params.append(a.queue)?;
        params.append(a.ids)?;
        let payloads = PyList::empty(py);
        for p in &a.payloads {
            payloads.append(PyBytes::new(py, p))?;
        }
        params.append(payloads)?;
        params.append(a.priority)?;
        params.append(a.delay_ms)?;
        params.append(a.at_ms)?;
        params.append(a.ukey)?;
        params.append(a.uttl_ms)?;
        params.append(a.max_attempts)?;
        params.append(notify)?;
        Ok((sql, params))
    }
}

// --------------------------------------------------------------------------------- AsyncPgQueue

/// Asyncio Postgres queue (tokio-postgres + deadpool on a tokio runtime); every method returns
/// an awaitable. Create one per event loop.
#[pyclass(frozen, module = "django_vtasks._native")]
struct AsyncPgQueue {
    inner: Arc<vtasks_pg::AsyncPgQueue>,
}

macro_rules! fut {
    ($py:expr, $q:ident, $body:expr) => {{
        let $q = $q.inner.clone();
        bridge::spawn($py, async move { $body })
    }};
}

#[pymethods]
impl AsyncPgQueue {
    #[new]
    #[pyo3(signature = (dsn, pool_size = 10, dlq_cap = 1000, max_attempts = 3, default_lease_ms = 30000, notify = true))]
    fn new(
        dsn: &str,
        pool_size: u32,
        dlq_cap: i32,
        max_attempts: i32,
        default_lease_ms: i64,
        notify: bool,
    ) -> PyResult<Self> {
        let q = vtasks_pg::AsyncPgQueue::new(dsn, config(pool_size, dlq_cap, max_attempts, default_lease_ms, notify))
            .map_err(to_py)?;
        Ok(AsyncPgQueue { inner: Arc::new(q) })
    }

    fn migrate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.migrate().await.map_err(to_py))
    }

    #[pyo3(signature = (queue, payloads, ids = None, priority = 0, delay_ms = None, at_ms = None, unique = None, max_attempts = None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        payloads: Vec<PyBackedBytes>,
        ids: Option<Vec<Option<String>>>,
        priority: i64,
        delay_ms: Option<i64>,
        at_ms: Option<i64>,
        unique: Option<(String, i64)>,
        max_attempts: Option<i32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let o = opts(ids, priority, delay_ms, at_ms, unique, max_attempts)?;
        let p = bytes_vec(payloads);
        let q = self;
        fut!(py, q, q.enqueue(&queue, p, o).await.map_err(to_py))
    }

    fn enqueue_flow<'py>(&self, py: Python<'py>, queue: String, tasks: Vec<FlowTaskT>) -> PyResult<Bound<'py, PyAny>> {
        let t = flow_tasks(tasks);
        let q = self;
        fut!(py, q, q.enqueue_flow(&queue, t).await.map_err(to_py))
    }

    #[pyo3(signature = (queues, worker, count, lease_ms = None, block_ms = None))]
    fn fetch<'py>(
        &self,
        py: Python<'py>,
        queues: Vec<String>,
        worker: String,
        count: i64,
        lease_ms: Option<i64>,
        block_ms: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, Ok(deliveries(q.fetch(&queues, &worker, count, lease_ms, block_ms).await.map_err(to_py)?)))
    }

    #[pyo3(signature = (queue, pairs, results = None))]
    fn ack<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        pairs: Vec<(String, String)>,
        results: Option<Vec<(String, PyBackedBytes, i64)>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let results = result_rows(results.unwrap_or_default());
        let q = self;
        fut!(py, q, q.ack_with_results(&queue, &pairs, &results).await.map_err(to_py))
    }

    fn store_results<'py>(
        &self,
        py: Python<'py>,
        results: Vec<(String, PyBackedBytes, i64)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let results = result_rows(results);
        let q = self;
        fut!(py, q, q.store_results(&results).await.map_err(to_py))
    }

    #[pyo3(signature = (queue, id, token, error, retry_ms = None))]
    fn fail<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        id: String,
        token: String,
        error: String,
        retry_ms: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.fail(&queue, &id, &token, &error, retry_ms).await.map_err(to_py))
    }

    #[pyo3(signature = (queue, worker = None))]
    fn rescue<'py>(&self, py: Python<'py>, queue: String, worker: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.rescue(&queue, worker.as_deref()).await.map_err(to_py))
    }

    fn extend<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        worker: String,
        lease_ms: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.extend(&queue, &worker, lease_ms).await.map_err(to_py))
    }

    fn extend_cancelled<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        worker: String,
        lease_ms: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.extend_cancelled(&queue, &worker, lease_ms).await.map_err(to_py))
    }

    #[pyo3(signature = (queue, id, reason = String::new()))]
    fn cancel<'py>(&self, py: Python<'py>, queue: String, id: String, reason: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.cancel(&queue, &id, &reason).await.map_err(to_py))
    }

    fn info<'py>(&self, py: Python<'py>, queue: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.info(&queue).await.map(Pairs).map_err(to_py))
    }

    fn queues<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.queues().await.map_err(to_py))
    }

    #[pyo3(signature = (queue, state, offset = 0, count = 10))]
    fn peek<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        state: String,
        offset: i64,
        count: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(
            py,
            q,
            Ok(q.peek(&queue, &state, offset, count).await.map_err(to_py)?.into_iter().map(Rec).collect::<Vec<_>>())
        )
    }

    fn get<'py>(&self, py: Python<'py>, queue: String, id: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, Ok(q.get(&queue, &id).await.map_err(to_py)?.map(Rec)))
    }

    #[pyo3(signature = (queue, ids = None))]
    fn retry_dead<'py>(&self, py: Python<'py>, queue: String, ids: Option<Vec<String>>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.retry_dead(&queue, ids).await.map_err(to_py))
    }

    fn delete<'py>(&self, py: Python<'py>, queue: String, ids: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.delete(&queue, ids).await.map_err(to_py))
    }

    fn clear<'py>(&self, py: Python<'py>, queue: String, what: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.clear(&queue, &what).await.map_err(to_py))
    }

    #[pyo3(signature = (queue, name, payload, cron = None, every_ms = None, priority = 0))]
    #[allow(clippy::too_many_arguments)]
    fn schedule_set<'py>(
        &self,
        py: Python<'py>,
        queue: String,
        name: String,
        payload: PyBackedBytes,
        cron: Option<String>,
        every_ms: Option<i64>,
        priority: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let p = priority16(priority)?;
        let payload = payload.to_vec();
        let q = self;
        fut!(py, q, q.schedule_set(&queue, &name, payload, cron.as_deref(), every_ms, p).await.map_err(to_py))
    }

    fn schedule_del<'py>(&self, py: Python<'py>, queue: String, name: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.schedule_del(&queue, &name).await.map_err(to_py))
    }

    fn schedule_list<'py>(&self, py: Python<'py>, queue: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, Ok(q.schedule_list(&queue).await.map_err(to_py)?.into_iter().map(schedule).collect::<Vec<_>>()))
    }

    fn schedule_tick<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.schedule_tick().await.map_err(to_py))
    }

    fn maintain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, q.maintain().await.map(Pairs).map_err(to_py))
    }

    fn store_result<'py>(
        &self,
        py: Python<'py>,
        id: String,
        result_json: PyBackedBytes,
        ttl_ms: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = result_json.to_vec();
        let q = self;
        fut!(py, q, q.store_result(&id, data, ttl_ms).await.map_err(to_py))
    }

    fn get_result<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let q = self;
        fut!(py, q, Ok(q.get_result(&id).await.map_err(to_py)?.map(Bytes)))
    }

    /// Same as `PgQueue.enqueue_sql`.
    #[staticmethod]
    #[pyo3(signature = (queue, payloads, ids, priority = 0, delay_ms = None, at_ms = None, unique = None, max_attempts = None, max_attempts_default = 3, notify = true))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_sql<'py>(
        py: Python<'py>,
        queue: &str,
        payloads: Vec<PyBackedBytes>,
        ids: Vec<Option<String>>,
        priority: i64,
        delay_ms: Option<i64>,
        at_ms: Option<i64>,
        unique: Option<(String, i64)>,
        max_attempts: Option<i32>,
        max_attempts_default: i32,
        notify: bool,
    ) -> PyResult<(String, Bound<'py, PyList>)> {
        PgQueue::enqueue_sql(
            py,
            queue,
            payloads,
            ids,
            priority,
            delay_ms,
            at_ms,
            unique,
            max_attempts,
            max_attempts_default,
            notify,
        )
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_payload, m)?)?;
    m.add_function(wrap_pyfunction!(decode_payload, m)?)?;
    m.add_function(wrap_pyfunction!(decode_payload_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(migrations, m)?)?;
    m.add_function(wrap_pyfunction!(cron_check, m)?)?;
    m.add_function(wrap_pyfunction!(cron_next, m)?)?;
    m.add_function(wrap_pyfunction!(migration_sql, m)?)?;
    m.add_function(wrap_pyfunction!(migration_plan, m)?)?;
    m.add_function(wrap_pyfunction!(resp::pack_ack_results, m)?)?;
    m.add_class::<PgQueue>()?;
    m.add_class::<AsyncPgQueue>()?;
    m.add("PgError", m.py().get_type::<PgError>())?;
    m.add("DEFAULT_COMPRESS_THRESHOLD", 1024)?;
    // the protocol's limits and INFO field names (vtasks-protocol), so Python does not restate them
    let limits = PyDict::new(m.py());
    for (name, value) in vtasks_protocol::limits::LIMITS {
        limits.set_item(name, value)?;
    }
    m.add("LIMITS", limits)?;
    m.add("INFO_FIELDS", pyo3::types::PyTuple::new(m.py(), vtasks_protocol::limits::INFO_FIELDS)?)?;
    m.add("CANCELLED", vtasks_protocol::cancel::CANCELLED)?;
    bridge::init(m)?;
    Ok(())
}
