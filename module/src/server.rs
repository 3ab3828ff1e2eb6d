//! Thin, panic-free glue over the raw module API: replies, keys, replication, clock, stats.

use crate::queue::{Queue, Sizes};
use std::ffi::{c_char, c_int, c_void, CString};
use std::os::raw::c_longlong;
use std::sync::atomic::{AtomicI64, Ordering};
use valkey_module::raw;

pub type Ctx = *mut raw::RedisModuleCtx;
pub type RStr = *mut raw::RedisModuleString;

pub const OK: c_int = raw::REDISMODULE_OK as c_int;
pub const ERR: c_int = raw::REDISMODULE_ERR as c_int;

/// The module type, set once at load.
pub static mut QUEUE_TYPE: *mut raw::RedisModuleType = std::ptr::null_mut();

// ---------------------------------------------------------------- configs

pub static CFG_DLQ_CAP: AtomicI64 = AtomicI64::new(1000);
pub static CFG_MAX_ATTEMPTS: AtomicI64 = AtomicI64::new(3);
pub static CFG_DEFAULT_LEASE: AtomicI64 = AtomicI64::new(30_000);
pub static CFG_MAX_PAYLOAD: AtomicI64 = AtomicI64::new(16 * 1024 * 1024);

pub fn dlq_cap() -> usize {
    CFG_DLQ_CAP.load(Ordering::Relaxed).max(0) as usize
}
pub fn max_attempts() -> u32 {
    CFG_MAX_ATTEMPTS.load(Ordering::Relaxed).clamp(1, u32::MAX as i64) as u32
}
pub fn default_lease() -> i64 {
    CFG_DEFAULT_LEASE.load(Ordering::Relaxed).max(1)
}
pub fn max_payload() -> usize {
    CFG_MAX_PAYLOAD.load(Ordering::Relaxed).max(0) as usize
}

// ---------------------------------------------------------------- global stats (INFO vtasks)

pub static ST_QUEUES: AtomicI64 = AtomicI64::new(0);
pub static ST_READY: AtomicI64 = AtomicI64::new(0);
pub static ST_DELAYED: AtomicI64 = AtomicI64::new(0);
pub static ST_INFLIGHT: AtomicI64 = AtomicI64::new(0);
pub static ST_DEAD: AtomicI64 = AtomicI64::new(0);
pub static ST_TIMER_RUNS: AtomicI64 = AtomicI64::new(0);
pub static ST_PANICS: AtomicI64 = AtomicI64::new(0);

pub fn stats_add(d: Sizes, sign: i64) {
    ST_READY.fetch_add(sign * d.ready, Ordering::Relaxed);
    ST_DELAYED.fetch_add(sign * d.delayed, Ordering::Relaxed);
    ST_INFLIGHT.fetch_add(sign * d.inflight, Ordering::Relaxed);
    ST_DEAD.fetch_add(sign * d.dead, Ordering::Relaxed);
}

pub fn stats_diff(before: Sizes, after: Sizes) {
    stats_add(
        Sizes {
            ready: after.ready - before.ready,
            delayed: after.delayed - before.delayed,
            inflight: after.inflight - before.inflight,
            dead: after.dead - before.dead,
        },
        1,
    );
}

/// A queue value as stored in the keyspace. Keeps the global stats in step when dropped.
pub struct QueueBox(pub Queue);

impl QueueBox {
    pub fn new(q: Queue) -> Box<QueueBox> {
        ST_QUEUES.fetch_add(1, Ordering::Relaxed);
        stats_add(q.sizes(), 1);
        Box::new(QueueBox(q))
    }
}

impl Drop for QueueBox {
    fn drop(&mut self) {
        ST_QUEUES.fetch_sub(1, Ordering::Relaxed);
        stats_add(self.0.sizes(), -1);
    }
}

// ---------------------------------------------------------------- clock, flags, strings

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn ctx_flags(ctx: Ctx) -> u32 {
    unsafe {
        match raw::RedisModule_GetContextFlags {
            Some(f) => f(ctx) as u32,
            None => 0,
        }
    }
}

/// A `GetContextFlags` bit of Valkey 9 (valkeymodule.h), absent from the crate's bundled header:
/// the command comes from the import connection of an atomic slot migration (`CLUSTER
/// MIGRATESLOTS`) on its target: the source's snapshot and its stream of effects.
pub const CTX_FLAGS_SLOT_IMPORT_CLIENT: u32 = 1 << 25;

/// True when the running command was not sent by a client but replays effects the server must
/// obey: the replication stream, the AOF, or the stream of a slot being imported.
pub fn from_effect_stream(ctx: Ctx) -> bool {
    let from =
        raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING | CTX_FLAGS_SLOT_IMPORT_CLIENT;
    ctx_flags(ctx) & from != 0
}

pub fn is_primary(ctx: Ctx) -> bool {
    let f = ctx_flags(ctx);
    f & raw::REDISMODULE_CTX_FLAGS_MASTER != 0 && f & raw::REDISMODULE_CTX_FLAGS_LOADING == 0
}

/// True while the server pauses writes: `CLIENT PAUSE WRITE|ALL`, `FAILOVER`, `CLUSTER FAILOVER`
/// and a `SHUTDOWN`/SIGTERM waiting for its replicas. The dataset must then stay fixed so a
/// replica can catch up to the exact offset (the server asserts that nothing is propagated), so
/// work that runs outside a client's command (timers, blocked-client wake-ups) must wait.
/// Commands need no check: the server holds back writing clients itself.
pub fn writes_paused() -> bool {
    unsafe {
        match raw::RedisModule_AvoidReplicaTraffic {
            Some(f) => f() != 0,
            None => false,
        }
    }
}

/// True while used memory is above `maxmemory` (the state in which the server refuses a
/// `deny-oom` command such as VT.ENQUEUE). Checked by the timer before it adds tasks.
pub fn over_maxmemory(ctx: Ctx) -> bool {
    ctx_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_OOM != 0
}

/// Bytes of a module string (valid while the string lives).
pub fn bytes<'a>(s: RStr) -> &'a [u8] {
    unsafe {
        let mut len: usize = 0;
        let p = raw::RedisModule_StringPtrLen.unwrap()(s, &mut len);
        if p.is_null() {
            return &[];
        }
        std::slice::from_raw_parts(p.cast::<u8>(), len)
    }
}

pub fn args<'a>(argv: *mut RStr, argc: c_int) -> Vec<&'a [u8]> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    unsafe { std::slice::from_raw_parts(argv, argc as usize) }.iter().map(|s| bytes(*s)).collect()
}

/// An owned module string (freed on drop).
pub struct OwnedStr(pub RStr);

impl OwnedStr {
    pub fn new(ctx: Ctx, b: &[u8]) -> OwnedStr {
        unsafe { OwnedStr(raw::RedisModule_CreateString.unwrap()(ctx, b.as_ptr().cast::<c_char>(), b.len())) }
    }
}

impl Drop for OwnedStr {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_FreeString.unwrap()(std::ptr::null_mut(), self.0) }
    }
}

pub fn log(ctx: Ctx, level: &str, msg: &str) {
    let lvl = CString::new(level).unwrap_or_default();
    let m = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    unsafe {
        if let Some(f) = raw::RedisModule_Log {
            f(ctx, lvl.as_ptr(), c"%s".as_ptr(), m.as_ptr());
        }
    }
}

pub fn replicate(ctx: Ctx, cmd: &str, args: &[&[u8]]) {
    raw::replicate(ctx, cmd, args);
}

/// Replication arguments as module strings, sent with one `RedisModule_Replicate(.., "v", ..)`:
/// numbers are created straight from integers and the command's own argv strings are shared
/// (retained) instead of copied, so building the argv costs no intermediate Rust buffers.
pub struct Rep(Vec<RStr>);

impl Rep {
    pub fn with_capacity(n: usize) -> Rep {
        Rep(Vec::with_capacity(n))
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Rep {
        self.0.push(unsafe {
            raw::RedisModule_CreateString.unwrap()(std::ptr::null_mut(), b.as_ptr().cast::<c_char>(), b.len())
        });
        self
    }
    pub fn int(&mut self, v: i64) -> &mut Rep {
        self.0
            .push(unsafe { raw::RedisModule_CreateStringFromLongLong.unwrap()(std::ptr::null_mut(), v as c_longlong) });
        self
    }
    /// Shares an argument string of the running command (its bytes are not copied).
    pub fn arg(&mut self, s: RStr) -> &mut Rep {
        unsafe { raw::RedisModule_RetainString.unwrap()(std::ptr::null_mut(), s) };
        self.0.push(s);
        self
    }
    pub fn send(&mut self, ctx: Ctx, cmd: &std::ffi::CStr) {
        unsafe {
            raw::RedisModule_Replicate.unwrap()(ctx, cmd.as_ptr(), c"v".as_ptr(), self.0.as_mut_ptr(), self.0.len());
        }
    }
}

impl Drop for Rep {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            unsafe { raw::RedisModule_FreeString.unwrap()(std::ptr::null_mut(), s) }
        }
    }
}

pub fn replicate_verbatim(ctx: Ctx) {
    raw::replicate_verbatim(ctx);
}

/// A queue changed: invalidate WATCH and client-side caches of the key (the module sets
/// `NO_IMPLICIT_SIGNAL_MODIFIED`, so a command that changed nothing invalidates nothing) and send
/// the keyspace notification (class `d`, module; event = the command, e.g. `vt.enqueue`,
/// `vt.schedule.set`; `vt.timer` for the module's timers).
pub fn key_modified(ctx: Ctx, key: RStr) {
    unsafe {
        if let Some(f) = raw::RedisModule_SignalModifiedKey {
            f(ctx, key);
        }
        let cmd = raw::RedisModule_GetCurrentCommandName.map(|f| f(ctx)).unwrap_or(std::ptr::null());
        let event = if cmd.is_null() {
            CString::from(c"vt.timer")
        } else {
            let name = std::ffi::CStr::from_ptr(cmd).to_string_lossy().to_ascii_lowercase().replace('|', ".");
            CString::new(name).unwrap_or_else(|_| CString::from(c"vt"))
        };
        if let Some(f) = raw::RedisModule_NotifyKeyspaceEvent {
            f(ctx, raw::REDISMODULE_NOTIFY_MODULE, event.as_ptr(), key);
        }
    }
}

pub fn signal_ready(ctx: Ctx, key: RStr) {
    unsafe {
        if let Some(f) = raw::RedisModule_SignalKeyAsReady {
            f(ctx, key);
        }
    }
}

pub fn selected_db(ctx: Ctx) -> i32 {
    unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) }
}

pub fn select_db(ctx: Ctx, db: i32) -> bool {
    unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, db) == OK }
}

// ---------------------------------------------------------------- replies

/// A reply built completely before anything is written, so a panic can never leave a half-sent
/// reply on the connection.
pub enum Reply {
    Nil,
    NilArray,
    Int(i64),
    Bulk(Vec<u8>),
    Str(String),
    Simple(&'static str),
    Error(String),
    Array(Vec<Reply>),
    /// An array of bulk strings (slices of one buffer) or nils: one allocation for many ids.
    Bulks(Vec<u8>, Vec<Option<(usize, usize)>>),
    Map(Vec<(&'static str, Reply)>),
}

pub fn bulk<T: AsRef<[u8]>>(b: T) -> Reply {
    Reply::Bulk(b.as_ref().to_vec())
}

pub fn emit(ctx: Ctx, r: &Reply) {
    unsafe {
        match r {
            Reply::Nil => {
                raw::RedisModule_ReplyWithNull.unwrap()(ctx);
            }
            Reply::NilArray => {
                raw::RedisModule_ReplyWithNullArray.unwrap()(ctx);
            }
            Reply::Int(i) => {
                raw::RedisModule_ReplyWithLongLong.unwrap()(ctx, *i as c_longlong);
            }
            Reply::Bulk(b) => {
                raw::RedisModule_ReplyWithStringBuffer.unwrap()(ctx, b.as_ptr().cast::<c_char>(), b.len());
            }
            Reply::Str(s) => {
                raw::RedisModule_ReplyWithStringBuffer.unwrap()(ctx, s.as_ptr().cast::<c_char>(), s.len());
            }
            Reply::Simple(s) => {
                let c = CString::new(*s).unwrap_or_default();
                raw::RedisModule_ReplyWithSimpleString.unwrap()(ctx, c.as_ptr());
            }
            Reply::Error(e) => {
                let c = CString::new(e.replace(['\r', '\n', '\0'], " ")).unwrap_or_default();
                raw::RedisModule_ReplyWithError.unwrap()(ctx, c.as_ptr());
            }
            Reply::Array(v) => {
                raw::RedisModule_ReplyWithArray.unwrap()(ctx, v.len() as _);
                for x in v {
                    emit(ctx, x);
                }
            }
            Reply::Bulks(buf, v) => {
                raw::RedisModule_ReplyWithArray.unwrap()(ctx, v.len() as _);
                for x in v {
                    match x.and_then(|(a, b)| buf.get(a..b)) {
                        Some(b) => {
                            raw::RedisModule_ReplyWithStringBuffer.unwrap()(ctx, b.as_ptr().cast::<c_char>(), b.len());
                        }
                        None => {
                            raw::RedisModule_ReplyWithNull.unwrap()(ctx);
                        }
                    }
                }
            }
            Reply::Map(v) => {
                raw::RedisModule_ReplyWithMap.unwrap()(ctx, v.len() as _);
                for (k, x) in v {
                    raw::RedisModule_ReplyWithStringBuffer.unwrap()(ctx, k.as_ptr().cast::<c_char>(), k.len());
                    emit(ctx, x);
                }
            }
        }
    }
}

pub fn err<T>(msg: impl Into<String>) -> Result<T, Reply> {
    Err(Reply::Error(msg.into()))
}

pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

// ---------------------------------------------------------------- keys

/// An open key holding (or about to hold) a queue; closed on drop.
pub struct QKey {
    pub key: *mut raw::RedisModuleKey,
}

impl Drop for QKey {
    fn drop(&mut self) {
        unsafe { raw::RedisModule_CloseKey.unwrap()(self.key) }
    }
}

pub enum Open {
    Missing(QKey),
    Queue(QKey, *mut QueueBox),
}

/// Opens `name` and checks its type. Errors with WRONGTYPE for other types.
pub fn open(ctx: Ctx, name: RStr, write: bool) -> Result<Open, Reply> {
    unsafe {
        let mode = if write { raw::REDISMODULE_READ | raw::REDISMODULE_WRITE } else { raw::REDISMODULE_READ };
        let key = raw::RedisModule_OpenKey.unwrap()(ctx, name, mode as c_int);
        let k = QKey { key };
        if key.is_null() {
            return Ok(Open::Missing(k));
        }
        let t = raw::RedisModule_KeyType.unwrap()(key);
        if t == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            return Ok(Open::Missing(k));
        }
        if t != raw::REDISMODULE_KEYTYPE_MODULE as c_int
            || raw::RedisModule_ModuleTypeGetType.unwrap()(key) != QUEUE_TYPE
        {
            return Err(Reply::Error(WRONGTYPE.into()));
        }
        let v = raw::RedisModule_ModuleTypeGetValue.unwrap()(key) as *mut QueueBox;
        if v.is_null() {
            return Ok(Open::Missing(k));
        }
        Ok(Open::Queue(k, v))
    }
}

/// Stores a fresh queue into an open, empty key; returns the value pointer.
pub fn create(k: &QKey, q: Queue) -> Result<*mut QueueBox, Reply> {
    unsafe {
        let b = Box::into_raw(QueueBox::new(q));
        if raw::RedisModule_ModuleTypeSetValue.unwrap()(k.key, QUEUE_TYPE, b.cast::<c_void>()) != OK {
            drop(Box::from_raw(b));
            return err("ERR could not store the queue");
        }
        Ok(b)
    }
}

/// Runs `f` on the queue at `name` (opened for writing), keeping stats, the timer registry and
/// blocked clients in step. With `create`, a missing key gets an empty queue first; without it
/// `f` is not called and `Ok(None)` is returned.
pub fn with_queue<T>(
    ctx: Ctx,
    name: RStr,
    create_missing: bool,
    f: impl FnOnce(&mut Queue) -> T,
) -> Result<Option<T>, Reply> {
    with_queue_ext(ctx, name, create_missing, false, f)
}

/// `with_queue`, but `loading` keeps the record loader's duplicate-detection set (VT._LOAD);
/// every other command ends a pending load.
pub fn with_queue_ext<T>(
    ctx: Ctx,
    name: RStr,
    create_missing: bool,
    loading: bool,
    f: impl FnOnce(&mut Queue) -> T,
) -> Result<Option<T>, Reply> {
    let (k, v, created) = match open(ctx, name, true)? {
        Open::Queue(k, v) => (k, v, false),
        Open::Missing(k) => {
            if !create_missing {
                return Ok(None);
            }
            let v = create(&k, Queue::default())?;
            (k, v, true)
        }
    };
    let q = unsafe { &mut (*v).0 };
    if !loading && q.load_seqs.is_some() {
        q.finish_load();
    }
    let before = q.sizes();
    let out = f(q);
    stats_diff(before, q.sizes());
    let ready = std::mem::replace(&mut q.became_ready, false);
    let modified = std::mem::replace(&mut q.modified, false) || created;
    let due = q.next_due();
    drop(k);
    if modified {
        key_modified(ctx, name);
    }
    crate::timers::touch(ctx, selected_db(ctx), bytes(name), due);
    if ready {
        signal_ready(ctx, name);
    }
    Ok(Some(out))
}

/// Runs `f` on the queue read-only; `None` when the key is missing.
pub fn read_queue<T>(ctx: Ctx, name: RStr, f: impl FnOnce(&Queue) -> T) -> Result<Option<T>, Reply> {
    match open(ctx, name, false)? {
        Open::Queue(_k, v) => Ok(Some(f(unsafe { &(*v).0 }))),
        Open::Missing(_) => Ok(None),
    }
}

// ---------------------------------------------------------------- panic safety

pub fn panic_msg(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Runs `f`, turning a panic into a logged error value.
pub fn guard<T>(ctx: Ctx, what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Ok(v),
        Err(e) => {
            ST_PANICS.fetch_add(1, Ordering::Relaxed);
            let m = format!("vtasks: internal error in {what}: {}", panic_msg(&e));
            log(ctx, "warning", &m);
            Err(m)
        }
    }
}
