//! kiln: a remote build cache (REAPI v2) for Bazel and other clients.
//!
//! Crate map, in the direction a request flows:
//! - [`app`]: wiring; builds everything and serves it.
//! - [`service`]: gRPC adapters, thin shells over instances.
//! - [`instance`]: per-`instance_name` stores and settings.
//! - [`bes`]: the Build Event Service, its storage, queries and webhooks.
//! - [`tree`], [`action_result`], [`compression`]: domain logic services call.
//! - [`store`]: the `BlobStore` trait, its backends and layers.
//! - [`bench`]: `kiln bench`, the load generator.
//! - [`auth`], [`limits`], [`rpc_metrics`], [`rpc_trace`]: tower layers at the edge.
//! - [`http`], [`http_auth`], [`metrics`]: the HTTP listener, its credentials check and what it serves.
//! - [`digest`], [`error`], [`config`], [`proto`], [`sql`], [`telemetry`]: foundations.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod action_result;
pub mod app;
pub mod auth;
pub mod bes;
pub mod client;
pub mod compression;
pub mod config;
pub mod digest;
pub mod edge;
pub mod error;
pub mod execution;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod proto;
pub mod resource;
pub mod service;
pub mod sql;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tree;
pub mod upload;

#[cfg(test)]
mod proptests;
