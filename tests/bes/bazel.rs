//! Real Bazel 4.2.3 publishing to kiln with --bes_backend and --remote_cache:
//! what kiln serves agrees with Bazel's own --build_event_json_file.
