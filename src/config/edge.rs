//! Config of the server edge: gRPC behaviour, TLS, traces, authentication
//! and rate limits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, Duration, yes};

/// `grpc:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Serve grpc.reflection.v1 (for grpcurl and friends). Default true.
    #[serde(default = "yes")]
    pub reflection: bool,
    /// Compress responses: `none`, `gzip` or `zstd` (only to clients that
    /// accept it). Requests in gzip and zstd are always accepted. Default none.
    #[serde(default)]
    pub send_compression: SendCompression,
    /// On stop, how long to report NOT_SERVING (gRPC health, `/healthz`)
    /// before refusing new calls, so load balancers drain the pod. Default 0s.
    #[serde(default = "zero")]
    pub shutdown_delay: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("grpc defaults parse")
    }
}

/// gRPC response compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SendCompression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

/// `tracing:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of the collector, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: String,
    /// `service.name` of kiln's spans. Default `kiln`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a client's sampled
    /// `traceparent` is always followed. Default 1.0.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
}

/// `auth:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (the default: every call allowed) or `jwt`.
    #[serde(default)]
    pub method: AuthMethod,
    /// JWT verification (with `method: jwt`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Static API tokens (hashed), accepted beside or instead of JWTs.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The claim holding roles. Default `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Instances anyone may use without credentials.
    #[serde(default)]
    pub open_instances: Vec<String>,
    /// Per-instance caps: only these roles can be exercised on the instance.
    #[serde(default)]
    pub instance_roles: BTreeMap<String, Vec<String>>,
    /// The instance whose rules govern build-event publishing and queries
    /// (the Build Event Service has no instance name). Default `""`.
    #[serde(default)]
    pub build_events_instance: String,
    /// With authentication on, whether the build-event JSON API and pages
    /// on the HTTP listener need a bearer token with `read` on
    /// `build_events_instance`: `required` (the default) or `open`.
    #[serde(default)]
    pub http_auth: HttpAuth,
    /// The same for `/metrics`: `open` (the default, for Prometheus) or
    /// `required`. `/healthz` is always open.
    #[serde(default = "open")]
    pub metrics_auth: HttpAuth,
}

/// Whether an HTTP route needs credentials (when authentication is on).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// A bearer token with `read` is needed.
    #[default]
    Required,
    /// Anyone who reaches the port may read.
    Open,
}

fn open() -> HttpAuth {
    HttpAuth::Open
}

impl Default for AuthConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("auth defaults parse")
    }
}

/// How callers authenticate.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// No authentication (unless `tokens_file` is set).
    #[default]
    None,
    /// Bearer JWTs.
    Jwt,
}

/// `auth.jwt:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms: HS256, HS384, HS512, RS256, ES256. Default HS256.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// JWKS file with public keys (RS256, ES256).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL with public keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often JWKS keys are re-read (BuildGrid's auth_jwks_fetch_minutes).
    /// Default `60m`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// Required `aud`, if any.
    #[serde(default)]
    pub audience: Option<String>,
    /// Required `iss`, if any.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// `limits:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls per second per identity (subject, else peer address); bursts of
    /// up to this many. Default: unlimited.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// Request bytes per second per identity. Default: unlimited.
    #[serde(default)]
    pub bytes_per_second: Option<ByteSize>,
    /// Calls served at once by the whole server; beyond it calls are shed
    /// with RESOURCE_EXHAUSTED instead of queueing. Default: unlimited.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

/// `tls:` settings (BuildGrid's server_cert / server_key / client_certs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

fn default_service_name() -> String {
    "kiln".into()
}

fn default_sampling_ratio() -> f64 {
    1.0
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}

fn default_jwks_refresh() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}

fn zero() -> Duration {
    Duration(std::time::Duration::ZERO)
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Capabilities, FindMissingBlobs, reads, GetTree, GetActionResult, queries.
    Read,
    /// CAS uploads.
    Write,
    /// UpdateActionResult: separate from plain writes, since a forged action
    /// result poisons every build that hits it.
    AcWrite,
    /// Publishing build events.
    Bes,
    /// Remote execution.
    Execute,
    /// Running other people's actions (the Bots service): a worker takes
    /// leases and reports results that land in the action cache, so it is
    /// as trusted as `ac-write`. Workers need `read` and `write` too.
    Worker,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses a role name (`read`, `write`, `ac-write`, `bes`, `execute`, `worker`, `admin`).
    pub fn parse(name: &str) -> Option<Role> {
        Some(match name {
            "read" => Role::Read,
            "write" => Role::Write,
            "ac-write" => Role::AcWrite,
            "bes" => Role::Bes,
            "execute" => Role::Execute,
            "worker" => Role::Worker,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::AcWrite => "ac-write",
            Role::Bes => "bes",
            Role::Execute => "execute",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
