//! logbook: an append-only journal over HTTP on embedded SQLite.

pub mod archive;
pub mod build_info;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod server;
pub mod storage;
pub mod telemetry;
