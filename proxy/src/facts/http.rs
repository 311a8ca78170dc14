//! A small HTTPS client for identity endpoints: the public WebPKI roots,
//! the process's one crypto provider, bounded time and body size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
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

#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Result<Self, rustls::Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(certs::crypto::provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// GETs `url`; only a 200 with a body under the size limit is a success.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        self.send(url, hyper::Method::GET, None, Bytes::new()).await
    }

    /// GETs `url` with a bearer token (Graph).
    pub async fn get_with_token(&self, url: &str, token: &str) -> Result<Bytes, FetchError> {
        self.send(url, hyper::Method::GET, Some(token), Bytes::new()).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`), e.g. a token request.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Result<Bytes, FetchError> {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!("{}={}", utf8_percent_encode(k, NON_ALPHANUMERIC), utf8_percent_encode(v, NON_ALPHANUMERIC))
            })
            .collect();
        self.send(url, hyper::Method::POST, None, Bytes::from(body.join("&"))).await
    }

    async fn send(
        &self,
        url: &str,
        method: hyper::Method,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, FetchError> {
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        let mut request =
            hyper::Request::builder().method(method.clone()).uri(uri).header(hyper::header::ACCEPT, "application/json");
        if method == hyper::Method::POST {
            request = request.header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
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
