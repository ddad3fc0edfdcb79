//! Sending requests the broker allowed, to exactly where they say.
//!
//! The host is resolved only now, after policy allowed it (a denied name
//! never reaches DNS). Every address it resolves to is checked against the
//! special-purpose table; if any is special (and not allowed by the
//! operator), the request is refused. The connection goes to an address that
//! was checked: hyper runs over a socket opened here and never resolves
//! anything itself. TLS verifies the host name. Responses are read within
//! limits and never decompressed.

pub mod address;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_host_apis::CallError;
use airlock_host_apis::http::{Destination, Egress, InboundResponse, OutboundRequest, Scheme};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use address::{Allowed, special};

use crate::Error;
use crate::config::EgressConfig;

/// Turns host names into addresses. Injectable, so tests can make a name
/// resolve anywhere.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + 'static {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, CallError>;
}

/// The system resolver.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, CallError> {
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| CallError::Unavailable(format!("`{host}` did not resolve: {e}")))?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// A fixed table of names, counting lookups (for tests and for pinning
/// names in configuration).
#[derive(Debug, Default)]
pub struct StaticResolver {
    entries: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicU64,
}

impl StaticResolver {
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        StaticResolver {
            entries: entries.into_iter().collect(),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups made so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, CallError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.entries
            .get(host)
            .cloned()
            .ok_or_else(|| CallError::Unavailable(format!("`{host}` did not resolve")))
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The egress: resolution, address checks, connection, TLS, HTTP/1.1.
pub struct HttpEgress {
    allowed: Allowed,
    resolver: Arc<dyn Resolver>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    timeout: Duration,
    max_response_body: usize,
    max_response_headers: usize,
}

impl std::fmt::Debug for HttpEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEgress")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

fn tls_config(config: &EgressConfig) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.extra_roots {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| {
            Error::Config(format!("egress.extra_roots `{}`: {e}", path.display()))
        };
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Refused unless every address is public or explicitly allowed: one
/// special address among a name's answers refuses the name.
pub fn screen(
    host: &str,
    how: &str,
    addresses: &[IpAddr],
    allowed: &Allowed,
) -> Result<(), CallError> {
    if addresses.is_empty() {
        return Err(CallError::Unavailable(format!("`{host}` has no addresses")));
    }
    for ip in addresses {
        // An IPv4-mapped or translated address is its own special range.
        if let Some(what) = special(*ip).filter(|_| !allowed.contains(*ip)) {
            return Err(CallError::guard(
                "egress-address",
                format!("`{host}` {how} {ip}, which is {what}: Airlock does not connect there"),
            ));
        }
    }
    Ok(())
}

impl HttpEgress {
    pub fn new(config: &EgressConfig, resolver: Arc<dyn Resolver>) -> Result<Self, Error> {
        Ok(HttpEgress {
            allowed: Allowed::parse(&config.allow_addresses).map_err(Error::Config)?,
            resolver,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(config)?)),
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            max_response_body: usize::try_from(config.max_response_body).unwrap_or(usize::MAX),
            max_response_headers: config.max_response_headers,
        })
    }

    /// The addresses to connect to, every one checked.
    async fn addresses(&self, request: &OutboundRequest) -> Result<Vec<IpAddr>, CallError> {
        let host = request.host();
        let (addresses, how) = match &request.destination {
            Destination::Ip(ip) => (vec![*ip], "is"),
            Destination::Name(name) => (self.resolver.resolve(name).await?, "resolves to"),
        };
        screen(&host, how, &addresses, &self.allowed)?;
        Ok(addresses)
    }

    async fn connect(
        &self,
        request: &OutboundRequest,
        addresses: &[IpAddr],
    ) -> Result<(TcpStream, SocketAddr), CallError> {
        let mut last = String::new();
        for ip in addresses {
            let addr = SocketAddr::new(*ip, request.port);
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = format!(
                        "{addr}: no answer within {}",
                        humantime::format_duration(self.connect_timeout)
                    )
                }
            }
        }
        Err(CallError::Unavailable(format!(
            "could not connect to `{}` ({last})",
            request.host()
        )))
    }

    async fn exchange(
        &self,
        request: &OutboundRequest,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<InboundResponse, CallError> {
        let host = request.host();
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            CallError::Unavailable(format!("{what} `{host}` failed: {e}"))
        };
        let io: Box<dyn Io> = match request.scheme {
            Scheme::Http => Box::new(stream),
            Scheme::Https => {
                let name = match &request.destination {
                    Destination::Name(name) => {
                        rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(|e| unavailable("TLS with", &e))?
                    }
                    Destination::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
                };
                Box::new(
                    self.tls
                        .connect(name, stream)
                        .await
                        .map_err(|e| unavailable("TLS with", &e))?,
                )
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_headers(self.max_response_headers)
            .handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| unavailable("HTTP with", &e))?;
        let driver = tokio::spawn(connection);
        let _abort = AbortOnDrop(driver);

        let default_port = match request.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        };
        let host_header = match (&request.destination, request.port == default_port) {
            (Destination::Ip(IpAddr::V6(ip)), true) => format!("[{ip}]"),
            (Destination::Ip(IpAddr::V6(ip)), false) => format!("[{ip}]:{}", request.port),
            (_, true) => host.clone(),
            (_, false) => format!("{host}:{}", request.port),
        };
        let target = match request.url.query() {
            Some(query) => format!("{}?{query}", request.url.path()),
            None => request.url.path().to_string(),
        };
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(target)
            .header(http::header::HOST, host_header);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let outgoing = builder
            .body(http_body_util::Full::new(bytes::Bytes::from(
                request.body.clone(),
            )))
            .map_err(|e| CallError::Invalid(format!("the request cannot be sent: {e}")))?;
        let response = sender
            .send_request(outgoing)
            .await
            .map_err(|e| unavailable("the request to", &e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = http_body_util::Limited::new(response.into_body(), self.max_response_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::Limit(format!(
                        "the response from `{host}` is larger than {} bytes",
                        self.max_response_body
                    ))
                } else {
                    unavailable("reading the response from", &e)
                }
            })?
            .to_bytes()
            .to_vec();
        Ok(InboundResponse {
            status,
            headers,
            body,
            peer: Some(peer),
        })
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait::async_trait]
impl Egress for HttpEgress {
    async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError> {
        let work = async {
            let addresses = self.addresses(request).await?;
            let (stream, peer) = self.connect(request, &addresses).await?;
            self.exchange(request, stream, peer).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Unavailable(format!(
                "the request to `{}` took longer than {}",
                request.host(),
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}
