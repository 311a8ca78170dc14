//! A small HTTPS client for identity endpoints: the public WebPKI roots
//! plus the bundle `SSL_CERT_FILE` names (an enterprise CA doing TLS
//! inspection), the process's one crypto provider, `HTTPS_PROXY` /
//! `NO_PROXY` (a CONNECT tunnel, as curl does), bounded time and body size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Identity documents (discovery, JWKS) are small.
const MAX_BODY: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{0}` is not a URL")]
    BadUrl(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// What a form value keeps as is: RFC 3986's unreserved characters.
const FORM: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `k=v&k=v`, each percent-encoded: an `application/x-www-form-urlencoded`
/// body or a query string.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", utf8_percent_encode(k, FORM), utf8_percent_encode(v, FORM)))
        .collect();
    pairs.join("&")
}

/// A form body or query string read back (`+` is a space; a repeated name: the last wins).
pub fn form_decode(text: &str) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    text.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// What [`spiffe_client`] makes.
pub type SpiffeClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP/1.1-over-mTLS client that presents our SVID and accepts only a
/// server whose SPIFFE ID matches `expected` (another sidecar's `/mgmt`, a
/// PDP): hyper-rustls sets the ALPN from what is enabled.
pub fn spiffe_client(identity: certs::IdentityWatch, expected: certs::IdPattern) -> anyhow::Result<SpiffeClient> {
    let tls = certs::tls::client_config(identity, expected)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector))
}

#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<ProxyConnector>, Full<Bytes>>,
}

/// Why the client cannot be built: the extra CA bundle, or TLS itself.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("SSL_CERT_FILE `{path}`: {why}")]
    CaFile { path: String, why: String },
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

impl HttpClient {
    /// From the environment: `SSL_CERT_FILE` (extra trusted CAs, PEM) and
    /// `HTTPS_PROXY`/`NO_PROXY` (and their lower-case and `ALL_PROXY` forms).
    pub fn new() -> Result<Self, ClientError> {
        let extra = match std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
            Some(path) => {
                let shown = path.to_string_lossy().into_owned();
                let pem = std::fs::read(&path).map_err(|e| ClientError::CaFile { path: shown, why: e.to_string() })?;
                Some(pem)
            }
            None => None,
        };
        Self::with(extra.as_deref(), Matcher::from_env())
    }

    /// Trusting the WebPKI roots plus the CA certificates in `extra_pem`,
    /// and connecting through the proxies `proxies` names.
    pub fn with(extra_pem: Option<&[u8]>, proxies: Matcher) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(pem) = extra_pem {
            use rustls::pki_types::pem::PemObject;
            let bad = |why: String| ClientError::CaFile { path: "(its contents)".into(), why };
            let mut added = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(certs::crypto::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut direct = HttpConnector::new();
        direct.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(ProxyConnector { direct, proxies: std::sync::Arc::new(proxies) });
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// GETs `url`; only a 200 with a body under the size limit is a success.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        self.send(url, hyper::Method::GET, None, None).await
    }

    /// GETs `url` with a bearer token (Graph).
    pub async fn get_with_token(&self, url: &str, token: &str) -> Result<Bytes, FetchError> {
        self.send(url, hyper::Method::GET, Some(token), None).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`), e.g. a token request.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Result<Bytes, FetchError> {
        let form = Bytes::from(form_encode(fields));
        self.send(url, hyper::Method::POST, None, Some(("application/x-www-form-urlencoded", form))).await
    }

    /// POSTs a JSON document (OTLP/HTTP span export).
    pub async fn post_json(&self, url: &str, body: Bytes) -> Result<Bytes, FetchError> {
        self.send(url, hyper::Method::POST, None, Some(("application/json", body))).await
    }

    /// Sends `request` as is: no redirect followed, no timeout or size
    /// limit of its own (the caller bounds both), any status returned.
    pub async fn raw(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }

    async fn send(
        &self,
        url: &str,
        method: hyper::Method,
        token: Option<&str>,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Bytes, FetchError> {
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        let mut request =
            hyper::Request::builder().method(method.clone()).uri(uri).header(hyper::header::ACCEPT, "application/json");
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                body
            }
            None => Bytes::new(),
        };
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body)).map_err(|e| FetchError::Transport(e.to_string()))?;
        let attempt = async {
            let response = self.client.request(request).await.map_err(|e| FetchError::Transport(e.to_string()))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let body =
                Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|_| FetchError::TooLarge)?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(TIMEOUT, attempt).await.map_err(|_| FetchError::Timeout)?
    }
}

/// Connects to an `https://` destination through the proxy the matcher names
/// for it (a CONNECT tunnel; TLS then runs end to end inside it), or
/// directly. Plain `http://` (loopback only) never goes through a proxy.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector,
    proxies: std::sync::Arc<Matcher>,
}

impl std::fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConnector").finish_non_exhaustive()
    }
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    hyper_util::rt::TokioIo<tokio::net::TcpStream>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<hyper::Uri> for ProxyConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        let proxy = (dst.scheme_str() == Some("https")).then(|| self.proxies.intercept(&dst)).flatten();
        let mut direct = self.direct.clone();
        match proxy {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
            None => Box::pin(async move { direct.call(dst).await.map_err(Into::into) }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_fields_survive_the_round_trip_and_odd_input_is_read_not_refused() {
        let fields = [("code_challenge", "a-b.c_d~e"), ("state", "x y&z=1+%2F/é")];
        let text = super::form_encode(&fields);
        assert!(text.starts_with("code_challenge=a-b.c_d~e&state="), "{text}");
        let back = super::form_decode(&text);
        assert_eq!((back["code_challenge"].as_str(), back["state"].as_str()), ("a-b.c_d~e", "x y&z=1+%2F/é"));
        // Malformed escapes, a name without `=`, a repeated name (the last wins), `+` as a space.
        let odd = super::form_decode("a=%zz%&b&a=2&c=1+1");
        assert_eq!((odd["a"].as_str(), odd.get("b"), odd["c"].as_str()), ("2", None, "1 1"));
    }

    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A private CA and a server certificate for 127.0.0.1 it signed.
    fn private_ca() -> (String, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(certs::crypto::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        (ca_cert.pem(), Arc::new(config))
    }

    /// Reads a request (or CONNECT) head.
    async fn head(io: &mut (impl AsyncReadExt + Unpin)) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && io.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// An HTTPS server answering `{}` to everything.
    async fn https_server(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    head(&mut tls).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    /// A CONNECT proxy that records each tunnel's target.
    async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let head = head(&mut client).await;
                    let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else { return };
                    recorded.lock().unwrap().push(target.to_owned());
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_private_ca_is_trusted_when_given_and_https_goes_through_the_proxy() {
        let (ca_pem, server_config) = private_ca();
        let server = https_server(server_config).await;
        let url = format!("https://127.0.0.1:{}/keys", server.port());
        let none = || Matcher::builder().build();

        let public_roots_only = HttpClient::with(None, none()).unwrap();
        assert!(matches!(public_roots_only.get(&url).await, Err(FetchError::Transport(_))), "an unknown CA");
        let trusting = HttpClient::with(Some(ca_pem.as_bytes()), none()).unwrap();
        assert_eq!(trusting.get(&url).await.unwrap(), "{}");

        let (proxy, seen) = connect_proxy().await;
        let via_proxy = || Matcher::builder().https(format!("http://{proxy}"));
        let proxied = HttpClient::with(Some(ca_pem.as_bytes()), via_proxy().build()).unwrap();
        assert_eq!(proxied.get(&url).await.unwrap(), "{}", "TLS end to end inside the tunnel");
        assert_eq!(seen.lock().unwrap().clone(), [format!("127.0.0.1:{}", server.port())]);
        let bypassing = HttpClient::with(Some(ca_pem.as_bytes()), via_proxy().no("127.0.0.1").build()).unwrap();
        assert_eq!(bypassing.get(&url).await.unwrap(), "{}");
        assert_eq!(seen.lock().unwrap().len(), 1, "NO_PROXY: direct");

        let error = HttpClient::with(Some(b"not a certificate"), none()).unwrap_err().to_string();
        assert!(error.contains("SSL_CERT_FILE") && error.contains("no PEM certificate"), "{error}");
    }
}
