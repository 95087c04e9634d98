//! gRPC adapters: each method parses the request, looks up its instance, calls
//! domain code or the instance's stores, and maps the result back. Nothing in
//! here touches a backend directly.

pub mod action_cache;
pub mod asset;
pub mod bots;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod execution;
pub mod operations;

pub(crate) use crate::edge::caller::caller;
