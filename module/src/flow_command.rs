//! `VT.FLOW`: adds a flow (tasks and the tasks that wait for them) to one queue, atomically;
//! and the record `VT.GET` shows for a waiting task. The store is `flows.rs`; the release on ack
//! and the cascade on failure are queue operations (`queue.rs`).

use crate::flows::MAX_FLOW_TASKS;
use crate::queue::{FlowNode, HashSet, Waiting};
use crate::server::*;

type Res = Result<Reply, Reply>;

fn int(b: &[u8], what: &str, lo: i64, hi: i64) -> Result<i64, Reply> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20 && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| Reply::Error(format!("ERR {what} must be an integer between {lo} and {hi}")))
}

/// The nodes of a flow and, per node, the argument index of its payload.
pub struct ParsedFlow {
    pub nodes: Vec<FlowNode>,
    pub payload_at: Vec<usize>,
}

/// Parses `<n> (<id> <priority> <maxattempts> <at-ms> <nparents> [<parent-id> ...] <payload>)
/// x n` starting at `a[from]`. With `now` (a client's VT.FLOW) `maxattempts` 0 means the
/// config's default and `at-ms` 0 means `now`; without it (VT._FX) the values are final.
pub fn parse_flow(a: &[&[u8]], from: usize, now: Option<i64>) -> Result<ParsedFlow, Reply> {
    let count = a.get(from).ok_or_else(|| Reply::Error("ERR wrong number of arguments".into()))?;
    let n = int(count, "the number of tasks of a flow", 1, MAX_FLOW_TASKS as i64)? as usize;
    let mut nodes: Vec<FlowNode> = Vec::with_capacity(n);
    let mut payload_at = Vec::with_capacity(n);
    let mut seen: HashSet<&[u8]> = HashSet::default();
    let maxp = max_payload();
    let mut i = from + 1;
    let missing = || {
        Reply::Error(
            "ERR a flow task needs <id> <priority> <maxattempts> <at-ms> <nparents> [<parent-id> ...] <payload>".into(),
        )
    };
    for _ in 0..n {
        if i + 5 > a.len() {
            return Err(missing());
        }
        let id = a[i];
        if id.is_empty() || id.len() > crate::commands::MAX_ID_LEN {
            return err(format!("ERR task id must be 1 to {} bytes", crate::commands::MAX_ID_LEN));
        }
        if !seen.insert(id) {
            return err(format!("ERR task id '{}' appears twice in the flow", String::from_utf8_lossy(id)));
        }
        let prio = int(a[i + 1], "PRIORITY", crate::commands::MIN_PRIORITY, crate::commands::MAX_PRIORITY)?;
        let lo = if now.is_some() { 0 } else { 1 };
        let maxatt = int(a[i + 2], "MAXATTEMPTS", lo, vtasks_protocol::limits::MAX_ATTEMPTS)?;
        let at = int(a[i + 3], "AT", 0, i64::MAX / 4)?;
        let np = int(a[i + 4], "nparents", 0, MAX_FLOW_TASKS as i64)? as usize;
        i += 5;
        if i + np + 1 > a.len() {
            return Err(missing());
        }
        let mut parents = Vec::with_capacity(np);
        let mut mine: HashSet<&[u8]> = HashSet::default();
        for p in &a[i..i + np] {
            // parents are earlier tasks of this flow: the graph is acyclic by construction
            if !seen.contains(p) || *p == id {
                return err(format!(
                    "ERR parent '{}' of task '{}' is not an earlier task of this flow (a flow names its tasks in order, parents first)",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(id)
                ));
            }
            if np > 1 && !mine.insert(p) {
                return err(format!(
                    "ERR task '{}' names parent '{}' twice",
                    String::from_utf8_lossy(id),
                    String::from_utf8_lossy(p)
                ));
            }
            parents.push(p.to_vec());
        }
        i += np;
        let payload = a[i];
        if payload.len() > maxp {
            return err(format!("ERR payload larger than vtasks.max-payload ({maxp} bytes)"));
        }
        payload_at.push(i);
        i += 1;
        let (max_attempts, run_at) = match now {
            Some(now) => (if maxatt == 0 { max_attempts() } else { maxatt as u32 }, if at == 0 { now } else { at }),
            None => (maxatt as u32, at),
        };
        nodes.push(FlowNode {
            id: id.to_vec(),
            priority: prio as i32,
            max_attempts,
            run_at,
            parents,
            payload: payload.to_vec(),
        });
    }
    if i != a.len() {
        return err("ERR more arguments than the flow's tasks (check the task count and each task's nparents)");
    }
    Ok(ParsedFlow { nodes, payload_at })
}

/// `VT.FLOW <queue> <n> <task> ...`: reply, per task in order, its id, or nil for every task
/// when one of the ids is already a live or waiting task of the queue (nothing is added).
pub fn flow(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Res {
    if a.len() < 3 {
        return err("ERR wrong number of arguments");
    }
    let now = now_ms();
    let ParsedFlow { nodes, payload_at } = parse_flow(a, 2, Some(now))?;
    let n = nodes.len();
    // the replicated effect shares the command's own argument strings (ids, parents, payloads)
    let mut rep = Rep::with_capacity(4 + nodes.iter().map(|x| 6 + x.parents.len()).sum::<usize>());
    rep.arg(argv[1]).bytes(b"FLOW").int(now).int(n as i64);
    let mut idbuf: Vec<u8> = Vec::with_capacity(n * 36);
    let mut spans = Vec::with_capacity(n);
    for (x, &at) in nodes.iter().zip(&payload_at) {
        let id_at = at - x.parents.len() - 5;
        rep.arg(argv[id_at])
            .int(x.priority as i64)
            .int(x.max_attempts as i64)
            .int(x.run_at)
            .int(x.parents.len() as i64);
        for p in &argv[id_at + 5..at] {
            rep.arg(*p);
        }
        rep.arg(argv[at]);
        let st = idbuf.len();
        idbuf.extend_from_slice(&x.id);
        spans.push(Some((st, idbuf.len())));
    }
    let added = with_queue(ctx, argv[1], true, |q| q.add_flow(now, nodes))?.unwrap_or(false);
    if !added {
        return Ok(Reply::Array((0..n).map(|_| Reply::Nil).collect()));
    }
    rep.send(ctx, c"VT._FX");
    Ok(Reply::Bulks(idbuf, spans))
}

/// `VT._FX <queue> FLOW <now> <n> <task> ...` (values final).
pub fn apply_fx_flow(ctx: Ctx, argv: &[RStr], a: &[&[u8]]) -> Result<(), Reply> {
    let now = a.get(3).ok_or_else(|| Reply::Error("ERR malformed VT._FX".into()))?;
    let now = int(now, "now", i64::MIN, i64::MAX)?;
    let ParsedFlow { nodes, .. } = parse_flow(a, 4, None)?;
    with_queue(ctx, argv[1], true, |q| {
        q.add_flow(now, nodes);
    })
    .map(|_| ())
}

/// The `VT.GET` record of a waiting task (the task record's fields; `state` is `waiting`,
/// `run_at` the earliest run time once released, and `waiting_for` the parents not acked yet).
pub fn waiting_record(id: &[u8], w: &Waiting) -> Reply {
    let mut f: Vec<Reply> = Vec::with_capacity(28);
    let mut put = |k: &str, v: Reply| {
        f.push(Reply::Str(k.to_string()));
        f.push(v);
    };
    put("id", bulk(id));
    put("state", Reply::Str("waiting".into()));
    put("priority", Reply::Int(w.priority as i64));
    put("attempt", Reply::Int(0));
    put("max_attempts", Reply::Int(w.max_attempts as i64));
    put("enqueued_at", Reply::Int(w.enqueued_at));
    put("run_at", Reply::Int(w.run_at));
    put("worker", bulk(b""));
    put("token", Reply::Str(String::new()));
    put("deadline", Reply::Int(0));
    put("error", bulk(b""));
    put("failed_at", Reply::Int(0));
    put("payload", bulk(&w.payload));
    put("waiting_for", Reply::Array(w.pending().map(bulk).collect()));
    Reply::Array(f)
}
