//! Atomic slot migration (Valkey 9 `CLUSTER MIGRATESLOTS`).
//!
//! The module opts in with `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION`. What the server
//! does then, and what the module adds:
//! - The source forks and sends the slot as an AOF rewrite: the queue type's `aof_rewrite`
//!   (`VT._LOAD` records). It then streams every command it propagates for a key of the slot:
//!   clients' commands and the effects of its own timer (`VT._FX`), until it pauses writes
//!   (`RedisModule_AvoidReplicaTraffic` is then true, so the timer waits) and hands the slot
//!   over. The target runs both on its import connection (context flag `SLOT_IMPORT_CLIENT`),
//!   which `server::from_effect_stream` accepts like the replication stream.
//! - Until the hand-over the source owns the queue, so the target's timer must not act on it: a
//!   schedule tick would fire twice, a lease the source still tracks would be rescued. Keys of a
//!   slot being imported stay in the timer registry without a due time ([`importing`]); when the
//!   import completes they are all due at once, so the target takes over promotions, rescues and
//!   ticks at once. An aborted import is deleted by the server, and its keys leave the registry.
//! - When an export completes the server deletes the moved keys on the source; the source's
//!   registry forgets them (no leftovers). Fetchers blocked on the source for a moved key are
//!   redirected by the server (`-MOVED`), like any client blocked on a key.

use crate::server::*;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;
use valkey_module::raw;

/// `VALKEYMODULE_EVENT_ATOMIC_SLOT_MIGRATION` and its subevents (valkeymodule.h, Valkey 9.0; not
/// in the crate's bundled header).
pub const EVENT_ATOMIC_SLOT_MIGRATION: u64 = 19;
const IMPORT_STARTED: u64 = 0;
const IMPORT_ABORTED: u64 = 2;
const IMPORT_COMPLETED: u64 = 4;
const EXPORT_COMPLETED: u64 = 5;

/// `ValkeyModuleSlotRange` (inclusive bounds).
#[repr(C)]
struct SlotRange {
    start: c_int,
    end: c_int,
}

/// `ValkeyModuleAtomicSlotMigrationInfoV1`: the event's data.
#[repr(C)]
struct MigrationInfo {
    version: u64,
    job_name: [c_char; 41],
    slot_ranges: *const SlotRange,
    num_slot_ranges: u32,
}

/// Inclusive slot ranges.
type Ranges = Vec<(u16, u16)>;
/// A migration job: its name and its slots.
type Job = (Vec<u8>, Ranges);

/// Imports in progress.
static IMPORTS: Mutex<Vec<Job>> = Mutex::new(Vec::new());

/// The cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the bytes between the first
/// `{` and the next `}` when not empty), else of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|s| key[s + 1..].iter().position(|&b| b == b'}').map(|len| &key[s + 1..s + 1 + len]))
        .filter(|t| !t.is_empty());
    crc16(tagged.unwrap_or(key)) & 0x3fff
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Job>> {
    IMPORTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn in_ranges(slot: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
}

/// True while `key` is in a slot this node is importing (the source still owns the queue).
pub fn importing(key: &[u8]) -> bool {
    let imports = lock();
    !imports.is_empty() && {
        let slot = key_slot(key);
        imports.iter().any(|(_, r)| in_ranges(slot, r))
    }
}

unsafe fn read_info(data: *mut c_void) -> Option<Job> {
    if data.is_null() {
        return None;
    }
    let info = &*(data as *const MigrationInfo);
    let name: Vec<u8> = info.job_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let mut ranges = Vec::with_capacity(info.num_slot_ranges as usize);
    if !info.slot_ranges.is_null() {
        for r in std::slice::from_raw_parts(info.slot_ranges, info.num_slot_ranges as usize) {
            ranges.push((r.start.clamp(0, 16383) as u16, r.end.clamp(0, 16383) as u16));
        }
    }
    Some((name, ranges))
}

/// The server's `ATOMIC_SLOT_MIGRATION` event.
///
/// # Safety
/// Called by the server only, with the event's data (`ValkeyModuleAtomicSlotMigrationInfoV1`).
pub unsafe extern "C" fn on_slot_migration(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    let _ = guard(ctx, "slot migration event", || {
        let Some((job, ranges)) = read_info(data) else {
            return;
        };
        match sub {
            IMPORT_STARTED => lock().push((job, ranges)),
            IMPORT_ABORTED => {
                // the server has deleted what was imported (or will, on a replica)
                lock().retain(|(j, _)| *j != job);
                crate::timers::forget_keys(|key| in_ranges(key_slot(key), &ranges));
            }
            IMPORT_COMPLETED => {
                lock().retain(|(j, _)| *j != job);
                // the queues are ours now: everything they hold may be due
                crate::timers::retime_keys(|key| in_ranges(key_slot(key), &ranges), Some(now_ms()));
                crate::timers::kick(ctx);
            }
            EXPORT_COMPLETED => crate::timers::forget_keys(|key| in_ranges(key_slot(key), &ranges)),
            _ => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_spec() {
        assert_eq!(crc16(b"123456789"), 0x31c3); // the spec's check value
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}")); // empty tag: whole key
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }
}
