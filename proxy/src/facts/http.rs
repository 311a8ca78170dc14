//! A small HTTPS client for identity endpoints: the public WebPKI roots,
//! the process's one crypto provider, bounded time and body size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Result<Self, rustls::Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(certs::tls::provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// GETs `url`; only a 200 with a body under the size limit is a success.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
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
