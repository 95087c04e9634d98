//! Remote execution end to end: kiln with real `kiln worker` processes,
//! driven by our own client (suite.rs, on SQLite, PostgreSQL and the
//! in-memory store), by BuildGrid's `bgd execute` (bgd.rs) and by a real
//! Bazel with `--remote_executor` (bazel.rs).

#[path = "../common/mod.rs"]
mod common;

mod bazel;
mod bgd;
mod cache;
mod demand;
mod drain;
mod formats;
mod images;
mod lost_leases;
mod pods;
mod reexecution;
mod runner;
mod suite;
mod traces;
mod usage;
