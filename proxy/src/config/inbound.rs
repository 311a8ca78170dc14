//! `inbound` and `outbound` sections: listeners, upstreams, limits, routes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use certs::IdPattern;
use hyper::http::uri::{Authority, Scheme};
use policy::PathOptions;

use super::raw::{RawInbound, RawOutbound, RawRoute};
use super::{Ctx, Error, parse_size};

/// `inbound.handshake_timeout` unless set (or the header timeout, if shorter).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// hyper's smallest read buffer; a smaller head limit cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

/// HTTP limits shared by both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The full request head must arrive within this time (slowloris guard).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// The local app, plain HTTP: only scheme and authority are used.
    pub upstream: Authority,
    pub limits: HttpLimits,
    /// The TLS handshake must finish within this (shorter than the header
    /// timeout: an unauthenticated peer holds a connection slot meanwhile).
    pub handshake_timeout: Duration,
    pub tls_resumption: bool,
    pub path_options: PathOptions,
    /// Request headers whose names contain `_` reach the app (off: dropped, as nginx does).
    pub allow_underscore_headers: bool,
    /// Which `Upgrade` requests are forwarded (`inbound.upgrades`).
    pub upgrades: Upgrades,
    /// Layer 1 allow-list; empty = nobody.
    pub allowed_callers: Vec<IdPattern>,
    pub upstream_connect_timeout: Duration,
    /// Time until the app's response head.
    pub upstream_response_timeout: Duration,
}

/// The protocols a request may switch to on its way to the app. Only
/// WebSocket exists: an `h2c` upgrade would turn the connection into a raw
/// tunnel past every later request's policy check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrades {
    pub websocket: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    pub listen: SocketAddr,
    pub limits: HttpLimits,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lower case; matched against the `Host` header without its port.
    pub name: String,
    /// Opt-in: requests under this prefix take this route, prefix stripped.
    pub path_prefix: Option<String>,
    /// The target sidecar (`https://host:port`).
    pub upstream: Authority,
    pub server_id: IdPattern,
    /// Attach the sidecar's own Entra token for this scope when the app sent none.
    pub entra_scope: Option<String>,
}

impl Ctx<'_> {
    pub(super) fn inbound(&self, raw: RawInbound) -> Result<InboundConfig, Error> {
        let upstream = raw
            .upstream
            .ok_or_else(|| self.invalid("inbound.upstream", "required (the local app, e.g. http://127.0.0.1:8000)"))?;
        let allowed_callers = raw
            .allowed_callers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.parse().map_err(|e| self.invalid(&format!("inbound.allowed_callers[{i}]"), format!("`{p}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let limits = self.limits("inbound", raw.header_timeout, raw.idle_timeout, raw.max_header_bytes)?;
        let handshake_timeout = match raw.handshake_timeout.as_deref() {
            None => DEFAULT_HANDSHAKE_TIMEOUT.min(limits.header_timeout),
            Some(text) => {
                let timeout = self.duration("inbound.handshake_timeout", Some(text), DEFAULT_HANDSHAKE_TIMEOUT)?;
                if timeout.is_zero() || timeout > limits.header_timeout {
                    return Err(self.invalid(
                        "inbound.handshake_timeout",
                        format!("`{text}` must be more than zero and at most `inbound.header_timeout`"),
                    ));
                }
                timeout
            }
        };
        Ok(InboundConfig {
            listen: self.addr("inbound.listen", raw.listen.as_deref(), "0.0.0.0:8443")?,
            upstream: self.upstream("inbound.upstream", &upstream, &Scheme::HTTP)?,
            limits,
            handshake_timeout,
            tls_resumption: raw.tls_resumption.unwrap_or(false),
            path_options: PathOptions { allow_semicolons: raw.allow_semicolons.unwrap_or(false) },
            allow_underscore_headers: raw.allow_underscore_headers.unwrap_or(false),
            upgrades: self.upgrades(raw.upgrades)?,
            allowed_callers,
            upstream_connect_timeout: self.duration(
                "inbound.upstream_connect_timeout",
                raw.upstream_connect_timeout.as_deref(),
                Duration::from_secs(2),
            )?,
            upstream_response_timeout: self.duration(
                "inbound.upstream_response_timeout",
                raw.upstream_response_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
        })
    }

    /// `inbound.upgrades`: `[websocket]` by default, `[]` for none.
    fn upgrades(&self, raw: Option<Vec<String>>) -> Result<Upgrades, Error> {
        let mut upgrades = Upgrades { websocket: false };
        for (i, protocol) in raw.unwrap_or_else(|| vec!["websocket".into()]).iter().enumerate() {
            match protocol.to_ascii_lowercase().as_str() {
                "websocket" => upgrades.websocket = true,
                _ => {
                    return Err(self.invalid(
                        &format!("inbound.upgrades[{i}]"),
                        format!("`{protocol}` cannot be forwarded: only `websocket` is supported"),
                    ));
                }
            }
        }
        Ok(upgrades)
    }

    pub(super) fn outbound(&self, raw: RawOutbound) -> Result<OutboundConfig, Error> {
        let listen = self.addr("outbound.listen", raw.listen.as_deref(), "127.0.0.1:8080")?;
        if !listen.ip().is_loopback() && !raw.allow_non_loopback.unwrap_or(false) {
            return Err(self.invalid(
                "outbound.listen",
                format!("`{listen}` is not loopback: anyone who reaches it borrows this workload's identity; set `outbound.allow_non_loopback: true` if that is intended"),
            ));
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, route)?;
            if !names.insert(route.name.clone()) {
                return Err(self.invalid(
                    &format!("outbound.routes[{i}].name"),
                    format!("`{}` is used by an earlier route", route.name),
                ));
            }
            if let Some(prefix) = &route.path_prefix
                && !prefixes.insert(prefix.clone())
            {
                return Err(self.invalid(
                    &format!("outbound.routes[{i}].match.path_prefix"),
                    format!("`{prefix}` is used by an earlier route"),
                ));
            }
            routes.push(route);
        }
        Ok(OutboundConfig {
            listen,
            limits: self.limits("outbound", raw.header_timeout, raw.idle_timeout, raw.max_header_bytes)?,
            connect_timeout: self.duration(
                "outbound.connect_timeout",
                raw.connect_timeout.as_deref(),
                Duration::from_secs(2),
            )?,
            response_timeout: self.duration(
                "outbound.response_timeout",
                raw.response_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            routes,
        })
    }

    fn route(&self, i: usize, raw: RawRoute) -> Result<RouteConfig, Error> {
        let field = |f: &str| format!("outbound.routes[{i}].{f}");
        let name = raw.name.to_ascii_lowercase();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(self.invalid(
                &field("name"),
                format!("`{}` must be a host name (letters, digits, `-`, `.`, `_`)", raw.name),
            ));
        }
        let path_prefix = match raw.match_ {
            None => None,
            Some(m) => {
                let prefix = m.path_prefix.trim_end_matches('/');
                if !m.path_prefix.starts_with('/') || prefix.is_empty() {
                    return Err(self.invalid(
                        &field("match.path_prefix"),
                        format!("`{}` must start with `/` and name a path", m.path_prefix),
                    ));
                }
                Some(prefix.to_owned())
            }
        };
        let server_id = raw
            .server_id
            .parse()
            .map_err(|e| self.invalid(&field("server_id"), format!("`{}`: {e}", raw.server_id)))?;
        let entra_scope = match raw.entra_token {
            Some(t) if t.scope.trim().is_empty() => {
                return Err(self.invalid(&field("entra_token.scope"), "must not be empty"));
            }
            Some(t) => Some(t.scope),
            None => None,
        };
        Ok(RouteConfig {
            name,
            path_prefix,
            upstream: self.upstream(&field("upstream"), &raw.upstream, &Scheme::HTTPS)?,
            server_id,
            entra_scope,
        })
    }

    fn addr(&self, field: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, Error> {
        let text = value.unwrap_or(default);
        text.parse().map_err(|_| self.invalid(field, format!("`{text}` is not an address like {default}")))
    }

    /// `scheme://host:port` with nothing else; the port defaults per scheme.
    fn upstream(&self, field: &str, text: &str, scheme: &Scheme) -> Result<Authority, Error> {
        let invalid = |why: &str| self.invalid(field, format!("`{text}`: {why}"));
        let uri: hyper::Uri = text.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme() != Some(scheme) {
            return Err(invalid(&format!("must start with `{scheme}://`")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("must not have a path or query"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("must not carry credentials"));
        }
        let port = authority.port_u16().unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 });
        format!("{}:{port}", authority.host()).parse().map_err(|_| invalid("has no valid host"))
    }

    fn limits(
        &self,
        section: &str,
        header: Option<String>,
        idle: Option<String>,
        max: Option<String>,
    ) -> Result<HttpLimits, Error> {
        let field = |f: &str| format!("{section}.{f}");
        let max_header_bytes = match max {
            None => 32 * 1024,
            Some(text) => parse_size(&text).map_err(|why| self.invalid(&field("max_header_bytes"), why))?,
        };
        if max_header_bytes < MIN_HEADER_BYTES {
            return Err(
                self.invalid(&field("max_header_bytes"), format!("must be at least {MIN_HEADER_BYTES} bytes (8KiB)"))
            );
        }
        // Zero would refuse every request head (header) or drain every connection at once (idle).
        Ok(HttpLimits {
            header_timeout: self.positive_duration(
                &field("header_timeout"),
                header.as_deref(),
                Duration::from_secs(10),
            )?,
            idle_timeout: self.positive_duration(&field("idle_timeout"), idle.as_deref(), Duration::from_secs(60))?,
            max_header_bytes,
        })
    }
}
