//! The VT.* commands: argument parsing, execution and replication.

use crate::queue::*;
use crate::server::*;
use std::ffi::{c_int, c_void};
use valkey_module::raw;

// The protocol's limits are stated once, in vtasks-protocol (Postgres and Python read the same).
pub use vtasks_protocol::limits::{
    MAX_ENQUEUE_ITEMS as MAX_ITEMS, MAX_FETCH as MAX_COUNT, MAX_FETCH_QUEUES as MAX_QUEUES, MAX_ID_LEN,
    MAX_NAME_LEN as MAX_KEYLIKE_LEN, MAX_PEEK, MAX_PRIORITY, MAX_WORKER_LEN, MIN_PRIORITY,
};
pub const MAX_ERROR_LEN: usize = 64 * 1024;

type Res = Result<Reply, Reply>;

pub(crate) fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

pub(crate) fn int(b: &[u8], what: &str) -> Result<i64, Reply> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20 && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Reply::Error(format!("ERR {what} is not an integer or out of range")))
}

pub(crate) fn int_in(b: &[u8], what: &str, lo: i64, hi: i64) -> Result<i64, Reply> {
    let v = int(b, what)?;
    if v < lo || v > hi {
        return err(format!("ERR {what} must be between {lo} and {hi}"));
    }
    Ok(v)
}

pub(crate) fn check_id(id: &[u8]) -> Result<(), Reply> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return err(format!("ERR task id must be 1 to {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

/// Longest queue name (the key): as in Postgres, where longer index entries would not fit.
pub const MAX_QUEUE_LEN: usize = vtasks_protocol::limits::MAX_NAME_LEN;

/// The rule for every queue a client command names (`lib.rs` applies it to each key position of
/// the registration table, before the handler runs, so nothing is touched for a refused name).
pub fn check_queue_name(name: &[u8]) -> Result<(), Reply> {
    if name.is_empty() || name.len() > MAX_QUEUE_LEN {
        return err(format!(
            "ERR queue name must be 1 to {MAX_QUEUE_LEN} bytes (got {}): use a shorter name \
             (RENAME moves a queue stored under a longer one)",
            name.len()
        ));
    }
    Ok(())
}

fn check_len(b: &[u8], what: &str, max: usize) -> Result<(), Reply> {
    if b.is_empty() || b.len() > max {
        return err(format!("ERR {what} must be 1 to {max} bytes"));
    }
    Ok(())
}

fn arity(a: &[&[u8]], min: usize) -> Result<(), Reply> {
    if a.len() < min {
        return err("ERR wrong number of arguments");
    }
    Ok(())
}

/// A UUIDv7, monotonic within this server (a 12-bit counter in `rand_a` that starts at a random
/// value each millisecond), random bits from a userspace CSPRNG: `Uuid::now_v7()` makes a
/// `getrandom` syscall per id, which showed up in profiles.
pub fn new_id() -> Vec<u8> {
    new_id_buf().to_vec()
}

/// [`new_id`] into a stack buffer (hyphenated, lower case; no heap allocation).
pub fn new_id_buf() -> [u8; 36] {
    use std::sync::Mutex;
    static LAST: Mutex<(u64, u16)> = Mutex::new((0, 0));
    let now = now_ms().max(0) as u64;
    let (ms, ctr) = {
        let mut g = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if now > g.0 {
            *g = (now, rand::random::<u16>() & 0x7ff);
        } else if g.1 >= 0xfff {
            *g = (g.0 + 1, 0);
        } else {
            g.1 += 1;
        }
        *g
    };
    let mut bytes: [u8; 10] = rand::random();
    bytes[0] = (ctr >> 8) as u8;
    bytes[1] = ctr as u8;
    let mut out = [0u8; 36];
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid().hyphenated().encode_lower(&mut out);
    out
}

fn new_token() -> u64 {
    rand::random::<u64>()
}

pub(crate) fn s(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

pub(crate) fn replicate_owned(ctx: Ctx, args: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    replicate(ctx, "VT._FX", &refs);
}

// ============================================================ VT.ENQUEUE

pub struct EnqArgs<'a> {
    pub prio: i64,
    pub delay: Option<i64>,
    pub at: Option<i64>,
    pub unique: Option<(&'a [u8], i64)>,
    pub maxatt: Option<u32>,
    pub items: Vec<(Option<&'a [u8]>, &'a [u8])>,
    /// Argument index of the first PAYLOAD / ENTRIES value.
    pub body_at: usize,
    /// ENTRIES form (id, payload pairs) rather than PAYLOAD.
    pub pairs: bool,
}

/// Parses `VT.ENQUEUE` arguments (no key access).
pub fn parse_enqueue<'a>(a: &[&'a [u8]]) -> Result<EnqArgs<'a>, Reply> {
    arity(a, 4)?;
    let mut i = 2;
    let (mut id, mut prio, mut delay, mut at, mut unique, mut maxatt) = (None, 0i64, None, None, None, None);
    let mut items: Vec<(Option<&[u8]>, &[u8])> = Vec::new();
    let mut body = false;
    let mut pairs = false;
    while i < a.len() {
        let opt = a[i];
        let need = |n: usize| -> Result<(), Reply> {
            if i + n >= a.len() {
                return err(format!("ERR {} needs {} argument(s)", String::from_utf8_lossy(opt), n));
            }
            Ok(())
        };
        if eq(opt, "ID") {
            need(1)?;
            check_id(a[i + 1])?;
            id = Some(a[i + 1]);
            i += 2;
        } else if eq(opt, "PRIORITY") {
            need(1)?;
            prio = int_in(a[i + 1], "PRIORITY", MIN_PRIORITY, MAX_PRIORITY)?;
            i += 2;
        } else if eq(opt, "DELAY") {
            need(1)?;
            delay = Some(int_in(a[i + 1], "DELAY", 0, i64::MAX / 4)?);
            i += 2;
        } else if eq(opt, "AT") {
            need(1)?;
            at = Some(int_in(a[i + 1], "AT", 0, i64::MAX / 4)?);
            i += 2;
        } else if eq(opt, "UNIQUE") {
            need(2)?;
            check_len(a[i + 1], "UNIQUE key", MAX_KEYLIKE_LEN)?;
            let ttl = int_in(a[i + 2], "UNIQUE ttl", 1, i64::MAX / 4)?;
            unique = Some((a[i + 1], ttl));
            i += 3;
        } else if eq(opt, "MAXATTEMPTS") {
            need(1)?;
            maxatt = Some(int_in(a[i + 1], "MAXATTEMPTS", 1, 1_000_000)? as u32);
            i += 2;
        } else if eq(opt, "PAYLOAD") {
            let rest = &a[i + 1..];
            if rest.is_empty() {
                return err("ERR PAYLOAD needs at least one payload");
            }
            items = rest.iter().map(|p| (None, *p)).collect();
            body = true;
            break;
        } else if eq(opt, "ENTRIES") {
            let rest = &a[i + 1..];
            if rest.is_empty() || !rest.len().is_multiple_of(2) {
                return err("ERR ENTRIES needs <id> <payload> pairs");
            }
            for pair in rest.chunks(2) {
                check_id(pair[0])?;
                items.push((Some(pair[0]), pair[1]));
            }
            body = true;
            pairs = true;
            break;
        } else {
            return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(opt)));
        }
    }
    if !body {
        return err("ERR PAYLOAD or ENTRIES is required (and must come last)");
    }
    if delay.is_some() && at.is_some() {
        return err("ERR DELAY and AT are mutually exclusive");
    }
    if items.len() > MAX_ITEMS {
        return err(format!("ERR at most {MAX_ITEMS} payloads per command"));
    }
    if id.is_some() {
        if items.len() != 1 || items[0].0.is_some() {
            return err("ERR ID needs exactly one PAYLOAD (use ENTRIES for several ids)");
        }
        items[0].0 = id;
    }
    let maxp = max_payload();
    if items.iter().any(|(_, p)| p.len() > maxp) {
        return err(format!("ERR payload larger than vtasks.max-payload ({maxp} bytes)"));
    }
    Ok(EnqArgs { prio, delay, at, unique, maxatt, items, body_at: i + 1, pairs })
}

pub fn enqueue(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let EnqArgs { prio, delay, at, unique, maxatt, items, body_at, pairs } = parse_enqueue(a)?;
    let now = now_ms();
    let run_at = match (delay, at) {
        (Some(d), _) => now.saturating_add(d),
        (_, Some(t)) => t,
        _ => now,
    };
    let maxatt = maxatt.unwrap_or_else(max_attempts);
    let uexp = unique.map(|(k, ttl)| (k, now.saturating_add(ttl)));
    // All ids (given or generated) in one buffer; the queue gets its own copy of each id and
    // payload, the reply and the replication read from here and from argv.
    let mut idbuf: Vec<u8> = Vec::with_capacity(items.len() * 36);
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(items.len());
    for (id, _) in &items {
        let st = idbuf.len();
        match id {
            Some(x) => idbuf.extend_from_slice(x),
            None => idbuf.extend_from_slice(&new_id_buf()),
        }
        spans.push((st, idbuf.len()));
    }
    let owned: Vec<(Vec<u8>, Vec<u8>)> =
        items.iter().zip(&spans).map(|((_, p), &(x, y))| (idbuf[x..y].to_vec(), p.to_vec())).collect();
    let o = EnqOpts { now, priority: prio as i32, run_at, max_attempts: maxatt, unique: uexp };
    let added = with_queue(ctx, argv[1], true, |q| q.enqueue(&o, owned))?.unwrap_or_default();
    // Replicate only what was added, with every clock/random value explicit.
    let n_added = added.iter().filter(|ok| **ok).count();
    let mut rep = Rep::with_capacity(9 + 2 * n_added);
    rep.arg(argv[1]).bytes(b"ENQ").int(now).int(prio).int(run_at).int(maxatt as i64);
    let first_added = added.first().copied().unwrap_or(false);
    match uexp {
        Some((k, exp)) if first_added => {
            rep.bytes(b"1").bytes(k).int(exp);
        }
        _ => {
            rep.bytes(b"0").bytes(b"").bytes(b"0");
        }
    }
    for (k, ok) in added.iter().enumerate() {
        if *ok {
            let (x, y) = spans[k];
            rep.bytes(&idbuf[x..y]);
            // the payload is argument `body_at + k` (PAYLOAD) or `body_at + 2k + 1` (ENTRIES)
            let j = if pairs { body_at + 2 * k + 1 } else { body_at + k };
            match argv.get(j) {
                Some(s) if bytes(*s).as_ptr() == items[k].1.as_ptr() => {
                    rep.arg(*s);
                }
                _ => {
                    rep.bytes(items[k].1);
                }
            }
        }
    }
    rep.send(ctx, c"VT._FX");
    let slots = added.iter().enumerate().map(|(k, ok)| if *ok { Some(spans[k]) } else { None }).collect();
    Ok(Reply::Bulks(idbuf, slots))
}

// ============================================================ VT.FETCHBATCH

pub struct FetchReq {
    pub queues: Vec<Vec<u8>>,
    pub worker: Vec<u8>,
    pub count: usize,
    pub lease: i64,
}

fn parse_fetch(a: &[&[u8]]) -> Result<(FetchReq, Option<i64>), Reply> {
    arity(a, 7)?;
    let n = int_in(a[1], "numqueues", 1, MAX_QUEUES)? as usize;
    if a.len() < 2 + n {
        return err("ERR fewer queues than numqueues");
    }
    let queues: Vec<Vec<u8>> = a[2..2 + n].iter().map(|q| q.to_vec()).collect();
    let (mut worker, mut count, mut lease, mut block) = (None, None, None, None);
    let mut i = 2 + n;
    while i < a.len() {
        if i + 1 >= a.len() {
            return err(format!("ERR option '{}' needs a value", String::from_utf8_lossy(a[i])));
        }
        let (o, v) = (a[i], a[i + 1]);
        if eq(o, "WORKER") {
            check_len(v, "worker id", MAX_WORKER_LEN)?;
            worker = Some(v.to_vec());
        } else if eq(o, "COUNT") {
            count = Some(int_in(v, "COUNT", 1, MAX_COUNT)? as usize);
        } else if eq(o, "LEASE") {
            lease = Some(int_in(v, "LEASE", 1, i64::MAX / 4)?);
        } else if eq(o, "BLOCK") {
            block = Some(int_in(v, "BLOCK", 0, i64::MAX / 4)?);
        } else {
            return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(o)));
        }
        i += 2;
    }
    let worker = worker.ok_or_else(|| Reply::Error("ERR WORKER is required".into()))?;
    let count = count.ok_or_else(|| Reply::Error("ERR COUNT is required".into()))?;
    Ok((FetchReq { queues, worker, count, lease: lease.unwrap_or_else(default_lease) }, block))
}

/// Fetches across the request's queues (in order). Checks every key's type first so an error
/// never leaves tasks leased without a reply.
fn do_fetch(ctx: Ctx, req: &FetchReq) -> Result<Vec<Reply>, Reply> {
    let names: Vec<OwnedStr> = req.queues.iter().map(|q| OwnedStr::new(ctx, q)).collect();
    for n in &names {
        open(ctx, n.0, false)?;
    }
    let now = now_ms();
    let deadline = now.saturating_add(req.lease);
    let mut out = Vec::new();
    for (qi, n) in names.iter().enumerate() {
        let left = req.count - out.len();
        if left == 0 {
            break;
        }
        let r = with_queue(ctx, n.0, false, |q| {
            let due = q.has_due_delayed(now);
            let got = q.fetch(now, &req.worker, left, deadline, &mut new_token);
            (due, got)
        })?;
        let (due, got) = match r {
            Some(x) => x,
            None => continue,
        };
        if due || !got.is_empty() {
            let mut rep = Rep::with_capacity(5 + 2 * got.len());
            rep.arg(n.0).bytes(b"FETCH").int(now).bytes(&req.worker).int(deadline);
            for f in &got {
                rep.bytes(&f.id).bytes(fmt_token_buf(f.token).as_slice());
            }
            rep.send(ctx, c"VT._FX");
        }
        for f in got {
            out.push(Reply::Array(vec![
                Reply::Bulk(req.queues[qi].clone()),
                Reply::Bulk(f.id),
                Reply::Bulk(fmt_token_buf(f.token).to_vec()),
                Reply::Int(f.attempt as i64),
                Reply::Bulk(f.payload),
            ]));
        }
    }
    Ok(out)
}

pub fn fetchbatch(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<Option<Reply>, Reply> {
    let (req, block) = parse_fetch(a)?;
    let got = do_fetch(ctx, &req)?;
    if !got.is_empty() {
        return Ok(Some(Reply::Array(got)));
    }
    let block = match block {
        None => return Ok(Some(Reply::Array(vec![]))),
        Some(b) => b,
    };
    let f = ctx_flags(ctx);
    let no_block = raw::REDISMODULE_CTX_FLAGS_MULTI
        | raw::REDISMODULE_CTX_FLAGS_LUA
        | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING
        | raw::REDISMODULE_CTX_FLAGS_REPLICATED
        | raw::REDISMODULE_CTX_FLAGS_LOADING
        | CTX_FLAGS_SLOT_IMPORT_CLIENT;
    if f & no_block != 0 {
        return Ok(Some(Reply::NilArray));
    }
    let n = req.queues.len();
    let mut keys: Vec<RStr> = argv[2..2 + n].to_vec();
    let priv_ = Box::into_raw(Box::new(req)) as *mut c_void;
    unsafe {
        raw::RedisModule_BlockClientOnKeys.unwrap()(
            ctx,
            Some(blocked_reply),
            Some(blocked_timeout),
            Some(blocked_free),
            block as _,
            keys.as_mut_ptr(),
            n as c_int,
            priv_,
        );
    }
    Ok(None)
}

/// Serves a fetcher blocked on a queue that was signalled ready. `ERR` keeps it blocked.
unsafe extern "C" fn blocked_reply(ctx: Ctx, _argv: *mut RStr, _argc: c_int) -> c_int {
    let r = guard(ctx, "VT.FETCHBATCH wake-up", || {
        let p = raw::RedisModule_GetBlockedClientPrivateData.unwrap()(ctx) as *const FetchReq;
        if p.is_null() {
            return Some(Reply::Error("ERR internal: no blocked request".into()));
        }
        if writes_paused() {
            // A lease is a write, and nothing may be propagated while writes are paused (a key
            // can be signalled then, e.g. by an EXEC that ran CLIENT PAUSE): stay parked, and
            // let the timer signal the keys again when the pause ends.
            crate::timers::park_wakeup(ctx, selected_db(ctx), &(*p).queues);
            return None;
        }
        match do_fetch(ctx, &*p) {
            Ok(v) if v.is_empty() => None,
            Ok(v) => Some(Reply::Array(v)),
            Err(e) => Some(e),
        }
    });
    match r {
        Ok(None) => ERR, // nothing for us: stay blocked
        Ok(Some(reply)) => {
            emit(ctx, &reply);
            OK
        }
        Err(m) => {
            emit(ctx, &Reply::Error(format!("ERR {m}")));
            OK
        }
    }
}

/// BLOCK expired or `CLIENT UNBLOCK`: replies a null array and changes nothing (so it is safe
/// while writes are paused).
unsafe extern "C" fn blocked_timeout(ctx: Ctx, _argv: *mut RStr, _argc: c_int) -> c_int {
    emit(ctx, &Reply::NilArray);
    OK
}

unsafe extern "C" fn blocked_free(_ctx: Ctx, p: *mut c_void) {
    if !p.is_null() {
        let _ = std::panic::catch_unwind(|| drop(Box::from_raw(p as *mut FetchReq)));
    }
}

// ============================================================ VT.ACK / FAIL / RESCUE / EXTEND

pub fn ack(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    arity(a, 4)?;
    if !(a.len() - 2).is_multiple_of(2) {
        return err("ERR wrong number of arguments: <id> <token> pairs expected");
    }
    let now = now_ms();
    let r = with_queue(ctx, argv[1], false, |q| {
        // an ack that may release waiting tasks depends on the clock (ready or delayed)
        let flows = !q.flows.is_empty();
        (a[2..].chunks(2).filter(|p| q.ack(now, p[0], parse_token(p[1]))).count(), flows)
    })?;
    let (n, flows) = r.unwrap_or((0, false));
    if n > 0 && flows {
        let mut rep = Rep::with_capacity(a.len() + 1);
        rep.arg(argv[1]).bytes(b"ACK").int(now);
        for x in &argv[2..] {
            rep.arg(*x);
        }
        rep.send(ctx, c"VT._FX");
    } else if n > 0 {
        replicate_verbatim(ctx);
    }
    Ok(Reply::Int(n as i64))
}

/// Parses `VT.FAIL`: returns the RETRY delay.
pub fn parse_fail(a: &[&[u8]]) -> Result<Option<i64>, Reply> {
    if a.len() != 5 && a.len() != 7 {
        return err("ERR wrong number of arguments");
    }
    if a[4].len() > MAX_ERROR_LEN {
        return err(format!("ERR error must be at most {MAX_ERROR_LEN} bytes"));
    }
    if a.len() == 7 {
        if !eq(a[5], "RETRY") {
            return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(a[5])));
        }
        return Ok(Some(int_in(a[6], "RETRY", 0, i64::MAX / 4)?));
    }
    Ok(None)
}

pub fn fail(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let retry = parse_fail(a)?;
    let now = now_ms();
    let cap = dlq_cap();
    let r = with_queue(ctx, argv[1], false, |q| q.fail(now, cap, a[2], parse_token(a[3]), a[4], retry))?.flatten();
    match r {
        None => Ok(Reply::Nil),
        Some(what) => {
            replicate_owned(
                ctx,
                &[
                    a[1].to_vec(),
                    b"FAIL".to_vec(),
                    s(now),
                    s(cap),
                    a[2].to_vec(),
                    a[3].to_vec(),
                    a[4].to_vec(),
                    s(retry.unwrap_or(-1)),
                ],
            );
            Ok(Reply::Simple(what))
        }
    }
}

pub fn parse_rescue<'a>(a: &[&'a [u8]]) -> Result<Option<&'a [u8]>, Reply> {
    match a.len() {
        2 => Ok(None),
        4 if eq(a[2], "WORKER") => {
            check_len(a[3], "worker id", MAX_WORKER_LEN)?;
            Ok(Some(a[3]))
        }
        _ => err("ERR syntax: VT.RESCUE <queue> [WORKER <worker-id>]"),
    }
}

pub fn rescue(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let worker = parse_rescue(a)?;
    let now = now_ms();
    let cap = dlq_cap();
    let r = with_queue(ctx, argv[1], false, |q| {
        let before = q.sizes().inflight;
        let n = match worker {
            Some(w) => q.rescue_worker(w, now, cap),
            None => q.rescue_expired(now, cap),
        };
        (n, q.sizes().inflight != before)
    })?;
    let (n, changed) = r.unwrap_or((0, false));
    if changed {
        let mut rep = vec![a[1].to_vec(), b"RESCUE".to_vec(), s(now), s(cap)];
        if let Some(w) = worker {
            rep.push(w.to_vec());
        }
        replicate_owned(ctx, &rep);
    }
    Ok(Reply::Int(n as i64))
}

/// Parses `VT.EXTEND`: (lease ms, WITHCANCELLED given).
pub fn parse_extend(a: &[&[u8]]) -> Result<(i64, bool), Reply> {
    if a.len() != 4 && a.len() != 5 {
        return err("ERR wrong number of arguments");
    }
    check_len(a[2], "worker id", MAX_WORKER_LEN)?;
    let lease = int_in(a[3], "lease", 1, i64::MAX / 4)?;
    if a.len() == 5 && !eq(a[4], "WITHCANCELLED") {
        return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(a[4])));
    }
    Ok((lease, a.len() == 5))
}

pub fn extend(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let (lease, with_cancelled) = parse_extend(a)?;
    let deadline = now_ms().saturating_add(lease);
    let (n, cancelled) = with_queue(ctx, argv[1], false, |q| q.extend(a[2], deadline))?.unwrap_or_default();
    if n > 0 {
        replicate_owned(ctx, &[a[1].to_vec(), b"EXTEND".to_vec(), a[2].to_vec(), s(deadline)]);
    }
    if with_cancelled {
        return Ok(Reply::Array(vec![Reply::Int(n as i64), Reply::Array(cancelled.iter().map(bulk).collect())]));
    }
    Ok(Reply::Int(n as i64))
}

// ============================================================ read-only / operator commands

pub fn info(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 2 {
        return err("ERR wrong number of arguments");
    }
    let now = now_ms();
    let v = read_queue(ctx, argv[1], |q| {
        let live_uniques = q.unique_exp.iter().filter(|(e, _)| *e > now).count();
        [
            q.sizes().ready,
            q.sizes().delayed,
            q.sizes().inflight,
            q.dead.len() as i64,
            q.dead_evicted as i64,
            q.enqueued_total as i64,
            q.acked_total as i64,
            q.failed_total as i64,
            q.retried_total as i64,
            q.rescued_total as i64,
            q.dead_total as i64,
            q.schedules.len() as i64,
            live_uniques as i64,
            q.flows.len() as i64,
            q.schedule_ticks_skipped_total as i64,
        ]
    })?
    .unwrap_or([0; 15]);
    // the fields both engines report (vtasks-protocol), then the module's own
    let names = vtasks_protocol::limits::INFO_FIELDS.iter().copied().chain(["schedule_ticks_skipped_total"]);
    Ok(Reply::Map(names.zip(v).map(|(k, v)| (k, Reply::Int(v))).collect()))
}

pub fn queues(ctx: Ctx, _argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 1 {
        return err("ERR wrong number of arguments");
    }
    let db = selected_db(ctx);
    // only the queues the caller could VT.INFO: names outside its key patterns stay hidden
    let caller = crate::acl::Caller::current(ctx);
    let mut out = Vec::new();
    for k in crate::timers::keys_in_db(db) {
        let name = OwnedStr::new(ctx, &k);
        match open(ctx, name.0, false) {
            Ok(Open::Queue(..)) if caller.may_read(ctx, &k) => out.push(Reply::Bulk(k)),
            Ok(Open::Queue(..)) => {}
            _ => crate::timers::forget(db, &k),
        }
    }
    Ok(Reply::Array(out))
}

fn record(id: &[u8], t: Option<&TaskView>, d: Option<&Dead>) -> Reply {
    let mut f: Vec<Reply> = Vec::with_capacity(26);
    let mut put = |k: &str, v: Reply| {
        f.push(Reply::Str(k.to_string()));
        f.push(v);
    };
    put("id", bulk(id));
    if let Some(t) = t {
        put("state", Reply::Str(t.state.name().into()));
        put("priority", Reply::Int(t.priority as i64));
        put("attempt", Reply::Int(t.attempt as i64));
        put("max_attempts", Reply::Int(t.max_attempts as i64));
        put("enqueued_at", Reply::Int(t.enqueued_at));
        put("run_at", Reply::Int(t.run_at));
        let inflight = t.state == State::Inflight;
        put("worker", bulk(if inflight { t.worker } else { b"" }));
        put("token", Reply::Str(if inflight { fmt_token(t.token) } else { String::new() }));
        put("deadline", Reply::Int(if inflight { t.deadline } else { 0 }));
        put("error", bulk(t.error));
        put("failed_at", Reply::Int(t.failed_at));
        put("payload", bulk(t.payload));
    } else if let Some(d) = d {
        put("state", Reply::Str("dead".into()));
        put("priority", Reply::Int(d.priority as i64));
        put("attempt", Reply::Int(d.attempt as i64));
        put("max_attempts", Reply::Int(d.max_attempts as i64));
        put("enqueued_at", Reply::Int(d.enqueued_at));
        put("run_at", Reply::Int(0));
        put("worker", bulk(b""));
        put("token", Reply::Str(String::new()));
        put("deadline", Reply::Int(0));
        put("error", bulk(&d.error));
        put("failed_at", Reply::Int(d.failed_at));
        put("payload", bulk(&d.payload));
    }
    Reply::Array(f)
}

/// Parses `VT.PEEK`: (state 0..4, offset, count).
pub fn parse_peek(a: &[&[u8]]) -> Result<(u8, usize, usize), Reply> {
    arity(a, 3)?;
    let st = a[2];
    let which = if eq(st, "READY") {
        0
    } else if eq(st, "DELAYED") {
        1
    } else if eq(st, "INFLIGHT") {
        2
    } else if eq(st, "DEAD") {
        3
    } else if eq(st, "WAITING") {
        4
    } else {
        return err("ERR state must be READY, DELAYED, INFLIGHT, DEAD or WAITING");
    };
    let (mut offset, mut count) = (0usize, 10usize);
    let mut i = 3;
    while i < a.len() {
        if i + 1 >= a.len() {
            return err("ERR syntax error");
        }
        if eq(a[i], "OFFSET") {
            offset = int_in(a[i + 1], "OFFSET", 0, i64::MAX / 4)? as usize;
        } else if eq(a[i], "COUNT") {
            count = int_in(a[i + 1], "COUNT", 0, MAX_PEEK)? as usize;
        } else {
            return err(format!("ERR unknown option '{}'", String::from_utf8_lossy(a[i])));
        }
        i += 2;
    }
    Ok((which, offset, count))
}

pub fn peek(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let (which, offset, count) = parse_peek(a)?;
    let out = read_queue(ctx, argv[1], |q| {
        let rec = |t: TaskView| record(t.id, Some(&t), None);
        match which {
            0 => q.peek(State::Ready, offset, count).into_iter().map(rec).collect(),
            1 => q.peek(State::Delayed, offset, count).into_iter().map(rec).collect(),
            2 => q.peek(State::Inflight, offset, count).into_iter().map(rec).collect(),
            3 => q.dead.iter().rev().skip(offset).take(count).map(|d| record(&d.id, None, Some(d))).collect(),
            _ => q
                .flows
                .iter()
                .skip(offset)
                .take(count)
                .map(|(id, w)| crate::flow_command::waiting_record(id, w))
                .collect(),
        }
    })?
    .unwrap_or_default();
    Ok(Reply::Array(out))
}

pub fn get(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() == 4 && eq(a[2], "UNIQUE") {
        // the live task that holds a unique key: what a suppressed UNIQUE enqueue deferred to
        let now = now_ms();
        let r = read_queue(ctx, argv[1], |q| {
            let u = q.uniques.get(a[3]).filter(|u| u.expires_at > now)?;
            let id = u.task.as_deref()?;
            q.get_task(id).map(|t| record(id, Some(&t), None))
        })?
        .flatten();
        return Ok(r.unwrap_or(Reply::Nil));
    }
    if a.len() != 3 {
        return err("ERR wrong number of arguments");
    }
    let r = read_queue(ctx, argv[1], |q| {
        if let Some(t) = q.get_task(a[2]) {
            Some(record(a[2], Some(&t), None))
        } else if let Some(w) = q.flows.get(a[2]) {
            Some(crate::flow_command::waiting_record(a[2], w))
        } else {
            q.dead.newest(a[2]).map(|d| record(&d.id, None, Some(d)))
        }
    })?
    .flatten();
    Ok(r.unwrap_or(Reply::Nil))
}

pub fn retrydead(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    arity(a, 3)?;
    let all = a.len() == 3 && eq(a[2], "ALL");
    let ids: Vec<&[u8]> = a[2..].to_vec();
    let n = with_queue(ctx, argv[1], false, |q| q.retry_dead(if all { None } else { Some(&ids) }))?.unwrap_or(0);
    if n > 0 {
        replicate_verbatim(ctx);
    }
    Ok(Reply::Int(n as i64))
}

pub fn delete(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    arity(a, 3)?;
    let ids: Vec<&[u8]> = a[2..].to_vec();
    let n = with_queue(ctx, argv[1], false, |q| q.delete(&ids))?.unwrap_or(0);
    if n > 0 {
        replicate_verbatim(ctx);
    }
    Ok(Reply::Int(n as i64))
}

pub fn parse_clear(a: &[&[u8]]) -> Result<(bool, bool, bool), Reply> {
    if a.len() != 3 {
        return err("ERR wrong number of arguments");
    }
    if eq(a[2], "READY") {
        Ok((true, false, false))
    } else if eq(a[2], "DEAD") {
        Ok((false, true, false))
    } else if eq(a[2], "ALL") {
        Ok((true, true, true))
    } else {
        err("ERR what must be READY, DEAD or ALL")
    }
}

pub fn clear(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let (r, d, f) = parse_clear(a)?;
    let n = with_queue(ctx, argv[1], false, |q| q.clear(r, d, f))?.unwrap_or(0);
    if n > 0 {
        replicate_verbatim(ctx);
    }
    Ok(Reply::Int(n as i64))
}

// ============================================================ VT.SCHEDULE

/// Parses `VT.SCHEDULE SET` at `now`: the schedule (with its first tick).
pub fn parse_schedule_set(a: &[&[u8]], now: i64) -> Result<Schedule, Reply> {
    // VT.SCHEDULE SET <queue> <name> (CRON <expr> | EVERY <ms>) [PRIORITY <p>] PAYLOAD <payload>
    arity(a, 8)?;
    check_len(a[3], "schedule name", MAX_KEYLIKE_LEN)?;
    let (kind, spec, every, cron) = if eq(a[4], "CRON") {
        let expr = std::str::from_utf8(a[5]).map_err(|_| Reply::Error("ERR cron expression is not UTF-8".into()))?;
        if expr.len() > 256 {
            return err("ERR cron expression too long");
        }
        let c = parse_cron(expr).map_err(|e| Reply::Error(format!("ERR {e}")))?;
        (SchedKind::Cron, a[5].to_vec(), 0, Some(c))
    } else if eq(a[4], "EVERY") {
        let ms = int_in(a[5], "EVERY", 1, i64::MAX / 4)?;
        (SchedKind::Every, s(ms), ms, None)
    } else {
        return err("ERR expected CRON <expr> or EVERY <ms>");
    };
    let mut i = 6;
    let mut prio = 0i64;
    let mut payload = None;
    while i < a.len() {
        if eq(a[i], "PRIORITY") && i + 1 < a.len() {
            prio = int_in(a[i + 1], "PRIORITY", MIN_PRIORITY, MAX_PRIORITY)?;
            i += 2;
        } else if eq(a[i], "PAYLOAD") && i + 2 == a.len() {
            payload = Some(a[i + 1]);
            i += 2;
        } else {
            return err("ERR syntax: ... [PRIORITY <p>] PAYLOAD <payload> (PAYLOAD last)");
        }
    }
    let payload = payload.ok_or_else(|| Reply::Error("ERR PAYLOAD is required".into()))?;
    if payload.len() > max_payload() {
        return err("ERR payload larger than vtasks.max-payload");
    }
    let next = match &cron {
        Some(c) => cron_next(c, now),
        None => now.saturating_add(every),
    };
    if next == NEVER {
        return err("ERR cron expression never fires");
    }
    Ok(Schedule {
        kind,
        spec,
        every,
        priority: prio as i32,
        payload: payload.to_vec(),
        next_run: next,
        cron,
        paused: false,
    })
}

pub fn schedule_set(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    let sched = parse_schedule_set(a, now_ms())?;
    let (kind, spec, prio, next, payload) =
        (sched.kind, sched.spec.clone(), sched.priority, sched.next_run, sched.payload.clone());
    with_queue(ctx, argv[2], true, |q| q.schedule_set(a[3], sched))?;
    replicate_owned(
        ctx,
        &[a[2].to_vec(), b"SCHEDSET".to_vec(), a[3].to_vec(), s(kind as u8), spec, s(prio), s(next), payload],
    );
    Ok(Reply::Simple("OK"))
}

pub fn schedule_del(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 4 {
        return err("ERR wrong number of arguments");
    }
    let n = with_queue(ctx, argv[2], false, |q| q.schedule_del(a[3]))?.unwrap_or(false);
    if n {
        replicate_verbatim(ctx);
    }
    Ok(Reply::Int(n as i64))
}

/// `VT.SCHEDULE PAUSE|RESUME <queue> <name>`: 1 if the schedule exists (it is then paused /
/// running), 0 if not. A resumed schedule whose tick passed while paused fires at its next tick
/// after now (the ticks it missed are not made up).
pub fn schedule_pause(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 4 {
        return err("ERR wrong number of arguments");
    }
    let resume = eq(a[1], "RESUME");
    let now = now_ms();
    let r = with_queue(ctx, argv[2], false, |q| {
        let s = q.schedules.get(a[3])?;
        let next = if s.next_run > now {
            s.next_run
        } else {
            match (&s.cron, s.kind) {
                (Some(c), SchedKind::Cron) => cron_next(c, now),
                _ => now.saturating_add(s.every),
            }
        };
        q.schedule_pause(a[3], !resume, resume.then_some(next));
        Some(next)
    })?
    .flatten();
    let Some(next) = r else { return Ok(Reply::Int(0)) };
    let op: &[u8] = if resume { b"SCHEDRESUME" } else { b"SCHEDPAUSE" };
    replicate_owned(ctx, &[a[2].to_vec(), op.to_vec(), a[3].to_vec(), s(next)]);
    Ok(Reply::Int(1))
}

/// `VT.SCHEDULE RUN <queue> <name>`: enqueues the schedule's task once, now (paused or not; its
/// ticks are unchanged). Replies the new task id, or nil if there is no such schedule.
pub fn schedule_run(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 4 {
        return err("ERR wrong number of arguments");
    }
    let now = now_ms();
    let maxatt = max_attempts();
    let id = new_id();
    let ok = with_queue(ctx, argv[2], false, |q| q.schedule_run(a[3], id.clone(), now, maxatt))?.unwrap_or(false);
    if !ok {
        return Ok(Reply::Nil);
    }
    replicate_owned(ctx, &[a[2].to_vec(), b"SCHEDRUN".to_vec(), s(now), s(maxatt), a[3].to_vec(), id.clone()]);
    Ok(Reply::Bulk(id))
}

pub fn schedule_list(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() != 3 {
        return err("ERR wrong number of arguments");
    }
    let out = read_queue(ctx, argv[2], |q| {
        q.schedules
            .iter()
            .map(|(name, s)| {
                Reply::Array(vec![
                    bulk(name),
                    Reply::Str(if s.kind == SchedKind::Cron { "cron" } else { "every" }.into()),
                    bulk(&s.spec),
                    Reply::Int(s.next_run),
                    bulk(&s.payload),
                    Reply::Int(s.paused as i64),
                ])
            })
            .collect()
    })?
    .unwrap_or_default();
    Ok(Reply::Array(out))
}

// ============================================================ internal: VT._FX / VT._LOAD

fn internal_allowed(ctx: Ctx) -> Result<(), Reply> {
    if !from_effect_stream(ctx) {
        return err("ERR internal command (only accepted from the replication stream, the AOF or a slot migration)");
    }
    Ok(())
}

/// Applies an effect replicated by a primary (`VT._FX <queue> <op> ...`), deterministically.
pub fn fx(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    internal_allowed(ctx)?;
    arity(a, 3)?;
    let op = a[2];
    let r = &a[3..];
    let bad = || Reply::Error("ERR malformed VT._FX".into());
    let out: Result<(), Reply> = if eq(op, "ENQ") {
        // now prio run_at maxatt uflag ukey uexp [id payload]...
        if r.len() < 7 || !(r.len() - 7).is_multiple_of(2) {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let prio = int(r[1], "prio")? as i32;
        let run_at = int(r[2], "run_at")?;
        let maxatt = int(r[3], "maxatt")? as u32;
        let unique = if r[4] == b"1" { Some((r[5], int(r[6], "uexp")?)) } else { None };
        let items: Vec<(Vec<u8>, Vec<u8>)> = r[7..].chunks(2).map(|p| (p[0].to_vec(), p[1].to_vec())).collect();
        let o = EnqOpts { now, priority: prio, run_at, max_attempts: maxatt, unique };
        with_queue(ctx, argv[1], true, |q| {
            q.enqueue(&o, items);
        })
        .map(|_| ())
    } else if eq(op, "FLOW") {
        crate::flow_command::apply_fx_flow(ctx, argv, a)
    } else if eq(op, "ACK") {
        // now [id token]... (an ack that released waiting tasks)
        if r.len() < 3 || !(r.len() - 1).is_multiple_of(2) {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        with_queue(ctx, argv[1], true, |q| {
            for p in r[1..].chunks(2) {
                q.ack(now, p[0], parse_token(p[1]));
            }
        })
        .map(|_| ())
    } else if eq(op, "FETCH") {
        // now worker deadline [id token]...
        if r.len() < 3 || !(r.len() - 3).is_multiple_of(2) {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let deadline = int(r[2], "deadline")?;
        let worker = r[1];
        with_queue(ctx, argv[1], true, |q| {
            q.promote(now);
            let mut n = 0;
            for p in r[3..].chunks(2) {
                n += q.lease(p[0], worker, parse_token(p[1]).unwrap_or(0), deadline).is_some() as usize;
            }
            q.rate_take(now, n);
        })
        .map(|_| ())
    } else if eq(op, "FAIL") {
        // now cap id token error retry
        if r.len() != 6 {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let cap = int(r[1], "cap")?.max(0) as usize;
        let retry = int(r[5], "retry")?;
        with_queue(ctx, argv[1], true, |q| {
            q.fail(now, cap, r[2], parse_token(r[3]), r[4], if retry < 0 { None } else { Some(retry) });
        })
        .map(|_| ())
    } else if eq(op, "RESCUE") {
        // now cap [worker]
        if r.len() != 2 && r.len() != 3 {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let cap = int(r[1], "cap")?.max(0) as usize;
        with_queue(ctx, argv[1], true, |q| {
            if r.len() == 3 {
                q.rescue_worker(r[2], now, cap);
            } else {
                q.rescue_expired(now, cap);
            }
        })
        .map(|_| ())
    } else if eq(op, "EXTEND") {
        if r.len() != 2 {
            return Err(bad());
        }
        let deadline = int(r[1], "deadline")?;
        with_queue(ctx, argv[1], true, |q| {
            q.extend(r[0], deadline);
        })
        .map(|_| ())
    } else if eq(op, "CANCEL") {
        crate::cancel::replay(ctx, argv[1], r)
    } else if eq(op, "PROMOTE") {
        if r.len() != 1 {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        with_queue(ctx, argv[1], true, |q| {
            q.promote(now);
        })
        .map(|_| ())
    } else if eq(op, "SCHEDSET") {
        // name kind spec prio next payload
        if r.len() != 6 {
            return Err(bad());
        }
        let kind = if r[1] == b"1" { SchedKind::Cron } else { SchedKind::Every };
        let (every, cron) = match kind {
            SchedKind::Every => (int(r[2], "every")?, None),
            SchedKind::Cron => {
                let e = std::str::from_utf8(r[2]).map_err(|_| bad())?;
                (0, Some(parse_cron(e).map_err(|e| Reply::Error(format!("ERR {e}")))?))
            }
        };
        let sched = Schedule {
            kind,
            spec: r[2].to_vec(),
            every,
            priority: int(r[3], "prio")? as i32,
            payload: r[5].to_vec(),
            next_run: int(r[4], "next")?,
            cron,
            paused: false,
        };
        with_queue(ctx, argv[1], true, |q| q.schedule_set(r[0], sched)).map(|_| ())
    } else if eq(op, "RATE") {
        // limit per burst credit at (all 0: no limit)
        let bucket = crate::ratelimit::fx_args(r)?;
        with_queue(ctx, argv[1], true, |q| q.rate_put(bucket)).map(|_| ())
    } else if eq(op, "SCHEDPAUSE") || eq(op, "SCHEDRESUME") {
        // name next (next: the resumed schedule's next tick; ignored by SCHEDPAUSE)
        if r.len() != 2 {
            return Err(bad());
        }
        let resume = eq(op, "SCHEDRESUME");
        let next = int(r[1], "next")?;
        with_queue(ctx, argv[1], false, |q| q.schedule_pause(r[0], !resume, resume.then_some(next))).map(|_| ())
    } else if eq(op, "SCHEDRUN") {
        // now maxatt name id
        if r.len() != 4 {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let maxatt = int(r[1], "maxatt")? as u32;
        with_queue(ctx, argv[1], false, |q| q.schedule_run(r[2], r[3].to_vec(), now, maxatt)).map(|_| ())
    } else if eq(op, "SCHEDSKIP") {
        // now [name]... (ticks the primary skipped while over maxmemory)
        if r.len() < 2 {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        with_queue(ctx, argv[1], true, |q| {
            for name in &r[1..] {
                q.skip_schedule(name, now);
            }
        })
        .map(|_| ())
    } else if eq(op, "SCHEDFIRE") {
        // now maxatt [name id]...
        if r.len() < 2 || !(r.len() - 2).is_multiple_of(2) {
            return Err(bad());
        }
        let now = int(r[0], "now")?;
        let maxatt = int(r[1], "maxatt")? as u32;
        with_queue(ctx, argv[1], true, |q| {
            for p in r[2..].chunks(2) {
                q.fire_schedule(p[0], p[1].to_vec(), now, maxatt);
            }
        })
        .map(|_| ())
    } else {
        Err(bad())
    };
    out?;
    replicate_verbatim(ctx);
    Ok(Reply::Simple("OK"))
}

/// `VT._LOAD <queue> <record>`: rebuilds a queue from the AOF rewrite (an 'H' record resets it).
pub fn load(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    internal_allowed(ctx)?;
    if a.len() != 3 || a[2].is_empty() {
        return err("ERR wrong number of arguments");
    }
    let rec = a[2];
    let r = with_queue_ext(ctx, argv[1], true, true, |q| {
        if rec[0] == b'H' {
            // the header resets the queue, but only once it is known to be valid: a rejected
            // record leaves the queue as it was
            let mut fresh = Queue::default();
            fresh.apply_record(rec)?;
            *q = fresh;
            return Ok(());
        }
        q.apply_record(rec)
    })?;
    match r {
        Some(Err(e)) => err(format!("ERR bad queue record: {e}")),
        _ => {
            replicate_verbatim(ctx);
            Ok(Reply::Simple("OK"))
        }
    }
}

pub fn aligncheck(ctx: Ctx, _argv: &[RStr], a: &[&[u8]]) -> Res {
    if !crate::acl::debug_commands_allowed(ctx) {
        return err("ERR VT._ALIGNCHECK is a debugging command: allowed only when enable-debug-command permits DEBUG");
    }
    let n = if a.len() > 1 { int_in(a[1], "rounds", 1, 100_000)? as usize } else { 1000 };
    match crate::alloc::align_check(n) {
        Ok(c) => Ok(Reply::Int(c as i64)),
        Err(e) => err(format!("ERR {e}")),
    }
}

/// Validates a full argument vector (argv[0] = command name) exactly as the handlers do before
/// they touch a key. `Ok(())` when the handler would proceed.
pub fn parse_command(a: &[&[u8]]) -> Result<(), String> {
    let msg = |r: Reply| match r {
        Reply::Error(e) => e,
        _ => "ERR".to_string(),
    };
    if a.is_empty() {
        return Err("ERR empty command".into());
    }
    let name = String::from_utf8_lossy(a[0]).to_ascii_uppercase();
    let r: Result<(), Reply> = match name.as_str() {
        "VT.ENQUEUE" => parse_enqueue(a).map(|_| ()),
        "VT.FETCHBATCH" => parse_fetch(a).map(|_| ()),
        "VT.FLOW" => arity(a, 3).and_then(|_| crate::flow_command::parse_flow(a, 2, Some(0)).map(|_| ())),
        "VT.ACK" => arity(a, 4).and_then(|_| {
            if !(a.len() - 2).is_multiple_of(2) {
                err("ERR wrong number of arguments")
            } else {
                Ok(())
            }
        }),
        "VT.FAIL" => parse_fail(a).map(|_| ()),
        "VT.RESCUE" => parse_rescue(a).map(|_| ()),
        "VT.EXTEND" => parse_extend(a).map(|_| ()),
        "VT.CANCEL" => crate::cancel::parse(a).map(|_| ()),
        "VT.INFO" | "VT.QUEUES" | "VT.GET" => {
            let want = match name.as_str() {
                "VT.INFO" => 2,
                "VT.QUEUES" => 1,
                _ => 3,
            };
            if a.len() == want || (name == "VT.GET" && a.len() == 4 && eq(a[2], "UNIQUE")) {
                Ok(())
            } else {
                err("ERR wrong number of arguments")
            }
        }
        "VT.PEEK" => parse_peek(a).map(|_| ()),
        "VT.RETRYDEAD" | "VT.DELETE" => arity(a, 3),
        "VT.CLEAR" => parse_clear(a).map(|_| ()),
        "VT.RATELIMIT" => crate::ratelimit::parse(a),
        "VT.SCHEDULE" => {
            let sub = a.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_uppercase()).unwrap_or_default();
            match sub.as_str() {
                "SET" => parse_schedule_set(a, 0).map(|_| ()),
                "DEL" if a.len() == 4 => Ok(()),
                "LIST" if a.len() == 3 => Ok(()),
                "PAUSE" | "RESUME" | "RUN" if a.len() == 4 => Ok(()),
                _ => err("ERR unknown subcommand or wrong number of arguments"),
            }
        }
        _ => err("ERR unknown command"),
    };
    r.map_err(msg)
}
