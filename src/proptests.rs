//! Property tests over every parser that sees client bytes: whatever a
//! client sends, each one answers (Ok or a precise error) and never panics,
//! and where a value round-trips it round-trips exactly. Each property runs
//! a fixed number of cases from a fixed seed, so the test command takes
//! seconds and fails the same way every time.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

fn config() -> Config {
    Config {
        cases: 2048,
        rng_seed: RngSeed::Fixed(0x6b69_6c6e),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings made of the characters parsers care about, plus anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._:=-]{0,40}",
        "(blobs|uploads|compressed-blobs|zstd|sha256|blake3|[0-9a-f]{64}|[0-9]{1,20}|/|x){0,8}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resource_names_never_panic(name in text()) {
        let _ = crate::resource::parse_read(&name);
        let _ = crate::resource::parse_write(&name);
    }

    #[test]
    fn resource_names_round_trip(
        instance in "([a-z]{1,8}(/[a-z]{1,8}){0,2})?",
        data in proptest::collection::vec(any::<u8>(), 0..64),
        upload in "[a-f0-9-]{1,36}",
    ) {
        let d = DigestFunction::Sha256.digest_of(&data);
        let prefix = if instance.is_empty() { String::new() } else { format!("{instance}/") };
        let read = format!("{prefix}blobs/{}/{}", d.hash_hex(), d.size);
        let parsed = crate::resource::parse_read(&read).unwrap();
        prop_assert_eq!(parsed.digest, d);
        prop_assert_eq!(parsed.instance, instance.clone());
        let write = format!("{prefix}uploads/{upload}/blobs/{}/{}/meta", d.hash_hex(), d.size);
        let parsed = crate::resource::parse_write(&write).unwrap();
        prop_assert_eq!(parsed.digest, d);
        prop_assert_eq!(parsed.upload_id.as_deref(), Some(upload.as_str()));
    }

    #[test]
    fn digests_never_panic(hash in text(), size in any::<i64>(), f in 0..4i32) {
        if let Ok(function) = DigestFunction::from_proto(f)
            && let Ok(d) = Digest::parse(function, &hash, size)
        {
            prop_assert!(size >= 0);
            prop_assert_eq!(d.hash_hex(), hash.to_ascii_lowercase());
        }
    }

    #[test]
    fn commands_and_directories_never_panic(
        paths in proptest::collection::vec(text(), 0..6),
        names in proptest::collection::vec(text(), 0..6),
    ) {
        let command = reapi::Command {
            output_paths: paths.clone(),
            working_directory: paths.first().cloned().unwrap_or_default(),
            ..Default::default()
        };
        if crate::execution::validate::check_command(&command).is_ok() {
            for p in &paths {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(!p.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }
        let dir = reapi::Directory {
            files: names.iter().map(|n| reapi::FileNode { name: n.clone(), ..Default::default() }).collect(),
            symlinks: names.iter().take(1).map(|n| reapi::SymlinkNode { name: n.clone(), ..Default::default() }).collect(),
            ..Default::default()
        };
        // A symlink sharing a file's name is never accepted.
        prop_assert!(names.is_empty() || crate::execution::validate::check_directory(&dir).is_err());
    }

    #[test]
    fn config_units_never_panic(t in text()) {
        let _ = crate::config::ByteSize::parse(&t);
        let _ = crate::config::Duration::parse(&t);
    }

    #[test]
    fn byte_sizes_round_trip(n in 0u64..(1 << 50)) {
        let shown = crate::config::ByteSize(n).to_string();
        prop_assert_eq!(crate::config::ByteSize::parse(&shown).unwrap().0, n);
    }

    #[test]
    fn static_token_lines_never_panic(lines in proptest::collection::vec(text(), 0..5)) {
        let _ = crate::auth::tokens::StaticTokens::parse(&lines.join("\n"));
    }

    #[test]
    fn build_events_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), url in text()) {
        let event = crate::proto::bes_v1::BuildEvent {
            event: Some(crate::proto::bes_v1::build_event::Event::BazelEvent(prost_types::Any {
                type_url: url,
                value: bytes,
            })),
            event_time: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: i32::MIN }),
        };
        let _ = crate::bes::summary::classify(&event);
        let mut summary = crate::bes::summary::Invocation::new("inv", "build");
        summary.apply(&event);
    }

    #[test]
    fn build_event_times_never_overflow(
        times in proptest::collection::vec((any::<i64>(), any::<i32>()), 3),
        millis in any::<i64>(),
    ) {
        use crate::proto::bep;
        let ts = |i: usize| Some(prost_types::Timestamp { seconds: times[i].0, nanos: times[i].1 });
        let events = [
            bep::build_event::Payload::Started(bep::BuildStarted {
                start_time: ts(0),
                start_time_millis: millis,
                ..Default::default()
            }),
            bep::build_event::Payload::TestResult(bep::TestResult {
                test_attempt_duration: Some(prost_types::Duration { seconds: times[1].0, nanos: times[1].1 }),
                test_attempt_duration_millis: millis,
                ..Default::default()
            }),
            bep::build_event::Payload::Finished(bep::BuildFinished {
                finish_time: ts(2),
                finish_time_millis: millis,
                ..Default::default()
            }),
        ];
        let mut summary = crate::bes::summary::Invocation::new("inv", "build");
        for payload in events {
            let id = bep::BuildEventId {
                id: Some(bep::build_event_id::Id::TestResult(bep::build_event_id::TestResultId {
                    label: "//t".into(),
                    ..Default::default()
                })),
            };
            let event = bep::BuildEvent { id: Some(id), payload: Some(payload), ..Default::default() };
            let wrapped = crate::proto::bes_v1::BuildEvent {
                event: Some(crate::proto::bes_v1::build_event::Event::BazelEvent(prost_types::Any {
                    type_url: "type.googleapis.com/build_event_stream.BuildEvent".into(),
                    value: prost::Message::encode_to_vec(&event),
                })),
                event_time: ts(0),
            };
            summary.apply(&wrapped);
        }
    }

    #[test]
    fn the_zstd_batch_decoder_never_panics_or_exceeds_its_limit(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        limit in 0u64..4096,
    ) {
        if let Ok(out) = crate::compression::decompress_bounded(&bytes, limit) {
            prop_assert!(out.len() as u64 <= limit);
        }
        let real = zstd::bulk::compress(&bytes, 1).unwrap();
        let out = crate::compression::decompress_bounded(&real, limit);
        prop_assert_eq!(out.is_ok(), bytes.len() as u64 <= limit);
    }

    #[test]
    fn list_operations_filters_never_panic(t in text()) {
        let mut filter = crate::execution::job::JobFilter::default();
        let _ = crate::service::operations::parse_filter(&t, &mut filter);
    }

    #[test]
    fn batch_totals_never_wrap(sizes in proptest::collection::vec(any::<u64>(), 0..6), limit in any::<u64>()) {
        let sum: Option<u64> = sizes.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        let ok = crate::service::cas::check_batch_total(sizes.iter().copied(), limit).is_ok();
        prop_assert_eq!(ok, sum.is_some_and(|s| s <= limit));
    }
}

/// JWT verification sees raw header text: garbage and forged tokens are
/// UNAUTHENTICATED, never a panic.
#[test]
fn jwt_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret of reasonable length!!").unwrap();
    let jwt: crate::config::JwtConfig =
        serde_saphyr::from_str(&format!("secret_file: {}", secret.display())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = runtime
        .block_on(crate::auth::jwt::JwtVerifier::new(&jwt, "roles"))
        .unwrap();
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &(text(), text(), any::<Vec<u8>>()),
            |(header, claims, sig)| {
                for token in [
                    format!(
                        "{}.{}.{}",
                        b64(header.as_bytes()),
                        b64(claims.as_bytes()),
                        b64(&sig)
                    ),
                    format!("{header}.{claims}"),
                    header.clone(),
                ] {
                    let result = verifier.verify(&token);
                    prop_assert!(matches!(
                        result,
                        Err(crate::error::Error::Unauthenticated(_))
                    ));
                }
                Ok(())
            },
        )
        .unwrap();
}
