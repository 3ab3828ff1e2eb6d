//! vtasks: a reliable task queue as a native Valkey module.
//!
//! Every FFI entry point (commands, blocked-client callbacks, timers, events, RDB/AOF callbacks)
//! runs inside `catch_unwind`; see `server::guard`.
// The FFI glue passes server-owned handles (`Ctx`, keys, strings) that the server keeps valid
// for the duration of the callback that received them; wrapping every helper in `unsafe fn` would
// add nothing but noise at each call site.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod acl;
pub mod alloc;
pub mod cancel;
pub mod codec;
pub mod commands;
pub mod dead;
pub mod digest;
pub mod flow_command;
pub mod flows;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod slots;
pub mod tasks;
pub mod timers;

/// Pure entry points for fuzzing (tests/gauntlet/fuzz): no server needed, never panic.
pub mod fuzzing {
    use crate::codec::{R, W};
    use crate::queue::{EnqOpts, Queue};

    /// Validates one VT.* argument vector (argv[0] = command name) as the handler does before it
    /// touches a key. `Err` carries the `ERR ...` reply.
    pub fn parse_command(argv: &[&[u8]]) -> Result<(), String> {
        crate::commands::parse_command(argv)?;
        let mut name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
        if name == "vt.schedule" || name == "vt.ratelimit" {
            name = format!("vt.schedule|{}", String::from_utf8_lossy(argv[1]).to_ascii_lowercase());
        }
        let row = crate::COMMANDS.iter().find(|c| c.name == name);
        crate::check_queue_names(row, argv).map_err(|r| match r {
            crate::server::Reply::Error(e) => e,
            _ => "ERR".into(),
        })
    }

    /// Decodes a queue value written by [`encode_queue`] (the byte-slice form of what `rdb_load`
    /// reads: a record count, then length-prefixed records), for RDB encoding version `encver`.
    pub fn decode_queue(encver: i32, data: &[u8]) -> Result<(), String> {
        decode(encver, data).map(|_| ())
    }

    pub fn decode(encver: i32, data: &[u8]) -> Result<Queue, String> {
        if encver != crate::ENCVER {
            return Err(format!("unsupported encoding version {encver}"));
        }
        let mut r = R::new(data);
        let n = r.u64()?;
        let mut q = Queue::default();
        for _ in 0..n {
            let rec = r.bytes()?;
            q.apply_record(&rec)?;
        }
        r.done()?;
        q.finish_load();
        Ok(q)
    }

    pub fn encode_queue(q: &Queue) -> Vec<u8> {
        let mut w = W { buf: Vec::new() };
        w.u64(q.record_count() as u64);
        q.visit_records(&mut |rec| {
            w.bytes(rec);
        });
        w.buf
    }

    /// A queue with tasks in every state, dead entries, unique keys and schedules, derived from
    /// `seed`, encoded.
    pub fn encode_sample_queue(seed: u64) -> Vec<u8> {
        encode_queue(&sample_queue(seed))
    }

    pub fn sample_queue(seed: u64) -> Queue {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut q = Queue::default();
        let now = 1_700_000_000_000i64;
        let n = 1 + (next() % 20) as usize;
        for i in 0..n {
            let o = EnqOpts {
                now,
                priority: (next() % 201) as i32 - 100,
                run_at: if next() % 3 == 0 { now + (next() % 100_000) as i64 } else { now },
                max_attempts: 1 + (next() % 4) as u32,
                unique: None,
            };
            let payload: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            q.enqueue(&o, vec![(format!("t{i}").into_bytes(), payload)]);
        }
        let o = EnqOpts { now, priority: 0, run_at: now, max_attempts: 3, unique: Some((b"uk", now + 5000)) };
        q.enqueue(&o, vec![(b"uniq".to_vec(), b"u".to_vec())]);
        let take = (next() % 8) as usize;
        let mut tok = || next();
        let got = q.fetch(now + 1, b"worker", take, now + 30_000, &mut tok);
        for (i, f) in got.iter().enumerate() {
            if i % 2 == 0 {
                q.fail(now + 2, 5, &f.id, Some(f.token), b"boom", if i % 4 == 0 { Some(10) } else { None });
            }
        }
        let sched = crate::queue::Schedule {
            kind: crate::queue::SchedKind::Cron,
            spec: b"*/5 * * * * *".to_vec(),
            every: 0,
            priority: 1,
            payload: b"cron".to_vec(),
            next_run: now + 5000,
            cron: crate::queue::parse_cron("*/5 * * * * *").ok(),
            paused: seed.is_multiple_of(2),
        };
        q.schedule_set(b"s1", sched);
        // a chain root -> a -> b, waiting for the root (leased above or not)
        let node = |id: &str, parents: &[&str]| crate::queue::FlowNode {
            id: format!("{id}{seed}").into_bytes(),
            priority: 0,
            max_attempts: 2,
            run_at: now,
            parents: parents.iter().map(|p| format!("{p}{seed}").into_bytes()).collect(),
            payload: b"f".to_vec(),
        };
        q.add_flow(now, vec![node("root", &[]), node("a", &["root"]), node("b", &["a", "root"])]);
        if seed.is_multiple_of(3) {
            q.rate_set(1 + (next() % 100) as i64, 1 + (next() % 10_000) as i64, 1 + (next() % 50) as i64, now);
        }
        q
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn roundtrip_and_corruption_never_panics() {
            for seed in 0..50u64 {
                let enc = encode_sample_queue(seed);
                let q = decode(crate::ENCVER, &enc).unwrap();
                assert_eq!(encode_queue(&q), enc);
                // truncations and bit flips: errors or a value, never a panic
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for cut in (0..enc.len()).step_by(7) {
                    let _ = decode_queue(1, &enc[..cut]);
                }
                for _ in 0..300 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut m = enc.clone();
                    let i = (x as usize) % m.len();
                    m[i] ^= (x >> 32) as u8 | 1;
                    let _ = decode_queue(1, &m);
                }
            }
            assert!(decode_queue(2, &[]).is_err());
        }

        #[test]
        fn parse_command_matches_handlers() {
            let ok: &[&[&[u8]]] = &[
                &[b"VT.ENQUEUE", b"q", b"PAYLOAD", b"x"],
                &[b"vt.fetchbatch", b"1", b"q", b"WORKER", b"w", b"COUNT", b"5", b"BLOCK", b"0"],
                &[b"VT.SCHEDULE", b"SET", b"q", b"n", b"EVERY", b"10", b"PAYLOAD", b"p"],
                &[b"VT.SCHEDULE", b"LIST", b"q"],
                &[b"VT.ACK", b"q", b"id", b"tok"],
                &[b"VT.GET", b"q", b"id"],
                &[b"VT.GET", b"q", b"unique", b"key"],
                &[b"VT.INFO", &[b'q'; 1024]],
                &[b"VT.RATELIMIT", b"SET", b"q", b"5", b"PER", b"1000"],
                &[b"VT.RATELIMIT", b"set", b"q", b"5", b"per", b"1000", b"BURST", b"9"],
                &[b"VT.RATELIMIT", b"GET", b"q"],
                &[b"VT.RATELIMIT", b"OFF", b"q"],
                &[b"VT.SCHEDULE", b"PAUSE", b"q", b"n"],
                &[b"VT.SCHEDULE", b"RUN", b"q", b"n"],
            ];
            for a in ok {
                assert_eq!(parse_command(a), Ok(()), "{a:?}");
            }
            let bad: &[&[&[u8]]] = &[
                &[b"VT.ENQUEUE", b"q", b"PAYLOAD"],
                &[b"VT.FETCHBATCH", b"1", b"q", b"WORKER", b"w", b"COUNT", b"10001"],
                &[b"VT.SCHEDULE", b"SET", b"q", b"n", b"CRON", b"0 0 30 2 *", b"PAYLOAD", b"p"],
                &[b"VT.NOPE"],
                &[b"VT.GET", b"q", b"a", b"b"],
                &[b"VT.INFO", b""],
                &[b"VT.ENQUEUE", &[b'q'; 1025], b"PAYLOAD", b"x"],
                &[b"VT.FETCHBATCH", b"2", b"q", &[b'q'; 1025], b"WORKER", b"w"],
                &[b"VT.SCHEDULE", b"LIST", &[b'q'; 1025]],
                &[b"VT.RATELIMIT", b"SET", b"q", b"0", b"PER", b"1000"],
                &[b"VT.RATELIMIT", b"SET", b"q", b"5", b"PER", b"86400001"],
                &[b"VT.RATELIMIT", b"SET", &[b'q'; 1025], b"5", b"PER", b"1000"],
                &[b"VT.RATELIMIT", b"NOPE", b"q"],
                &[b"VT.RATELIMIT"],
                &[b"VT.SCHEDULE", b"PAUSE", b"q"],
                &[],
            ];
            for a in bad {
                assert!(parse_command(a).is_err(), "{a:?}");
            }
        }
    }
}

use server::*;
use std::ffi::{c_char, c_int, c_void, CString};
use valkey_module::raw;

#[cfg(not(test))]
#[global_allocator]
static ALLOC: alloc::VtAlloc = alloc::VtAlloc;

pub const ENCVER: c_int = 1;
pub const TYPE_NAME: &str = "vtasks-qu";

// ---------------------------------------------------------------- command trampolines

type Handler = fn(Ctx, &[RStr], &[&[u8]]) -> Result<Reply, Reply>;

unsafe fn run(ctx: Ctx, argv: *mut RStr, argc: c_int, name: &str, f: Handler, this: CmdFn) -> c_int {
    let r = guard(ctx, name, || {
        let av: &[RStr] =
            if argv.is_null() || argc <= 0 { &[] } else { std::slice::from_raw_parts(argv, argc as usize) };
        let a = args(argv, argc);
        check_queue_names(row_of(this), &a)?;
        f(ctx, av, &a)
    });
    match r {
        Ok(Ok(rep)) | Ok(Err(rep)) => emit(ctx, &rep),
        Err(m) => emit(ctx, &Reply::Error(format!("ERR {m}"))),
    }
    OK
}

macro_rules! trampoline {
    ($tname:ident, $f:path, $label:expr) => {
        unsafe extern "C" fn $tname(ctx: Ctx, argv: *mut RStr, argc: c_int) -> c_int {
            run(ctx, argv, argc, $label, $f, $tname)
        }
    };
}

trampoline!(t_enqueue, commands::enqueue, "VT.ENQUEUE");
trampoline!(t_ack, commands::ack, "VT.ACK");
trampoline!(t_fail, commands::fail, "VT.FAIL");
trampoline!(t_rescue, commands::rescue, "VT.RESCUE");
trampoline!(t_extend, commands::extend, "VT.EXTEND");
trampoline!(t_cancel, cancel::cancel, "VT.CANCEL");
trampoline!(t_info, commands::info, "VT.INFO");
trampoline!(t_queues, commands::queues, "VT.QUEUES");
trampoline!(t_peek, commands::peek, "VT.PEEK");
trampoline!(t_get, commands::get, "VT.GET");
trampoline!(t_retrydead, commands::retrydead, "VT.RETRYDEAD");
trampoline!(t_delete, commands::delete, "VT.DELETE");
trampoline!(t_clear, commands::clear, "VT.CLEAR");
trampoline!(t_sched_set, commands::schedule_set, "VT.SCHEDULE SET");
trampoline!(t_sched_del, commands::schedule_del, "VT.SCHEDULE DEL");
trampoline!(t_sched_list, commands::schedule_list, "VT.SCHEDULE LIST");
trampoline!(t_flow, flow_command::flow, "VT.FLOW");
trampoline!(t_sched_pause, commands::schedule_pause, "VT.SCHEDULE PAUSE");
trampoline!(t_sched_resume, commands::schedule_pause, "VT.SCHEDULE RESUME");
trampoline!(t_sched_run, commands::schedule_run, "VT.SCHEDULE RUN");
trampoline!(t_rate_set, ratelimit::set, "VT.RATELIMIT SET");
trampoline!(t_rate_off, ratelimit::off, "VT.RATELIMIT OFF");
trampoline!(t_rate_get, ratelimit::get, "VT.RATELIMIT GET");
trampoline!(t_fx, commands::fx, "VT._FX");
trampoline!(t_load, commands::load, "VT._LOAD");
trampoline!(t_align, commands::aligncheck, "VT._ALIGNCHECK");

unsafe extern "C" fn t_fetchbatch(ctx: Ctx, argv: *mut RStr, argc: c_int) -> c_int {
    // getkeys-api: report the queue keys (argv[2 .. 2+numqueues]) for cluster routing and ACLs.
    if raw::RedisModule_IsKeysPositionRequest.map(|f| f(ctx) != 0).unwrap_or(false) {
        let _ = guard(ctx, "VT.FETCHBATCH getkeys", || {
            let a = args(argv, argc);
            if a.len() > 1 {
                if let Ok(n) = std::str::from_utf8(a[1]).unwrap_or("").parse::<usize>() {
                    for i in 2..(2 + n).min(a.len()) {
                        raw::RedisModule_KeyAtPos.unwrap()(ctx, i as c_int);
                    }
                }
            }
        });
        return OK;
    }
    let r = guard(ctx, "VT.FETCHBATCH", || {
        let av: &[RStr] =
            if argv.is_null() || argc <= 0 { &[] } else { std::slice::from_raw_parts(argv, argc as usize) };
        let a = args(argv, argc);
        check_queue_names(row_of(t_fetchbatch), &a)?;
        commands::fetchbatch(ctx, av, &a)
    });
    match r {
        Ok(Ok(Some(rep))) | Ok(Err(rep)) => emit(ctx, &rep),
        Ok(Ok(None)) => {} // blocked: the reply comes from a callback
        Err(m) => emit(ctx, &Reply::Error(format!("ERR {m}"))),
    }
    OK
}

// ---------------------------------------------------------------- data type callbacks

unsafe extern "C" fn rdb_load(io: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    let r = guard(std::ptr::null_mut(), "rdb_load", || -> Result<Box<QueueBox>, String> {
        if encver != ENCVER {
            return Err(format!("unsupported vtasks encoding version {encver}"));
        }
        let n = raw::load_unsigned(io).map_err(|e| e.to_string())?;
        let mut q = queue::Queue::default();
        for _ in 0..n {
            let buf = raw::load_string_buffer(io).map_err(|e| e.to_string())?;
            q.apply_record(buf.as_ref()).map_err(|e| e.to_string())?;
        }
        q.finish_load();
        let due = q.next_due();
        if let Some(f) = raw::RedisModule_GetKeyNameFromIO {
            let k = f(io);
            if !k.is_null() {
                let db = raw::RedisModule_GetDbIdFromIO.map(|g| g(io)).unwrap_or(0);
                timers::touch_noarm(db, bytes(k as RStr), Some(due.unwrap_or(now_ms())));
            }
        }
        Ok(QueueBox::new(q))
    });
    match r {
        Ok(Ok(b)) => Box::into_raw(b) as *mut c_void,
        Ok(Err(m)) => {
            log(std::ptr::null_mut(), "warning", &format!("vtasks: RDB load failed: {m}"));
            std::ptr::null_mut()
        }
        Err(_) => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn rdb_save(io: *mut raw::RedisModuleIO, value: *mut c_void) {
    let _ = guard(std::ptr::null_mut(), "rdb_save", || {
        let q = &(*(value as *const QueueBox)).0;
        raw::save_unsigned(io, q.record_count() as u64);
        q.visit_records(&mut |rec| raw::save_slice(io, rec));
    });
}

unsafe extern "C" fn aof_rewrite(io: *mut raw::RedisModuleIO, key: *mut raw::RedisModuleString, value: *mut c_void) {
    let _ = guard(std::ptr::null_mut(), "aof_rewrite", || {
        let q = &(*(value as *const QueueBox)).0;
        let emit_aof = raw::RedisModule_EmitAOF.unwrap();
        q.visit_records(&mut |rec| {
            emit_aof(io, c"VT._LOAD".as_ptr(), c"sb".as_ptr(), key, rec.as_ptr() as *const c_char, rec.len());
        });
    });
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let _ = guard(std::ptr::null_mut(), "digest", || digest::digest_queue(md, &(*(value as *const QueueBox)).0));
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    guard(std::ptr::null_mut(), "mem_usage", || (*(value as *const QueueBox)).0.mem_usage()).unwrap_or(0)
}

unsafe extern "C" fn free_value(value: *mut c_void) {
    if !value.is_null() {
        let _ = std::panic::catch_unwind(|| drop(Box::from_raw(value as *mut QueueBox)));
    }
}

unsafe extern "C" fn free_effort(_key: *mut raw::RedisModuleString, value: *const c_void) -> usize {
    guard(std::ptr::null_mut(), "free_effort", || {
        let q = &(*(value as *const QueueBox)).0;
        q.task_count() + q.dead.len() + q.flows.len() + 1
    })
    .unwrap_or(1)
}

unsafe extern "C" fn copy_value(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    let r = guard(std::ptr::null_mut(), "copy", || -> Option<Box<QueueBox>> {
        let src = &(*(value as *const QueueBox)).0;
        let mut q = queue::Queue::default();
        let mut ok = true;
        src.visit_records(&mut |rec| ok &= q.apply_record(rec).is_ok());
        q.finish_load();
        ok.then(|| QueueBox::new(q))
    });
    match r {
        Ok(Some(b)) => Box::into_raw(b) as *mut c_void,
        _ => std::ptr::null_mut(),
    }
}

// ---------------------------------------------------------------- INFO vtasks

unsafe extern "C" fn info_func(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    let _ = std::panic::catch_unwind(|| {
        use std::sync::atomic::Ordering::Relaxed;
        raw::RedisModule_InfoAddSection.unwrap()(ctx, std::ptr::null());
        let add = |k: &str, v: i64| {
            let c = CString::new(k).unwrap();
            raw::RedisModule_InfoAddFieldLongLong.unwrap()(ctx, c.as_ptr(), v);
        };
        add("queues", ST_QUEUES.load(Relaxed));
        add("tasks_ready", ST_READY.load(Relaxed));
        add("tasks_delayed", ST_DELAYED.load(Relaxed));
        add("tasks_inflight", ST_INFLIGHT.load(Relaxed));
        add("tasks_dead", ST_DEAD.load(Relaxed));
        add("registry_keys", timers::registry_len() as i64);
        add("timer_runs", ST_TIMER_RUNS.load(Relaxed));
        add("internal_errors", ST_PANICS.load(Relaxed));
        add("config_dlq_cap", CFG_DLQ_CAP.load(Relaxed));
        add("config_max_attempts", CFG_MAX_ATTEMPTS.load(Relaxed));
        add("config_default_lease", CFG_DEFAULT_LEASE.load(Relaxed));
        add("config_max_payload", CFG_MAX_PAYLOAD.load(Relaxed));
    });
}

// ---------------------------------------------------------------- registration

type CmdFn = unsafe extern "C" fn(Ctx, *mut RStr, c_int) -> c_int;

// Key-spec access flags (ACL `%R~` / `%W~` and COMMAND INFO). INSERT, DELETE and UPDATE are
// mutually exclusive.
const KEY_RO: u32 = raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS;
const KEY_RW: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;
const KEY_INS: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_INSERT;
const KEY_DEL: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_DELETE;

/// Where a command's keys are (cluster routing, ACL key permissions, COMMAND INFO).
#[derive(Clone, Copy)]
enum Keys {
    /// No key.
    None,
    /// One key, `argv[pos]`, accessed as `flags`.
    At(c_int, u32),
    /// `argv[1]` is a key count, the keys follow it (the handler answers getkeys-api too).
    Counted(u32),
}

/// One VT.* command: everything the server must know about it, in one row.
struct Command {
    /// Lower case; `parent|sub` registers a subcommand of a container command.
    name: &'static str,
    handler: CmdFn,
    /// Command flags (`write`, `readonly`, `deny-oom`, `blocking`, `fast`, ...).
    flags: &'static str,
    keys: Keys,
    /// COMMAND INFO arity (negative: at least); 0 leaves the argument count to the handler.
    arity: c_int,
    /// ACL categories besides the module's own `@vtasks` (which every command has).
    acl: &'static str,
}

/// The module's ACL category: `ACL CAT vtasks` lists every command, `+@vtasks` grants them all.
const ACL_CATEGORY: &str = "vtasks";
const NO_ACL_API: &str = "this server has no module ACL categories API (Valkey 8.0 or later is needed)";

/// Every command the module registers. ACL categories follow what the command does, like the core
/// commands: `write`/`read`, `fast` (O(1)/O(log n) per argument) or `slow`, `blocking`;
/// `dangerous` for commands that destroy tasks an operator cannot get back (CLEAR, DELETE) and
/// for the internal ones, which are also `admin`.
const COMMANDS: &[Command] = &[
    Command {
        name: "vt.enqueue",
        handler: t_enqueue,
        flags: "write deny-oom",
        keys: Keys::At(1, KEY_INS),
        arity: 0,
        acl: "write fast",
    },
    // O(tasks of the flow); one queue key, so one slot: a flow never spans queues
    Command {
        name: "vt.flow",
        handler: t_flow,
        flags: "write deny-oom",
        keys: Keys::At(1, KEY_INS),
        arity: 0,
        acl: "write slow",
    },
    Command {
        name: "vt.fetchbatch",
        handler: t_fetchbatch,
        flags: "write blocking getkeys-api",
        keys: Keys::Counted(KEY_RW),
        arity: -7,
        acl: "write slow blocking",
    },
    Command {
        name: "vt.ack",
        handler: t_ack,
        flags: "write fast",
        keys: Keys::At(1, KEY_DEL),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.fail",
        handler: t_fail,
        flags: "write fast",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.rescue",
        handler: t_rescue,
        flags: "write",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write slow",
    },
    Command {
        name: "vt.extend",
        handler: t_extend,
        flags: "write fast",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    // dead-letters a waiting task (RETRYDEAD brings it back) or flags a running one
    Command {
        name: "vt.cancel",
        handler: t_cancel,
        flags: "write fast",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.info",
        handler: t_info,
        flags: "readonly fast",
        keys: Keys::At(1, KEY_RO),
        arity: 0,
        acl: "read fast",
    },
    // lists key names, like KEYS/SCAN (filtered by the caller's read permission)
    Command {
        name: "vt.queues",
        handler: t_queues,
        flags: "readonly",
        keys: Keys::None,
        arity: 0,
        acl: "read slow keyspace",
    },
    Command {
        name: "vt.peek",
        handler: t_peek,
        flags: "readonly",
        keys: Keys::At(1, KEY_RO),
        arity: 0,
        acl: "read slow",
    },
    Command {
        name: "vt.get",
        handler: t_get,
        flags: "readonly fast",
        keys: Keys::At(1, KEY_RO),
        arity: 0,
        acl: "read fast",
    },
    Command {
        name: "vt.retrydead",
        handler: t_retrydead,
        flags: "write deny-oom",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write slow",
    },
    Command {
        name: "vt.delete",
        handler: t_delete,
        flags: "write",
        keys: Keys::At(1, KEY_DEL),
        arity: 0,
        acl: "write slow dangerous",
    },
    Command {
        name: "vt.clear",
        handler: t_clear,
        flags: "write",
        keys: Keys::At(1, KEY_DEL),
        arity: 0,
        acl: "write slow dangerous",
    },
    Command {
        name: "vt.schedule|set",
        handler: t_sched_set,
        flags: "write deny-oom",
        keys: Keys::At(2, KEY_INS),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.schedule|del",
        handler: t_sched_del,
        flags: "write",
        keys: Keys::At(2, KEY_DEL),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.schedule|list",
        handler: t_sched_list,
        flags: "readonly",
        keys: Keys::At(2, KEY_RO),
        arity: 0,
        acl: "read slow",
    },
    Command {
        name: "vt.schedule|pause",
        handler: t_sched_pause,
        flags: "write fast",
        keys: Keys::At(2, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.schedule|resume",
        handler: t_sched_resume,
        flags: "write fast",
        keys: Keys::At(2, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.schedule|run",
        handler: t_sched_run,
        flags: "write deny-oom fast",
        keys: Keys::At(2, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.ratelimit|set",
        handler: t_rate_set,
        flags: "write deny-oom fast",
        keys: Keys::At(2, KEY_INS),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.ratelimit|off",
        handler: t_rate_off,
        flags: "write fast",
        keys: Keys::At(2, KEY_RW),
        arity: 0,
        acl: "write fast",
    },
    Command {
        name: "vt.ratelimit|get",
        handler: t_rate_get,
        flags: "readonly fast",
        keys: Keys::At(2, KEY_RO),
        arity: 0,
        acl: "read fast",
    },
    // Internal: refused to clients by the handlers too (replication stream / AOF only).
    Command {
        name: "vt._fx",
        handler: t_fx,
        flags: "write",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write slow admin dangerous",
    },
    Command {
        name: "vt._load",
        handler: t_load,
        flags: "write",
        keys: Keys::At(1, KEY_RW),
        arity: 0,
        acl: "write slow admin dangerous",
    },
    // Allocator self-test: refused unless `enable-debug-command` allows the caller (like DEBUG).
    Command {
        name: "vt._aligncheck",
        handler: t_align,
        flags: "readonly admin",
        keys: Keys::None,
        arity: 0,
        acl: "slow admin dangerous",
    },
];

/// The row of [`COMMANDS`] whose handler is `f`.
fn row_of(f: CmdFn) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.handler as usize == f as usize)
}

/// Applies the queue-name rule to every queue argument of a client command, at the key positions
/// the row declares. Internal commands (`vt._*`) replay what a primary or the AOF already holds
/// and are exempt; a missing argument is left to the handler's arity check.
fn check_queue_names(row: Option<&Command>, a: &[&[u8]]) -> Result<(), Reply> {
    let Some(row) = row.filter(|r| !r.name.starts_with("vt._")) else {
        return Ok(());
    };
    match row.keys {
        Keys::None => Ok(()),
        Keys::At(pos, _) => a.get(pos as usize).map_or(Ok(()), |q| commands::check_queue_name(q)),
        Keys::Counted(_) => {
            let n = a.get(1).and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok()).unwrap_or(0);
            a.iter().skip(2).take(n).try_for_each(|q| commands::check_queue_name(q))
        }
    }
}

/// Registers one row of [`COMMANDS`]: the command (or subcommand, creating its container on first
/// use), its key spec and its ACL categories.
unsafe fn register_command(ctx: Ctx, c: &Command) -> Result<(), String> {
    let (first, last, step) = match c.keys {
        Keys::At(pos, _) => (pos, pos, 1),
        Keys::None | Keys::Counted(_) => (0, 0, 0),
    };
    let flags = CString::new(c.flags).unwrap();
    let full = CString::new(c.name).unwrap();
    let get = raw::RedisModule_GetCommand.unwrap();
    let ok = match c.name.split_once('|') {
        None => raw::RedisModule_CreateCommand.unwrap()(
            ctx,
            full.as_ptr(),
            Some(c.handler),
            flags.as_ptr(),
            first,
            last,
            step,
        ),
        Some((parent, sub)) => {
            let parent = CString::new(parent).unwrap();
            let mut p = get(ctx, parent.as_ptr());
            if p.is_null() {
                // a container: no handler, no keys; only its subcommands run
                if raw::RedisModule_CreateCommand.unwrap()(ctx, parent.as_ptr(), None, c"".as_ptr(), 0, 0, 0) != OK {
                    return Err(format!("could not register {}", parent.to_string_lossy()));
                }
                p = get(ctx, parent.as_ptr());
                set_acl(p, "", &parent.to_string_lossy())?;
            }
            let sub = CString::new(sub).unwrap();
            raw::RedisModule_CreateSubcommand.unwrap()(
                p,
                sub.as_ptr(),
                Some(c.handler),
                flags.as_ptr(),
                first,
                last,
                step,
            )
        }
    };
    if ok != OK {
        return Err(format!("could not register {}", c.name));
    }
    let cmd = get(ctx, full.as_ptr());
    if cmd.is_null() {
        return Err(format!("{} not found after registration", c.name));
    }
    match c.keys {
        Keys::None => {}
        Keys::At(pos, flags) => set_keyspec(cmd, c.name, flags, c.arity, |s| {
            s.begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
            s.bs.index.pos = pos;
            s.find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
            s.fk.range.lastkey = 0;
            s.fk.range.keystep = 1;
            s.fk.range.limit = 0;
        })?,
        Keys::Counted(flags) => set_keyspec(cmd, c.name, flags, c.arity, |s| {
            s.begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
            s.bs.index.pos = 1;
            s.find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_KEYNUM;
            s.fk.keynum.keynumidx = 0;
            s.fk.keynum.firstkey = 1;
            s.fk.keynum.keystep = 1;
        })?,
    }
    set_acl(cmd, c.acl, c.name)
}

/// Sets a command's ACL categories: `acl` plus the module's own category.
unsafe fn set_acl(cmd: *mut raw::RedisModuleCommand, acl: &str, name: &str) -> Result<(), String> {
    let cats = CString::new(format!("{acl} {ACL_CATEGORY}").trim()).unwrap();
    let set = raw::RedisModule_SetCommandACLCategories.ok_or(NO_ACL_API)?;
    if set(cmd, cats.as_ptr()) != OK {
        return Err(format!("could not set the ACL categories of {name}"));
    }
    Ok(())
}

/// One key spec (built by `fill`) with the access `flags`, and the arity. The structures are leaked: the server
/// keeps pointers to them for the life of the process.
unsafe fn set_keyspec(
    cmd: *mut raw::RedisModuleCommand,
    name: &str,
    flags: u32,
    arity: c_int,
    fill: impl FnOnce(&mut raw::RedisModuleCommandKeySpec),
) -> Result<(), String> {
    let version = Box::leak(Box::new(raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    }));
    // the list ends with a zeroed spec
    let mut specs: Vec<raw::RedisModuleCommandKeySpec> = vec![std::mem::zeroed(), std::mem::zeroed()];
    specs[0].flags = flags as u64;
    fill(&mut specs[0]);
    let specs = Box::leak(specs.into_boxed_slice());
    let mut info: raw::RedisModuleCommandInfo = std::mem::zeroed();
    info.version = version;
    info.arity = arity;
    info.key_specs = specs.as_mut_ptr();
    if raw::RedisModule_SetCommandInfo.unwrap()(cmd, &mut info) != OK {
        return Err(format!("SetCommandInfo failed for {name}"));
    }
    Ok(())
}

unsafe fn register(ctx: Ctx) -> Result<(), String> {
    // Data type.
    let mut tm: raw::RedisModuleTypeMethods = std::mem::zeroed();
    tm.version = raw::REDISMODULE_TYPE_METHOD_VERSION as u64;
    tm.rdb_load = Some(rdb_load);
    tm.rdb_save = Some(rdb_save);
    tm.aof_rewrite = Some(aof_rewrite);
    tm.digest = Some(digest);
    tm.mem_usage = Some(mem_usage);
    tm.free = Some(free_value);
    tm.free_effort = Some(free_effort);
    tm.copy = Some(copy_value);
    let tn = CString::new(TYPE_NAME).unwrap();
    let t = raw::RedisModule_CreateDataType.unwrap()(ctx, tn.as_ptr(), ENCVER, &mut tm);
    if t.is_null() {
        return Err("could not create the vtasks-qu data type".into());
    }
    QUEUE_TYPE = t;

    let cat = CString::new(ACL_CATEGORY).unwrap();
    if raw::RedisModule_AddACLCategory.ok_or(NO_ACL_API)?(ctx, cat.as_ptr()) != OK {
        return Err(format!("could not add the ACL category {ACL_CATEGORY}"));
    }
    for c in COMMANDS {
        register_command(ctx, c)?;
    }

    // Configs.
    use valkey_module::configuration::{register_i64_configuration, ConfigurationFlags};
    let c = valkey_module::Context::new(ctx);
    register_i64_configuration(
        &c,
        "dlq-cap",
        &CFG_DLQ_CAP,
        1000,
        0,
        10_000_000,
        ConfigurationFlags::DEFAULT,
        None,
        None,
    );
    register_i64_configuration(
        &c,
        "max-attempts",
        &CFG_MAX_ATTEMPTS,
        3,
        1,
        1_000_000,
        ConfigurationFlags::DEFAULT,
        None,
        None,
    );
    register_i64_configuration(
        &c,
        "default-lease",
        &CFG_DEFAULT_LEASE,
        30_000,
        1,
        i64::MAX / 4,
        ConfigurationFlags::DEFAULT,
        None,
        None,
    );
    register_i64_configuration(
        &c,
        "max-payload",
        &CFG_MAX_PAYLOAD,
        16 * 1024 * 1024,
        1,
        512 * 1024 * 1024,
        ConfigurationFlags::MEMORY,
        None,
        None,
    );
    if raw::RedisModule_LoadConfigs.unwrap()(ctx) != OK {
        return Err("could not load the vtasks configs".into());
    }

    raw::RedisModule_RegisterInfoFunc.unwrap()(ctx, Some(info_func));

    let sub = raw::RedisModule_SubscribeToServerEvent.unwrap();
    // (The RedisModuleEvent_* constants are header-only statics: build them here.)
    let ev = |id: u64| raw::RedisModuleEvent { id, dataver: 1 };
    sub(ctx, ev(raw::REDISMODULE_EVENT_LOADING), Some(timers::on_loading));
    sub(ctx, ev(raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED), Some(timers::on_role));
    sub(ctx, ev(raw::REDISMODULE_EVENT_FLUSHDB), Some(timers::on_flush));
    sub(ctx, ev(raw::REDISMODULE_EVENT_SWAPDB), Some(timers::on_swapdb));
    // Valkey 9 only (an older server has no such event: the call fails, nothing to do then)
    sub(ctx, ev(slots::EVENT_ATOMIC_SLOT_MIGRATION), Some(slots::on_slot_migration));
    // GENERIC: arrivals (rename_to, move_to, copy_to, restore) and departures (del, rename_from,
    // move_from); EXPIRED/EVICTED: departures too (the timer registry forgets them, see timers.rs)
    let events = raw::REDISMODULE_NOTIFY_GENERIC | raw::REDISMODULE_NOTIFY_EXPIRED | raw::REDISMODULE_NOTIFY_EVICTED;
    raw::RedisModule_SubscribeToKeyspaceEvents.unwrap()(ctx, events as c_int, Some(timers::on_keyspace));

    if let Some(f) = raw::RedisModule_SetModuleOptions {
        // keys are signalled as modified only when a queue really changed (server::key_modified)
        // Atomic slot migration (Valkey 9 `CLUSTER MIGRATESLOTS`): see `slots`.
        f(
            ctx,
            (raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS
                | raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED
                | raw::VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION) as c_int,
        );
    }
    timers::kick(ctx);
    Ok(())
}

/// # Safety
/// Called by the server when the module is loaded.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn RedisModule_OnLoad(ctx: Ctx, _argv: *mut RStr, _argc: c_int) -> c_int {
    // No allocation may happen before the API (and thus the server allocator) is initialised.
    let name = b"vtasks\0";
    if !raw::use_redis_module_api()
        && raw::Export_ValkeyModule_Init(
            ctx as *mut raw::ValkeyModuleCtx,
            name.as_ptr().cast(),
            1,
            raw::VALKEYMODULE_APIVER_1 as c_int,
        ) == ERR
    {
        return ERR;
    }
    if raw::Export_RedisModule_Init(ctx, name.as_ptr().cast(), 1, raw::REDISMODULE_APIVER_1 as c_int) == ERR {
        return ERR;
    }
    match std::panic::catch_unwind(|| register(ctx)) {
        Ok(Ok(())) => OK,
        Ok(Err(m)) => {
            log(ctx, "warning", &format!("vtasks: load failed: {m}"));
            ERR
        }
        Err(e) => {
            log(ctx, "warning", &format!("vtasks: load panicked: {}", panic_msg(&e)));
            ERR
        }
    }
}
