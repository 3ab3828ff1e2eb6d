//! `DEBUG DIGEST` / `DEBUG DIGEST-VALUE` for queue keys.
//!
//! The digest covers everything a queue persists: the same records, in the same canonical order,
//! that `rdb_save` writes (header with counters, tasks, dead entries, unique keys, schedules). A
//! replica applies the primary's effects with explicit values, so equal queues have equal digests
//! and any divergence (a lost or doubled effect, a different token, lease or counter) shows as a
//! different digest. The records form one ordered sequence: order is part of a queue's meaning
//! (FIFO within a priority, oldest dead entry evicted first).

use crate::queue::Queue;
use std::ffi::c_char;
use valkey_module::raw;

/// Feeds `q` into the server's digest `md`.
///
/// # Safety
/// `md` must be the digest handle the server passed to the type's `digest` callback.
pub unsafe fn digest_queue(md: *mut raw::RedisModuleDigest, q: &Queue) {
    let (Some(add), Some(end)) = (raw::RedisModule_DigestAddStringBuffer, raw::RedisModule_DigestEndSequence) else {
        return;
    };
    q.visit_records(&mut |rec| add(md, rec.as_ptr() as *const c_char, rec.len()));
    end(md);
}
