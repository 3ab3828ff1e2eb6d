//! The async API (tokio-postgres + deadpool) against a real Postgres.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vtasks_pg::{AsyncPgQueue, Config, EnqueueOpts};

// The sync admin client (TestDb) cannot run inside a runtime: build the runtime by hand.
#[test]
fn async_flow() {
    let db = TestDb::new();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(flow(&db));
}

async fn flow(db: &TestDb) {
    let q = Arc::new(AsyncPgQueue::new(&db.dsn, Config::default()).unwrap());
    q.migrate().await.unwrap();
    let qs = vec!["aq".to_string()];
    assert!(q.fetch(&qs, "w", 5, None, None).await.unwrap().unwrap().is_empty());
    assert_eq!(q.fetch(&qs, "w", 5, None, Some(100)).await.unwrap(), None);

    // A blocked fetch is woken by an enqueue.
    let h = {
        let (q, qs) = (q.clone(), qs.clone());
        tokio::spawn(async move {
            let r = q.fetch(&qs, "w", 5, Some(10_000), Some(5000)).await.unwrap();
            (Instant::now(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let ids = q.enqueue("aq", payloads(3, "a"), EnqueueOpts::default()).await.unwrap();
    let (woke, got) = h.await.unwrap();
    let got = got.unwrap();
    assert!(woke.duration_since(t) < Duration::from_millis(1000));
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].id, ids[0].clone().unwrap());
    let pairs: Vec<_> = got[..2].iter().map(|d| (d.id.clone(), d.token.clone())).collect();
    assert_eq!(q.ack("aq", &pairs).await.unwrap(), 2);
    assert_eq!(q.fail("aq", &got[2].id, &got[2].token, "e", Some(0)).await.unwrap().as_deref(), Some("retry"));
    assert_eq!(q.extend("aq", "w", 1000).await.unwrap(), 0);
    let d = q.fetch(&qs, "w", 5, Some(10), None).await.unwrap().unwrap();
    assert_eq!(d[0].attempt, 2);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(q.rescue("aq", None).await.unwrap(), 1);
    let info: std::collections::HashMap<_, _> = q.info("aq").await.unwrap().into_iter().collect();
    assert_eq!((info["ready"], info["acked_total"], info["retried_total"], info["rescued_total"]), (1, 2, 1, 1));
    assert_eq!(q.peek("aq", "ready", 0, 10).await.unwrap().len(), 1);
    assert!(q.get("aq", &got[2].id).await.unwrap().is_some());
    assert_eq!(q.clear("aq", "all").await.unwrap(), 1);
    // every 1 s: the second tick comes well within the period even on a loaded machine
    q.schedule_set("aq", "s", b"p".to_vec(), None, Some(1000), 0).await.unwrap();
    assert_eq!(q.schedule_list("aq").await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1010)).await;
    assert_eq!(q.schedule_tick().await.unwrap(), 1);
    assert_eq!(q.schedule_tick().await.unwrap(), 0);
    assert!(q.schedule_del("aq", "s").await.unwrap());
    q.store_result("r", b"1".to_vec(), 10_000).await.unwrap();
    assert_eq!(q.get_result("r").await.unwrap().as_deref(), Some(&b"1"[..]));
    q.enqueue("aq", vec![b"ar".to_vec()], EnqueueOpts::default()).await.unwrap();
    let d = q.fetch(&qs, "w", 1, None, None).await.unwrap().unwrap().remove(0);
    let res = vec![(d.id.clone(), b"{\"ok\":1}".to_vec(), 10_000)];
    assert_eq!(q.ack_with_results("aq", &[(d.id.clone(), d.token.clone())], &res).await.unwrap(), 1);
    assert_eq!(q.get_result(&d.id).await.unwrap().as_deref(), Some(&b"{\"ok\":1}"[..]));
    q.store_results(&[("r2".to_string(), b"2".to_vec(), 10_000)]).await.unwrap();
    assert_eq!(q.get_result("r2").await.unwrap().as_deref(), Some(&b"2"[..]));
    q.maintain().await.unwrap();
    assert!(q.queues().await.unwrap().contains(&"aq".to_string()));

    // Connections killed under the pool: the next operations succeed.
    let (admin, conn) = tokio_postgres::connect(&db.dsn, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vtasks' AND datname = current_database()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(q.enqueue("aq", payloads(2, "b"), EnqueueOpts::default()).await.unwrap().len(), 2);
    assert_eq!(q.fetch(&qs, "w", 5, None, Some(1000)).await.unwrap().unwrap().len(), 3);
}

#[test]
fn a_dead_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(async {
        let q =
            AsyncPgQueue::new(&format!("postgres://postgres@127.0.0.1:{port}/postgres"), Config::default()).unwrap();
        q.enqueue("q", payloads(1, "x"), EnqueueOpts::default()).await.unwrap_err()
    });
    assert!(e.is_connection());
    let msg = e.to_string();
    // where it tried, why it failed, what to check
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(msg.contains("is Postgres running"), "{msg}");
}
