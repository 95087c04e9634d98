//! kiln: a remote build cache, remote execution and build-event server
//! (REAPI v2) for Bazel and other clients.
//!
//! Crate map, in the direction a request flows (docs/ARCHITECTURE.md has
//! the whole picture). Public modules are what the binary, the integration
//! tests and the benches use; the rest is `pub(crate)`.
//!
//! Wiring and the edge
//! - `app`: the only wiring: build (config → stores → instances →
//!   services), serve, and the stop sequence.
//! - `edge`: the tower layers every call passes (trace, metrics, auth,
//!   limits) and the `Caller` they leave for services; HTTP auth.
//! - `http`: the HTTP listener's routes (`/metrics`, `/healthz`, build events).
//! - `ui`: the web pages on that listener (invocations, tests, timing,
//!   actions, operations), server-rendered.
//! - `tls`: the crypto provider and the server's certificates.
//!
//! Services and domain
//! - `service`: gRPC adapters, thin shells over instances and domain code.
//! - `instance`: what an `instance_name` selects: stores, tree cache, limits.
//! - `execution`: Execute's decision, bot sessions, the scheduler and its
//!   job stores, and the Command/Directory validation workers repeat.
//! - `bes`: the Build Event Service: ingestion, storage, summaries, queries,
//!   webhooks.
//! - `upload`: ByteStream uploads (the resumable spool); `resource`:
//!   ByteStream resource names.
//! - `tree`, `action_result`, `compression`: tree walks and the tree cache,
//!   action-result checks and inlining, zstd.
//! - `auth`: identities, grants and the per-instance policy.
//!
//! Storage
//! - `store`: the three-method `BlobStore` trait, its backends (memory, fs,
//!   s3), its layers, the builder and the contract suite.
//!
//! Client programs (never called by the server)
//! - `client`: `kiln worker`, `kiln bench`, `kiln invocations`.
//!
//! Foundations
//! - `config` (YAML types and validation, including the role names),
//!   `digest`, `error` (the one `From<Error> for Status`), `proto`
//!   (generated code), `sql` (connections and locked migrations),
//!   `metrics` (the registry components register into), `telemetry`, `time`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod action_result;
pub mod app;
pub(crate) mod asset;
pub(crate) mod auth;
pub mod bes;
pub(crate) mod budget;
pub mod chunking;
pub mod client;
pub(crate) mod compression;
pub mod config;
pub mod digest;
pub(crate) mod edge;
pub mod error;
pub(crate) mod execution;
pub(crate) mod http;
pub(crate) mod http_cache;
pub mod insights;
pub(crate) mod instance;
pub(crate) mod metrics;
pub mod proto;
pub mod resource;
pub(crate) mod service;
pub(crate) mod sql;
pub mod store;
pub mod telemetry;
pub(crate) mod text;
pub(crate) mod time;
pub mod tls;
pub(crate) mod tree;
pub(crate) mod ui;
pub(crate) mod upload;

#[cfg(test)]
mod proptests;
