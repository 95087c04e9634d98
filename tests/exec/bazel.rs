//! Bazel 4.2.3 with --remote_executor against kiln and two workers.
