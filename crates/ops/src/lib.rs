//! cutover's work outside the databases: reading and rewriting the
//! configuration of every consumer (env files, YAML, scripts, custom
//! commands), reload and health hooks, the sync proof through each consumer,
//! and the drivers that retire the source.

pub mod conn;
pub mod consumer;
pub mod decommission;
pub mod files;
pub mod hooks;
pub mod locate;
pub mod online;
pub mod pgbouncer;
pub mod repoint;
pub mod scan;
pub mod sync;
