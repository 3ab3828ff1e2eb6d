//! The rules of PROTOCOL.md that both backends implement in Rust — the Valkey module
//! (`module/`) and the Postgres adapter (`pg-adapter/`, also behind the Python extension) — so
//! each rule has one definition.

pub mod cancel;
pub mod crontab;
pub mod limits;
pub mod token;
