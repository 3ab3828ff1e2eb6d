//! Connection settings: a libpq DSN (URL or key=value form) → a tokio-postgres `Config` and a
//! rustls connector that gives `sslmode`, `sslrootcert`, `sslcert` and `sslkey` libpq's meaning.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and no certificate files (it calls
//! `verify-full` a bad option), so those keys are taken out of the DSN here and the rest is left
//! to tokio-postgres's own parser. The rules (libpq's, see README "Postgres: connection settings"):
//! - `disable`: plaintext. `allow` and `prefer` (the default): TLS when the server offers it.
//!   `require`: TLS or no connection.
//! - The server's certificate chain is verified when a root certificate is known (`sslrootcert`,
//!   else `~/.postgresql/root.crt` if it exists), in every TLS mode; `verify-ca`/`verify-full`
//!   without one are refused. Only `verify-full` also checks that the host is named in the
//!   certificate. `sslrootcert=system` uses the operating system's roots and needs `verify-full`.
//! - A client certificate is sent when `sslcert` (else `~/.postgresql/postgresql.crt`) exists,
//!   with `sslkey` (else `~/.postgresql/postgresql.key`).
//! - `connect_timeout` (seconds, default 5, minimum 2 as in libpq) bounds each connection attempt.
//! - Settings the DSN leaves out come from libpq's environment variables (see [`settings`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as WireSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// Used when the DSN gives no `connect_timeout` (libpq would wait forever; a worker should not).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a pool needs to open a connection.
#[derive(Clone)]
pub(crate) struct Settings {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// Bound of one whole connection attempt (socket, TLS handshake, authentication).
    pub connect_timeout: Duration,
}

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<Self> {
        Ok(match v {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plaintext first; tokio-postgres cannot, so TLS is preferred
            // (never weaker than asked).
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(Error::Invalid(
                    "bad dsn: sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full".into(),
                ))
            }
        })
    }
}

/// The TLS keys of a DSN (taken out before tokio-postgres parses the rest).
#[derive(Default, Debug, PartialEq, Eq)]
struct TlsKeys {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsKeys {
    /// Takes `key` if it is a TLS key; `Ok(false)` leaves it to tokio-postgres.
    fn take(&mut self, key: &str, value: String) -> Result<bool> {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "sslpassword" => {
                return Err(Error::Invalid(
                    "bad dsn: sslpassword is not supported: give sslkey an unencrypted key file \
                     (openssl pkey -in encrypted.key -out client.key), readable only by the worker's user"
                        .into(),
                ))
            }
            "sslcrl"
            | "sslcrldir"
            | "sslcertmode"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "sslcompression"
            | "sslsni"
            | "requiressl"
            | "gssencmode"
            | "service"
            | "passfile" => {
                return Err(Error::Invalid(format!(
                    "bad dsn: the connection setting `{key}` is not supported by the vtasks Postgres pool; \
                     remove it (see README, \"Postgres: connection settings\")"
                )))
            }
            _ => return Ok(false),
        };
        *slot = Some(value);
        Ok(true)
    }
}

/// Parses `dsn` into connection settings; nothing is connected. Error messages never repeat a
/// value from the DSN (it may hold a password). As libpq, a setting the DSN leaves out is taken
/// from its environment variable (`PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD`,
/// `PGOPTIONS`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
/// `PGSSLKEY`), so the workers connect as psycopg does for Django; no host at all means the
/// local Unix sockets (`/var/run/postgresql`, then `/tmp`).
pub(crate) fn settings(dsn: &str) -> Result<Settings> {
    settings_in(dsn, &|k| std::env::var(k).ok())
}

fn settings_in(dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let (rest, mut keys) = split_tls_keys(dsn)?;
    let mut pg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        Error::Invalid(format!(
            "bad dsn: {e} (settings: host, hostaddr, port, dbname, user, password, options, application_name, \
             connect_timeout, sslmode, sslrootcert, sslcert, sslkey, sslnegotiation, channel_binding, \
             target_session_attrs, tcp_user_timeout, keepalives*, load_balance_hosts)"
        ))
    })?;
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        match env("PGHOST") {
            Some(hosts) => hosts.split(',').for_each(|h| {
                pg.host(h.trim());
            }),
            None => {
                pg.host("/var/run/postgresql").host("/tmp");
            }
        }
    }
    if pg.get_ports().is_empty() {
        if let Some(ports) = env("PGPORT") {
            for p in ports.split(',') {
                pg.port(p.trim().parse().map_err(|_| Error::Invalid("bad PGPORT: not a port number".into()))?);
            }
        }
    }
    if pg.get_dbname().is_none() {
        if let Some(v) = env("PGDATABASE") {
            pg.dbname(&v);
        }
    }
    if pg.get_user().is_none() {
        if let Some(v) = env("PGUSER") {
            pg.user(&v);
        }
    }
    if pg.get_password().is_none() {
        if let Some(v) = env("PGPASSWORD") {
            pg.password(v);
        }
    }
    if pg.get_options().is_none() {
        if let Some(v) = env("PGOPTIONS") {
            pg.options(&v);
        }
    }
    if pg.get_application_name().is_none() {
        pg.application_name(env("PGAPPNAME").as_deref().unwrap_or("vtasks"));
    }
    if pg.get_connect_timeout().is_none() {
        if let Some(t) = env("PGCONNECT_TIMEOUT") {
            let secs: u64 = t
                .trim()
                .parse()
                .map_err(|_| Error::Invalid("bad PGCONNECT_TIMEOUT: not a number of seconds".into()))?;
            if secs > 0 {
                pg.connect_timeout(Duration::from_secs(secs));
            }
        }
    }
    for (slot, var) in [
        (&mut keys.sslmode, "PGSSLMODE"),
        (&mut keys.sslrootcert, "PGSSLROOTCERT"),
        (&mut keys.sslcert, "PGSSLCERT"),
        (&mut keys.sslkey, "PGSSLKEY"),
    ] {
        if slot.is_none() {
            *slot = env(var);
        }
    }
    // libpq: 0 or unset waits forever, 1 means 2. A pool must not wait forever: unset or 0 is 5 s.
    let connect_timeout = match pg.get_connect_timeout() {
        Some(t) => (*t).max(Duration::from_secs(2)),
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    pg.connect_timeout(connect_timeout);

    let home = env("HOME").map(PathBuf::from);
    let mut mode = keys.sslmode.as_deref().map(SslMode::parse).transpose()?;
    let roots = match keys.sslrootcert.as_deref() {
        Some("system") => {
            // libpq: sslrootcert=system implies verify-full and refuses weaker modes.
            match mode {
                None | Some(SslMode::VerifyFull) => mode = Some(SslMode::VerifyFull),
                Some(_) => {
                    return Err(Error::Invalid(
                        "bad dsn: sslrootcert=system needs sslmode=verify-full (or no sslmode)".into(),
                    ))
                }
            }
            Some(system_roots()?)
        }
        Some(path) => Some(load_roots(Path::new(path), "sslrootcert")?),
        None => match home.as_ref().map(|h| h.join(".postgresql/root.crt")) {
            Some(p) if p.exists() => Some(load_roots(&p, "the default root certificate")?),
            _ => None,
        },
    };
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_none() {
        return Err(Error::Invalid(
            "bad dsn: sslmode=verify-ca/verify-full needs the CA that signed the server's certificate: \
             set sslrootcert to its PEM file (or sslrootcert=system for the system's trusted roots), or \
             put it in ~/.postgresql/root.crt"
                .into(),
        ));
    }
    let client = client_identity(&keys, home.as_deref())?;

    // libpq never uses TLS on Unix-domain sockets and ignores sslmode there.
    let all_unix = !pg.get_hosts().is_empty()
        && pg.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)))
        && pg.get_hostaddrs().is_empty();
    pg.ssl_mode(match mode {
        _ if all_unix => WireSslMode::Disable,
        SslMode::Disable => WireSslMode::Disable,
        SslMode::Prefer => WireSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
    });
    let tls = MakeRustlsConnect::new(client_config(mode, roots, client)?);
    Ok(Settings { pg, tls, connect_timeout })
}

/// Splits the TLS keys out of a DSN; returns the rest in the same form.
fn split_tls_keys(dsn: &str) -> Result<(String, TlsKeys)> {
    let mut keys = TlsKeys::default();
    let dsn = dsn.trim();
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        // tokio-postgres ends the credentials at the first '@', so a '?' before it is a password's.
        let scheme_end = dsn.find("://").map(|i| i + 3).unwrap_or(0);
        let after_creds = dsn[scheme_end..].find('@').map(|i| scheme_end + i + 1).unwrap_or(scheme_end);
        let Some(q) = dsn[after_creds..].find('?').map(|i| after_creds + i) else {
            return Ok((dsn.to_string(), keys));
        };
        let mut kept: Vec<&str> = Vec::new();
        for piece in dsn[q + 1..].split('&') {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            let key = decode(k)?;
            if !keys.take(&key, decode(v)?)? {
                kept.push(piece);
            }
        }
        let mut rest = dsn[..q].to_string();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        return Ok((rest, keys));
    }
    let mut rest = String::new();
    for (key, value) in key_values(dsn)? {
        if !keys.take(&key, value.clone())? {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push_str("='");
            rest.push_str(&value.replace('\\', "\\\\").replace('\'', "\\'"));
            rest.push('\'');
        }
    }
    Ok((rest, keys))
}

fn decode(s: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::Invalid("bad dsn: a query parameter is not valid percent-encoded UTF-8".into()))
}

/// libpq's `key = value` list: values may be single-quoted; a backslash escapes the next char.
fn key_values(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(Error::Invalid(format!("bad dsn: missing \"=\" after \"{key}\"")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\\') => value.extend(it.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(Error::Invalid(format!("bad dsn: unterminated quoted value of \"{key}\""))),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: &Path, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = read_certs(path, what)?;
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() || bad > 0 {
        return Err(Error::Invalid(format!(
            "{what} {}: not a PEM file of CA certificates (BEGIN CERTIFICATE blocks)",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(Error::Invalid(
            "sslrootcert=system: no trusted root certificates found on this system \
             (install ca-certificates, or set SSL_CERT_FILE, or give sslrootcert a file)"
                .into(),
        ));
    }
    Ok(roots)
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("{what} {}: cannot read it: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "{what} {}: no certificate in it (expected PEM BEGIN CERTIFICATE blocks)",
            path.display()
        )));
    }
    Ok(certs)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key, when one is configured (or libpq's default files exist).
fn client_identity(keys: &TlsKeys, home: Option<&Path>) -> Result<Option<Identity>> {
    let default = |name: &str| home.map(|h| h.join(".postgresql").join(name));
    let cert = match &keys.sslcert {
        Some(p) => PathBuf::from(p),
        None => match default("postgresql.crt") {
            Some(p) if p.exists() => p,
            _ if keys.sslkey.is_some() => {
                return Err(Error::Invalid("bad dsn: sslkey is set but sslcert is not: give both".into()))
            }
            _ => return Ok(None),
        },
    };
    let key = match &keys.sslkey {
        Some(p) => PathBuf::from(p),
        None => default("postgresql.key")
            .ok_or_else(|| Error::Invalid("bad dsn: sslcert is set but sslkey is not: give both".into()))?,
    };
    let certs = read_certs(&cert, "sslcert")?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no unencrypted private key in it (PEM PRIVATE KEY; an encrypted key must be decrypted first: \
                 openssl pkey -in encrypted.key -out client.key)"
                    .to_string()
            }
            e => format!("cannot read it: {e}"),
        };
        Error::Invalid(format!("sslkey {}: {why}", key.display()))
    })?;
    Ok(Some((certs, key)))
}

fn client_config(mode: SslMode, roots: Option<RootCertStore>, client: Option<Identity>) -> Result<ClientConfig> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| Error::Invalid(format!("sslrootcert: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        None => Arc::new(Unverified(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            Error::Invalid(format!("sslcert/sslkey: the key does not fit the certificate or is not usable: {e}"))
        })?,
        None => builder.with_no_client_auth(),
    };
    // Postgres 17 checks the ALPN name on direct TLS (sslnegotiation=direct); libpq 17 always sends it.
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(cfg)
}

/// `verify-ca` (and `prefer`/`require` with a root certificate): the chain must lead to a trusted
/// root, but the host name is not checked. The chain is checked first, so only a name mismatch is
/// forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate: encrypted, but the server is not authenticated
/// (libpq's behaviour). The handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_leave_the_key_value_form() {
        let (rest, keys) = split_tls_keys(
            "host=db.example port=5433 sslmode=verify-full sslrootcert='/etc/ca dir/root.crt' password='p\\'w d' options='-c search_path=x'",
        )
        .unwrap();
        assert_eq!(keys.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(keys.sslrootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        let pg = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(pg.get_password(), Some(&b"p'w d"[..]));
        assert_eq!(pg.get_options(), Some("-c search_path=x"));
        assert_eq!(pg.get_ports(), &[5433]);
    }

    #[test]
    fn tls_keys_leave_the_url_form() {
        let (rest, keys) = split_tls_keys(
            "postgresql://u:p%3Fa@db.example:5433/app?sslmode=verify-ca&application_name=w&sslcert=%2Ftmp%2Fc.crt&sslkey=/tmp/c.key",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:p%3Fa@db.example:5433/app?application_name=w");
        assert_eq!(keys.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(keys.sslcert.as_deref(), Some("/tmp/c.crt"));
        assert_eq!(keys.sslkey.as_deref(), Some("/tmp/c.key"));
        let (rest, _) = split_tls_keys("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
    }

    #[test]
    fn bad_dsns_say_what_is_wrong_without_echoing_values() {
        let e = settings("host=h password=hunter2 sslmode=verify-everything").err().unwrap().to_string();
        assert!(e.contains("sslmode must be one of"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = settings("host=h password='hunter2").err().unwrap().to_string();
        assert!(e.contains("unterminated") && !e.contains("hunter2"), "{e}");
        let e = settings("host=h password=hunter2 sslmode=verify-full sslrootcert=/nonexistent/root.crt")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/root.crt") && !e.contains("hunter2"), "{e}");
        let e = settings("host=h sslmode=require sslrootcert=system").err().unwrap().to_string();
        assert!(e.contains("verify-full"), "{e}");
        let e = settings("host=h sslcrl=/x").err().unwrap().to_string();
        assert!(e.contains("`sslcrl` is not supported"), "{e}");
    }

    #[test]
    fn connect_timeout_defaults_to_a_few_seconds() {
        assert_eq!(settings("host=h").unwrap().connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(settings("host=h connect_timeout=0").unwrap().connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(settings("host=h connect_timeout=1").unwrap().connect_timeout, Duration::from_secs(2));
        assert_eq!(settings("host=h connect_timeout=30").unwrap().connect_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unset_settings_come_from_the_libpq_environment() {
        let vars = |k: &str| {
            Some(
                match k {
                    "PGHOST" => "db1.example,db2.example",
                    "PGPORT" => "6432",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGDATABASE" => "envdb",
                    "PGSSLMODE" => "require",
                    "PGCONNECT_TIMEOUT" => "7",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let s = settings_in("user=dsnuser", &vars).unwrap();
        assert_eq!(s.pg.get_user(), Some("dsnuser"), "the DSN wins");
        assert_eq!(s.pg.get_password(), Some(&b"envpw"[..]));
        assert_eq!(s.pg.get_dbname(), Some("envdb"));
        assert_eq!(s.pg.get_hosts().len(), 2);
        assert_eq!(s.pg.get_ports(), &[6432]);
        assert_eq!(s.pg.get_ssl_mode(), WireSslMode::Require);
        assert_eq!(s.connect_timeout, Duration::from_secs(7));
        // nothing anywhere: the local Unix sockets, where libpq looks
        let s = settings_in("", &|_| None).unwrap();
        assert!(s.pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_))), "{:?}", s.pg.get_hosts());
        assert_eq!(s.pg.get_ssl_mode(), WireSslMode::Disable);
    }

    #[test]
    fn sslmode_maps_to_the_wire_mode() {
        let mode = |dsn: &str| settings(dsn).unwrap().pg.get_ssl_mode();
        assert_eq!(mode("host=h"), WireSslMode::Prefer);
        assert_eq!(mode("host=h sslmode=disable"), WireSslMode::Disable);
        assert_eq!(mode("host=h sslmode=require"), WireSslMode::Require);
        // libpq ignores sslmode on Unix-domain sockets
        assert_eq!(mode("host=/var/run/postgresql sslmode=require"), WireSslMode::Disable);
    }
}
