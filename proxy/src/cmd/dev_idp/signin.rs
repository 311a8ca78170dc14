//! Sign-in for the operator console, as Entra's authorization endpoint does
//! it: the authorization code flow with PKCE (S256 only) for two dev users,
//! an admin and a viewer, so the demo and the tests sign in without Azure.
//!
//! `GET /{tenant}/oauth2/v2.0/authorize?response_type=code&client_id&redirect_uri&state&nonce&code_challenge&code_challenge_method=S256`
//! shows a page with one link per dev user; with `login_hint=<login>` it
//! redirects at once to `redirect_uri?code=..&state=..`. The code is good for
//! one exchange within a minute at `POST /{tenant}/oauth2/v2.0/token`
//! (`grant_type=authorization_code`, `code`, `client_id`, `redirect_uri`,
//! `code_verifier`), which answers with an ID token naming the user and
//! their app roles. Redirect URIs must be on loopback (no open redirect),
//! and an ID token carries no `tid`, so no sidecar takes it for an access
//! token (Layer 3 requires the tenant's `tid`); no access token is issued.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::facts::http::{form_decode, form_encode};

/// A dev user of the console.
#[derive(Debug)]
pub struct DevUser {
    pub login: &'static str,
    pub name: &'static str,
    pub oid: &'static str,
    pub roles: &'static [&'static str],
}

/// The dev users: `alice` (app role `Console.Admin`) and `bob` (`Console.Viewer`).
pub const DEV_USERS: [DevUser; 2] = [
    DevUser {
        login: "alice",
        name: "Alice Admin",
        oid: "00000000-0000-4000-8000-00000000a11c",
        roles: &["Console.Admin"],
    },
    DevUser {
        login: "bob",
        name: "Bob Viewer",
        oid: "00000000-0000-4000-8000-000000000b0b",
        roles: &["Console.Viewer"],
    },
];

/// How long an authorization code may wait for its exchange.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Codes outstanding at once (older ones are dropped first).
const MAX_CODES: usize = 1024;

/// An issued, not yet exchanged authorization code.
#[derive(Debug)]
pub struct Grant {
    tenant: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: &'static DevUser,
    issued: Instant,
}

#[derive(Debug, Default)]
pub struct Codes(std::sync::Mutex<HashMap<String, Grant>>);

/// What the authorize endpoint answers.
pub enum Authorize {
    /// A page listing the users (no `login_hint`).
    Choose(String),
    /// `Location:` the client's redirect URI with the code.
    Redirect(String),
    Refused(&'static str),
}

impl Codes {
    /// The authorize endpoint for `query` (raw, percent-encoded).
    pub fn authorize(&self, tenant: &str, query: &str) -> Authorize {
        let params = form_decode(query);
        let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let (Some(client_id), Some(redirect_uri), Some(state), Some(challenge)) =
            (get("client_id"), get("redirect_uri"), get("state"), get("code_challenge"))
        else {
            return Authorize::Refused("client_id, redirect_uri, state and code_challenge are required");
        };
        if !loopback_url(redirect_uri) {
            // A dev IdP sends codes nowhere but to this machine: no open redirect.
            return Authorize::Refused("redirect_uri must be http(s) on 127.0.0.1, [::1] or localhost");
        }
        if get("response_type") != Some("code") {
            return Authorize::Refused("response_type must be code");
        }
        if get("code_challenge_method") != Some("S256") {
            return Authorize::Refused("code_challenge_method must be S256");
        }
        let Some(login) = get("login_hint") else {
            let links: String = DEV_USERS
                .iter()
                .map(|u| {
                    let href = format!("?{query}&login_hint={}", u.login);
                    format!(
                        "<li><a href=\"{}\">{} ({})</a></li>",
                        html_escape(&href),
                        html_escape(u.name),
                        u.roles.join(", ")
                    )
                })
                .collect();
            return Authorize::Choose(format!(
                "<!doctype html><title>dev IdP sign-in</title><h1>Sign in as</h1><ul>{links}</ul>"
            ));
        };
        let Some(user) = DEV_USERS.iter().find(|u| u.login == login) else {
            return Authorize::Refused("login_hint names no dev user (alice, bob)");
        };
        let code = crate::console::random_token();
        let grant = Grant {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.to_owned(),
            nonce: get("nonce").map(str::to_owned),
            user,
            issued: Instant::now(),
        };
        let mut codes = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        codes.retain(|_, g| g.issued.elapsed() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            return Authorize::Refused("too many sign-ins in progress");
        }
        codes.insert(code.clone(), grant);
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        Authorize::Redirect(format!("{redirect_uri}{separator}{}", form_encode(&[("code", &code), ("state", state)])))
    }

    /// `grant_type=authorization_code`: the ID token's claims (without
    /// `iss`, `iat`, `exp`), or the OAuth error code.
    pub fn exchange(&self, tenant: &str, form: &HashMap<String, String>) -> Result<serde_json::Value, &'static str> {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        let grant = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(field("code"));
        let Some(grant) = grant.filter(|g| g.issued.elapsed() < CODE_TTL && g.tenant == tenant) else {
            return Err("invalid_grant");
        };
        if grant.client_id != field("client_id") || grant.redirect_uri != field("redirect_uri") {
            return Err("invalid_grant");
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, field("code_verifier").as_bytes());
        if URL_SAFE_NO_PAD.encode(digest.as_ref()) != grant.challenge {
            return Err("invalid_grant");
        }
        let user = grant.user;
        Ok(json!({
            "aud": grant.client_id,
            "sub": user.oid,
            "oid": user.oid,
            "name": user.name,
            "preferred_username": format!("{}@dev.example", user.login),
            "roles": user.roles,
            "nonce": grant.nonce,
        }))
    }
}

/// Whether `url` is http(s) on a loopback host.
fn loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else { return false };
    matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(crate::config::loopback_host)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code of one authorize call for `alice`, with the challenge of `verifier`.
    fn code(codes: &Codes, verifier: &str) -> String {
        let challenge =
            URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
        let query = form_encode(&[
            ("response_type", "code"),
            ("client_id", "console"),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
            ("state", "s"),
            ("nonce", "n"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("login_hint", "alice"),
        ]);
        let Authorize::Redirect(location) = codes.authorize("t", &query) else { panic!("no redirect") };
        form_decode(location.split_once('?').unwrap().1).remove("code").unwrap()
    }

    fn exchange(codes: &Codes, code: &str, verifier: &str, redirect: &str) -> Result<serde_json::Value, &'static str> {
        let form = form_decode(&form_encode(&[
            ("code", code),
            ("client_id", "console"),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ]));
        codes.exchange("t", &form)
    }

    #[test]
    fn a_code_is_good_once_for_its_verifier_and_redirect() {
        let codes = Codes::default();
        let redirect = "http://127.0.0.1:1/callback";
        let good = code(&codes, "the-verifier");
        assert_eq!(exchange(&codes, &good, "another-verifier", redirect).unwrap_err(), "invalid_grant");
        // A failed exchange spends the code too.
        assert_eq!(exchange(&codes, &good, "the-verifier", redirect).unwrap_err(), "invalid_grant");
        let good = code(&codes, "the-verifier");
        assert_eq!(
            exchange(&codes, &good, "the-verifier", "http://127.0.0.1:2/callback").unwrap_err(),
            "invalid_grant"
        );
        let good = code(&codes, "the-verifier");
        let claims = exchange(&codes, &good, "the-verifier", redirect).unwrap();
        assert_eq!((claims["nonce"].as_str(), claims.get("tid")), (Some("n"), None), "no tid: never an access token");
        assert_eq!(exchange(&codes, &good, "the-verifier", redirect).unwrap_err(), "invalid_grant", "once");
        // Without S256, or to a non-loopback redirect: no code at all.
        let plain = "response_type=code&client_id=c&redirect_uri=http://127.0.0.1:1/&state=s&code_challenge=x&code_challenge_method=plain&login_hint=alice";
        assert!(matches!(codes.authorize("t", plain), Authorize::Refused(_)));
        let away = plain.replace("127.0.0.1:1", "evil.example").replace("=plain", "=S256");
        assert!(matches!(codes.authorize("t", &away), Authorize::Refused(_)));
    }
}
