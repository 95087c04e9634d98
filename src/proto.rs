//! Generated protocol code (build.rs compiles `proto/` into OUT_DIR), plus
//! short aliases for the packages kiln uses most.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

pub use self::build::bazel::remote::asset::v1 as asset;
pub use self::build::bazel::remote::execution::v2 as reapi;
pub use self::build::bazel::semver;
pub use self::build_event_stream as bep;
pub use self::google::bytestream;
pub use self::google::devtools::build::v1 as bes_v1;
pub use self::google::devtools::remoteworkers::v1test2 as remoteworkers;
pub use self::google::longrunning;
pub use self::kiln::v1 as kiln_v1;

/// The encoded descriptor set of every declaration in `proto/`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kiln_descriptor.bin"));
