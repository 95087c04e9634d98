//! The checks that YAML parsing cannot do, each reported with its YAML path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use super::{Config, InstanceConfig, StoreConfig};

/// Path segments REAPI reserves; an instance name may not contain them.
const RESERVED_SEGMENTS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Every problem found in `config`.
pub(super) fn errors(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if config.listen.parse::<std::net::SocketAddr>().is_err() {
        errors.push(format!(
            "listen: {:?} is not an address such as 127.0.0.1:50051",
            config.listen
        ));
    }
    if config.http_listen.parse::<std::net::SocketAddr>().is_err() {
        errors.push(format!(
            "http_listen: {:?} is not an address such as 127.0.0.1:8080",
            config.http_listen
        ));
    }
    if let Err(asset) = config.remote_asset.parsed() {
        errors.extend(asset);
    }
    if config.uploads.spool_in_flight.0 < 1 << 20 {
        errors.push(format!(
            "uploads.spool_in_flight: must be at least 1MiB (a gRPC message's worth), got {}",
            config.uploads.spool_in_flight.0
        ));
    }
    let bes = &config.build_events;
    if !(bes.database.starts_with("sqlite:")
        || bes.database.starts_with("postgres://")
        || bes.database.starts_with("postgresql://"))
    {
        errors.push(format!(
            "build_events.database: {:?} must start with sqlite: or postgres://",
            bes.database
        ));
    }
    if bes.max_event_size.0 == 0 || bes.max_event_size.0 + (1 << 20) > config.max_message_size.0 {
        errors.push(
            "build_events.max_event_size: must be above 0 and at least 1MiB below max_message_size"
                .into(),
        );
    }
    for (i, url) in bes.webhooks.iter().enumerate() {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(format!(
                "build_events.webhooks[{i}]: {url:?} must be an http:// or https:// URL"
            ));
        }
    }
    check_execution(config, &mut errors);
    if config.insights.reexecute_one_in > 0 && !config.execution.enabled {
        errors.push(
            "insights.reexecute_one_in: re-running cache hits needs execution.enabled: true".into(),
        );
    }
    check_auth(config, &mut errors);
    if config.max_message_size.0 < (1 << 20) {
        errors.push("max_message_size: must be at least 1MiB".into());
    }
    let mut walker = StoreWalker {
        named: &config.stores,
        errors: &mut errors,
        places: HashMap::new(),
    };
    for (name, store) in &config.stores {
        walker.check(store, &format!("stores.{name}"), &mut vec![name.clone()]);
    }
    if config.instances.is_empty() {
        errors.push("instances: at least one instance is required".into());
    }
    let mut names = HashSet::new();
    for (i, instance) in config.instances.iter().enumerate() {
        let path = format!("instances[{i}]");
        if !names.insert(instance.name.as_str()) {
            errors.push(format!(
                "{path}.name: instance {:?} is defined twice",
                instance.name
            ));
        }
        check_instance(config, instance, &path, &mut errors);
        errors.extend(instance.chunking.errors(&format!("{path}.chunking")));
    }
    errors
}

fn check_auth(config: &Config, errors: &mut Vec<String>) {
    let auth = &config.auth;
    if auth.method == super::AuthMethod::Jwt {
        match &auth.jwt {
            None => errors.push("auth.jwt: required with method: jwt".into()),
            Some(jwt) => {
                let sources = [
                    jwt.secret_env.is_some(),
                    jwt.secret_file.is_some(),
                    jwt.jwks_file.is_some(),
                    jwt.jwks_url.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() != 1 {
                    errors.push(
                        "auth.jwt: set exactly one of secret_env, secret_file, jwks_file, jwks_url"
                            .into(),
                    );
                }
                for a in &jwt.algorithms {
                    if !["HS256", "HS384", "HS512", "RS256", "ES256"].contains(&a.as_str()) {
                        errors.push(format!("auth.jwt.algorithms: {a:?} is not supported (HS256, HS384, HS512, RS256, ES256)"));
                    }
                }
            }
        }
    }
    for (instance, roles) in &auth.instance_roles {
        for r in roles {
            if super::Role::parse(r).is_none() {
                errors.push(format!("auth.instance_roles.{instance}: unknown role {r:?} (read, write, ac-write, bes, execute, admin)"));
            }
        }
    }
    let limits = &config.limits;
    if limits.requests_per_second == Some(0) || limits.max_in_flight == Some(0) {
        errors
            .push("limits: requests_per_second and max_in_flight must be above 0 when set".into());
    }
}

fn check_instance(
    config: &Config,
    instance: &InstanceConfig,
    path: &str,
    errors: &mut Vec<String>,
) {
    let name = &instance.name;
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        errors.push(format!(
            "{path}.name: {name:?} must not start or end with '/' or contain '//'"
        ));
    }
    if let Some(seg) = name.split('/').find(|s| RESERVED_SEGMENTS.contains(s)) {
        errors.push(format!(
            "{path}.name: {name:?} contains the reserved segment {seg:?}"
        ));
    }
    if let (StoreConfig::Ref(a), StoreConfig::Ref(b)) = (&instance.cas, &instance.action_cache)
        && a == b
    {
        errors.push(format!(
            "{path}.action_cache: the CAS and the action cache must be different stores (both are {a:?})"
        ));
    }
    let batch = instance.max_batch_total_size.0;
    if batch == 0 || batch + (1 << 20) > config.max_message_size.0 {
        errors.push(format!(
            "{path}.max_batch_total_size: must be above 0 and at least 1MiB below max_message_size ({})",
            config.max_message_size
        ));
    }
    let chunk = instance.read_chunk_size.0;
    if !(4096..=config.max_message_size.0 / 2).contains(&chunk) {
        errors.push(format!(
            "{path}.read_chunk_size: must be between 4KiB and half of max_message_size"
        ));
    }
    if instance.tree_read_concurrency == 0 || instance.tree_read_concurrency > 1024 {
        errors.push(format!(
            "{path}.tree_read_concurrency: must be between 1 and 1024"
        ));
    }
    let mut walker = StoreWalker {
        named: &config.stores,
        errors,
        places: HashMap::new(),
    };
    walker.check(&instance.cas, &format!("{path}.cas"), &mut Vec::new());
    walker.check(
        &instance.action_cache,
        &format!("{path}.action_cache"),
        &mut Vec::new(),
    );
    let inline_cas = fs_dirs(&instance.cas, &config.stores);
    let inline_ac = fs_dirs(&instance.action_cache, &config.stores);
    if let Some(dir) = inline_cas.intersection(&inline_ac).next() {
        errors.push(format!(
            "{path}.action_cache: uses {}, which the CAS uses too",
            dir.display()
        ));
    }
}

/// Walks a store graph, reporting bad sizes, unknown references and cycles.
struct StoreWalker<'a> {
    named: &'a BTreeMap<String, StoreConfig>,
    errors: &'a mut Vec<String>,
    places: HashMap<PathBuf, String>,
}

impl StoreWalker<'_> {
    fn check(&mut self, store: &StoreConfig, path: &str, refs: &mut Vec<String>) {
        match store {
            StoreConfig::Memory(m) => {
                if m.max_size.0 == 0 {
                    self.errors
                        .push(format!("{path}.memory.max_size: must be above 0"));
                }
            }
            StoreConfig::Fs(f) => {
                if f.max_size.is_some_and(|m| m.0 == 0) {
                    self.errors
                        .push(format!("{path}.fs.max_size: must be above 0"));
                }
                if !(f.low_watermark > 0.0 && f.low_watermark <= 1.0) {
                    self.errors.push(format!(
                        "{path}.fs.low_watermark: must be above 0 and at most 1, got {}",
                        f.low_watermark
                    ));
                }
                if !(4096..=64 << 20).contains(&f.read_chunk.0) {
                    self.errors.push(format!(
                        "{path}.fs.read_chunk: must be between 4KiB and 64MiB, got {}",
                        f.read_chunk
                    ));
                }
                if f.path.as_os_str().is_empty() {
                    self.errors
                        .push(format!("{path}.fs.path: must not be empty"));
                } else if let Some(other) = self.places.insert(f.path.clone(), path.to_string()) {
                    self.errors.push(format!(
                        "{path}.fs.path: {} is also used by {other}; give each fs store its own directory",
                        f.path.display()
                    ));
                }
            }
            StoreConfig::S3(c) => {
                if c.bucket.is_empty() {
                    self.errors
                        .push(format!("{path}.s3.bucket: must not be empty"));
                }
                if c.part_size.0 < (5 << 20) || c.part_size.0 > (5 << 30) {
                    self.errors.push(format!(
                        "{path}.s3.part_size: must be between 5MiB and 5GiB (S3's part sizes)"
                    ));
                }
                if c.multipart_threshold < c.part_size {
                    self.errors.push(format!(
                        "{path}.s3.multipart_threshold: must be at least part_size"
                    ));
                }
                if c.max_in_flight < c.part_size || c.max_in_flight.0 > (1 << 40) {
                    self.errors.push(format!(
                        "{path}.s3.max_in_flight: must be at least part_size and at most 1TiB"
                    ));
                }
                if c.concurrency == 0 || c.concurrency > 256 {
                    self.errors
                        .push(format!("{path}.s3.concurrency: must be between 1 and 256"));
                }
                if c.max_attempts == 0 {
                    self.errors
                        .push(format!("{path}.s3.max_attempts: must be at least 1"));
                }
                let place = location_of_s3(c);
                if let Some(other) = self.places.insert(PathBuf::from(&place), path.to_string()) {
                    self.errors.push(format!(
                        "{path}.s3: {place} is also used by {other}; give each store its own prefix"
                    ));
                }
            }
            StoreConfig::ExistenceCache(c) => {
                if c.ttl.0.is_zero() {
                    self.errors
                        .push(format!("{path}.existence_cache.ttl: must be above 0"));
                }
                if c.max_entries == 0 {
                    self.errors.push(format!(
                        "{path}.existence_cache.max_entries: must be above 0"
                    ));
                }
                self.check(&c.inner, &format!("{path}.existence_cache.inner"), refs);
            }
            StoreConfig::MemoryCache(c) => {
                if c.max_size.0 == 0 {
                    self.errors
                        .push(format!("{path}.memory_cache.max_size: must be above 0"));
                }
                if c.max_blob_size > c.max_size {
                    self.errors.push(format!(
                        "{path}.memory_cache.max_blob_size: {} exceeds max_size {}",
                        c.max_blob_size, c.max_size
                    ));
                }
                self.check(&c.inner, &format!("{path}.memory_cache.inner"), refs);
            }
            StoreConfig::Ref(name) => {
                if !self.named.contains_key(name) {
                    let known: Vec<&str> = self.named.keys().map(String::as_str).collect();
                    self.errors.push(format!(
                        "{path}.ref: unknown store {name:?} (defined under stores: {known:?})"
                    ));
                } else if let Some(cycle) = find_cycle(self.named, name, refs) {
                    // Named stores are checked at their own path; references
                    // are only followed to find cycles.
                    let msg = format!("{path}.ref: reference cycle {}", cycle.join(" -> "));
                    if !self.errors.contains(&msg) {
                        self.errors.push(msg);
                    }
                }
            }
        }
    }
}

/// The chain of references that leads from `name` back into `chain`, if any.
fn find_cycle(
    named: &BTreeMap<String, StoreConfig>,
    name: &str,
    chain: &mut Vec<String>,
) -> Option<Vec<String>> {
    if chain.iter().any(|c| c == name) {
        let mut cycle = chain.clone();
        cycle.push(name.to_string());
        return Some(cycle);
    }
    chain.push(name.to_string());
    let mut node = named.get(name);
    let mut found = None;
    while let Some(store) = node {
        node = match store {
            StoreConfig::MemoryCache(c) => Some(&*c.inner),
            StoreConfig::ExistenceCache(c) => Some(&*c.inner),
            StoreConfig::Ref(next) => {
                found = find_cycle(named, next, chain);
                None
            }
            _ => None,
        };
    }
    chain.pop();
    found
}

/// Where an S3 store keeps its objects, for overlap checks.
fn location_of_s3(c: &super::S3Config) -> String {
    format!(
        "s3://{}@{}/{}",
        c.bucket,
        c.endpoint.as_deref().unwrap_or("aws"),
        c.prefix
    )
}

/// The places (fs directories, S3 prefixes) a store graph reaches,
/// following references.
fn fs_dirs(store: &StoreConfig, named: &BTreeMap<String, StoreConfig>) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let mut stack = vec![store];
    let mut seen = HashSet::new();
    while let Some(s) = stack.pop() {
        match s {
            StoreConfig::Fs(f) => {
                out.insert(f.path.clone());
            }
            StoreConfig::MemoryCache(c) => stack.push(&c.inner),
            StoreConfig::ExistenceCache(c) => stack.push(&c.inner),
            StoreConfig::S3(c) => {
                out.insert(PathBuf::from(location_of_s3(c)));
            }
            StoreConfig::Ref(name) => {
                if seen.insert(name.clone())
                    && let Some(t) = named.get(name)
                {
                    stack.push(t);
                }
            }
            StoreConfig::Memory(_) => {}
        }
    }
    out
}

fn check_execution(config: &Config, errors: &mut Vec<String>) {
    let e = &config.execution;
    if !(e.database == "memory"
        || e.database.starts_with("sqlite:")
        || e.database.starts_with("postgres://")
        || e.database.starts_with("postgresql://"))
    {
        errors.push(format!(
            "execution.database: {:?} must be memory or start with sqlite: or postgres://",
            e.database
        ));
    }
    for (name, d) in [
        ("queue_timeout", e.queue_timeout),
        ("default_action_timeout", e.default_action_timeout),
        ("max_action_timeout", e.max_action_timeout),
        ("lease_timeout", e.lease_timeout),
        ("poll_interval", e.poll_interval),
        ("notified_poll_interval", e.notified_poll_interval),
        ("bot_wait", e.bot_wait),
        ("retention", e.retention),
    ] {
        if d.0.is_zero() {
            errors.push(format!("execution.{name}: must be above 0"));
        }
    }
    if e.max_attempts == 0 {
        errors.push("execution.max_attempts: must be at least 1".into());
    }
    if e.bot_wait.0 >= e.lease_timeout.0 {
        errors.push(format!(
            "execution.bot_wait: {:?} must be shorter than lease_timeout ({:?}), or waiting workers lose their leases",
            e.bot_wait.0, e.lease_timeout.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn errors(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(c) => c.validate().err().unwrap_or_default(),
            Err(e) => vec![format!("parse: {e}")],
        }
    }

    #[test]
    fn the_embedded_default_and_every_example_are_valid() {
        Config::embedded_default().validate().unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 3);
    }

    #[test]
    fn reexecution_needs_execution() {
        let base = "instances:\n  - name: \"\"\n    cas: { memory: { max_size: 1MiB } }\n    action_cache: { memory: { max_size: 1MiB } }\n";
        let off = errors(&format!(
            "insights: {{ reexecute_one_in: 10 }}\nexecution: {{ enabled: false }}\n{base}"
        ));
        assert!(
            off.iter()
                .any(|e| e.starts_with("insights.reexecute_one_in")),
            "{off:?}"
        );
        let on = errors(&format!("insights: {{ reexecute_one_in: 10 }}\n{base}"));
        assert!(on.is_empty(), "{on:?}");
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let yaml = r#"
listen: nowhere
uploads: { spool_in_flight: 64KiB }
stores:
  shared: { memory: { max_size: 0 } }
  loop_a: { memory_cache: { max_size: 1MiB, inner: { ref: loop_b } } }
  loop_b: { memory_cache: { max_size: 1MiB, inner: { ref: loop_a } } }
instances:
  - name: main
    cas: { ref: missing }
    action_cache: { memory_cache: { max_size: 1KiB, max_blob_size: 1MiB, inner: { fs: { path: x } } } }
  - name: main
    cas: { ref: shared }
    action_cache: { ref: shared }
  - name: a/blobs
    cas: { fs: { path: same } }
    action_cache: { fs: { path: same } }
    read_chunk_size: 10
    chunking: { store: true, store_in_flight: 1MiB }
"#;
        let errs = errors(yaml);
        let expect = [
            "listen:",
            "stores.shared.memory.max_size",
            "reference cycle",
            "instances[0].cas.ref: unknown store \"missing\"",
            "instances[0].action_cache.memory_cache.max_blob_size",
            "instances[1].name: instance \"main\" is defined twice",
            "instances[1].action_cache: the CAS and the action cache must be different",
            "instances[2].name: \"a/blobs\" contains the reserved segment",
            "instances[2].read_chunk_size",
            "instances[2].action_cache.fs.path: same is also used by instances[2].cas",
            "instances[2].chunking.store_in_flight: must be at least 4MiB",
            "uploads.spool_in_flight: must be at least 1MiB",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.contains(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_bad_units_are_parse_errors() {
        let unknown = "instances:\n  - name: ''\n    cas: { memory: { max_size: 1MiB, colour: red } }\n    action_cache: { memory: { max_size: 1MiB } }\n";
        assert!(
            errors(unknown)[0].contains("colour"),
            "{:?}",
            errors(unknown)
        );
        let unit = "instances:\n  - name: ''\n    cas: { memory: { max_size: 12 parsecs } }\n    action_cache: { memory: { max_size: 1MiB } }\n";
        assert!(errors(unit)[0].contains("parsecs"), "{:?}", errors(unit));
    }
}
