//! Behind PgBouncer in transaction pooling mode the adapter keeps its semantics. PgBouncer 1.18
//! (Debian 12) has no prepared-statement support, so this also proves every statement is unnamed
//! and nothing depends on session state: many client connections share 2 server connections.
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vtasks_pg::{AsyncPgQueue, Config, EnqueueOpts, PgQueue};

/// Server connections PgBouncer may open per database (its `default_pool_size`).
const SERVER_POOL: i64 = 2;

/// A throwaway PgBouncer (scripts/pgbouncer-server) in front of the test cluster.
struct Bouncer {
    dir: PathBuf,
    base: String,
}

impl Bouncer {
    fn start(db: &TestDb) -> Bouncer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pgbouncer-server");
        let pg: postgres::Config = db.dsn.parse().expect("test DSN");
        let host = match pg.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_string(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
        let dir = std::env::temp_dir().join(format!("vtasks-pgbouncer-{}", uniq()));
        let mut cmd = Command::new(&script);
        cmd.args(["start", dir.to_str().unwrap(), &host, &port, &SERVER_POOL.to_string()]);
        cmd.env("PGB_USER", pg.get_user().unwrap_or("postgres"));
        if let Some(pw) = pg.get_password() {
            cmd.env("PGB_PASSWORD", String::from_utf8_lossy(pw).to_string());
        }
        let out = cmd.output().expect("run scripts/pgbouncer-server");
        assert!(
            out.status.success(),
            "pgbouncer did not start (install it with `apt-get install pgbouncer`, as scripts/setup does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Bouncer { dir, base: String::from_utf8(out.stdout).unwrap().trim().to_string() }
    }

    fn dsn(&self, db: &TestDb) -> String {
        format!("{}/{}", self.base, db.name)
    }

    /// Client connections PgBouncer holds for `db` (its admin console: simple protocol only).
    fn clients(&self, db: &TestDb) -> i64 {
        let mut admin = postgres::Client::connect(&format!("{}/pgbouncer", self.base), postgres::NoTls).unwrap();
        let rows = admin.simple_query("SHOW CLIENTS").unwrap();
        rows.iter()
            .filter(
                |m| matches!(m, postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some(db.name.as_str())),
            )
            .count() as i64
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pgbouncer-server");
        let _ = Command::new(script).args(["stop", self.dir.to_str().unwrap()]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Server connections to `db` other than the asking one.
fn server_conns(admin: &mut postgres::Client, db: &TestDb) -> i64 {
    admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&db.name])
        .unwrap()
        .get(0)
}

/// Samples client and server connection counts until `stop`; returns the maxima.
fn sample(b: Arc<Bouncer>, db: Arc<TestDb>, stop: Arc<AtomicBool>) -> thread::JoinHandle<(i64, i64)> {
    thread::spawn(move || {
        let mut admin = db.client();
        let (mut clients, mut servers) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            clients = clients.max(b.clients(&db));
            servers = servers.max(server_conns(&mut admin, &db));
            thread::sleep(Duration::from_millis(10));
        }
        (clients, servers)
    })
}

fn info(q: &PgQueue, queue: &str) -> HashMap<&'static str, i64> {
    q.info(queue).unwrap().into_iter().collect()
}

fn no_notify(pool_size: u32) -> Config {
    // LISTEN needs a session: behind a transaction pooler wake-ups come from polling alone.
    Config { pool_size, notify: false, ..cfg() }
}

#[test]
fn sync_semantics_through_a_transaction_pooler() {
    let db = Arc::new(TestDb::new());
    let b = Arc::new(Bouncer::start(&db));
    let q = Arc::new(PgQueue::new(&b.dsn(&db), no_notify(8)).unwrap());
    q.migrate().unwrap(); // idempotent, transaction-scoped lock: fine behind the pooler

    // 1,000 tasks in bulk, 10 of them doomed to fail, 5 urgent ones; a unique key; a delayed task.
    for batch in 0..10 {
        let mut p = payloads(99, &format!("ok{batch}"));
        p.push(format!("fail-{batch}").into_bytes());
        q.enqueue("pb", p, EnqueueOpts::default()).unwrap();
    }
    q.enqueue("pb", payloads(5, "urgent"), EnqueueOpts { priority: 50, ..Default::default() }).unwrap();
    let u = || EnqueueOpts { unique: Some(("once".to_string(), 60_000)), ..Default::default() };
    assert!(q.enqueue("pb", vec![b"unique".to_vec()], u()).unwrap()[0].is_some());
    assert_eq!(q.enqueue("pb", vec![b"unique".to_vec()], u()).unwrap(), vec![None], "unique key holds");
    q.enqueue("pb", vec![b"later".to_vec()], EnqueueOpts { delay_ms: Some(300), ..Default::default() }).unwrap();
    let total = 1_000 + 5 + 1 + 1;

    // The first fetch takes the urgent tasks first.
    let first = q.fetch(&["pb".to_string()], "w-first", 5, None, None).unwrap().unwrap();
    assert!(first.iter().all(|d| d.payload.starts_with(b"urgent")), "priority order through the pooler");
    let pairs: Vec<_> = first.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("pb", &pairs).unwrap(), 5);

    // Six consumers on one client pool (up to 8 client connections) over 2 server connections.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(b.clone(), db.clone(), stop.clone());
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let done = Arc::new(AtomicI64::new(5));
    let mut hs = vec![];
    for w in 0..6 {
        let (q, seen, done) = (q.clone(), seen.clone(), done.clone());
        hs.push(thread::spawn(move || {
            let t0 = Instant::now();
            while done.load(Ordering::SeqCst) < total && t0.elapsed() < Duration::from_secs(60) {
                let Some(got) = q.fetch(&["pb".to_string()], &format!("w{w}"), 7, Some(30_000), Some(200)).unwrap()
                else {
                    continue;
                };
                let mut acks = vec![];
                for d in &got {
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    if d.payload.starts_with(b"fail-") {
                        assert_eq!(q.fail("pb", &d.id, &d.token, "boom", None).unwrap().as_deref(), Some("dead"));
                    } else {
                        acks.push((d.id.clone(), d.token.clone()));
                    }
                }
                let acked = q.ack("pb", &acks).unwrap();
                assert_eq!(acked, acks.len() as i64, "fresh tokens ack");
                done.fetch_add(got.len() as i64, Ordering::SeqCst);
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (clients, servers) = sampler.join().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as i64 + 5, total, "every task delivered (the delayed one included)");
    assert!(seen.values().all(|&n| n == 1), "no task delivered twice");
    let i = info(&q, "pb");
    assert_eq!((i["ready"], i["delayed"], i["inflight"]), (0, 0, 0));
    assert_eq!((i["dead"], i["acked_total"]), (10, total - 10));
    // Not vacuous: the pooler really multiplexed more clients than it had server connections.
    assert!(servers <= SERVER_POOL, "{servers} server connections, pool is {SERVER_POOL}");
    assert!(clients > SERVER_POOL, "only {clients} client connections were seen at once");

    // Leases: rescue of expired leases and of a named worker, heartbeat, stale ack after a rescue.
    q.enqueue("pl", payloads(4, "l"), EnqueueOpts::default()).unwrap();
    let short = q.fetch(&["pl".to_string()], "gone", 2, Some(1), None).unwrap().unwrap();
    let held = q.fetch(&["pl".to_string()], "alive", 2, Some(60_000), None).unwrap().unwrap();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(q.extend("pl", "alive", 60_000).unwrap(), 2);
    assert_eq!(q.rescue("pl", None).unwrap(), 2, "only the expired leases");
    assert_eq!(q.rescue("pl", Some("alive")).unwrap(), 2, "the named worker's tasks");
    let stale: Vec<_> = short.iter().chain(&held).map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("pl", &stale).unwrap(), 0, "late acks do not delete redelivered tasks");
    let again = q.fetch(&["pl".to_string()], "w", 10, None, None).unwrap().unwrap();
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|d| d.attempt == 2));
}

#[test]
fn schedules_fire_once_per_tick_with_three_schedulers_through_the_pooler() {
    let db = TestDb::new();
    let b = Bouncer::start(&db);
    let q = PgQueue::new(&b.dsn(&db), no_notify(2)).unwrap();
    q.schedule_set("ps", "every100", b"tick".to_vec(), None, Some(100), 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let q = PgQueue::new(&b.dsn(&db), no_notify(2)).unwrap();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += q.schedule_tick().unwrap();
                    thread::sleep(Duration::from_millis(5));
                }
                n
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let fired: i64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    let mut c = db.client();
    let ticks: Vec<i64> = c
        .query("SELECT tick_ms FROM vtasks_schedule_tick WHERE name = 'every100' ORDER BY tick_ms", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tasks: i64 = c.query_one("SELECT count(*) FROM vtasks_task WHERE queue = 'ps'", &[]).unwrap().get(0);
    assert!((10..=17).contains(&ticks.len()), "{} ticks of a 100 ms schedule in 1.5 s", ticks.len());
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 100), "consecutive ticks, none twice: {ticks:?}");
    assert_eq!((tasks, fired), (ticks.len() as i64, ticks.len() as i64), "one task per tick");
}

// The sync admin client (TestDb) cannot run inside a runtime: build the runtime by hand.
#[test]
fn async_api_through_the_pooler_wakes_by_polling() {
    let db = TestDb::new();
    let b = Bouncer::start(&db);
    let dsn = b.dsn(&db);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let q = Arc::new(AsyncPgQueue::new(&dsn, no_notify(6)).unwrap());
        q.migrate().await.unwrap();
        let qs = vec!["pa".to_string()];
        // A blocked fetch is woken by an enqueue without LISTEN (polling every 50 ms).
        let waiter = {
            let (q, qs) = (q.clone(), qs.clone());
            tokio::spawn(async move { q.fetch(&qs, "w-block", 10, None, Some(5_000)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        q.enqueue("pa", payloads(3, "wake"), EnqueueOpts::default()).await.unwrap();
        let got = waiter.await.unwrap().expect("woken before the 5 s timeout");
        assert!(t.elapsed() < Duration::from_secs(2), "woken after {:?}", t.elapsed());
        let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
        assert_eq!(q.ack("pa", &pairs).await.unwrap(), 3);

        // Four concurrent consumers drain 400 tasks exactly once.
        for i in 0..4 {
            q.enqueue("pa", payloads(100, &format!("b{i}")), EnqueueOpts::default()).await.unwrap();
        }
        let consumers: Vec<_> = (0..4)
            .map(|w| {
                let (q, qs) = (q.clone(), qs.clone());
                tokio::spawn(async move {
                    let mut ids = vec![];
                    while let Some(got) = q.fetch(&qs, &format!("w{w}"), 9, None, Some(300)).await.unwrap() {
                        let pairs: Vec<_> = got.iter().map(|d| (d.id.clone(), d.token.clone())).collect();
                        assert_eq!(q.ack("pa", &pairs).await.unwrap(), pairs.len() as i64);
                        ids.extend(got.into_iter().map(|d| d.id));
                    }
                    ids
                })
            })
            .collect();
        let mut all = vec![];
        for c in consumers {
            all.extend(c.await.unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!((n, all.len()), (400, 400), "each task once");
        let info: HashMap<_, _> = q.info("pa").await.unwrap().into_iter().collect();
        assert_eq!((info["ready"], info["inflight"], info["acked_total"]), (0, 0, 403));
    });
}
