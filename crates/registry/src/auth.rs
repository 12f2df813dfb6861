//! Who may do what: a users file with bcrypt-hashed passwords and per-repository pull/push
//! globs, checked on every request through HTTP Basic authentication (what podman, skopeo and
//! docker do against a registry that answers `WWW-Authenticate: Basic`).
//!
//! bcrypt is slow on purpose, so it is kept away from everything else: a verified password
//! is remembered for a while (honest clients pay once), checks run on a few blocking
//! threads with a bounded queue ([`verify`]), each client's failures are rate-limited
//! ([`throttle`]), and an
//! unknown user costs a verification against a dummy hash like a known one, so that the
//! answer's timing does not tell which users exist.

mod throttle;
mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use berth_listen::ClientKey;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use sha2::Digest as _;

pub use self::throttle::LoginLimits;
use self::throttle::Throttle;
use self::verify::Verifier;
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

/// Counters of the password checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// bcrypt verifications run (for known and unknown users alike).
    pub verifications: u64,
    /// Logins answered 429: their client failed too often, or too many checks were
    /// waiting for the blocking pool already.
    pub throttled: u64,
}

/// The registry's access policy.
pub struct Authorizer {
    anonymous: Grants,
    users: HashMap<String, User>,
    /// Whether credentials are asked for at all.
    enabled: bool,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// What an unknown user's password is checked against, with the cost most users'
    /// hashes have.
    dummy_hash: String,
    throttle: Throttle,
    verifier: Verifier,
    throttled: std::sync::atomic::AtomicU64,
}

impl Authorizer {
    /// No users file: everyone may do everything.
    pub fn open() -> Authorizer {
        Authorizer {
            anonymous: Grants::everything(),
            users: HashMap::new(),
            enabled: false,
            verified: Mutex::default(),
            dummy_hash: String::new(),
            throttle: Throttle::new(LoginLimits::default()),
            verifier: Verifier::new(Verifier::default_threads()),
            throttled: Default::default(),
        }
    }

    /// The same policy with `limits` on failed logins.
    pub fn with_login_limits(mut self, limits: LoginLimits) -> Authorizer {
        self.throttle = Throttle::new(limits);
        self
    }

    /// Counters of the password checks so far.
    pub fn stats(&self) -> AuthStats {
        AuthStats {
            verifications: self.verifier.counts().runs.load(Ordering::SeqCst),
            throttled: self.throttled.load(Ordering::Relaxed),
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
            // No user to time yet; [`Authorizer::add_admin`] makes the real one.
            dummy_hash: String::new(),
            throttle: Throttle::new(LoginLimits::default()),
            verifier: Verifier::new(Verifier::default_threads()),
            throttled: Default::default(),
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
        // An unknown user's check now costs what most users' checks cost, the admin included.
        self.dummy_hash = dummy_hash(&self.users)
            .map_err(|e| format!("cannot make the dummy hash for unknown users: {e}"))?;
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
        let dummy_hash = dummy_hash(&users).map_err(|e| UsersFileError::Invalid {
            path: shown.clone(),
            message: format!("cannot make the dummy hash for unknown users: {e}"),
        })?;
        Ok(Authorizer {
            anonymous: Grants::compile(&anonymous, &shown)?,
            users,
            enabled: true,
            verified: Mutex::default(),
            dummy_hash,
            throttle: Throttle::new(LoginLimits::default()),
            verifier: Verifier::new(Verifier::default_threads()),
            throttled: Default::default(),
        })
    }

    /// Whether requests are authenticated at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Identifies the caller from its `Authorization` header; `client` is its address, for
    /// the rate limit of failed logins (`None`: all such callers share one limit). A
    /// password verified in the last minutes is accepted without bcrypt; otherwise the
    /// check runs on the blocking pool, for an unknown user against the dummy hash, after
    /// taking one of the client's login tokens (429 `TOOMANYREQUESTS` with `Retry-After`
    /// when it has none left; a success gives it back).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
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
        let entry = self.users.get(&user);
        let hash = entry.map_or(self.dummy_hash.as_str(), |u| u.hash.as_str());
        let fingerprint: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        let cached = entry.is_some()
            && self
                .verified
                .lock()
                .map(|m| {
                    m.get(&fingerprint)
                        .is_some_and(|t| t.elapsed() < CREDENTIAL_CACHE_TTL)
                })
                .unwrap_or(false);
        if cached {
            return Ok(Principal::User(user));
        }
        let client = ClientKey::of(client.unwrap_or(IpAddr::from([0, 0, 0, 0])));
        if let Err(retry_after) = self.throttle.reserve(client, Instant::now()) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let seconds = retry_after.as_secs_f64().ceil().max(1.0);
            tracing::debug!(%client, retry_after = seconds, "login throttled");
            return Err(ApiError::new(
                Code::TooManyRequests,
                format!("too many failed logins from {client}: try again in {seconds:.0} s"),
            )
            .header(
                header::RETRY_AFTER,
                HeaderValue::from_str(&format!("{seconds:.0}"))
                    .unwrap_or(HeaderValue::from_static("60")),
            ));
        }
        let matches = match self.verifier.verify(password, hash.to_owned()).await {
            Ok(matches) => matches,
            Err(verify::Busy) => {
                // Not this client's failure: its token goes back.
                self.throttle.refund(client, Instant::now());
                self.throttled.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    Code::TooManyRequests,
                    "too many logins are being checked right now: try again in a second",
                )
                .header(header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
        };
        if !(matches && entry.is_some()) {
            tracing::debug!(%client, "failed login");
            return Err(challenge(ApiError::new(
                Code::Unauthorized,
                "invalid username or password",
            )));
        }
        self.throttle.refund(client, Instant::now());
        if let Ok(mut map) = self.verified.lock() {
            map.retain(|_, t| t.elapsed() < CREDENTIAL_CACHE_TTL);
            map.insert(fingerprint, Instant::now());
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

/// The cost of a bcrypt hash (`$2b$12$...`: 12).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// A hash of a random password with the cost most users' hashes have (bcrypt's default
/// without users), so that checking an unknown user takes as long as a known one.
fn dummy_hash(users: &HashMap<String, User>) -> Result<String, bcrypt::BcryptError> {
    let mut costs: HashMap<u32, usize> = HashMap::new();
    for user in users.values() {
        if let Some(cost) = bcrypt_cost(&user.hash) {
            *costs.entry(cost).or_default() += 1;
        }
    }
    let cost = costs
        .into_iter()
        .max_by_key(|(cost, count)| (*count, *cost))
        .map_or(bcrypt::DEFAULT_COST, |(cost, _)| cost);
    let password: [u8; 24] = rand::random();
    bcrypt::hash(hex::encode(password), cost)
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

    const ME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));

    #[tokio::test]
    async fn rights_follow_the_file() {
        let auth = authorizer("");
        let alice = auth
            .authenticate(&basic("alice", "s3cret"), ME)
            .await
            .expect("login");
        assert_eq!(alice, Principal::User("alice".into()));
        assert!(auth.allows(&alice, "alice/app", Access::Push));
        assert!(auth.allows(&alice, "bob/app", Access::Pull));
        assert!(!auth.allows(&alice, "bob/app", Access::Push));
        let anon = auth
            .authenticate(&HeaderMap::new(), ME)
            .await
            .expect("anonymous");
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

    #[tokio::test]
    async fn wrong_passwords_and_users_are_refused() {
        let auth = authorizer("");
        for (u, p) in [("alice", "nope"), ("mallory", "s3cret"), ("alice", "")] {
            let err = auth
                .authenticate(&basic(u, p), ME)
                .await
                .expect_err("refused");
            assert_eq!(err.code, Code::Unauthorized);
            assert_eq!(err.message, "invalid username or password");
        }
        // Empty credentials are what clients send when they have none: anonymous.
        assert_eq!(
            auth.authenticate(&basic("", ""), ME)
                .await
                .expect("anonymous"),
            Principal::Anonymous
        );
        assert!(auth.authenticate(&basic("", "x"), ME).await.is_err());
        // A cached success does not let another password through.
        auth.authenticate(&basic("alice", "s3cret"), ME)
            .await
            .expect("login");
        assert!(auth
            .authenticate(&basic("alice", "s3cret2"), ME)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn unknown_users_cost_a_bcrypt_verification_like_known_ones() {
        let auth = authorizer("");
        assert_eq!(bcrypt_cost(&auth.dummy_hash), Some(4), "the users' cost");
        let runs = |auth: &Authorizer| auth.stats().verifications;
        auth.authenticate(&basic("alice", "wrong"), ME)
            .await
            .expect_err("wrong password");
        assert_eq!(runs(&auth), 1);
        auth.authenticate(&basic("mallory", "wrong"), ME)
            .await
            .expect_err("unknown user");
        assert_eq!(runs(&auth), 2, "an unknown user runs bcrypt too");
        // An honest client pays bcrypt once; then its credentials are remembered.
        auth.authenticate(&basic("alice", "s3cret"), ME)
            .await
            .expect("login");
        assert_eq!(runs(&auth), 3);
        for _ in 0..5 {
            auth.authenticate(&basic("alice", "s3cret"), ME)
                .await
                .expect("cached login");
        }
        assert_eq!(runs(&auth), 3);
    }

    #[test]
    fn the_dummy_hash_has_the_cost_most_users_have() {
        let users: HashMap<String, User> = [4, 5, 5]
            .into_iter()
            .enumerate()
            .map(|(i, cost)| {
                (
                    format!("u{i}"),
                    User {
                        hash: bcrypt::hash("pw", cost).expect("hash"),
                        grants: Grants::everything(),
                        admin: false,
                    },
                )
            })
            .collect();
        assert_eq!(bcrypt_cost(&dummy_hash(&users).expect("hash")), Some(5));
        assert_eq!(
            bcrypt_cost("$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"),
            Some(12)
        );
    }

    #[tokio::test]
    async fn failed_logins_are_throttled_per_client_and_cached_logins_are_not() {
        let auth = authorizer("").with_login_limits(LoginLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        // An honest client logs in first: its credentials are remembered.
        auth.authenticate(&basic("alice", "s3cret"), ME)
            .await
            .expect("login");
        for _ in 0..3 {
            let err = auth
                .authenticate(&basic("alice", "guess"), ME)
                .await
                .expect_err("wrong");
            assert_eq!(err.code, Code::Unauthorized);
        }
        let before = auth.stats().verifications;
        for user in ["alice", "mallory"] {
            let err = auth
                .authenticate(&basic(user, "guess"), ME)
                .await
                .expect_err("throttled");
            assert_eq!(err.code, Code::TooManyRequests);
            let retry = err
                .headers
                .iter()
                .find(|(n, _)| n == header::RETRY_AFTER)
                .map(|(_, v)| v.to_str().expect("ascii").to_owned())
                .expect("Retry-After");
            assert_eq!(retry, "20", "one failure per 20 s refills");
        }
        assert_eq!(
            auth.stats().verifications,
            before,
            "a throttled login costs no bcrypt"
        );
        assert_eq!(auth.stats().throttled, 2);
        // The honest client's remembered credentials still work from the same address,
        // and other addresses are not affected.
        auth.authenticate(&basic("alice", "s3cret"), ME)
            .await
            .expect("cached login");
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));
        auth.authenticate(&basic("alice", "guess"), other)
            .await
            .expect_err("wrong, not throttled")
            .code
            .eq(&Code::Unauthorized)
            .then_some(())
            .expect("401");
    }

    /// On a single-threaded runtime, another task keeps running while a password is being
    /// checked: bcrypt is not on the async thread. (Were it inline, the check would start
    /// and finish within one poll, and the observer below would never see it running.)
    #[tokio::test(flavor = "current_thread")]
    async fn password_checks_leave_the_async_thread_free() {
        let hash = bcrypt::hash("s3cret", 10).expect("hash");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            format!("[[users]]\nname = \"alice\"\npassword = \"{hash}\"\n"),
        )
        .expect("write");
        let auth = std::sync::Arc::new(Authorizer::from_file(&path, false).expect("load"));
        let checking = {
            let auth = std::sync::Arc::clone(&auth);
            tokio::spawn(async move { auth.authenticate(&basic("alice", "nope"), ME).await })
        };
        let seen_running = tokio::time::timeout(Duration::from_secs(30), async {
            while auth.verifier.counts().running.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(seen_running.is_ok(), "the check never ran beside this task");
        assert!(checking.await.expect("join").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_most_the_pool_size_of_checks_run_at_once() {
        let auth = std::sync::Arc::new(authorizer(""));
        let tasks: Vec<_> = (0..64u8)
            .map(|i| {
                let auth = std::sync::Arc::clone(&auth);
                tokio::spawn(async move {
                    let client = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)));
                    auth.authenticate(&basic("alice", "nope"), client).await
                })
            })
            .collect();
        let (mut refused, mut busy) = (0, 0);
        for task in tasks {
            match task.await.expect("join").expect_err("wrong").code {
                Code::Unauthorized => refused += 1,
                Code::TooManyRequests => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        let counts = auth.verifier.counts();
        assert_eq!(counts.runs.load(Ordering::SeqCst), refused);
        assert_eq!(refused + busy, 64);
        assert!(counts.peak.load(Ordering::SeqCst) <= Verifier::default_threads());
        assert_eq!(auth.stats().throttled, busy);
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
