//! Who may do what: HTTP bearer tokens and RESP users from `[auth]`, each granting reads and
//! writes over key prefixes, plus the RESP "default" user of `resp.requirepass`. The rules
//! live behind one `ArcSwap`, so a SIGHUP reload replaces them while requests read them
//! without a lock; sessions logged in under replaced rules are moved to the new ones by name.
//!
//! Secrets are compared in constant time and never logged: only a principal's name is.
//!
//! Also here: protected mode (a door with no auth serves loopback clients only, as
//! redis-server's), and the bounds on guessing RESP passwords (failed AUTHs per connection,
//! the delay before each failure is answered, one rate-limited log line for them).

use crate::config::{Config, Secret};
use arc_swap::{ArcSwap, Guard};
use http::{header::AUTHORIZATION, HeaderMap};
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// What an operation does to its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// Changes the value and returns it (INCR, SET ... GET).
    ReadWrite,
}

/// Why a request was refused before it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials where they are required (HTTP 401).
    Missing,
    /// Credentials that match nothing (HTTP 401, RESP WRONGPASS).
    Invalid,
    /// Valid credentials, but a key outside their scopes (HTTP 403, RESP NOPERM).
    Forbidden,
}

impl Denied {
    pub const ALL: [Denied; 3] = [Denied::Missing, Denied::Invalid, Denied::Forbidden];

    pub fn label(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Forbidden => "forbidden",
        }
    }
}

/// Key prefixes; `*` stands for every key.
struct Prefixes {
    all: bool,
    list: Box<[Box<[u8]>]>,
}

impl Prefixes {
    fn new(list: &[String]) -> Self {
        Self {
            all: list.iter().any(|p| p == "*"),
            list: list
                .iter()
                .filter(|p| *p != "*")
                .map(|p| p.as_bytes().into())
                .collect(),
        }
    }

    fn everything() -> Self {
        Self {
            all: true,
            list: Box::new([]),
        }
    }

    fn allow(&self, key: &[u8]) -> bool {
        self.all || self.list.iter().any(|p| key.starts_with(p))
    }
}

/// A token holder or a user: a name and what it may touch.
pub struct Principal {
    name: Box<str>,
    read: Prefixes,
    write: Prefixes,
    /// Set when a reload replaced the rules this came from.
    replaced: AtomicBool,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Principal {
    fn new(name: &str, read: Prefixes, write: Prefixes) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            read,
            write,
            replaced: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this principal may do `need` to `key`.
    /// Whether it may read and write every key: no prefix scopes.
    pub fn unscoped(&self) -> bool {
        self.read.all && self.write.all
    }

    pub fn may(&self, need: Need, key: &[u8]) -> bool {
        match need {
            Need::Read => self.read.allow(key),
            Need::Write => self.write.allow(key),
            Need::ReadWrite => self.read.allow(key) && self.write.allow(key),
        }
    }

    /// Whether a reload replaced the rules this principal came from (see `Auth::refresh`).
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// One generation of the rules.
pub struct Rules {
    tokens: Vec<(Box<[u8]>, Arc<Principal>)>,
    users: Vec<(Box<[u8]>, Arc<Principal>)>,
    /// `resp.requirepass`; None: the default user needs no password (when it exists).
    requirepass: Option<Box<[u8]>>,
    /// The RESP user with every key, when it exists: with no users configured, or with
    /// `resp.requirepass` set.
    default_user: Option<Arc<Principal>>,
    /// Protected mode, per door: it has no auth, so only loopback clients are served.
    http_protected: bool,
    resp_protected: bool,
    /// `auth.max_failures_per_connection`, validated to fit.
    max_failures: u8,
    failure_delay: Duration,
}

impl Rules {
    pub fn from_config(config: &Config) -> Self {
        // A secret and the principal it stands for: tokens and users are built alike.
        let entry = |name: &str, secret: &Secret, read: &[String], write: &[String]| {
            let p = Principal::new(name, Prefixes::new(read), Prefixes::new(write));
            (secret.expose().as_bytes().into(), p)
        };
        let requirepass = (!config.resp.requirepass.is_empty())
            .then(|| config.resp.requirepass.expose().as_bytes().into());
        let default_exists = config.auth.users.is_empty() || requirepass.is_some();
        let protected = config.protected_doors();
        Self {
            http_protected: protected.iter().any(|d| d.0 == "http"),
            resp_protected: protected.iter().any(|d| d.0 == "resp"),
            max_failures: config.auth.max_failures_per_connection.clamp(1, 255) as u8,
            failure_delay: config.auth.failure_delay.0,
            tokens: (config.auth.tokens.iter())
                .map(|t| entry(&t.name, &t.token, &t.read, &t.write))
                .collect(),
            users: (config.auth.users.iter())
                .map(|u| entry(&u.name, &u.password, &u.read, &u.write))
                .collect(),
            requirepass,
            default_user: default_exists
                .then(|| Principal::new("default", Prefixes::everything(), Prefixes::everything())),
        }
    }

    /// The principal an HTTP request acts as: None when no tokens are configured (the door is
    /// open), else the holder of its `Authorization: Bearer` token.
    pub fn bearer(&self, headers: &HeaderMap) -> Result<Option<Arc<Principal>>, Denied> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let token = bearer_of(headers)?;
        // Every token is compared, so timing does not tell which one came close.
        let mut found = None;
        for (secret, p) in &self.tokens {
            if constant_time_eq(secret, token) {
                found = Some(p);
            }
        }
        found.cloned().map(Some).ok_or(Denied::Invalid)
    }

    /// The user a new RESP connection starts as: the default user when it needs no password.
    pub fn resp_anonymous(&self) -> Option<Arc<Principal>> {
        match self.requirepass {
            None => self.default_user.clone(),
            Some(_) => None,
        }
    }

    /// Whether AUTH with a password alone makes sense (redis-server refuses it when the
    /// default user has no password and there are no other users).
    pub fn resp_has_passwords(&self) -> bool {
        self.requirepass.is_some() || !self.users.is_empty()
    }

    /// AUTH [user] password: the user it logs in as.
    pub fn login(&self, user: Option<&[u8]>, password: &[u8]) -> Option<Arc<Principal>> {
        match user {
            None | Some(b"default") => {
                let ok = match &self.requirepass {
                    // With no password set, "default" accepts any password, as in redis-server.
                    None => true,
                    Some(want) => constant_time_eq(want, password),
                };
                ok.then(|| self.default_user.clone()).flatten()
            }
            Some(name) => {
                let (secret, p) = self.users.iter().find(|(_, p)| p.name.as_bytes() == name)?;
                constant_time_eq(secret, password).then(|| p.clone())
            }
        }
    }

    /// Whether the HTTP door serves a client at `peer` (protected mode: loopback only).
    pub fn http_admits(&self, peer: IpAddr) -> bool {
        admits(self.http_protected, peer)
    }

    /// Whether the RESP door serves a client at `peer` (protected mode: loopback only).
    pub fn resp_admits(&self, peer: IpAddr) -> bool {
        admits(self.resp_protected, peer)
    }

    /// What a connection's `failures`th failed AUTH costs it.
    pub fn after_failure(&self, failures: u8) -> AfterFailure {
        if failures >= self.max_failures {
            return AfterFailure::Close;
        }
        AfterFailure::Wait(self.failure_delay * u32::from(failures.saturating_sub(1)))
    }

    /// The name a login attempt gave, when it names a user that exists: what a log line may
    /// show (an unknown name may be a password typed in the wrong field).
    pub fn known_user<'a>(&self, name: Option<&'a [u8]>) -> &'a str {
        let name = name.unwrap_or(b"default");
        let known = (name == b"default" && self.default_user.is_some())
            || self.users.iter().any(|(_, p)| p.name.as_bytes() == name);
        match std::str::from_utf8(name) {
            Ok(name) if known => name,
            _ => "(unknown)",
        }
    }

    fn by_name(&self, name: &str) -> Option<Arc<Principal>> {
        if name == "default" {
            return self.default_user.clone();
        }
        self.users
            .iter()
            .map(|(_, p)| p)
            .find(|p| &*p.name == name)
            .cloned()
    }

    fn principals(&self) -> impl Iterator<Item = &Arc<Principal>> {
        self.tokens
            .iter()
            .chain(&self.users)
            .map(|(_, p)| p)
            .chain(&self.default_user)
    }
}

/// Protected mode's test: a client is served if the door is not protected or the client is
/// on loopback (127.0.0.0/8, ::1, or 127.x mapped into IPv6 by a dual-stack listener).
pub fn admits(protected: bool, peer: IpAddr) -> bool {
    !protected || peer.to_canonical().is_loopback()
}

/// What a failed AUTH costs the connection that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Answer after this long (zero: at once), with the connection's other work waiting.
    Wait(Duration),
    /// `auth.max_failures_per_connection` reached: answer and close.
    Close,
}

/// One warning line a second at most, process-wide, about failed logins: a guesser must not
/// be able to fill the disk through the log. Lines left out are counted into the next one.
pub struct FailureLog {
    start: Instant,
    /// Milliseconds since `start` before which no line is written.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// How often a failed-login line may be written.
const FAILURE_LOG_EVERY_MS: u64 = 1000;

impl FailureLog {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Counts a failure at `now_ms`; Some(lines left out since the last one) when this one
    /// is to be written.
    fn due(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next
            || (self.next_ms)
                .compare_exchange(
                    next,
                    now_ms + FAILURE_LOG_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    /// Logs a failed login by `client` (a RESP client id) as `user` (a configured name or
    /// "(unknown)", never what was typed), its `failures`th on that connection. Never the
    /// password.
    pub fn failed(&self, door: &'static str, client: u64, user: &str, failures: u8, closed: bool) {
        let now = self.start.elapsed().as_millis() as u64;
        if let Some(suppressed) = self.due(now) {
            tracing::warn!(
                door,
                client,
                user,
                failures_on_connection = failures,
                closed,
                suppressed,
                "failed AUTH (wrong password or unknown user); at most one such line a second, `suppressed` counts those left out since the last"
            );
        }
    }
}

/// The current rules, replaceable at run time.
pub struct Auth {
    rules: ArcSwap<Rules>,
    /// Failed logins, for every rules generation.
    pub failures: FailureLog,
}

impl Auth {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules: ArcSwap::from_pointee(rules),
            failures: FailureLog::new(),
        }
    }

    pub fn rules(&self) -> Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// Puts `rules` in force. Every principal of the old rules is marked replaced, so live
    /// RESP sessions move to the new principal of the same name, or lose their login when it
    /// is gone (as redis-server drops the clients of a deleted user).
    pub fn replace(&self, rules: Rules) {
        let old = self.rules.swap(Arc::new(rules));
        for p in old.principals() {
            p.replaced.store(true, Ordering::Relaxed);
        }
    }

    /// What a session logged in as `p` becomes under the current rules.
    pub fn refresh(&self, p: &Principal) -> Option<Arc<Principal>> {
        self.rules.load().by_name(&p.name)
    }
}

const BEARER: &[u8] = b"Bearer ";

/// The token of an `Authorization: Bearer` header.
fn bearer_of(headers: &HeaderMap) -> Result<&[u8], Denied> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(Denied::Missing)?
        .as_bytes();
    // The scheme name is case-insensitive (RFC 9110 section 11.1).
    match value.split_at_checked(BEARER.len()) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(BEARER) => Ok(token),
        _ => Err(Denied::Invalid),
    }
}

/// Whether `headers` carry `Authorization: Bearer <secret>` (the admin port's one token).
pub fn bearer_is(headers: &HeaderMap, secret: &Secret) -> Result<(), Denied> {
    let token = bearer_of(headers)?;
    if constant_time_eq(secret.expose().as_bytes(), token) {
        Ok(())
    } else {
        Err(Denied::Invalid)
    }
}

/// Compares without an early exit, so response timing does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenConfig, UserConfig};

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> Config {
        let mut c = Config::default();
        c.auth.tokens.push(TokenConfig {
            name: "reader".into(),
            token: TOKEN.into(),
            read: vec!["user:".into(), "sess:".into()],
            write: vec!["sess:".into()],
        });
        c.auth.users.push(UserConfig {
            name: "app".into(),
            password: "pw".into(),
            read: vec!["*".into()],
            write: vec!["app:".into()],
        });
        c
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_grant_their_prefixes_only() {
        let rules = Rules::from_config(&config());
        let p = rules
            .bearer(&headers(&format!("Bearer {TOKEN}")))
            .unwrap()
            .unwrap();
        assert_eq!(p.name(), "reader");
        let shouted = rules.bearer(&headers(&format!("BEARER {TOKEN}"))).unwrap();
        assert_eq!(shouted.unwrap().name(), "reader");
        assert!(p.may(Need::Read, b"user:1"));
        assert!(!p.may(Need::Write, b"user:1"));
        assert!(p.may(Need::ReadWrite, b"sess:1"));
        assert!(!p.may(Need::Read, b"other"));
        assert_eq!(
            rules.bearer(&HeaderMap::new()).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(
            rules.bearer(&headers("Bearer nope")).unwrap_err(),
            Denied::Invalid
        );
        assert_eq!(
            rules
                .bearer(&headers(&format!("Basic {TOKEN}")))
                .unwrap_err(),
            Denied::Invalid
        );
        let open = Rules::from_config(&Config::default());
        assert!(open.bearer(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn users_log_in_and_the_default_user_follows_requirepass() {
        let mut c = config();
        let rules = Rules::from_config(&c);
        assert!(
            rules.resp_anonymous().is_none(),
            "users configured: log in first"
        );
        assert_eq!(rules.login(Some(b"app"), b"pw").unwrap().name(), "app");
        assert!(rules.login(Some(b"app"), b"wrong").is_none());
        assert!(rules.login(None, b"anything").is_none(), "no default user");
        c.resp.requirepass = "s3cret".into();
        let rules = Rules::from_config(&c);
        assert!(rules.login(None, b"s3cret").unwrap().may(Need::Write, b"x"));
        assert!(rules.login(Some(b"default"), b"nope").is_none());
        let open = Rules::from_config(&Config::default());
        assert_eq!(open.resp_anonymous().unwrap().name(), "default");
        assert!(!open.resp_has_passwords());
    }

    #[test]
    fn protected_mode_admits_loopback_only_and_only_doors_without_auth() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for loopback in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:127.9.9.9",
        ] {
            assert!(admits(true, ip(loopback)), "{loopback}");
        }
        for remote in [
            "192.0.2.2",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "fd00::2",
            "::ffff:192.0.2.2",
            "::2",
        ] {
            assert!(!admits(true, ip(remote)), "{remote}");
            assert!(admits(false, ip(remote)), "{remote}: protected mode off");
        }
        let remote = ip("192.0.2.2");
        let open = Rules::from_config(&Config::default());
        assert!(!open.http_admits(remote) && !open.resp_admits(remote));
        // Each door is protected while it has no auth of its own.
        let with_users = Rules::from_config(&config());
        assert!(with_users.http_admits(remote) && with_users.resp_admits(remote));
        let mut c = Config::default();
        c.resp.requirepass = "pw".into();
        let rules = Rules::from_config(&c);
        assert!(!rules.http_admits(remote) && rules.resp_admits(remote));
        c.auth.protected_mode = false;
        c.resp.requirepass = Secret::default();
        let rules = Rules::from_config(&c);
        assert!(rules.http_admits(remote) && rules.resp_admits(remote));
    }

    #[test]
    fn failed_logins_wait_longer_each_time_then_close() {
        let mut c = Config::default();
        c.auth.max_failures_per_connection = 4;
        c.auth.failure_delay = crate::config::HumanDuration(Duration::from_millis(100));
        let rules = Rules::from_config(&c);
        let waits: Vec<_> = (1..=4).map(|n| rules.after_failure(n)).collect();
        let ms = |m| AfterFailure::Wait(Duration::from_millis(m));
        assert_eq!(waits, [ms(0), ms(100), ms(200), AfterFailure::Close]);
        assert_eq!(rules.after_failure(255), AfterFailure::Close);
        let rules = Rules::from_config(&config());
        assert_eq!(rules.known_user(Some(b"app")), "app");
        assert_eq!(rules.known_user(Some(b"hunter2")), "(unknown)");
        assert_eq!(rules.known_user(None), "(unknown)", "no default user here");
    }

    #[test]
    fn the_failure_log_writes_one_line_a_second_and_counts_the_rest() {
        let log = FailureLog::new();
        assert_eq!(log.due(0), Some(0));
        assert_eq!(log.due(10), None);
        assert_eq!(log.due(999), None);
        assert_eq!(log.due(1000), Some(2));
        assert_eq!(log.due(1500), None);
        assert_eq!(log.due(5000), Some(1));
    }

    #[test]
    fn a_reload_moves_sessions_by_name_and_drops_removed_users() {
        let auth = Auth::new(Rules::from_config(&config()));
        let app = auth.rules().login(Some(b"app"), b"pw").unwrap();
        assert!(!app.may(Need::Write, b"new:1"));
        let mut c = config();
        c.auth.users[0].write = vec!["new:".into()];
        auth.replace(Rules::from_config(&c));
        assert!(app.is_replaced());
        let now = auth.refresh(&app).unwrap();
        assert!(now.may(Need::Write, b"new:1"));
        c.auth.users.clear();
        c.auth.users.push(UserConfig {
            name: "other".into(),
            password: "x".into(),
            read: vec!["*".into()],
            write: vec![],
        });
        auth.replace(Rules::from_config(&c));
        assert!(auth.refresh(&now).is_none(), "the user is gone");
    }
}
