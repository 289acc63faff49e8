//! cutover's PostgreSQL work: connecting with identical session settings,
//! inspecting both databases, and the database stages (discover, backup,
//! freeze, clear, copy, verify).

pub mod backup;
pub mod clear;
pub mod connect;
pub mod copy;
pub mod discover;
pub mod fence;
pub mod freeze;
pub mod inventory;
pub mod online;
pub mod rehearsal;
pub mod roles;
pub mod security;
pub mod target_objects;
pub mod tools;
pub mod verify;

pub use connect::Databases;
