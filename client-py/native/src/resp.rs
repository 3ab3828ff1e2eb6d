//! The RESP of a worker's ack flush, packed in one pass: `SET <prefix><id> <data> PX <ttl>` per
//! stored result, then `VT.ACK <key> id token ...` (the commands valkey-py would send; the
//! Python side sends the bytes on one pooled connection, brokers/resp.py).

use std::io::Write;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString};

/// Appends `$<len>\r\n<b>\r\n`.
fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    // writing into a Vec cannot fail
    let _ = write!(out, "${}\r\n", b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A str (as strict UTF-8) or a bytes-like argument, appended as a bulk string.
fn bulk_arg(out: &mut Vec<u8>, v: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(s) = v.cast::<PyString>() {
        bulk(out, s.to_str()?.as_bytes());
        return Ok(());
    }
    match v.extract::<PyBackedBytes>() {
        Ok(b) => {
            bulk(out, &b);
            Ok(())
        }
        Err(_) => {
            Err(PyTypeError::new_err(format!("an ack id or token must be str or bytes, not {}", v.get_type().name()?)))
        }
    }
}

/// `(packed, n)`: the RESP of one SET per `(id, data, ttl)` of `results` with `ttl > 0` and
/// `data` not None, then of VT.ACK for `pairs` (`(id, token)`) when there are any; `n` is the
/// number of commands (replies to read).
#[pyfunction]
pub fn pack_ack_results<'py>(
    py: Python<'py>,
    result_prefix: &str,
    key: &str,
    pairs: &Bound<'py, PyAny>,
    results: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut n = 0usize;
    let mut k: Vec<u8> = Vec::with_capacity(result_prefix.len() + 40);
    for item in results.try_iter()? {
        let (rid, data, ttl): (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
        // int(ttl) after `ttl > 0`, as the Python packer did
        let ttl: i64 = match ttl.extract::<i64>() {
            Ok(t) => t,
            Err(_) => {
                let f: f64 = ttl.extract()?;
                if f > 0.0 {
                    (f as i64).max(0)
                } else {
                    0
                }
            }
        };
        if ttl <= 0 || data.is_none() {
            continue;
        }
        let data: PyBackedBytes = data.extract()?;
        k.clear();
        k.extend_from_slice(result_prefix.as_bytes());
        if let Ok(s) = rid.cast::<PyString>() {
            k.extend_from_slice(s.to_str()?.as_bytes());
        } else {
            k.extend_from_slice(&rid.extract::<PyBackedBytes>()?);
        }
        out.extend_from_slice(b"*5\r\n$3\r\nSET\r\n");
        bulk(&mut out, &k);
        bulk(&mut out, &data);
        out.extend_from_slice(b"$2\r\nPX\r\n");
        bulk(&mut out, ttl.to_string().as_bytes());
        n += 1;
    }
    let pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> =
        pairs.try_iter()?.map(|p| p?.extract()).collect::<PyResult<_>>()?;
    if !pairs.is_empty() {
        let _ = write!(out, "*{}\r\n$6\r\nVT.ACK\r\n", 2 + 2 * pairs.len());
        bulk(&mut out, key.as_bytes());
        for (i, t) in &pairs {
            bulk_arg(&mut out, i)?;
            bulk_arg(&mut out, t)?;
        }
        n += 1;
    }
    Ok((PyBytes::new(py, &out), n))
}
