//! Server-side work without clients: promote delayed tasks, rescue expired leases, fire schedules,
//! wake fetchers that waited for rate-limit tokens.
//!
//! A registry maps every known queue key (db, name) to its next due time, so the timer never scans
//! the keyspace. Entries are hints: the timer re-opens each key and checks its type, so deleted,
//! renamed, moved or flushed keys are dropped safely. One module timer is armed at the earliest
//! due time (and at least once a second). Timers act only on a primary; their effects are
//! replicated as explicit `VT._FX` commands.
//!
//! While the server pauses writes (see `server::writes_paused`) the timer changes nothing: it
//! re-arms every `PAUSE_RETRY_MS` and, once the pause is over, does the work that fell due
//! meanwhile (late, never lost, never twice) and wakes the fetchers whose wake-up was parked.
//! Schedule ticks that fall due while the server is over `maxmemory` are skipped and counted.

use crate::queue::HashMap;
use crate::queue::NEVER;
use crate::server::*;
use std::collections::BTreeSet;
use std::ffi::c_void;
use std::sync::Mutex;
use valkey_module::raw;

/// Longest sleep of the timer (a safety net: registry misses are picked up within this).
const MAX_SLEEP_MS: i64 = 1000;
/// Keys handled per timer run (bounds the time spent in one callback).
const KEYS_PER_RUN: usize = 1000;
/// Re-check interval while writes are paused (how late work may start after a pause ends).
const PAUSE_RETRY_MS: i64 = 50;

#[derive(Default)]
pub struct Registry {
    /// db -> key -> next due time (None: nothing scheduled)
    pub keys: HashMap<i32, HashMap<Vec<u8>, Option<i64>>>,
    pub due: BTreeSet<(i64, i32, Vec<u8>)>,
    pub timer: Option<(u64, i64)>,
}

pub static REG: Mutex<Option<Registry>> = Mutex::new(None);

/// Queue keys (db, key) whose blocked fetchers were not served because writes were paused; the
/// first timer run after the pause signals them again.
static PARKED: Mutex<Vec<(i32, Vec<u8>)>> = Mutex::new(Vec::new());

fn with_reg<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut g = REG.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

fn set_due(r: &mut Registry, db: i32, key: &[u8], due: Option<i64>) {
    let m = r.keys.entry(db).or_default();
    match m.get_mut(key) {
        // the common case (a command that did not change the next due time): no allocation
        Some(old) if *old == due => {}
        Some(old) => {
            if let Some(t) = *old {
                r.due.remove(&(t, db, key.to_vec()));
            }
            *old = due;
            if let Some(d) = due {
                r.due.insert((d, db, key.to_vec()));
            }
        }
        None => {
            m.insert(key.to_vec(), due);
            if let Some(d) = due {
                r.due.insert((d, db, key.to_vec()));
            }
        }
    }
}

/// Records a queue key and its next due time; re-arms the timer if it must fire earlier.
pub fn touch(ctx: Ctx, db: i32, key: &[u8], due: Option<i64>) {
    let rearm = with_reg(|r| {
        set_due(r, db, key, due);
        match (due, r.timer) {
            (Some(d), Some((_, at))) => d < at,
            (Some(_), None) => true,
            _ => false,
        }
    });
    if rearm && !ctx.is_null() {
        arm(ctx, due.unwrap());
    }
}

/// Records a key without a context (RDB load): the timer picks it up on its next run.
pub fn touch_noarm(db: i32, key: &[u8], due: Option<i64>) {
    with_reg(|r| set_due(r, db, key, due));
}

/// Drops a key from the registry (it was deleted, renamed away, moved, expired or evicted, or is
/// not a queue any more). The maps give their memory back as they empty (amortized), so queues
/// created and deleted leave nothing behind.
pub fn forget(db: i32, key: &[u8]) {
    with_reg(|r| {
        let Some(m) = r.keys.get_mut(&db) else { return };
        if let Some(Some(d)) = m.remove(key) {
            r.due.remove(&(d, db, key.to_vec()));
        }
        if m.is_empty() {
            r.keys.remove(&db);
        } else if m.capacity() > 64 && m.len() * 4 < m.capacity() {
            m.shrink_to(m.len() * 2);
        }
        if r.keys.is_empty() && r.keys.capacity() > 0 {
            r.keys = HashMap::default();
        }
    });
}

/// Sets the due time of every registered key (any db) that `pick` selects.
pub fn retime_keys(pick: impl Fn(&[u8]) -> bool, due: Option<i64>) {
    with_reg(|r| {
        let keys: Vec<(i32, Vec<u8>)> =
            r.keys.iter().flat_map(|(db, m)| m.keys().filter(|k| pick(k)).map(move |k| (*db, k.clone()))).collect();
        for (db, k) in keys {
            set_due(r, db, &k, due);
        }
    });
}

/// Drops every registered key (any db) that `pick` selects.
pub fn forget_keys(pick: impl Fn(&[u8]) -> bool) {
    with_reg(|r| {
        for m in r.keys.values_mut() {
            m.retain(|k, _| !pick(k));
        }
        r.due.retain(|(_, _, k)| !pick(k));
    });
}

/// Queue keys known in `db` (hints; the caller checks them).
pub fn keys_in_db(db: i32) -> Vec<Vec<u8>> {
    with_reg(|r| {
        let mut v: Vec<Vec<u8>> = r.keys.get(&db).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    })
}

pub fn flush_db(db: i32) {
    with_reg(|r| {
        if db < 0 {
            r.keys.clear();
            r.due.clear();
        } else {
            r.keys.remove(&db);
            r.due.retain(|(_, d, _)| *d != db);
        }
    });
}

pub fn swap_db(a: i32, b: i32) {
    with_reg(|r| {
        let ma = r.keys.remove(&a);
        let mb = r.keys.remove(&b);
        if let Some(m) = ma {
            r.keys.insert(b, m);
        }
        if let Some(m) = mb {
            r.keys.insert(a, m);
        }
        let old = std::mem::take(&mut r.due);
        r.due = old
            .into_iter()
            .map(|(t, d, k)| {
                (
                    t,
                    if d == a {
                        b
                    } else if d == b {
                        a
                    } else {
                        d
                    },
                    k,
                )
            })
            .collect();
    });
}

/// Ends the record loads left open by an AOF without an RDB preamble (VT._LOAD records keep a
/// queue's duplicate-detection set until its next command): called once loading is over.
fn finish_loads(ctx: Ctx) {
    let keys: Vec<(i32, Vec<u8>)> =
        with_reg(|r| r.keys.iter().flat_map(|(db, m)| m.keys().map(move |k| (*db, k.clone()))).collect());
    for (db, key) in keys {
        if select_db(ctx, db) {
            let name = OwnedStr::new(ctx, &key);
            let _ = with_queue(ctx, name.0, false, |_| ());
        }
    }
    select_db(ctx, 0);
}

pub fn registry_len() -> usize {
    with_reg(|r| r.keys.values().map(|m| m.len()).sum())
}

/// (Re)arms the single timer to fire at `at` (clamped to [now+1ms, now+MAX_SLEEP_MS]).
pub fn arm(ctx: Ctx, at: i64) {
    let now = now_ms();
    let at = at.clamp(now + 1, now + MAX_SLEEP_MS);
    let old = with_reg(|r| r.timer.take());
    unsafe {
        if let Some((id, old_at)) = old {
            if old_at <= at {
                with_reg(|r| r.timer = Some((id, old_at)));
                return;
            }
            raw::RedisModule_StopTimer.unwrap()(ctx, id, std::ptr::null_mut());
        }
        let id = raw::RedisModule_CreateTimer.unwrap()(ctx, at - now, Some(on_timer), std::ptr::null_mut());
        with_reg(|r| r.timer = Some((id, at)));
    }
}

/// Arms the timer to run as soon as possible (after load, on becoming primary).
pub fn kick(ctx: Ctx) {
    arm(ctx, 0);
}

/// Remembers that fetchers blocked on `keys` (in `db`) were left parked during a paused-writes
/// window, and makes sure a timer run comes to wake them after it.
pub fn park_wakeup(ctx: Ctx, db: i32, keys: &[Vec<u8>]) {
    {
        let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if !p.iter().any(|(d, x)| *d == db && x == k) {
                p.push((db, k.clone()));
            }
        }
    }
    arm(ctx, now_ms() + PAUSE_RETRY_MS);
}

/// Signals the parked keys again so their blocked fetchers are served (after a pause).
fn wake_parked(ctx: Ctx) {
    let parked = std::mem::take(&mut *PARKED.lock().unwrap_or_else(|e| e.into_inner()));
    for (db, key) in parked {
        if select_db(ctx, db) {
            signal_ready(ctx, OwnedStr::new(ctx, &key).0);
        }
    }
}

extern "C" fn on_timer(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    with_reg(|r| r.timer = None);
    let primary = is_primary(ctx);
    if primary && writes_paused() {
        // Nothing may change (or be propagated) now: come back shortly and catch up then.
        let _ = guard(ctx, "timer re-arm", || arm(ctx, now_ms() + PAUSE_RETRY_MS));
        return;
    }
    if primary {
        let _ = guard(ctx, "timer wake-ups", || wake_parked(ctx));
        let _ = guard(ctx, "timer", || run_timer(ctx));
    } else {
        // a replica has no blocked fetchers (they are disconnected on the role change)
        PARKED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    // Always re-arm (also after a panic): on a primary at the earliest due time, else idle.
    let next = if primary { with_reg(|r| r.due.first().map(|(t, _, _)| *t)).unwrap_or(NEVER) } else { NEVER };
    let _ = guard(ctx, "timer re-arm", || arm(ctx, next));
}

fn run_timer(ctx: Ctx) {
    crate::server::ST_TIMER_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = now_ms();
    let due: Vec<(i64, i32, Vec<u8>)> =
        with_reg(|r| r.due.iter().take_while(|(t, _, _)| *t <= now).take(KEYS_PER_RUN).cloned().collect());
    for (_, db, key) in due {
        if crate::slots::importing(&key) {
            // the source still owns it: no due time until the import completes (slots.rs)
            touch_noarm(db, &key, None);
            continue;
        }
        if !select_db(ctx, db) {
            forget(db, &key);
            continue;
        }
        let name = OwnedStr::new(ctx, &key);
        let r = with_queue(ctx, name.0, false, |q| work_queue(ctx, q, now, &key));
        match r {
            Ok(Some(())) => {}
            // Missing or not a queue any more: drop the hint.
            _ => forget(db, &key),
        }
    }
}

/// The timer's duties on one queue, each replicated with explicit values.
fn work_queue(ctx: Ctx, q: &mut crate::queue::Queue, now: i64, key: &[u8]) {
    let now_s = now.to_string();
    if q.rate_wake.is_some_and(|t| t <= now) {
        // a fetch was short of tokens and the next one is there: let blocked fetchers try
        // again (nothing changes, so nothing is replicated; a fetch that is short again asks
        // for the next wake-up)
        q.rate_wake = None;
        q.became_ready = true;
    }
    if q.has_due_delayed(now) {
        q.promote(now);
        replicate(ctx, "VT._FX", &[key, b"PROMOTE", now_s.as_bytes()]);
    }
    if q.has_expired_lease(now) {
        let cap = dlq_cap();
        q.rescue_expired(now, cap);
        let cap_s = cap.to_string();
        replicate(ctx, "VT._FX", &[key, b"RESCUE", now_s.as_bytes(), cap_s.as_bytes()]);
    }
    let names = q.due_schedules(now);
    if !names.is_empty() && over_maxmemory(ctx) {
        // A tick adds a task: it obeys maxmemory as VT.ENQUEUE (deny-oom) does. The tick is
        // skipped (not deferred, so a burst cannot follow), counted, and the schedule moves on.
        let mut args: Vec<&[u8]> = vec![key, b"SCHEDSKIP", now_s.as_bytes()];
        for name in &names {
            q.skip_schedule(name, now);
            args.push(name);
        }
        replicate(ctx, "VT._FX", &args);
    } else if !names.is_empty() {
        let maxatt = max_attempts();
        let ma = maxatt.to_string();
        let mut args: Vec<Vec<u8>> =
            vec![key.to_vec(), b"SCHEDFIRE".to_vec(), now_s.clone().into_bytes(), ma.into_bytes()];
        for name in names {
            let id = crate::commands::new_id();
            q.fire_schedule(&name, id.clone(), now, maxatt);
            args.push(name);
            args.push(id);
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        replicate(ctx, "VT._FX", &refs);
    }
}

// ---------------------------------------------------------------- server events

/// Server event callback (on_loading).
///
/// # Safety
/// Called by the server only, with the event's valid context.
pub unsafe extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    let _ = guard(ctx, "loading event", || {
        if sub == raw::REDISMODULE_SUBEVENT_LOADING_ENDED {
            finish_loads(ctx);
            kick(ctx);
        }
    });
}

/// Server event callback (on_role).
///
/// # Safety
/// Called by the server only, with the event's valid context.
pub unsafe extern "C" fn on_role(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    _sub: u64,
    _data: *mut c_void,
) {
    let _ = guard(ctx, "role event", || kick(ctx));
}

/// Server event callback (on_flush).
///
/// # Safety
/// Called by the server only, with the event's valid context.
pub unsafe extern "C" fn on_flush(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    let _ = guard(ctx, "flush event", || {
        if sub == raw::REDISMODULE_SUBEVENT_FLUSHDB_END && !data.is_null() {
            let fi = &*(data as *const raw::RedisModuleFlushInfo);
            flush_db(fi.dbnum);
        }
    });
}

/// Server event callback (on_swapdb).
///
/// # Safety
/// Called by the server only, with the event's valid context.
pub unsafe extern "C" fn on_swapdb(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut c_void,
) {
    let _ = guard(ctx, "swapdb event", || {
        if !data.is_null() {
            let si = &*(data as *const raw::RedisModuleSwapDbInfo);
            swap_db(si.dbnum_first, si.dbnum_second);
        }
    });
}

/// Keyspace events: a queue that arrives under a new name (RENAME, MOVE, COPY, RESTORE) is
/// registered so the timer looks at it; a key that leaves (DEL/UNLINK, the old name of a RENAME
/// or MOVE, expiry, eviction) is forgotten at once (a queue without due work is never visited by
/// the timer, so it would stay in the registry for ever).
///
/// # Safety
/// Called by the server only, with the event's valid context.
pub unsafe extern "C" fn on_keyspace(
    ctx: *mut raw::RedisModuleCtx,
    _type: std::ffi::c_int,
    event: *const std::ffi::c_char,
    key: *mut raw::RedisModuleString,
) -> std::ffi::c_int {
    let _ = guard(ctx, "keyspace event", || {
        if event.is_null() || key.is_null() {
            return;
        }
        let ev = std::ffi::CStr::from_ptr(event).to_bytes();
        if matches!(ev, b"rename_to" | b"move_to" | b"copy_to" | b"restore") {
            let db = selected_db(ctx);
            touch_noarm(db, bytes(key), Some(now_ms()));
        } else if matches!(ev, b"del" | b"rename_from" | b"move_from" | b"expired" | b"evicted") {
            forget(selected_db(ctx), bytes(key));
        }
    });
    OK
}
