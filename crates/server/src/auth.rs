//! Bearer-token authentication and team-scoped authorisation.
//!
//! A tokens file (YAML or JSON) maps each token to a user, the user's teams and a role:
//!
//! ```yaml
//! tokens:
//!   - {token: s3cret-a, user: alice, teams: [team-a], role: member}
//!   - {token: s3cret-r, user: root, role: admin}
//! ```
//!
//! With a tokens file, every request needs `authorization: Bearer <token>`; a missing or unknown
//! token is refused (`Unauthenticated`). Admins may do everything. Members may submit to, and
//! see the jobs of, the queues of their teams: a queue belongs to a team when the queue or one
//! of its ancestor cohorts is named after the team. Only admins change queues (and so quotas)
//! and register or drive nodes (agents use an admin token).

use std::collections::{BTreeMap, HashMap};

use gantry_model::QueueSpec;
use serde::Deserialize;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::Status;

use crate::ServerError;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Their teams' queues and jobs.
    Member,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user: String,
    /// The user's teams.
    pub teams: Vec<String>,
    /// The role.
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: String,
    user: String,
    #[serde(default)]
    teams: Vec<String>,
    role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<Entry>,
}

/// The token table.
#[derive(Clone, Default)]
pub struct Auth {
    by_token: HashMap<String, Caller>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens.
        f.debug_struct("Auth")
            .field("tokens", &self.by_token.len())
            .finish()
    }
}

impl Auth {
    /// Parse a tokens document.
    ///
    /// # Errors
    /// [`ServerError::Invalid`] naming the entry: a parse error, an empty or duplicate token.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Auth, ServerError> {
        let file: TokensFile = gantry_model::doc::from_yaml(text, origin)
            .map_err(|e| ServerError::from_model("tokens", e))?;
        let mut by_token = HashMap::new();
        for (i, e) in file.tokens.into_iter().enumerate() {
            if e.token.is_empty() {
                return Err(ServerError::Invalid {
                    field: format!("tokens[{i}].token"),
                    reason: "must not be empty".into(),
                });
            }
            let caller = Caller {
                user: e.user,
                teams: e.teams,
                role: e.role,
            };
            if by_token.insert(e.token, caller).is_some() {
                return Err(ServerError::Invalid {
                    field: format!("tokens[{i}].token"),
                    reason: "appears twice".into(),
                });
            }
        }
        Ok(Auth { by_token })
    }

    /// Load a tokens file.
    ///
    /// # Errors
    /// The file cannot be read, or [`Auth::from_yaml`]'s errors.
    pub fn load(path: &std::path::Path) -> Result<Auth, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Invalid {
            field: "tokens".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Auth::from_yaml(&text, &path.display().to_string())
    }

    /// A token of an admin (for an in-process agent), if any.
    pub fn admin_token(&self) -> Option<&str> {
        let mut admins: Vec<&str> = self
            .by_token
            .iter()
            .filter(|(_, c)| c.role == Role::Admin)
            .map(|(t, _)| t.as_str())
            .collect();
        admins.sort();
        admins.first().copied()
    }

    /// Who holds `token`, if anyone (the dashboard's session cookie).
    pub fn by_token(&self, token: &str) -> Option<&Caller> {
        self.by_token.get(token)
    }

    /// The caller of a request.
    ///
    /// # Errors
    /// `Unauthenticated` without a valid bearer token.
    pub fn caller(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let header = md
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("authorization: a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?;
        self.by_token
            .get(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("authorization: unknown token"))
    }
}

impl Caller {
    /// Whether the caller may use `queue`.
    pub fn may_use(&self, queues: &BTreeMap<String, QueueSpec>, queue: &str) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        let mut at = Some(queue);
        let mut hops = 0;
        while let Some(q) = at {
            if self.teams.iter().any(|t| t == q) {
                return true;
            }
            at = queues.get(q).and_then(|s| s.parent.as_deref());
            hops += 1;
            if hops > queues.len() {
                break;
            }
        }
        false
    }

    /// `PermissionDenied` unless an admin.
    ///
    /// # Errors
    /// The caller is a member.
    pub fn require_admin(&self, what: &str) -> Result<(), Status> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{what} is for admins; {} is a member",
                self.user
            )))
        }
    }
}

/// A client interceptor that adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// From an optional token.
    ///
    /// # Errors
    /// A token with characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Result<BearerToken, ServerError> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| ServerError::Invalid {
                    field: "token".into(),
                    reason: "not a valid header value".into(),
                }),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_own_their_queues_and_cohorts() {
        let a = Auth::from_yaml(
            "tokens:\n  - {token: t1, user: alice, teams: [research], role: member}\n  - {token: t2, user: root, role: admin}\n",
            "t",
        )
        .expect("auth");
        let mut md = MetadataMap::new();
        md.insert("authorization", "Bearer t1".parse().expect("v"));
        let alice = a.caller(&md).expect("alice");
        let queues: BTreeMap<String, QueueSpec> = [
            r#"{"name": "research"}"#,
            r#"{"name": "team-a", "parent": "research"}"#,
            r#"{"name": "ops"}"#,
        ]
        .iter()
        .map(|j| serde_json::from_str::<QueueSpec>(j).expect("q"))
        .map(|q| (q.name.clone(), q))
        .collect();
        assert!(alice.may_use(&queues, "team-a"));
        assert!(!alice.may_use(&queues, "ops"));
        assert!(alice.require_admin("x").is_err());
        assert_eq!(a.admin_token(), Some("t2"));
        md.insert("authorization", "Bearer nope".parse().expect("v"));
        assert_eq!(
            a.caller(&md).expect_err("bad").code(),
            tonic::Code::Unauthenticated
        );
        let e =
            Auth::from_yaml("tokens: [{token: x, user: u, role: boss}]", "t").expect_err("role");
        assert!(e.to_string().contains("role"), "{e}");
        let e = Auth::from_yaml(
            "tokens: [{token: x, user: u, role: admin, colour: red}]",
            "t",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
