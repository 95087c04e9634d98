//! Client programs shipped in the `kiln` binary, kept apart from the
//! server: they talk to a server over the wire (gRPC or HTTP) like any
//! third-party client would, and the server never calls into them.
//!
//! - [`worker`]: `kiln worker`, a Remote Workers API bot.
//! - [`bench`]: `kiln bench`, the load generator behind BENCHMARKS.md.
//! - [`invocations`]: `kiln invocations`, the build-event query CLI.

pub mod bench;
pub mod invocations;
pub mod worker;
