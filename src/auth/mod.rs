//! Authentication and authorization.
//!
//! A tower layer ([`crate::edge::auth::AuthLayer`]) turns the `authorization: Bearer`
//! metadata of every call into an [`Identity`] (a JWT or a static API token)
//! or refuses the call with UNAUTHENTICATED; services then ask the [`Policy`]
//! whether that identity holds the role a method needs on the instance it
//! names, and refuse with PERMISSION_DENIED otherwise — never a silent
//! success.

pub mod jwt;
pub mod tokens;

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Roles are config vocabulary (`instance_roles`, token files and JWT
/// claims all name them), so config owns the type and auth uses it.
pub use crate::config::Role;

/// One role, on every instance or on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The instance, or `None` for all.
    pub instance: Option<String>,
    /// The role.
    pub role: Role,
}

impl Grant {
    /// Parses `role` or `instance:role`; unknown roles are ignored by callers.
    pub fn parse(text: &str) -> Option<Grant> {
        match text.rsplit_once(':') {
            Some((instance, role)) => Some(Grant {
                instance: Some(instance.to_string()),
                role: Role::parse(role)?,
            }),
            None => Some(Grant {
                instance: None,
                role: Role::parse(text)?,
            }),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials were presented.
    Anonymous,
    /// A verified token.
    Subject {
        /// The token's subject (`sub`), for logs and rate limits.
        name: String,
        /// What it may do.
        grants: Vec<Grant>,
    },
}

impl Identity {
    /// The subject, or `anonymous`.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::Subject { name, .. } => name,
        }
    }

    fn holds(&self, instance: &str, role: Role) -> bool {
        match self {
            Identity::Anonymous => false,
            Identity::Subject { grants, .. } => grants.iter().any(|g| {
                g.instance.as_deref().is_none_or(|i| i == instance)
                    && (g.role == role || g.role == Role::Admin)
            }),
        }
    }
}

/// Which roles each instance allows, and which need no credentials.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Authentication is on; without it every call is allowed.
    pub enabled: bool,
    /// Instances anyone may use without credentials (BuildGrid's
    /// auth_allow_unauthorized_instances).
    pub open_instances: Vec<String>,
    /// Per-instance caps: only these roles can be exercised there, whatever
    /// a token says.
    pub instance_roles: HashMap<String, Vec<Role>>,
}

impl Policy {
    /// Allows `who` to act as `role` on `instance`, or says precisely why not.
    pub fn authorize(&self, who: Option<&Identity>, instance: &str, role: Role) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        // The cap comes first: it binds open instances and admins alike.
        if let Some(cap) = self.instance_roles.get(instance)
            && !cap.contains(&role)
            && !cap.contains(&Role::Admin)
        {
            return Err(Error::PermissionDenied(format!(
                "instance {instance:?} does not allow the {role} role"
            )));
        }
        if self.open_instances.iter().any(|i| i == instance) {
            return Ok(());
        }
        let who = who.unwrap_or(&Identity::Anonymous);
        if *who == Identity::Anonymous {
            return Err(Error::Unauthenticated(format!(
                "instance {instance:?} requires credentials (authorization: Bearer TOKEN)"
            )));
        }
        if !who.holds(instance, role) {
            return Err(Error::PermissionDenied(format!(
                "{} lacks the {role} role on instance {instance:?}",
                who.name()
            )));
        }
        Ok(())
    }
}

/// Turns presented credentials into identities.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// JWT verification, if configured.
    pub jwt: Option<jwt::JwtVerifier>,
    /// Static API tokens, if configured.
    pub tokens: Option<tokens::StaticTokens>,
}

impl Authenticator {
    /// The identity behind an `authorization` header value (`None`: no
    /// header, anonymous).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Identity> {
        let Some(header) = header else {
            return Ok(Identity::Anonymous);
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Error::Unauthenticated("authorization must be \"Bearer TOKEN\"".into()))?
            .trim();
        if let Some(tokens) = &self.tokens
            && let Some(identity) = tokens.find(token)
        {
            return Ok(identity);
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token),
            None => Err(Error::Unauthenticated("unknown API token".into())),
        }
    }
}

/// Builds the authenticator (if authentication is on) and the policy.
pub async fn from_config(
    config: &crate::config::AuthConfig,
) -> Result<(
    Option<std::sync::Arc<Authenticator>>,
    std::sync::Arc<Policy>,
)> {
    use crate::config::AuthMethod;
    let jwt = match (config.method, &config.jwt) {
        (AuthMethod::Jwt, Some(j)) => Some(jwt::JwtVerifier::new(j, &config.roles_claim).await?),
        (AuthMethod::Jwt, None) => {
            return Err(Error::InvalidArgument(
                "auth.method is jwt but auth.jwt is missing".into(),
            ));
        }
        (AuthMethod::None, _) => None,
    };
    let tokens = config
        .tokens_file
        .as_deref()
        .map(tokens::StaticTokens::load)
        .transpose()?;
    let enabled = jwt.is_some() || tokens.is_some();
    let mut instance_roles = HashMap::new();
    for (instance, roles) in &config.instance_roles {
        let parsed = roles
            .iter()
            .map(|r| {
                Role::parse(r).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "auth.instance_roles.{instance}: unknown role {r:?}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        instance_roles.insert(instance.clone(), parsed);
    }
    let policy = std::sync::Arc::new(Policy {
        enabled,
        open_instances: config.open_instances.clone(),
        instance_roles,
    });
    let authenticator = enabled.then(|| std::sync::Arc::new(Authenticator { jwt, tokens }));
    Ok((authenticator, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(grants: &[&str]) -> Identity {
        Identity::Subject {
            name: "ci".into(),
            grants: grants.iter().filter_map(|g| Grant::parse(g)).collect(),
        }
    }

    #[test]
    fn policy_matrix() {
        let policy = Policy {
            enabled: true,
            open_instances: vec!["public".into(), "open-ro".into()],
            instance_roles: HashMap::from([
                ("ro".to_string(), vec![Role::Read]),
                ("open-ro".to_string(), vec![Role::Read]),
            ]),
        };
        let cases: &[(Option<Identity>, &str, Role, Option<&str>)] = &[
            (None, "", Role::Read, Some("credentials")),
            (None, "public", Role::Write, None),
            (None, "open-ro", Role::Read, None),
            (None, "open-ro", Role::AcWrite, Some("does not allow")),
            (None, "open-ro", Role::Write, Some("does not allow")),
            (Some(subject(&["read"])), "", Role::Read, None),
            (Some(subject(&["read"])), "", Role::Write, Some("lacks")),
            (Some(subject(&["write"])), "", Role::AcWrite, Some("lacks")),
            (Some(subject(&["ci:ac-write"])), "ci", Role::AcWrite, None),
            (
                Some(subject(&["ci:ac-write"])),
                "other",
                Role::AcWrite,
                Some("lacks"),
            ),
            (Some(subject(&["admin"])), "", Role::Execute, None),
            (
                Some(subject(&["admin"])),
                "ro",
                Role::Write,
                Some("does not allow"),
            ),
            (Some(subject(&["read"])), "ro", Role::Read, None),
            (Some(subject(&["nonsense"])), "", Role::Read, Some("lacks")),
        ];
        for (who, instance, role, err) in cases {
            let got = policy.authorize(who.as_ref(), instance, *role);
            match err {
                None => assert!(got.is_ok(), "{who:?} {instance} {role}: {got:?}"),
                Some(text) => assert!(
                    got.as_ref().is_err_and(|e| e.to_string().contains(text)),
                    "{who:?} {instance} {role}: {got:?}"
                ),
            }
        }
        assert!(
            Policy::default().authorize(None, "", Role::Admin).is_ok(),
            "auth off allows everything"
        );
    }
}
