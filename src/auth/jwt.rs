//! JWT verification: HS256/384/512 with a shared secret (from a file or an
//! environment variable, never the config file), or RS256/ES256 with keys
//! from a JWKS file or URL, re-read on a schedule so key rotation needs no
//! restart. Expiry is always checked; audience and issuer when configured.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Grant, Identity};
use crate::config::JwtConfig;
use crate::error::{Error, Result};

/// Where verification keys come from.
enum Keys {
    Secret(DecodingKey),
    Jwks(JwkSet),
}

/// Verifies bearer JWTs.
pub struct JwtVerifier {
    keys: Arc<RwLock<Keys>>,
    validation: Validation,
    roles_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm> {
    Ok(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => {
            return Err(Error::InvalidArgument(format!(
                "auth.jwt.algorithms: {other} is not supported (HS256, HS384, HS512, RS256, ES256)"
            )));
        }
    })
}

/// Longest a JWKS fetch may take.
const JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn read_jwks(config: &JwtConfig) -> Result<JwkSet> {
    let text = if let Some(path) = &config.jwks_file {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
    } else if let Some(url) = &config.jwks_url {
        // A JWKS endpoint that hangs must not hang start-up or a refresh.
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(JWKS_TIMEOUT)
            .build()
            .map_err(|e| Error::internal(format!("building the JWKS client: {e}")))?
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Error::Unavailable(format!("fetching JWKS {url}: {e}")))?
            .text()
            .await
            .map_err(|e| Error::Unavailable(format!("fetching JWKS {url}: {e}")))?
    } else {
        return Err(Error::InvalidArgument(
            "auth.jwt: no secret_env, secret_file, jwks_file or jwks_url".into(),
        ));
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("auth.jwt: not a JWKS document: {e}")))
}

impl JwtVerifier {
    /// Loads keys and, for JWKS, starts refreshing them every `jwks_refresh`.
    pub async fn new(config: &JwtConfig, roles_claim: &str) -> Result<Self> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>>>()?;
        let mut validation = Validation::new(*algorithms.first().unwrap_or(&Algorithm::HS256));
        validation.algorithms = algorithms;
        validation.set_required_spec_claims(&["exp"]);
        // A token is not valid before its `nbf` (when it has one).
        validation.validate_nbf = true;
        validation.leeway = 30;
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        let secret = match (&config.secret_env, &config.secret_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .map_err(|_| {
                        Error::InvalidArgument(format!("auth.jwt.secret_env: {var} is not set"))
                    })?
                    .into_bytes(),
            ),
            (None, Some(path)) => Some(
                std::fs::read(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
                    .trim_ascii()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        let keys = match secret {
            Some(s) => Keys::Secret(DecodingKey::from_secret(&s)),
            None => Keys::Jwks(read_jwks(config).await?),
        };
        let keys = Arc::new(RwLock::new(keys));
        if matches!(*keys.read().expect("keys lock"), Keys::Jwks(_)) {
            let (shared, config, every) = (
                Arc::downgrade(&keys),
                config.clone(),
                config.jwks_refresh.0.max(Duration::from_millis(100)),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(keys) = shared.upgrade() else { return };
                    match read_jwks(&config).await {
                        Ok(set) => *keys.write().expect("keys lock") = Keys::Jwks(set),
                        Err(e) => {
                            tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys")
                        }
                    }
                }
            });
        }
        Ok(JwtVerifier {
            keys,
            validation,
            roles_claim: roles_claim.to_string(),
        })
    }

    /// The identity a valid token names; UNAUTHENTICATED for anything else.
    pub fn verify(&self, token: &str) -> Result<Identity> {
        let bad =
            |e: jsonwebtoken::errors::Error| Error::Unauthenticated(format!("invalid token: {e}"));
        let header = jsonwebtoken::decode_header(token).map_err(bad)?;
        let key = match &*self.keys.read().expect("keys lock") {
            Keys::Secret(k) => k.clone(),
            Keys::Jwks(set) => {
                let jwk = match &header.kid {
                    Some(kid) => set.find(kid),
                    None => set.keys.first(),
                }
                .ok_or_else(|| {
                    Error::Unauthenticated(format!(
                        "invalid token: no key {:?} in the JWKS",
                        header.kid
                    ))
                })?;
                DecodingKey::from_jwk(jwk).map_err(bad)?
            }
        };
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &self.validation)
            .map_err(bad)?
            .claims;
        let roles: Vec<String> = match &claims[&self.roles_claim] {
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            serde_json::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(Identity::Subject {
            name: claims["sub"].as_str().unwrap_or("unnamed").to_string(),
            grants: roles.iter().filter_map(|r| Grant::parse(r)).collect(),
        })
    }
}
