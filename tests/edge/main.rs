//! The server edge: TLS and mTLS, health, reflection, compression.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod health;
mod http_front;
mod tls;
mod traces;
