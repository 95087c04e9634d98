//! The Build Event Service end to end: a synthetic Bazel (and, in bazel.rs,
//! the real one) publishes; kiln acknowledges only what it stored, resumes
//! reconnecting clients, and serves summaries and events over HTTP and gRPC.
//! The suite runs on SQLite and on a real PostgreSQL.

#[path = "../common/mod.rs"]
mod common;

mod bazel;
mod durability;
mod pages;
mod suite;
