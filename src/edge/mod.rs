//! The server edge: every tower layer a call passes before it reaches a
//! service, outermost first (the order `app` stacks them in):
//!
//! 1. [`trace`]: the call's span, child of the client's `traceparent`;
//!    outermost so refused calls are traced too.
//! 2. [`metrics`]: counts, latency, bytes and in-flight calls; outside auth
//!    so refused calls are counted.
//! 3. [`auth`]: the caller's identity, or UNAUTHENTICATED before any
//!    service work.
//! 4. [`limits`]: per-identity rates and the global in-flight cap; inside
//!    auth, because the identity is what it limits.
//!
//! All four are [`layer::EdgeLayer`]s over their own state. [`caller`] is
//! what they leave for the services; [`http_auth`] is the
//! HTTP listener's equivalent of [`auth`].

pub mod auth;
pub mod caller;
pub mod http_auth;
pub mod layer;
pub mod limits;
pub mod metrics;
pub mod trace;

pub use caller::{CallInstance, Caller};
