//! Console sessions: a random ID in an `HttpOnly; Secure; SameSite=Strict`
//! cookie, kept in memory for `session_ttl` (a restart signs everyone out),
//! each with its own CSRF token that every write must echo in
//! `X-CSRF-Token`. Sign-ins under way are kept 10 minutes under their
//! `state`, bound to the browser that started them by a `SameSite=Lax`
//! cookie (the IdP's redirect back is a cross-site navigation).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use hyper::header::COOKIE;

use super::oidc::{Pending, Person, random_token};

pub const SESSION_COOKIE: &str = "a2a_console";
pub const LOGIN_COOKIE: &str = "a2a_console_login";
/// How long a sign-in may take at the IdP.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
const MAX_SESSIONS: u64 = 10_000;
const MAX_PENDING: u64 = 10_000;

/// A signed-in person.
#[derive(Debug)]
pub struct Session {
    pub person: Person,
    pub csrf: String,
    pub expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    sessions: moka::sync::Cache<String, Arc<Session>>,
    pending: moka::sync::Cache<String, Arc<Pending>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            sessions: moka::sync::Cache::builder().max_capacity(MAX_SESSIONS).time_to_live(ttl).build(),
            pending: moka::sync::Cache::builder().max_capacity(MAX_PENDING).time_to_live(LOGIN_TTL).build(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The session the request's cookie names, if it is still valid.
    pub fn current(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        let id = cookie(headers, SESSION_COOKIE)?;
        self.sessions.get(&id).filter(|s| s.expires > Instant::now())
    }

    /// A new session for `person`; returns its ID (the cookie's value).
    pub fn create(&self, person: Person) -> String {
        let id = random_token();
        let session = Session { person, csrf: random_token(), expires: Instant::now() + self.ttl };
        self.sessions.insert(id.clone(), Arc::new(session));
        id
    }

    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions.invalidate(&id);
        }
    }

    pub fn begin_login(&self, state: &str, pending: Pending) {
        self.pending.insert(state.to_owned(), Arc::new(pending));
    }

    /// The sign-in `state` names, once: only for the browser whose login cookie is that state.
    pub fn take_login(&self, state: &str, headers: &HeaderMap) -> Option<Arc<Pending>> {
        let bound = cookie(headers, LOGIN_COOKIE)
            .is_some_and(|c| aws_lc_rs::constant_time::verify_slices_are_equal(c.as_bytes(), state.as_bytes()).is_ok());
        if !bound {
            return None;
        }
        let pending = self.pending.get(state)?;
        self.pending.invalidate(state);
        Some(pending)
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
