//! `airlock:skill/http`: outbound HTTP, decided by the broker (`http.request`
//! on the destination `Host`) and then sent by the runtime's [`Egress`].

use std::fmt;
use std::sync::Arc;

use crate::bindings::airlock::skill::http::{self as wit, Host};
use crate::broker::{Action, CapabilityRequest, Details, Resource};
use crate::{CallError, SkillCtx};

/// An outbound request, parsed once. Everything is decided and done on this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: String,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A credential for the broker to attach, by name.
    pub credential: Option<String>,
}

impl OutboundRequest {
    /// Parse a guest's request. Refuses what cannot name a destination.
    pub fn parse(req: wit::Request) -> Result<Self, CallError> {
        let url = url::Url::parse(&req.url).map_err(|e| {
            CallError::Invalid(format!(
                "`{}` is not a URL: {e}",
                crate::escape(&req.url, 200)
            ))
        })?;
        if url.host_str().is_none() {
            return Err(CallError::Invalid(format!(
                "`{}` has no host",
                crate::escape(&req.url, 200)
            )));
        }
        Ok(OutboundRequest {
            method: req.method,
            url,
            headers: req.headers,
            body: req.body,
            credential: req.credential,
        })
    }

    /// The broker's view of this request.
    pub fn capability_request(&self) -> CapabilityRequest {
        CapabilityRequest {
            action: Action::HttpRequest,
            resource: Resource::Host {
                name: self.url.host_str().unwrap_or_default().to_string(),
            },
            details: Details::Http {
                method: self.method.clone(),
                scheme: self.url.scheme().to_string(),
                port: self.url.port_or_known_default().unwrap_or(0),
                path: self.url.path().to_string(),
            },
        }
    }
}

/// A response, read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends requests the broker allowed. Implemented by the runtime.
#[async_trait::async_trait]
pub trait Egress: Send + Sync + 'static {
    async fn send(&self, request: OutboundRequest) -> Result<InboundResponse, CallError>;
}

/// No way out: every allowed request fails as unavailable.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEgress;

#[async_trait::async_trait]
impl Egress for NoEgress {
    async fn send(&self, request: OutboundRequest) -> Result<InboundResponse, CallError> {
        Err(CallError::Unavailable(format!(
            "no network egress is configured for this runtime (request to `{}`)",
            request.url.host_str().unwrap_or_default()
        )))
    }
}

/// Per-instance state of `airlock:skill/http`.
pub struct HttpCtx {
    egress: Arc<dyn Egress>,
}

impl fmt::Debug for HttpCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCtx").finish_non_exhaustive()
    }
}

impl HttpCtx {
    pub fn new(egress: Arc<dyn Egress>) -> Self {
        HttpCtx { egress }
    }

    pub fn egress(&self) -> &Arc<dyn Egress> {
        &self.egress
    }
}

impl Host for SkillCtx {
    async fn fetch(&mut self, req: wit::Request) -> Result<wit::Response, CallError> {
        let request = match OutboundRequest::parse(req) {
            Ok(request) => request,
            Err(e) => {
                self.broker.count_call()?;
                return Err(e);
            }
        };
        let permit = self.broker.authorize(request.capability_request()).await?;
        let result = self.http.egress.send(request).await;
        let response = permit.conclude(result, |r| Some(format!("status {}", r.status)))?;
        Ok(wit::Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}

/// Headers a guest may not set: the broker sets what is needed.
pub fn is_broker_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "host" | "authorization" | "proxy-authorization" | "cookie" | "forwarded"
    ) || name.starts_with("x-forwarded-")
}

/// The standard `wasi:http/outgoing-handler`, ending in the same broker check
/// and the same [`Egress`] as `http.fetch`.
///
/// The default sender of `wasmtime-wasi-http` is not compiled in: this is the
/// only way a request leaves.
pub struct StandardHttp {
    broker: crate::BrokerCtx,
    egress: Arc<dyn Egress>,
    max_request_body: usize,
}

impl fmt::Debug for StandardHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardHttp").finish_non_exhaustive()
    }
}

impl StandardHttp {
    pub fn new(broker: crate::BrokerCtx, egress: Arc<dyn Egress>, max_request_body: usize) -> Self {
        StandardHttp {
            broker,
            egress,
            max_request_body,
        }
    }
}

type IoFuture = Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (http::Response<wasmtime_wasi_http::WasiBody>, IoFuture),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

fn to_wasi_error(e: CallError) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error as E;
    match e {
        CallError::Denied(_) => E::HttpRequestDenied,
        CallError::Invalid(m) => {
            tracing::debug!(reason = %m, "standard http request refused");
            E::HttpRequestUriInvalid
        }
        other => E::InternalError(Some(other.to_string())),
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for StandardHttp {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| {
            wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
                || is_broker_header(name.as_str())
        })
    }

    fn set_host_header(&mut self) -> bool {
        // The egress sets `Host` from the URL it checked.
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        use http_body_util::BodyExt;

        let broker = self.broker.clone();
        let egress = self.egress.clone();
        let max_body = self.max_request_body;
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let url = url::Url::parse(&parts.uri.to_string())
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
            let mut headers = Vec::with_capacity(parts.headers.len());
            for (name, value) in &parts.headers {
                // Header values the broker cannot read as text are not sent.
                let value = value.to_str().map_err(|_| {
                    wasmtime_wasi_http::Error::InternalError(Some(format!(
                        "header `{name}` is not text"
                    )))
                })?;
                headers.push((name.as_str().to_string(), value.to_string()));
            }
            let mut outbound = OutboundRequest {
                method: parts.method.as_str().to_string(),
                url,
                headers,
                body: Vec::new(),
                credential: None,
            };
            // Decide before reading the body: a denied request costs nothing more.
            let permit = broker
                .authorize(outbound.capability_request())
                .await
                .map_err(to_wasi_error)?;
            let body = http_body_util::Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestBodySize(None))?;
            outbound.body = body.to_bytes().to_vec();
            let result = egress.send(outbound).await;
            let response = permit
                .conclude(result, |r| Some(format!("status {}", r.status)))
                .map_err(to_wasi_error)?;
            let mut builder = http::Response::builder().status(response.status);
            for (name, value) in &response.headers {
                builder = builder.header(name, value);
            }
            let body = http_body_util::Full::new(bytes::Bytes::from(response.body))
                .map_err(|never| match never {})
                .boxed_unsync();
            let response = builder
                .body(body)
                .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))?;
            let io: IoFuture = Box::new(async { Ok(()) });
            Ok((response, io))
        })
    }
}
