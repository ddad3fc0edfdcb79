//! A local HTTP server for egress tests, on `127.0.0.1:0`, that counts the
//! connections it accepts (so a test can prove a refused request opened no
//! socket). Plain HTTP, or TLS with a certificate from a test CA.
//!
//! Paths: `/echo` and `*/echo` (the request as JSON), `/redirect?to=URL` (302),
//! `/redirect-loop`, `/big?n=N` (N bytes), `/slow` (answers after 5 s),
//! `/gzip` (a gzip-encoded body), `/token` (an RFC 8693 token exchange),
//! `/revoke` (RFC 7009), anything else: `ok`. Every request is kept, for
//! tests to look for what must not have been sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A test CA and a certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate, PEM, for `egress.extra_roots`.
    pub ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert: leaf.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// The server; it stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    tls: bool,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A request the server received, in full.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// Everything the request carried, as text.
    pub fn text(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!(
            "{} {}\n{}\n\n{}",
            self.method,
            self.uri,
            headers.join("\n"),
            String::from_utf8_lossy(&self.body)
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    revoked: Mutex<Vec<String>>,
    exchanged: Mutex<Vec<String>>,
}

fn form(body: &[u8], key: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let to = query(&req, "to").unwrap_or_default();
    let n: usize = query(&req, "n").and_then(|n| n.parse().ok()).unwrap_or(0);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    let response = match path.as_str() {
        p if p.ends_with("/echo") => {
            let json = serde_json::json!({
                "method": seen.method,
                "uri": seen.uri,
                "headers": seen.headers,
                "body": String::from_utf8_lossy(&seen.body),
            });
            Response::new(Full::new(Bytes::from(json.to_string())))
        }
        "/token" => {
            // RFC 8693: a downstream token for the presented identity.
            let subject = form(&body, "subject_token").unwrap_or_default();
            let grant = form(&body, "grant_type").unwrap_or_default();
            if grant != "urn:ietf:params:oauth:grant-type:token-exchange" || subject.is_empty() {
                Response::builder()
                    .status(400)
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":\"invalid_request\"}",
                    )))
                    .unwrap()
            } else {
                let token = format!("xchg-{:032x}", rand::random::<u128>());
                state.exchanged.lock().unwrap().push(subject);
                let json = serde_json::json!({
                    "access_token": token,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": 60,
                });
                Response::new(Full::new(Bytes::from(json.to_string())))
            }
        }
        "/revoke" => {
            let token = form(&body, "token").unwrap_or_default();
            state.revoked.lock().unwrap().push(token);
            Response::new(Full::new(Bytes::new()))
        }
        "/redirect" => Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "/redirect-loop" => Response::builder()
            .status(302)
            .header("location", "/redirect-loop")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; n]))),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Response::new(Full::new(Bytes::from_static(b"late")))
        }
        "/gzip" => Response::builder()
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from_static(GZIP_HELLO)))
            .unwrap(),
        _ => Response::new(Full::new(Bytes::from_static(b"ok"))),
    };
    Ok(response)
}

/// `hello` gzip-compressed.
pub const GZIP_HELLO: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07,
    0x00, 0x86, 0xa6, 0x10, 0x36, 0x05, 0x00, 0x00, 0x00,
];

impl TestServer {
    /// Plain HTTP.
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// HTTPS with a certificate from `ca`.
    pub async fn start_tls(ca: &TestCa) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ca.cert.clone()], ca.key.clone_key())
            .unwrap();
        Self::spawn(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let with_tls = tls.is_some();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            connections,
            state,
            task,
            tls: with_tls,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Tokens revoked at `/revoke` (RFC 7009).
    pub fn revoked(&self) -> Vec<String> {
        self.state.revoked.lock().unwrap().clone()
    }

    /// Identity tokens presented at `/token` (RFC 8693).
    pub fn exchanged(&self) -> Vec<String> {
        self.state.exchanged.lock().unwrap().clone()
    }

    /// A URL on this server, by IP.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.addr.port())
    }
}
