//! Queue semantics against a real Postgres (sync API).
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vtasks_pg::{Config, EnqueueOpts};

fn qs(q: &str) -> Vec<String> {
    vec![q.to_string()]
}

fn info(q: &vtasks_pg::PgQueue, queue: &str) -> HashMap<&'static str, i64> {
    q.info(queue).unwrap().into_iter().collect()
}

#[test]
fn basic_flow_order_and_info() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.migrate().unwrap(); // idempotent
    let ids = q.enqueue("a", payloads(3, "lo"), EnqueueOpts::default()).unwrap();
    assert!(ids.iter().all(|i| i.as_ref().map(|s| s.len()) == Some(36)), "UUIDv7 ids: {ids:?}");
    let hi = q.enqueue("a", vec![b"hi".to_vec()], EnqueueOpts { priority: 10, ..Default::default() }).unwrap();
    q.enqueue("b", payloads(3, "b"), EnqueueOpts::default()).unwrap();
    // Priority first, FIFO within, queues in the given order, never more than asked.
    let got = q.fetch(&["a".into(), "b".into()], "w", 6, None, None).unwrap().unwrap();
    let p: Vec<_> = got.iter().map(|d| String::from_utf8(d.payload.clone()).unwrap()).collect();
    assert_eq!(p, ["hi", "lo-0", "lo-1", "lo-2", "b-0", "b-1"]);
    assert_eq!(got[0].id, hi[0].clone().unwrap());
    assert!(got.iter().all(|d| d.attempt == 1 && d.token.len() == 16));
    let i = info(&q, "a");
    assert_eq!((i["ready"], i["inflight"], i["enqueued_total"]), (0, 4, 4));
    let pairs: Vec<_> = got.iter().filter(|d| d.queue == "a").map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("a", &pairs).unwrap(), 4);
    assert_eq!(q.ack("a", &pairs).unwrap(), 0, "double ack is a no-op");
    let i = info(&q, "a");
    assert_eq!((i["inflight"], i["acked_total"]), (0, 4));
    let i = info(&q, "b");
    assert_eq!((i["ready"], i["inflight"]), (1, 2));
    // Idempotent by id.
    let r = q
        .enqueue(
            "c",
            vec![b"x".to_vec(), b"y".to_vec()],
            EnqueueOpts { ids: Some(vec![Some("same".into()), Some("same".into())]), ..Default::default() },
        )
        .unwrap();
    assert_eq!(r, vec![Some("same".to_string()), None]);
    assert_eq!(
        q.enqueue("c", vec![b"z".to_vec()], EnqueueOpts { ids: Some(vec![Some("same".into())]), ..Default::default() })
            .unwrap(),
        vec![None]
    );
    // Validation.
    assert!(q.enqueue("c", vec![b"z".to_vec()], EnqueueOpts { priority: 101, ..Default::default() }).is_err());
    assert!(q.fetch(&qs("c"), "w", 0, None, None).is_err());
    assert!(q.fetch(&qs("c"), "w", 10_001, None, None).is_err());
    assert!(q.queues().unwrap().contains(&"a".to_string()));
}

#[test]
fn no_double_delivery_concurrent_consumers() {
    let db = TestDb::new();
    let q = Arc::new(db.queue(Config { pool_size: 8, ..cfg() }));
    for (round, batch) in [1i64, 7, 50].into_iter().enumerate() {
        let queue = format!("dd{round}");
        let total = if batch == 1 { 300 } else { 1500 };
        for chunk in 0..(total / 300) {
            q.enqueue(&queue, payloads(300, &format!("c{chunk}")), EnqueueOpts::default()).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut hs = vec![];
        for w in 0..6 {
            let (q, seen, queue) = (q.clone(), seen.clone(), queue.clone());
            hs.push(thread::spawn(move || {
                let mut empty = 0;
                while empty < 3 {
                    let got = q.fetch(std::slice::from_ref(&queue), &format!("w{w}"), batch, None, Some(50)).unwrap();
                    let Some(got) = got else {
                        empty += 1;
                        continue;
                    };
                    assert!(!got.is_empty() && got.len() as i64 <= batch, "LIMIT: got {} for {batch}", got.len());
                    let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
                    assert_eq!(q.ack(&queue, &pairs).unwrap(), pairs.len() as i64);
                    seen.lock().unwrap().extend(got.into_iter().map(|d| d.id));
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        let uniq: HashSet<_> = seen.iter().collect();
        assert_eq!(seen.len(), total as usize, "batch {batch}: deliveries");
        assert_eq!(uniq.len(), total as usize, "batch {batch}: a task was delivered twice");
        let i = info(&q, &queue);
        assert_eq!((i["ready"], i["inflight"], i["acked_total"]), (0, 0, total));
    }
}

#[test]
fn stale_ack_and_fail_are_noops() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.enqueue("s", vec![b"p".to_vec()], EnqueueOpts::default()).unwrap();
    let d1 = q.fetch(&qs("s"), "w1", 1, Some(50), None).unwrap().unwrap().remove(0);
    thread::sleep(Duration::from_millis(80));
    assert_eq!(q.rescue("s", None).unwrap(), 1);
    let d2 = q.fetch(&qs("s"), "w2", 1, None, None).unwrap().unwrap().remove(0);
    assert_eq!((d2.id.as_str(), d2.attempt), (d1.id.as_str(), 2));
    assert_ne!(d1.token, d2.token);
    assert_eq!(q.ack("s", &[(d1.id.clone(), d1.token.clone())]).unwrap(), 0);
    assert_eq!(q.fail("s", &d1.id, &d1.token, "late", None).unwrap(), None);
    assert_eq!(q.fail("s", "nope", "0000000000000000", "x", None).unwrap(), None);
    assert_eq!(q.extend("s", "w2", 60_000).unwrap(), 1);
    assert_eq!(q.extend("s", "w1", 60_000).unwrap(), 0);
    assert_eq!(q.ack("s", &[(d2.id.clone(), d2.token.clone())]).unwrap(), 1);
}

#[test]
fn cancel_buries_waiting_tasks_and_flags_running_ones() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    let ids = q.enqueue("c", payloads(3, "t"), EnqueueOpts::default()).unwrap();
    let ids: Vec<String> = ids.into_iter().map(Option::unwrap).collect();
    let d = q.fetch(&qs("c"), "w", 2, Some(60_000), None).unwrap().unwrap();
    assert_eq!(q.cancel("c", &ids[2], "gone").unwrap().as_deref(), Some("removed"));
    assert_eq!(q.cancel("c", &ids[0], "").unwrap().as_deref(), Some("flagged"));
    assert_eq!(q.cancel("c", &ids[0], "again").unwrap().as_deref(), Some("flagged"));
    assert_eq!(q.cancel("c", &ids[2], "").unwrap(), None, "dead: nothing to cancel");
    assert_eq!(q.get("c", &ids[2]).unwrap().unwrap().error, "cancelled: gone");
    // extend leaves the flagged lease alone and names it; a retry of it is a burial
    assert_eq!(q.extend_cancelled("c", "w", 60_000).unwrap(), (1, vec![ids[0].clone()]));
    assert_eq!(q.extend("c", "w", 60_000).unwrap(), 1);
    assert_eq!(q.fail("c", &ids[0], &d[0].token, "x", Some(0)).unwrap().as_deref(), Some("dead"));
    assert_eq!(q.get("c", &ids[0]).unwrap().unwrap().state, "dead");
    // a flagged task whose worker is rescued is buried with the cancel error, not made ready
    assert_eq!(q.cancel("c", &ids[1], "bye").unwrap().as_deref(), Some("flagged"));
    assert_eq!(q.rescue("c", Some("w")).unwrap(), 0);
    assert_eq!(q.get("c", &ids[1]).unwrap().unwrap().error, "cancelled: bye");
    let i = info(&q, "c");
    assert_eq!((i["ready"], i["inflight"], i["dead"]), (0, 0, 3));
}

#[test]
fn ack_with_results_stores_results_in_the_same_statement() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.enqueue("ar", payloads(3, "t"), EnqueueOpts::default()).unwrap();
    let got = q.fetch(&qs("ar"), "w", 3, None, None).unwrap().unwrap();
    let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    let mut results: Vec<_> =
        got.iter().map(|d| (d.id.clone(), format!("{{\"id\":\"{}\"}}", d.id).into_bytes(), 60_000)).collect();
    results.push((got[0].id.clone(), b"{\"last\":1}".to_vec(), 60_000)); // same id twice: the last one wins
    assert_eq!(q.ack_with_results("ar", &pairs, &results).unwrap(), 3);
    assert_eq!(q.get_result(&got[0].id).unwrap().as_deref(), Some(&b"{\"last\":1}"[..]));
    for d in &got[1..] {
        assert_eq!(q.get_result(&d.id).unwrap().unwrap(), format!("{{\"id\":\"{}\"}}", d.id).into_bytes());
    }
    let i = info(&q, "ar");
    assert_eq!((i["inflight"], i["acked_total"]), (0, 3));
    // A stale ack counts 0 but still stores its result; results alone; bad input is rejected.
    assert_eq!(q.ack_with_results("ar", &pairs, &[(got[1].id.clone(), b"2".to_vec(), 60_000)]).unwrap(), 0);
    assert_eq!(q.get_result(&got[1].id).unwrap().as_deref(), Some(&b"2"[..]));
    q.store_results(&[("only".to_string(), b"x".to_vec(), 60_000), ("short".to_string(), b"y".to_vec(), 20)]).unwrap();
    assert_eq!(q.get_result("only").unwrap().as_deref(), Some(&b"x"[..]));
    thread::sleep(Duration::from_millis(40));
    assert_eq!(q.get_result("short").unwrap(), None, "ttl honoured");
    assert!(q.ack_with_results("ar", &[], &[("z".to_string(), b"1".to_vec(), 0)]).is_err());
    assert_eq!(q.ack_with_results("ar", &[], &[]).unwrap(), 0);
}

#[test]
fn partial_batch_ack_then_lease_expiry() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.enqueue("p", payloads(10, "t"), EnqueueOpts::default()).unwrap();
    let got = q.fetch(&qs("p"), "w", 10, Some(300), None).unwrap().unwrap();
    assert_eq!(got.len(), 10);
    let acked: Vec<_> = got[..4].iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("p", &acked).unwrap(), 4);
    assert_eq!(q.rescue("p", None).unwrap(), 0, "leases not expired yet");
    thread::sleep(Duration::from_millis(350));
    let m: HashMap<_, _> = q.maintain().unwrap().into_iter().collect();
    assert_eq!(m["rescued"], 6);
    let again = q.fetch(&qs("p"), "w", 10, None, None).unwrap().unwrap();
    let want: HashSet<_> = got[4..].iter().map(|d| d.id.clone()).collect();
    let have: HashSet<_> = again.iter().map(|d| d.id.clone()).collect();
    assert_eq!(want, have);
    assert!(again.iter().all(|d| d.attempt == 2));
    let i = info(&q, "p");
    assert_eq!((i["rescued_total"], i["acked_total"], i["inflight"]), (6, 4, 6));
}

#[test]
fn attempt_accounting_never_exceeds_max() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    // Lease expiry path.
    q.enqueue("m", vec![b"x".to_vec()], EnqueueOpts { max_attempts: Some(3), ..Default::default() }).unwrap();
    let mut attempts = vec![];
    for _ in 0..5 {
        if let Some(d) = q.fetch(&qs("m"), "w", 1, Some(20), None).unwrap().unwrap().pop() {
            attempts.push(d.attempt);
        }
        thread::sleep(Duration::from_millis(30));
        q.rescue("m", None).unwrap();
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let dead = q.peek("m", "dead", 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].attempt, dead[0].error.as_str()), (3, "lease expired after 3 attempts"));
    // FAIL ... RETRY path.
    q.enqueue("f", vec![b"y".to_vec()], EnqueueOpts { max_attempts: Some(2), ..Default::default() }).unwrap();
    let d = q.fetch(&qs("f"), "w", 1, None, None).unwrap().unwrap().pop().unwrap();
    assert_eq!(q.fail("f", &d.id, &d.token, "e1", Some(0)).unwrap().as_deref(), Some("retry"));
    let d = q.fetch(&qs("f"), "w", 1, None, None).unwrap().unwrap().pop().unwrap();
    assert_eq!(d.attempt, 2);
    assert_eq!(q.fail("f", &d.id, &d.token, "e2", Some(0)).unwrap().as_deref(), Some("dead"));
    assert!(q.fetch(&qs("f"), "w", 1, None, None).unwrap().unwrap().is_empty());
    // Worker rescue path with its reason.
    q.enqueue("r", vec![b"z".to_vec()], EnqueueOpts { max_attempts: Some(1), ..Default::default() }).unwrap();
    q.fetch(&qs("r"), "pod-1", 1, None, None).unwrap();
    assert_eq!(q.rescue("r", Some("pod-1")).unwrap(), 0);
    let dead = q.peek("r", "dead", 0, 10).unwrap();
    assert_eq!(dead[0].error, "rescued from worker pod-1 after 1 attempts");
    let i = info(&q, "f");
    assert_eq!((i["failed_total"], i["retried_total"], i["dead_total"], i["dead"]), (2, 1, 1, 1));
}

#[test]
fn dlq_cap_exact_under_concurrent_failers() {
    let db = TestDb::new();
    let q = Arc::new(db.queue(Config { pool_size: 10, dlq_cap: 50, max_attempts: 1, ..cfg() }));
    for _ in 0..4 {
        q.enqueue("dlq", payloads(100, "d"), EnqueueOpts::default()).unwrap();
    }
    let t0 = Instant::now();
    let mut hs = vec![];
    for w in 0..8 {
        let q = q.clone();
        hs.push(thread::spawn(move || loop {
            let got = q.fetch(&qs("dlq"), &format!("w{w}"), 3, Some(30_000), None).unwrap().unwrap();
            if got.is_empty() {
                break;
            }
            for d in got {
                // Half fail without retry, half with retry (max_attempts 1: dead too).
                let retry = if d.payload.ends_with(b"0") { Some(0) } else { None };
                assert_eq!(q.fail("dlq", &d.id, &d.token, "boom", retry).unwrap().as_deref(), Some("dead"));
            }
        }));
    }
    // A concurrent operator deleting dead entries must not deadlock either; it counts what it removed.
    let op = {
        let q = q.clone();
        thread::spawn(move || {
            let mut deleted = 0;
            for _ in 0..20 {
                let dead = q.peek("dlq", "dead", 0, 2).unwrap();
                if let Some(d) = dead.first() {
                    deleted += q.delete("dlq", vec![d.id.clone()]).unwrap();
                }
                thread::sleep(Duration::from_millis(5));
            }
            deleted
        })
    };
    for h in hs {
        h.join().unwrap();
    }
    let deleted = op.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(60));
    // The operator may delete after the last eviction, so only the bound holds here.
    let i = info(&q, "dlq");
    assert!(i["dead"] <= 50, "cap exceeded: {i:?}");
    assert_eq!(i["dead_total"], 400);
    assert_eq!(i["dead"] + i["dead_evicted"] + deleted, 400, "every dead task kept, evicted or deleted: {i:?}");
    // With the operator gone, more failures fill the list back to exactly the cap.
    q.enqueue("dlq", payloads(60, "e"), EnqueueOpts::default()).unwrap();
    for d in q.fetch(&qs("dlq"), "w-last", 60, Some(30_000), None).unwrap().unwrap() {
        q.fail("dlq", &d.id, &d.token, "boom", None).unwrap();
    }
    let i = info(&q, "dlq");
    assert_eq!(i["dead"], 50, "cap exact: {i:?}");
    assert_eq!(q.peek("dlq", "dead", 0, 1000).unwrap().len(), 50);
    assert_eq!(i["dead"] + i["dead_evicted"] + deleted, 460, "{i:?}");
}

#[test]
fn run_after_neither_early_nor_late_behind_future_backlog() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    for _ in 0..10 {
        q.enqueue("ra", payloads(5000, "future"), EnqueueOpts { delay_ms: Some(3_600_000), ..Default::default() })
            .unwrap();
    }
    db.client().batch_execute("ANALYZE vtasks_task").unwrap();
    let t0 = Instant::now();
    q.enqueue("ra", vec![b"soon".to_vec()], EnqueueOpts { delay_ms: Some(600), ..Default::default() }).unwrap();
    let at = vtasks_now_ms(&db) + 900;
    q.enqueue("ra", vec![b"at".to_vec()], EnqueueOpts { at_ms: Some(at), ..Default::default() }).unwrap();
    q.enqueue("ra", vec![b"now".to_vec()], EnqueueOpts::default()).unwrap();
    let got = q.fetch(&qs("ra"), "w", 10, None, None).unwrap().unwrap();
    assert_eq!(got.iter().map(|d| d.payload.clone()).collect::<Vec<_>>(), vec![b"now".to_vec()]);
    // An empty claim over 50k future rows stays cheap.
    let t = Instant::now();
    for _ in 0..20 {
        assert!(q.fetch(&qs("ra"), "w", 10, None, None).unwrap().unwrap().is_empty());
    }
    let per = t.elapsed() / 20;
    assert!(per < Duration::from_millis(50), "empty fetch took {per:?}");
    let d = q.fetch(&qs("ra"), "w", 10, None, Some(5000)).unwrap().unwrap();
    let el = t0.elapsed();
    assert_eq!(d[0].payload, b"soon");
    assert!(el >= Duration::from_millis(590), "early: {el:?}");
    assert!(el < Duration::from_millis(600 + 400), "late: {el:?}");
    let d = q.fetch(&qs("ra"), "w", 10, None, Some(5000)).unwrap().unwrap();
    assert_eq!(d[0].payload, b"at");
    let late = vtasks_now_ms(&db) - at;
    assert!((0..400).contains(&late), "at_ms task delivered {late} ms after its time");
    let i = info(&q, "ra");
    assert_eq!((i["delayed"], i["ready"], i["inflight"]), (50_000, 0, 3));
}

fn vtasks_now_ms(db: &TestDb) -> i64 {
    db.client().query_one("SELECT vtasks_ms(now())", &[]).unwrap().get(0)
}

#[test]
fn processing_continues_with_notify_disabled() {
    let db = TestDb::new();
    for notify in [false, true] {
        let q = Arc::new(db.queue(Config { notify, ..cfg() }));
        let queue = format!("n{notify}");
        let done = Arc::new(Mutex::new(0usize));
        let c = {
            let (q, done, queue) = (q.clone(), done.clone(), queue.clone());
            thread::spawn(move || {
                let t0 = Instant::now();
                while *done.lock().unwrap() < 100 && t0.elapsed() < Duration::from_secs(30) {
                    if let Some(got) = q.fetch(std::slice::from_ref(&queue), "w", 10, None, Some(1000)).unwrap() {
                        let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
                        *done.lock().unwrap() += q.ack(&queue, &pairs).unwrap() as usize;
                    }
                }
            })
        };
        for i in 0..100 {
            q.enqueue(&queue, vec![format!("{i}").into_bytes()], EnqueueOpts::default()).unwrap();
            if i % 10 == 0 {
                thread::sleep(Duration::from_millis(20));
            }
        }
        c.join().unwrap();
        assert_eq!(*done.lock().unwrap(), 100, "notify={notify}");
    }
    // A blocked fetch is woken by an enqueue from another client well before its poll interval.
    let q = Arc::new(db.queue(cfg()));
    let q2 = db.queue(Config { pool_size: 1, ..cfg() });
    let _ = q.fetch(&qs("wake"), "w", 1, None, Some(1)).unwrap(); // start the listener
    thread::sleep(Duration::from_millis(300));
    let mut best = Duration::from_secs(9);
    for _ in 0..3 {
        let h = {
            let q = q.clone();
            thread::spawn(move || {
                let r = q.fetch(&qs("wake"), "w", 1, None, Some(3000)).unwrap();
                (Instant::now(), r.map(|v| v.len()))
            })
        };
        thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        q2.enqueue("wake", vec![b"w".to_vec()], EnqueueOpts::default()).unwrap();
        let (woke, n) = h.join().unwrap();
        assert_eq!(n, Some(1));
        best = best.min(woke.duration_since(t));
        thread::sleep(Duration::from_millis(10));
    }
    assert!(best < Duration::from_millis(200), "NOTIFY wake-up took {best:?}");
}

#[test]
fn killed_connections_are_replaced() {
    let db = TestDb::new();
    let q = Arc::new(db.queue(Config { pool_size: 2, ..cfg() }));
    q.enqueue("k", payloads(20, "k"), EnqueueOpts::default()).unwrap();
    let mut admin = db.client();
    let kill_blocked = |admin: &mut postgres::Client| {
        let t0 = Instant::now();
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'vtasks' AND datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            if n > 0 {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no blocked vtasks backend to kill");
            thread::sleep(Duration::from_millis(20));
        }
    };
    // Mid-fetch: the fetch is parked on a table lock, then its backend is terminated.
    let mut locker = db.client();
    locker.batch_execute("BEGIN; LOCK TABLE vtasks_task IN ACCESS EXCLUSIVE MODE").unwrap();
    let h = {
        let q = q.clone();
        thread::spawn(move || q.fetch(&qs("k"), "w", 5, None, None))
    };
    kill_blocked(&mut admin);
    thread::sleep(Duration::from_millis(100));
    locker.batch_execute("COMMIT").unwrap();
    // Either the fetch was retried on a fresh connection, or it failed cleanly.
    let first = h.join().unwrap();
    let mut got = match first {
        Ok(v) => v.unwrap(),
        Err(e) => {
            assert!(e.is_connection(), "{e}");
            vec![]
        }
    };
    got.extend(q.fetch(&qs("k"), "w", 5, None, None).unwrap().unwrap());
    assert!(!got.is_empty());
    // Mid-ack.
    locker.batch_execute("BEGIN; LOCK TABLE vtasks_task IN ACCESS EXCLUSIVE MODE").unwrap();
    let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    let h = {
        let (q, pairs) = (q.clone(), pairs.clone());
        thread::spawn(move || q.ack("k", &pairs))
    };
    kill_blocked(&mut admin);
    thread::sleep(Duration::from_millis(100));
    locker.batch_execute("COMMIT").unwrap();
    let acked = h.join().unwrap();
    let n = match acked {
        Ok(n) => n,
        Err(e) => {
            assert!(e.is_connection(), "{e}");
            q.ack("k", &pairs).unwrap()
        }
    };
    assert_eq!(n, pairs.len() as i64);
    // Idle pooled connections killed behind the pool's back: the next operation still works.
    admin
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vtasks' AND datname = current_database()")
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(info(&q, "k")["acked_total"], pairs.len() as i64);
    assert!(!q.fetch(&qs("k"), "w", 5, None, None).unwrap().unwrap().is_empty());
}

#[test]
fn schedules_fire_exactly_once_with_three_schedulers_one_killed() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    q.schedule_set("sch", "every100", b"tick".to_vec(), None, Some(100), 0).unwrap();
    q.schedule_set("sch", "cron", b"c".to_vec(), Some("* * * * * *"), None, 5).unwrap();
    assert!(q.schedule_set("sch", "bad", b"c".to_vec(), Some("nope"), None, 0).is_err());
    let list = q.schedule_list("sch").unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[1].name.as_str(), list[1].kind.as_str(), list[1].spec.as_str()), ("every100", "every", "100"));

    // A scheduler that dies mid-tick: it holds the schedule row (fire not committed) and is killed.
    let mut zombie = db.client();
    let next: i64 =
        zombie.query_one("SELECT next_run_ms FROM vtasks_schedule WHERE name = 'every100'", &[]).unwrap().get(0);
    thread::sleep(Duration::from_millis(150));
    zombie.batch_execute("BEGIN").unwrap();
    let fired: bool = zombie
        .query_one("SELECT vtasks_fire('sch', 'every100', $1::int8, $1::int8 + 100, 'zombie-task', 3, false)", &[&next])
        .unwrap()
        .get(0);
    assert!(fired);
    let zpid: i32 = zombie.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hs = vec![];
    for s in 0..3 {
        let q = db.queue(Config { pool_size: 2, ..cfg() });
        let stop = stop.clone();
        hs.push(thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Scheduler 2 is "killed" after 800 ms.
                if s == 2 && t0.elapsed() > Duration::from_millis(800) {
                    break;
                }
                n += q.schedule_tick().unwrap();
                thread::sleep(Duration::from_millis(7));
            }
            n
        }));
    }
    thread::sleep(Duration::from_millis(400));
    let mut admin = db.client();
    admin.execute("SELECT pg_terminate_backend($1)", &[&zpid]).unwrap();
    thread::sleep(Duration::from_millis(2100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let fired: i64 = hs.into_iter().map(|h| h.join().unwrap()).sum();

    let mut c = db.client();
    let tasks: i64 = c.query_one("SELECT count(*) FROM vtasks_task WHERE queue = 'sch'", &[]).unwrap().get(0);
    let ticks: i64 = c.query_one("SELECT count(*) FROM vtasks_schedule_tick", &[]).unwrap().get(0);
    let zombie_task: i64 =
        c.query_one("SELECT count(*) FROM vtasks_task WHERE id = 'zombie-task'", &[]).unwrap().get(0);
    assert_eq!(zombie_task, 0, "the killed scheduler's tick must roll back");
    assert_eq!(tasks, fired, "one task per fire");
    assert_eq!(ticks, fired, "one tick row per fire");
    // Every-100ms ticks over ~2.6 s: consecutive, none twice.
    let rows =
        c.query("SELECT tick_ms FROM vtasks_schedule_tick WHERE name = 'every100' ORDER BY tick_ms", &[]).unwrap();
    let ticks: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert!(ticks.len() >= 20 && ticks.len() <= 30, "{} every-100ms ticks", ticks.len());
    assert_eq!(ticks[0], next, "the zombie's tick fired later, exactly once");
    let cron_ticks: i64 =
        c.query_one("SELECT count(*) FROM vtasks_schedule_tick WHERE name = 'cron'", &[]).unwrap().get(0);
    assert!((2..=4).contains(&cron_ticks), "{cron_ticks} cron ticks");
    assert_eq!(info(&q, "sch")["schedules"], 2);
    assert!(q.schedule_del("sch", "cron").unwrap());
    assert!(!q.schedule_del("sch", "cron").unwrap());
}

#[test]
fn unique_keys_operator_ops_and_results() {
    let db = TestDb::new();
    let q = db.queue(cfg());
    let u = |k: &str| EnqueueOpts { unique: Some((k.to_string(), 60_000)), ..Default::default() };
    let a = q.enqueue("u", vec![b"1".to_vec(), b"2".to_vec()], u("k")).unwrap();
    assert!(a[0].is_some() && a[1].is_none(), "only the first payload takes the key");
    assert_eq!(q.enqueue("u", vec![b"3".to_vec()], u("k")).unwrap(), vec![None]);
    assert_eq!(info(&q, "u")["unique_keys"], 1);
    let d = q.fetch(&qs("u"), "w", 1, None, None).unwrap().unwrap().pop().unwrap();
    q.ack("u", &[(d.id, d.token)]).unwrap();
    assert!(q.enqueue("u", vec![b"4".to_vec()], u("k")).unwrap()[0].is_some(), "ack releases the key");
    // Short TTL expires.
    q.enqueue("u", vec![b"5".to_vec()], EnqueueOpts { unique: Some(("t".into(), 50)), ..Default::default() }).unwrap();
    thread::sleep(Duration::from_millis(80));
    assert!(q
        .enqueue("u", vec![b"6".to_vec()], EnqueueOpts { unique: Some(("t".into(), 50)), ..Default::default() })
        .unwrap()[0]
        .is_some());

    // Operator ops.
    let ids: Vec<String> =
        q.enqueue("o", payloads(5, "o"), EnqueueOpts::default()).unwrap().into_iter().flatten().collect();
    q.enqueue("o", vec![b"later".to_vec()], EnqueueOpts { delay_ms: Some(60_000), ..Default::default() }).unwrap();
    assert_eq!(
        q.peek("o", "ready", 1, 2).unwrap().iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ids[1..3].to_vec()
    );
    assert_eq!(q.peek("o", "delayed", 0, 10).unwrap()[0].state, "delayed");
    let d = q.fetch(&qs("o"), "w9", 2, None, None).unwrap().unwrap();
    let inflight = q.peek("o", "inflight", 0, 10).unwrap();
    assert_eq!((inflight.len(), inflight[0].worker.as_str(), inflight[0].token.len()), (2, "w9", 16));
    q.fail("o", &d[0].id, &d[0].token, "bad", None).unwrap();
    let g = q.get("o", &d[0].id).unwrap().unwrap();
    assert_eq!((g.state.as_str(), g.error.as_str()), ("dead", "bad"));
    assert_eq!(q.retry_dead("o", None).unwrap(), 1);
    let g = q.get("o", &d[0].id).unwrap().unwrap();
    assert_eq!((g.state.as_str(), g.attempt), ("ready", 0));
    assert_eq!(q.delete("o", vec![ids[2].clone(), d[1].id.clone()]).unwrap(), 1, "in-flight tasks are kept");
    assert!(q.get("o", "missing").unwrap().is_none());
    assert_eq!(q.clear("o", "ready").unwrap(), 4);
    assert_eq!(q.clear("o", "all").unwrap(), 1);
    assert!(q.clear("o", "bogus").is_err());
    let i = info(&q, "o");
    assert_eq!((i["ready"], i["delayed"], i["inflight"], i["dead"]), (0, 0, 0, 0));

    // Results with a TTL.
    q.store_result("r1", b"{\"v\":1}".to_vec(), 60_000).unwrap();
    q.store_result("r2", b"{}".to_vec(), 30).unwrap();
    assert_eq!(q.get_result("r1").unwrap().as_deref(), Some(&b"{\"v\":1}"[..]));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(q.get_result("r2").unwrap(), None);
    let m: HashMap<_, _> = q.maintain().unwrap().into_iter().collect();
    assert_eq!(m["results_purged"], 1);
    // Counters survive folding.
    assert_eq!(info(&q, "u")["enqueued_total"], 4);

    // The psycopg form of the enqueue SQL has %s placeholders only.
    let sql = vtasks_pg::ops::enqueue_sql_psycopg();
    assert!(!sql.contains('$') && sql.matches("%s").count() == 10);
}

#[test]
fn migrations_apply_twice_and_concurrently() {
    let db = TestDb::new();
    let mut hs = vec![];
    for _ in 0..3 {
        let dsn = db.dsn.clone();
        hs.push(thread::spawn(move || vtasks_pg::PgQueue::new(&dsn, Config::default()).unwrap().migrate().unwrap()));
    }
    for h in hs {
        h.join().unwrap();
    }
    // Raw SQL, as the Django migration runs it.
    let mut c = db.client();
    for (_, _, sql) in vtasks_pg::MIGRATIONS {
        c.batch_execute(sql).unwrap();
    }
    let v: i64 = c.query_one("SELECT count(*) FROM vtasks_schema", &[]).unwrap().get(0);
    assert_eq!(v, vtasks_pg::MIGRATIONS.len() as i64);
}
