//! Hostile and broken clients, black-box: each test sends what an attacker
//! (or a buggy client) would, asserts the precise gRPC status, and checks
//! that kiln keeps serving, kept its memory, and stored nothing it should
//! not have. One module per kind of abuse; README's "Security model" says
//! what these guarantee.

#[path = "../common/mod.rs"]
mod common;

mod authz;
mod confinement;
mod integrity;
mod memory;
mod startup;
mod worker;
