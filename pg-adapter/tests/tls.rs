//! TLS and connection settings against a real Postgres that only accepts TLS (scripts/pg-tls-server:
//! ssl=on, hostssl-only pg_hba, its own CA made with openssl; the server certificate names only
//! DNS:localhost). Each test starts its own server (nextest runs tests in separate processes).
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vtasks_pg::{AsyncPgQueue, Config, EnqueueOpts, PgQueue};

struct TlsServer {
    dir: PathBuf,
    port: u16,
    password: String,
}

impl TlsServer {
    fn start() -> TlsServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-tls-server");
        let dir = std::env::temp_dir().join(format!("vtasks-pg-tls-{}", common::uniq()));
        let out = Command::new(&script).arg("start").arg(&dir).output().expect("run scripts/pg-tls-server");
        assert!(out.status.success(), "pg-tls-server start failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        let password = std::fs::read_to_string(dir.join("password")).unwrap().trim().to_string();
        TlsServer { dir, port, password }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join("tls").join(name).display().to_string()
    }

    /// A key=value DSN for the password user `postgres` at `host`, plus `extra` settings.
    fn dsn(&self, host: &str, extra: &str) -> String {
        format!("host={host} port={} user=postgres password='{}' dbname=postgres {extra}", self.port, self.password)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-tls-server");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Migrates, then enqueues, fetches and acks one task: every step on a TLS connection (the server
/// refuses anything else).
fn roundtrip(q: &PgQueue, queue: &str) {
    q.migrate().expect("migrate over TLS");
    q.enqueue(queue, vec![b"tls".to_vec()], EnqueueOpts::default()).expect("enqueue");
    let got = q.fetch(&[queue.to_string()], "w", 1, None, Some(2000)).expect("fetch").expect("a delivery");
    assert_eq!(got[0].payload, b"tls");
    assert_eq!(q.ack(queue, &[(got[0].id.clone(), got[0].token.clone())]).unwrap(), 1);
}

/// The connection error of `dsn` (the pool connects lazily: the first statement reports it).
fn connect_error(dsn: &str) -> String {
    let q = PgQueue::new(dsn, Config::default()).expect("settings are valid");
    q.migrate().expect_err("the connection must be refused").to_string()
}

#[test]
fn verify_full_accepts_the_named_host_and_rejects_another_name_or_ca() {
    let s = TlsServer::start();
    let ca = s.file("ca.crt");
    // verify-full: the CA signed the certificate and it names `localhost`
    roundtrip(
        &PgQueue::new(&s.dsn("localhost", &format!("sslmode=verify-full sslrootcert={ca}")), Config::default())
            .unwrap(),
        "full",
    );

    // the same server reached as 127.0.0.1, an address the certificate does not name
    let e = connect_error(&s.dsn("127.0.0.1", &format!("sslmode=verify-full sslrootcert={ca}")));
    assert!(e.contains("127.0.0.1:") && e.contains("not valid for name"), "{e}");
    assert!(e.contains("sslmode=verify-ca"), "the message says what to change: {e}");
    assert!(!e.contains(&s.password), "no password in errors: {e}");
    // verify-ca checks the chain but not the name (libpq)
    roundtrip(
        &PgQueue::new(&s.dsn("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={ca}")), Config::default()).unwrap(),
        "ca",
    );

    // a CA that did not sign the server's certificate: refused by every verifying mode, and by
    // require too once a root certificate is given (libpq then verifies the chain)
    let other = s.file("other-ca.crt");
    for mode in ["verify-full", "verify-ca", "require"] {
        let e = connect_error(&s.dsn("localhost", &format!("sslmode={mode} sslrootcert={other}")));
        assert!(e.contains("UnknownIssuer") && e.contains("point sslrootcert at the CA"), "{mode}: {e}");
        assert!(!e.contains(&s.password), "no password in errors: {e}");
    }
}

#[test]
fn require_and_prefer_encrypt_disable_is_refused_clearly() {
    let s = TlsServer::start();
    // require without a root certificate encrypts but does not verify (libpq): any host name
    roundtrip(&PgQueue::new(&s.dsn("127.0.0.1", "sslmode=require"), Config::default()).unwrap(), "req");
    // the default (prefer) uses TLS when the server offers it; URL form with query parameters
    let url = format!("postgresql://postgres:{}@127.0.0.1:{}/postgres?application_name=tls-test", s.password, s.port);
    roundtrip(&PgQueue::new(&url, Config::default()).unwrap(), "prefer");

    let e = connect_error(&s.dsn("127.0.0.1", "sslmode=disable connect_timeout=2"));
    assert!(e.contains("no encryption") && e.contains("only accepts TLS"), "{e}");
    assert!(!e.contains(&s.password), "no password in errors: {e}");
}

#[test]
fn client_certificate_is_sent_and_async_pool_and_listen_use_tls() {
    let s = TlsServer::start();
    let (ca, crt, key) = (s.file("ca.crt"), s.file("client.crt"), s.file("client.key"));
    // vtcert may only log in with a client certificate (clientcert=verify-full, CN=vtcert)
    let cert_dsn = |extra: &str| {
        format!(
            "host=localhost port={} user=vtcert dbname=postgres sslmode=verify-full sslrootcert={ca} {extra}",
            s.port
        )
    };
    roundtrip(&PgQueue::new(&cert_dsn(&format!("sslcert={crt} sslkey={key}")), Config::default()).unwrap(), "cert");
    let e = connect_error(&cert_dsn(""));
    assert!(e.contains("requires a valid client certificate") && e.contains("set sslcert and sslkey"), "{e}");

    // the async pool and its LISTEN connection: a blocked fetch is woken by an enqueue
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build().unwrap();
    let dsn = s.dsn("localhost", &format!("sslmode=verify-full sslrootcert={ca}"));
    rt.block_on(async move {
        let q = std::sync::Arc::new(AsyncPgQueue::new(&dsn, Config::default()).unwrap());
        q.migrate().await.expect("async migrate over TLS");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.fetch(&["aq".to_string()], "w", 1, None, Some(20_000)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.enqueue("aq", vec![b"a".to_vec()], EnqueueOpts::default()).await.unwrap();
        let got = waiter.await.unwrap().unwrap().expect("the blocked fetch gets the task");
        assert_eq!(got[0].payload, b"a");
        let bad =
            AsyncPgQueue::new(&s.dsn("127.0.0.1", &format!("sslmode=verify-full sslrootcert={ca}")), Config::default())
                .unwrap();
        let e = bad.migrate().await.expect_err("wrong host name").to_string();
        assert!(e.contains("not valid for name"), "{e}");
    });
}

#[test]
fn dead_server_is_reported_within_connect_timeout() {
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres password=sekrit-pw connect_timeout=2");
    let t = Instant::now();
    let e = connect_error(&dsn);
    let took = t.elapsed();
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("refused"), "{e}");
    assert!(e.contains("is Postgres running there"), "the message says what to check: {e}");
    assert!(!e.contains("sekrit-pw"), "no password in errors: {e}");
    // connect_timeout (2 s) + 1 s, against the pool's 15 s before; generous for a loaded box
    assert!(took < Duration::from_secs(12), "took {took:?}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(async {
        AsyncPgQueue::new(&dsn, Config::default()).unwrap().migrate().await.unwrap_err().to_string()
    });
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("refused") && !e.contains("sekrit-pw"), "{e}");
}
