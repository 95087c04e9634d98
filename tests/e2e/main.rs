//! End-to-end tests: a real kiln on 127.0.0.1:0, driven by generated clients
//! the way Bazel and other REAPI clients drive it.

#[path = "../common/mod.rs"]
mod common;

mod action_cache;
mod asset;
mod asset_hostile;
mod bench;
mod bytestream;
mod cas;
mod chunking;
mod http_cache;
mod insights;
mod lifecycle;
mod operations;
mod restart;
