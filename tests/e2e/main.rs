//! cutover's end-to-end tests: one test binary, real PostgreSQL servers from
//! the test kit, the real `cutover` binary.

mod architecture;
mod bad_input;
mod cli;
mod consumers;
mod cutover;
mod engine;
mod forms;
mod kit;
mod online;
mod pgbouncer;
mod production;
mod reliability;
mod roles;
mod snapshots;
mod support;
