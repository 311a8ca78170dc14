//! Console sessions: a random ID in a `__Host-` cookie (`HttpOnly; Secure;
//! SameSite=Strict; Path=/`), kept in memory for `session_ttl` (a restart
//! signs everyone out), each with its own CSRF token that every write must
//! echo in `X-CSRF-Token`. A sign-in under way keeps nothing on the server:
//! its state, PKCE verifier, nonce and deadline travel in a `SameSite=Lax`
//! cookie sealed with a per-process HMAC key (the IdP's redirect back is a
//! cross-site navigation), so a flood of `/login` requests fills nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::HeaderMap;
use hyper::header::COOKIE;

use super::oidc::{Pending, Person};
use super::random_token;

pub const SESSION_COOKIE: &str = "__Host-a2a_console";
pub const LOGIN_COOKIE: &str = "__Host-a2a_console_login";
/// How long a sign-in may take at the IdP.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
const MAX_SESSIONS: u64 = 10_000;

/// A signed-in person.
#[derive(Debug)]
pub struct Session {
    pub person: Person,
    pub csrf: String,
    pub expires: Instant,
    /// Set at sign-out: an audit stream opened with this session ends.
    pub ended: std::sync::atomic::AtomicBool,
    /// Audit streams open with this session.
    pub streams: std::sync::atomic::AtomicUsize,
    /// Wakes the session's audit streams at sign-out.
    pub signed_out: tokio::sync::Notify,
}

impl Session {
    /// Still signed in: not signed out and not expired.
    pub fn live(&self) -> bool {
        !self.ended.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < self.expires
    }
}

pub struct Sessions {
    ttl: Duration,
    sessions: moka::sync::Cache<String, Arc<Session>>,
    /// Seals sign-ins under way into their cookie.
    seal: aws_lc_rs::hmac::Key,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            sessions: moka::sync::Cache::builder().max_capacity(MAX_SESSIONS).time_to_live(ttl).build(),
            seal: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, random_token().as_bytes()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The session the request's cookie names, if it is still valid.
    pub fn current(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        let id = cookie(headers, SESSION_COOKIE)?;
        self.sessions.get(&id).filter(|s| s.live())
    }

    /// A new session for `person`; returns its ID (the cookie's value).
    pub fn create(&self, person: Person) -> String {
        let id = random_token();
        let session = Session {
            person,
            csrf: random_token(),
            expires: Instant::now() + self.ttl,
            ended: Default::default(),
            streams: Default::default(),
            signed_out: tokio::sync::Notify::new(),
        };
        self.sessions.insert(id.clone(), Arc::new(session));
        id
    }

    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            if let Some(session) = self.sessions.get(&id) {
                session.ended.store(true, std::sync::atomic::Ordering::SeqCst);
                session.signed_out.notify_waiters();
            }
            self.sessions.invalidate(&id);
        }
    }

    /// The login cookie's value for a sign-in under `state`.
    pub fn seal_login(&self, state: &str, pending: &Pending) -> String {
        let deadline = policy::jwt::unix_now() + LOGIN_TTL.as_secs();
        let payload = format!("{state}.{}.{}.{deadline}", pending.verifier, pending.nonce);
        let tag = aws_lc_rs::hmac::sign(&self.seal, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The sign-in the callback's `state` names: only from the login cookie
    /// this process sealed for that state, before its deadline.
    pub fn open_login(&self, state: &str, headers: &HeaderMap) -> Option<Pending> {
        let cookie = cookie(headers, LOGIN_COOKIE)?;
        let (payload, tag) = cookie.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        aws_lc_rs::hmac::verify(&self.seal, payload.as_bytes(), &tag).ok()?;
        let mut parts = payload.split('.');
        let (sealed_state, verifier, nonce, deadline) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let same = aws_lc_rs::constant_time::verify_slices_are_equal(sealed_state.as_bytes(), state.as_bytes()).is_ok();
        let fresh = deadline.parse::<u64>().is_ok_and(|d| policy::jwt::unix_now() <= d);
        (same && fresh).then(|| Pending { verifier: verifier.to_owned(), nonce: nonce.to_owned() })
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &Session, presented: Option<&hyper::header::HeaderValue>) -> bool {
    presented.is_some_and(|p| {
        aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), session.csrf.as_bytes()).is_ok()
    })
}
