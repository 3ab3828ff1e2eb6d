//! Awaitables for asyncio from tokio futures.
//!
//! Each call creates an `asyncio.Future` on the running loop and spawns the Rust future on a
//! shared tokio runtime; on completion the tokio thread takes the GIL once and hands the result to
//! the loop with `call_soon_threadsafe`. Cancelling the asyncio future aborts the Rust task.
//!
//! Why not pyo3-async-runtimes: its completion threads may still be inside Python code when the
//! interpreter finalizes; Python 3.13 then `pthread_exit`s them and the forced unwind drops Python
//! objects without the GIL (a segfault at exit, seen here in ~5% of short scripts). Here an
//! `atexit` hook stops new completions and waits, with the GIL released, for those in progress.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use pyo3::BoundObject;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
static COMPLETING: AtomicUsize = AtomicUsize::new(0);
static COMPLETE: PyOnceLock<Py<PyCFunction>> = PyOnceLock::new();

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vtasks-tokio")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// `loop.call_soon_threadsafe` target: settles the future unless it was cancelled meanwhile.
#[pyfunction]
fn _complete(fut: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        fut.call_method1("set_result", (value,))?;
    } else {
        fut.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// Done-callback of the asyncio future: aborts the Rust task when the future was cancelled.
#[pyclass(frozen)]
struct Abort {
    h: tokio::task::AbortHandle,
}

#[pymethods]
impl Abort {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()? {
            self.h.abort();
        }
        Ok(())
    }
}

/// atexit hook: no completion may enter Python from now on; wait for those inside it.
#[pyfunction]
fn _drain(py: Python<'_>) {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    py.detach(|| {
        let t0 = Instant::now();
        while COMPLETING.load(Ordering::SeqCst) > 0 && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(_drain, m)?)?;
    py.import("atexit")?.call_method1("register", (m.getattr("_drain")?,))?;
    Ok(())
}

/// Runs `fut` on the tokio runtime and returns an awaitable `asyncio.Future` for its result.
pub fn spawn<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let ev = py.import("asyncio")?.call_method0("get_running_loop")?;
    let pyfut = ev.call_method0("create_future")?;
    let complete = COMPLETE
        .get_or_try_init(py, || -> PyResult<_> { Ok(wrap_pyfunction!(_complete, py)?.unbind()) })?
        .clone_ref(py);
    let ev_u: Py<PyAny> = ev.unbind();
    let fut_u: Py<PyAny> = pyfut.clone().unbind();
    let handle = runtime().spawn(async move {
        let r = fut.await;
        COMPLETING.fetch_add(1, Ordering::SeqCst);
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            // The interpreter is going away: never touch it (and never decref without the GIL).
            std::mem::forget((ev_u, fut_u, complete));
            std::mem::forget(r);
            COMPLETING.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        Python::attach(|py| {
            let (ok, value): (bool, Py<PyAny>) = match r {
                Ok(v) => match v.into_pyobject(py) {
                    Ok(b) => (true, b.into_any().unbind()),
                    Err(e) => (false, Into::<PyErr>::into(e).into_value(py).into_any()),
                },
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // Fails only when the loop is closed; nobody is waiting then.
            let _ = ev_u.call_method1(py, "call_soon_threadsafe", (complete, fut_u, ok, value));
            drop(ev_u);
        });
        COMPLETING.fetch_sub(1, Ordering::SeqCst);
    });
    pyfut.call_method1("add_done_callback", (Abort { h: handle.abort_handle() },))?;
    Ok(pyfut)
}
