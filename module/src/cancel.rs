//! `VT.CANCEL <queue> <id> [REASON <text>]`: cancels a task by id, atomically.
//!
//! A ready or delayed task is dead-lettered at once with the error `cancelled[: <reason>]`
//! (reply `removed`), so reading its result says FAILED/cancelled, never READY. An in-flight
//! task is flagged (reply `flagged`): `VT.EXTEND` stops extending its lease (and lists it with
//! `WITHCANCELLED`, which is how its worker learns of it), a `VT.FAIL ... RETRY` dead-letters it,
//! and when its lease ends unacked it is dead-lettered with the cancel error instead of running
//! again. An ACK still completes it (the task finished). Nil: no live task has that id.

use crate::commands::{check_id, eq, int, replicate_owned, s, MAX_ERROR_LEN};
use crate::server::*;
use vtasks_protocol::cancel::cancel_error;

/// Parses `VT.CANCEL` (no key access): the task id and the reason (empty when none).
pub fn parse<'a>(a: &[&'a [u8]]) -> Result<(&'a [u8], &'a [u8]), Reply> {
    let reason = match a.len() {
        3 => &b""[..],
        5 if eq(a[3], "REASON") => a[4],
        5 => return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(a[3]))),
        _ => return err("ERR syntax: VT.CANCEL <queue> <id> [REASON <text>]"),
    };
    check_id(a[2])?;
    // the error is `cancelled: <reason>`, within VT.FAIL's error limit
    if reason.len() > MAX_ERROR_LEN - 16 {
        return err(format!("ERR reason must be at most {} bytes", MAX_ERROR_LEN - 16));
    }
    Ok((a[2], reason))
}

pub fn cancel(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<Reply, Reply> {
    let (id, reason) = parse(a)?;
    let error = cancel_error(reason);
    let now = now_ms();
    let cap = dlq_cap();
    let r = with_queue(ctx, argv[1], false, |q| {
        let flagged_before = q.get_task(id).and_then(|t| t.cancel).is_some();
        q.cancel(now, cap, id, &error).map(|what| (what, flagged_before))
    })?
    .flatten();
    match r {
        None => Ok(Reply::Nil),
        Some((what, flagged_before)) => {
            // a repeated cancel of a flagged task changes nothing: nothing to replicate
            if !flagged_before {
                replicate_owned(ctx, &[a[1].to_vec(), b"CANCEL".to_vec(), s(now), s(cap), id.to_vec(), error]);
            }
            Ok(Reply::Simple(what))
        }
    }
}

/// Applies `VT._FX <queue> CANCEL <now> <cap> <id> <error>` (the primary's values).
pub fn replay(ctx: Ctx, key: RStr, r: &[&[u8]]) -> Result<(), Reply> {
    if r.len() != 4 {
        return err("ERR malformed VT._FX");
    }
    let now = int(r[0], "now")?;
    let cap = int(r[1], "cap")?.max(0) as usize;
    with_queue(ctx, key, false, |q| {
        q.cancel(now, cap, r[2], r[3]);
    })
    .map(|_| ())
}
