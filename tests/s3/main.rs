//! kiln on a real S3-compatible server (SeaweedFS, started per test): the
//! store contract, two kiln processes sharing a bucket (and Bazel through
//! them), outages, aborted multipart uploads, conditional writes and the
//! existence cache.

#[path = "../common/mod.rs"]
mod common;

mod config_and_bench;
mod faults;
mod shared_bucket;
mod store;
