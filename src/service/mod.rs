//! gRPC adapters: each method parses the request, looks up its instance, calls
//! domain code or the instance's stores, and maps the result back. Nothing in
//! here touches a backend directly.

pub mod action_cache;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod resource;
pub mod upload;

use crate::auth::Identity;

/// The caller a request was authenticated as (`None` when auth is off).
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Identity> {
    request.extensions().get::<Identity>().cloned()
}
