//! The console's HTTP surface: pages (one static shell; the data comes from
//! `/api/*` and is put on the page with `textContent` only, so nothing a
//! sidecar or a policy says is ever parsed as HTML), the sign-in, and the
//! JSON API. Every response carries a strict Content-Security-Policy (no
//! inline script, no third party) and `no-store`. Without a session a page
//! redirects to the sign-in and the API answers 401; every write needs the
//! admin role and the session's CSRF token in `X-CSRF-Token` (403 otherwise),
//! and the sidecar judges the person's role again.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::Console;
use super::fleet::{Answer, FleetError};
use super::random_token;
use super::session::{self, LOGIN_COOKIE, LOGIN_TTL, SESSION_COOKIE, Session};
use crate::admin::json_response;
use crate::config::Role;
use crate::dataplane::body::{self, Body};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// Largest request body the console reads (a policy is at most 256 KiB).
const MAX_BODY: usize = 300 * 1024;

const SHELL: &str = include_str!("assets/shell.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// Pages: the shell with `data-page` set; the script draws the rest.
const PAGES: [&str; 6] = ["overview", "network", "policy", "risk", "audit", "tests"];

impl Console {
    pub(super) async fn handle(self: Arc<Self>, req: Request<Incoming>, _remote: SocketAddr) -> Response<Body> {
        // Looked up once: the route judges with it, and the connection is kept only with one.
        let session = self.sessions.current(req.headers());
        let signed_in = session.is_some();
        let mut response = self.route(req, session).await;
        let headers = response.headers_mut();
        if !signed_in {
            // Only a signed-in browser keeps its connection: nobody can hold every slot anonymously.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in [
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("cache-control", "no-store"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, session: Option<Arc<Session>>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["static", "app.js"]) => asset(APP_JS, "text/javascript; charset=utf-8"),
            (&Method::GET, ["static", "app.css"]) => asset(APP_CSS, "text/css; charset=utf-8"),
            (&Method::GET, ["login"]) => self.login().await,
            (&Method::GET, ["callback"]) => self.callback(&req).await,
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
            (&Method::GET, [page]) => {
                let page = if page.is_empty() { "overview" } else { page };
                match (PAGES.contains(&page), session) {
                    (false, _) => text(StatusCode::NOT_FOUND, "not found"),
                    (true, None) => redirect("/login"),
                    (true, Some(_)) => html(&SHELL.replace("{{page}}", page)),
                }
            }
            (_, ["api", rest @ ..]) => {
                let Some(session) = session else {
                    return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first");
                };
                self.api(req, &session, rest).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// Starts a sign-in at the issuer; the login cookie binds it to this browser.
    async fn login(&self) -> Response<Body> {
        let state = random_token();
        match self.oidc.begin(&state).await {
            Ok((location, pending)) => {
                let sealed = self.sessions.seal_login(&state, &pending);
                let mut response = redirect(&location);
                let max_age = LOGIN_TTL.as_secs();
                let cookie =
                    format!("{LOGIN_COOKIE}={sealed}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
                set_cookie(&mut response, &cookie);
                response
            }
            Err(e) => {
                tracing::warn!(error = %e, "console sign-in could not start");
                text(StatusCode::BAD_GATEWAY, "the identity provider is unavailable; try again")
            }
        }
    }

    async fn callback(&self, req: &Request<Incoming>) -> Response<Body> {
        let query = crate::facts::http::form_decode(req.uri().query().unwrap_or_default());
        let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
            return text(StatusCode::BAD_REQUEST, "the sign-in did not complete (no code)");
        };
        let Some(pending) = self.sessions.open_login(state, req.headers()) else {
            return text(StatusCode::BAD_REQUEST, "this sign-in was not started here, or took too long: sign in again");
        };
        match self.oidc.finish(code, &pending).await {
            Ok(person) => {
                tracing::info!(person = %person.name, role = ?person.role, "console sign-in");
                let id = self.sessions.create(person);
                // A page, not a redirect: the session cookie is SameSite=Strict and
                // this request came from the IdP (cross-site); the next one is ours.
                let mut response = html(
                    r#"<!doctype html><meta http-equiv="refresh" content="0;url=/"><title>signed in</title><a href="/">continue</a>"#,
                );
                let max_age = self.sessions.ttl().as_secs();
                set_cookie(
                    &mut response,
                    &format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"),
                );
                set_cookie(
                    &mut response,
                    &format!("{LOGIN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"),
                );
                response
            }
            Err(e) => {
                tracing::warn!(error = %e, "console sign-in refused");
                text(StatusCode::FORBIDDEN, &format!("sign-in refused: {e}"))
            }
        }
    }

    async fn api(&self, req: Request<Incoming>, session: &Arc<Session>, path: &[&str]) -> Response<Body> {
        let method = req.method().clone();
        if method != Method::GET {
            if !session::csrf_matches(session, req.headers().get("x-csrf-token")) {
                return json_error(StatusCode::FORBIDDEN, "csrf", "X-CSRF-Token is missing or wrong");
            }
            if method == Method::POST && path == ["logout"] {
                self.sessions.end(req.headers());
                let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
                set_cookie(
                    &mut response,
                    &format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
                );
                return response;
            }
            if session.person.role != Role::Admin {
                return json_error(StatusCode::FORBIDDEN, "forbidden", "viewers cannot change anything");
            }
        }
        let person = &session.person;
        match (&method, path) {
            (&Method::GET, ["me"]) => {
                let answer = json!({"name": person.name, "role": person.role.as_str(), "csrf": session.csrf});
                json_response(StatusCode::OK, &answer)
            }
            (&Method::GET, ["fleet"]) => json_response(StatusCode::OK, &json!({"sidecars": *self.fleet.snapshot()})),
            (&Method::GET, ["audit", "stream"]) => {
                let last =
                    req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                let Some(body) = self.audit.subscribe(last, session.clone()) else {
                    return json_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_streams",
                        "this session has 4 audit streams open",
                    );
                };
                let mut response = Response::new(body);
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                response
            }
            (
                &Method::GET,
                [
                    "sidecars",
                    name,
                    route @ ("mtls-policy" | "agent-risk" | "agent-tags" | "policy" | "audit" | "explain"),
                ],
            ) => {
                let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                relay(self.fleet.call(name, Method::GET, &format!("/mgmt/{route}{query}"), None, Some(person)).await)
            }
            (&Method::PUT, ["sidecars", name, route @ ("mtls-policy" | "policy")]) => {
                let mut headers = Vec::new();
                if let Some(tag) = req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
                    headers.push(("if-match", tag.to_owned()));
                }
                let name = (*name).to_owned();
                // `?dry_run=true` (the policy editor's check) goes through; nothing else does.
                let dry_run = req.uri().query() == Some("dry_run=true") && *route == "policy";
                let route = format!("/mgmt/{route}{}", if dry_run { "?dry_run=true" } else { "" });
                let Some(body) = read_body(req).await else { return too_large() };
                relay(self.fleet.call(&name, Method::PUT, &route, Some((body, headers)), Some(person)).await)
            }
            (&Method::PUT, [route @ ("agent-risk" | "agent-tags")]) => {
                // A push applies on every sidecar that guards the agent: all of them.
                let route = format!("/mgmt/{route}");
                let Some(body) = read_body(req).await else { return too_large() };
                let results = self.fleet.call_all(Method::PUT, &route, body, person).await;
                let results: serde_json::Map<String, Value> = results
                    .into_iter()
                    .map(|(name, answer)| {
                        let value = match answer {
                            Ok(a) => json!({"status": a.status.as_u16(), "body": serde_json::from_slice::<Value>(&a.body).unwrap_or(Value::Null)}),
                            Err(e) => json!({"status": 502, "error": e.to_string()}),
                        };
                        (name, value)
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({"results": results}))
            }
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such console API"),
        }
    }
}

/// A sidecar's answer as the console's: its status and JSON body (and `ETag`), or 502/504.
fn relay(answer: Result<Answer, FleetError>) -> Response<Body> {
    match answer {
        Ok(answer) => {
            let mut response = Response::new(body::full(answer.body));
            *response.status_mut() = answer.status;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(tag) = answer.headers.get(header::ETAG) {
                headers.insert(header::ETAG, tag.clone());
            }
            response
        }
        Err(FleetError::Unknown(name)) => {
            json_error(StatusCode::NOT_FOUND, "unknown_sidecar", &format!("no sidecar `{name}`"))
        }
        Err(e @ FleetError::Timeout(..)) => json_error(StatusCode::GATEWAY_TIMEOUT, "sidecar_timeout", &e.to_string()),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, "sidecar_unavailable", &e.to_string()),
    }
}

async fn read_body(req: Request<Incoming>) -> Option<Bytes> {
    use http_body_util::BodyExt;
    http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await.ok().map(|b| b.to_bytes())
}

fn too_large() -> Response<Body> {
    json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the body is over 300 KiB")
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn html(text: &str) -> Response<Body> {
    let mut response = Response::new(body::full(text.to_owned()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(body::full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = text(StatusCode::FOUND, "");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    crate::admin::error_message(status, code, message)
}
