//! Who may do what: a users file with bcrypt-hashed passwords and per-repository pull/push
//! globs, checked on every request through HTTP Basic authentication (what podman, skopeo and
//! docker do against a registry that answers `WWW-Authenticate: Basic`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use sha2::Digest as _;

use crate::error::{ApiError, Code};

/// How long a verified password is remembered, so bcrypt runs once per client, not per request.
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(300);

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Write and delete.
    Push,
}

/// Why the users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// It cannot be read.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("users file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A glob or hash is malformed.
    #[error("users file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    anonymous: Rights,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rights {
    #[serde(default)]
    pull: Vec<String>,
    #[serde(default)]
    push: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    /// May use the admin API (garbage collection, pins, usage).
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    pull: Vec<String>,
    #[serde(default)]
    push: Vec<String>,
}

/// Compiled rights: repository globs for pull and for push (push implies pull).
#[derive(Debug, Clone)]
struct Grants {
    pull: GlobSet,
    push: GlobSet,
}

impl Grants {
    fn compile(rights: &Rights, path: &str) -> Result<Grants, UsersFileError> {
        let build = |globs: &[String]| {
            let mut set = GlobSetBuilder::new();
            for g in globs {
                let glob = Glob::new(g).map_err(|e| UsersFileError::Invalid {
                    path: path.to_owned(),
                    message: format!("bad repository glob {g:?}: {e}"),
                })?;
                set.add(glob);
            }
            set.build().map_err(|e| UsersFileError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })
        };
        Ok(Grants {
            pull: build(&rights.pull)?,
            push: build(&rights.push)?,
        })
    }

    fn everything() -> Grants {
        let all = GlobSetBuilder::new()
            .add(Glob::new("*").unwrap_or_else(|_| unreachable!("constant glob")))
            .build()
            .unwrap_or_else(|_| unreachable!("constant glob"));
        Grants {
            pull: all.clone(),
            push: all,
        }
    }

    fn allows(&self, repo: &str, access: Access) -> bool {
        match access {
            Access::Pull => self.pull.is_match(repo) || self.push.is_match(repo),
            Access::Push => self.push.is_match(repo),
        }
    }
}

struct User {
    hash: String,
    grants: Grants,
    admin: bool,
}

/// The authenticated party of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A user from the users file.
    User(String),
}

/// The registry's access policy.
pub struct Authorizer {
    anonymous: Grants,
    users: HashMap<String, User>,
    /// Whether credentials are asked for at all.
    enabled: bool,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Authorizer {
    /// No users file: everyone may do everything.
    pub fn open() -> Authorizer {
        Authorizer {
            anonymous: Grants::everything(),
            users: HashMap::new(),
            enabled: false,
            verified: Mutex::default(),
        }
    }

    /// Users only (none yet: see [`Authorizer::add_admin`]); `anonymous_pull` lets anonymous
    /// clients pull every repository, and nothing else.
    pub fn closed(anonymous_pull: bool) -> Authorizer {
        let pull = if anonymous_pull {
            vec!["*".to_owned()]
        } else {
            Vec::new()
        };
        Authorizer {
            anonymous: Grants::compile(
                &Rights {
                    pull,
                    push: Vec::new(),
                },
                "built-in rights",
            )
            .unwrap_or_else(|_| unreachable!("constant globs")),
            users: HashMap::new(),
            enabled: true,
            verified: Mutex::default(),
        }
    }

    /// Adds a user that may pull, push and delete everywhere and use the admin API, with the
    /// bcrypt `hash` of its password; refused when a user of that name exists already.
    pub fn add_admin(&mut self, name: &str, hash: String) -> Result<(), String> {
        if self.users.contains_key(name) {
            return Err(format!(
                "the users file defines a user {name:?}, the name of berth server's own admin credential: rename that user"
            ));
        }
        self.users.insert(
            name.to_owned(),
            User {
                hash,
                grants: Grants::everything(),
                admin: true,
            },
        );
        self.enabled = true;
        Ok(())
    }

    /// Loads a users file; `anonymous_pull` additionally lets anonymous clients pull anything.
    pub fn from_file(path: &Path, anonymous_pull: bool) -> Result<Authorizer, UsersFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: UsersFile = toml::from_str(&text).map_err(|source| UsersFileError::Parse {
            path: shown.clone(),
            source,
        })?;
        let mut anonymous = file.anonymous;
        if anonymous_pull {
            anonymous.pull.push("*".into());
        }
        let mut users = HashMap::new();
        for entry in file.users {
            if !entry.password.starts_with("$2") {
                return Err(UsersFileError::Invalid {
                    path: shown,
                    message: format!(
                        "user {:?}: password must be a bcrypt hash ($2b$…); make one with `berth registry hash-password`",
                        entry.name
                    ),
                });
            }
            let grants = Grants::compile(
                &Rights {
                    pull: entry.pull,
                    push: entry.push,
                },
                &shown,
            )?;
            users.insert(
                entry.name,
                User {
                    hash: entry.password,
                    grants,
                    admin: entry.admin,
                },
            );
        }
        Ok(Authorizer {
            anonymous: Grants::compile(&anonymous, &shown)?,
            users,
            enabled: true,
            verified: Mutex::default(),
        })
    }

    /// Whether requests are authenticated at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Identifies the caller from its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if !self.enabled {
            return Ok(Principal::Anonymous);
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let (user, password) = parse_basic(value).ok_or_else(|| {
            challenge(ApiError::new(
                Code::Unauthorized,
                "malformed Authorization header: use Basic credentials",
            ))
        })?;
        // Clients without stored credentials answer a Basic challenge with an empty user and
        // password (`Basic Og==`): that is an anonymous request, not a failed login.
        if user.is_empty() && password.is_empty() {
            return Ok(Principal::Anonymous);
        }
        let bad = || {
            challenge(ApiError::new(
                Code::Unauthorized,
                "invalid username or password",
            ))
        };
        let entry = self.users.get(&user).ok_or_else(bad)?;
        let fingerprint: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(entry.hash.as_bytes())
            .finalize()
            .into();
        let cached = self
            .verified
            .lock()
            .map(|m| {
                m.get(&fingerprint)
                    .is_some_and(|t| t.elapsed() < CREDENTIAL_CACHE_TTL)
            })
            .unwrap_or(false);
        if !cached {
            if !bcrypt::verify(&password, &entry.hash).unwrap_or(false) {
                return Err(bad());
            }
            if let Ok(mut map) = self.verified.lock() {
                map.retain(|_, t| t.elapsed() < CREDENTIAL_CACHE_TTL);
                map.insert(fingerprint, Instant::now());
            }
        }
        Ok(Principal::User(user))
    }

    /// Whether `principal` may perform `access` on `repo`.
    pub fn allows(&self, principal: &Principal, repo: &str, access: Access) -> bool {
        match principal {
            Principal::Anonymous => self.anonymous.allows(repo, access),
            Principal::User(name) => self
                .users
                .get(name)
                .is_some_and(|u| u.grants.allows(repo, access)),
        }
    }

    /// `Ok` when allowed; otherwise 401 with a challenge for anonymous callers (so clients
    /// send credentials) and 403 DENIED for users without the right.
    pub fn require(
        &self,
        principal: &Principal,
        repo: &str,
        access: Access,
    ) -> Result<(), ApiError> {
        if self.allows(principal, repo, access) {
            return Ok(());
        }
        let verb = match access {
            Access::Pull => "pull from",
            Access::Push => "push to",
        };
        Err(match principal {
            Principal::Anonymous => challenge(ApiError::new(
                Code::Unauthorized,
                format!("authentication required to {verb} {repo}"),
            )),
            Principal::User(name) => {
                ApiError::new(Code::Denied, format!("user {name} may not {verb} {repo}"))
            }
        })
    }

    /// For the admin API: without a users file everyone; with one, users marked `admin`.
    pub fn require_admin(&self, principal: &Principal) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        match principal {
            Principal::Anonymous => Err(challenge(ApiError::new(
                Code::Unauthorized,
                "the admin API needs an admin user's credentials",
            ))),
            Principal::User(name) if self.users.get(name).is_some_and(|u| u.admin) => Ok(()),
            Principal::User(name) => Err(ApiError::new(
                Code::Denied,
                format!("user {name} is not an admin (set admin = true in the users file)"),
            )),
        }
    }

    /// For `/v2/`: anonymous callers of an authenticated registry are challenged.
    pub fn require_login(&self, principal: &Principal) -> Result<(), ApiError> {
        if self.enabled && *principal == Principal::Anonymous {
            Err(challenge(ApiError::new(
                Code::Unauthorized,
                "authentication required",
            )))
        } else {
            Ok(())
        }
    }
}

fn challenge(error: ApiError) -> ApiError {
    error.header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\""),
    )
}

fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A bcrypt hash of `password` for the users file.
pub fn hash_password(password: &str) -> Result<String, bcrypt::BcryptError> {
    bcrypt::hash(password, bcrypt::DEFAULT_COST)
}

/// A bcrypt hash of a machine-made secret of at least 128 random bits (berth server's own
/// admin credential), at bcrypt's lowest cost: a slow hash only protects passwords that can be
/// guessed, and this one cannot be, so its checks need not cost 250 ms each.
pub fn hash_random_secret(secret: &str) -> Result<String, bcrypt::BcryptError> {
    bcrypt::hash(secret, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).expect("header"),
        );
        h
    }

    fn authorizer(extra: &str) -> Authorizer {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            format!(
                "[anonymous]\npull = [\"public/*\"]\n[[users]]\nname = \"alice\"\npassword = \"{hash}\"\npull = [\"*\"]\npush = [\"alice/*\"]\n{extra}"
            ),
        )
        .expect("write");
        Authorizer::from_file(&path, false).expect("load")
    }

    #[test]
    fn rights_follow_the_file() {
        let auth = authorizer("");
        let alice = auth.authenticate(&basic("alice", "s3cret")).expect("login");
        assert_eq!(alice, Principal::User("alice".into()));
        assert!(auth.allows(&alice, "alice/app", Access::Push));
        assert!(auth.allows(&alice, "bob/app", Access::Pull));
        assert!(!auth.allows(&alice, "bob/app", Access::Push));
        let anon = auth.authenticate(&HeaderMap::new()).expect("anonymous");
        assert!(auth.allows(&anon, "public/x", Access::Pull));
        assert!(!auth.allows(&anon, "alice/app", Access::Pull));
        let denied = auth
            .require(&alice, "bob/app", Access::Push)
            .expect_err("denied");
        assert_eq!(denied.code, Code::Denied);
        let challenged = auth
            .require(&anon, "alice/app", Access::Push)
            .expect_err("401");
        assert_eq!(challenged.code, Code::Unauthorized);
        assert!(challenged
            .headers
            .iter()
            .any(|(n, _)| n == header::WWW_AUTHENTICATE));
    }

    #[test]
    fn wrong_passwords_and_users_are_refused() {
        let auth = authorizer("");
        for (u, p) in [("alice", "nope"), ("mallory", "s3cret"), ("alice", "")] {
            let err = auth.authenticate(&basic(u, p)).expect_err("refused");
            assert_eq!(err.code, Code::Unauthorized);
        }
        // Empty credentials are what clients send when they have none: anonymous.
        assert_eq!(
            auth.authenticate(&basic("", "")).expect("anonymous"),
            Principal::Anonymous
        );
        assert!(auth.authenticate(&basic("", "x")).is_err());
        // A cached success does not let another password through.
        auth.authenticate(&basic("alice", "s3cret")).expect("login");
        assert!(auth.authenticate(&basic("alice", "s3cret2")).is_err());
    }

    #[test]
    fn plaintext_passwords_and_unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[users]]\nname = \"a\"\npassword = \"plain\"\n").expect("write");
        let err = Authorizer::from_file(&path, false).err().expect("rejected");
        assert!(err.to_string().contains("bcrypt"), "{err}");
        std::fs::write(&path, "[[users]]\nname = \"a\"\npasword = \"$2b$\"\n").expect("write");
        assert!(Authorizer::from_file(&path, false).is_err());
    }
}
