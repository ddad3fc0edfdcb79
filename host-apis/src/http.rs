//! `airlock:skill/http`: outbound HTTP, decided by the broker (`http.request`
//! on the destination `Host`) and then sent by the runtime's [`Egress`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::bindings::airlock::skill::http::{self as wit, Host};
use crate::broker::{Action, BrokerCtx, CapabilityRequest, Details, Resource};
use crate::secrets::{Credentials, leak_refusal};
use crate::{CallError, SkillCtx};

/// The two schemes a skill may use. `http` only where policy names the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// Where a request goes: a canonical host name (lowercase ASCII, IDNA
/// applied, no trailing dot) or an IP address, however the guest wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(name) => f.write_str(name),
            Destination::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What a request may carry, from the operator's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRules {
    /// Follow redirects (each hop is decided and checked again in full).
    pub follow_redirects: bool,
    pub max_redirects: u32,
    pub max_request_body: u64,
    pub max_headers: usize,
    /// Bytes of request header names and values together.
    pub max_header_bytes: usize,
    /// Bytes a whole run may send out, all requests together.
    pub max_session_bytes_out: u64,
}

impl Default for HttpRules {
    fn default() -> Self {
        HttpRules {
            follow_redirects: false,
            max_redirects: 5,
            max_request_body: 1 << 20,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            max_session_bytes_out: 10 << 20,
        }
    }
}

/// An outbound request, parsed once into canonical form. Everything is
/// decided and done on this object: nothing re-parses the guest's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: http::Method,
    /// Canonical: no userinfo, no fragment, canonical host.
    pub url: url::Url,
    pub scheme: Scheme,
    pub destination: Destination,
    pub port: u16,
    /// Checked names and values; none of them a header the broker controls.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Vec<u8>,
    /// A credential for the broker to attach, by name.
    pub credential: Option<String>,
}

/// The request header that names a credential on the standard `wasi:http`
/// path. The broker strips it; it is never sent.
pub const CREDENTIAL_HEADER: &str = "airlock-credential";

/// Headers a guest may not set: the broker sets what is needed, and the
/// runtime frames the request itself.
pub fn is_broker_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "proxy-authorization"
            | "cookie"
            | "forwarded"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    ) || name.starts_with("x-forwarded-")
}

fn invalid(what: impl fmt::Display) -> CallError {
    CallError::Invalid(what.to_string())
}

/// Parse and canonicalize a URL a skill gave (WHATWG rules).
pub fn canonical_url(text: &str) -> Result<(url::Url, Scheme, Destination, u16), CallError> {
    let shown = crate::escape(text, 200);
    let mut url =
        url::Url::parse(text).map_err(|e| invalid(format!("`{shown}` is not a URL: {e}")))?;
    let scheme = match url.scheme() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => {
            return Err(invalid(format!(
                "scheme `{}` is not allowed: use https (or http where policy names the host)",
                crate::escape(other, 40)
            )));
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "`{shown}` carries a user name or password: credentials never go in a URL"
        )));
    }
    url.set_fragment(None);
    let destination = match url.host() {
        Some(url::Host::Domain(name)) => {
            // IDNA and case were applied by the parser; a trailing dot names
            // the same host.
            let name = name.strip_suffix('.').unwrap_or(name).to_string();
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(invalid(format!("`{shown}` has an empty host name label")));
            }
            if url.host_str() != Some(name.as_str()) {
                url.set_host(Some(&name))
                    .map_err(|e| invalid(format!("`{shown}`: {e}")))?;
            }
            Destination::Name(name)
        }
        Some(url::Host::Ipv4(ip)) => Destination::Ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Destination::Ip(IpAddr::V6(ip)),
        None => return Err(invalid(format!("`{shown}` has no host"))),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid(format!("`{shown}` has no port")))?;
    if port == 0 {
        return Err(invalid(format!("`{shown}`: port 0 is not a destination")));
    }
    Ok((url, scheme, destination, port))
}

impl OutboundRequest {
    /// Parse a request: method, URL, headers and body, each checked.
    pub fn parse(
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        credential: Option<String>,
        rules: &HttpRules,
    ) -> Result<Self, CallError> {
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| {
            invalid(format!(
                "`{}` is not an HTTP method",
                crate::escape(method, 40)
            ))
        })?;
        if method == http::Method::CONNECT || method == http::Method::TRACE {
            return Err(invalid(format!("method `{method}` is not allowed")));
        }
        let (url, scheme, destination, port) = canonical_url(url)?;
        if headers.len() > rules.max_headers {
            return Err(CallError::Limit(format!(
                "a request carries at most {} headers; this one has {}",
                rules.max_headers,
                headers.len()
            )));
        }
        let mut total = 0usize;
        let mut checked = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let shown = crate::escape(name, 60);
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("`{shown}` is not a valid header name")))?;
            if header.as_str() == CREDENTIAL_HEADER {
                return Err(invalid(format!(
                    "header `{header}` names a credential for the broker: put the name in the request's `credential`"
                )));
            }
            if is_broker_header(header.as_str()) {
                return Err(invalid(format!(
                    "header `{header}` is set by the broker, not by a skill"
                )));
            }
            let value = http::HeaderValue::from_str(value).map_err(|_| {
                invalid(format!(
                    "the value of header `{header}` has characters a header cannot carry (such as CR, LF or NUL)"
                ))
            })?;
            total += header.as_str().len() + value.len();
            checked.push((header, value));
        }
        if total > rules.max_header_bytes {
            return Err(CallError::Limit(format!(
                "request headers are at most {} bytes; these are {total}",
                rules.max_header_bytes
            )));
        }
        if body.len() as u64 > rules.max_request_body {
            return Err(CallError::Limit(format!(
                "a request body is at most {} bytes; this one is {}",
                rules.max_request_body,
                body.len()
            )));
        }
        Ok(OutboundRequest {
            method,
            url,
            scheme,
            destination,
            port,
            headers: checked,
            body,
            credential,
        })
    }

    /// The `Host` resource policy sees.
    pub fn host(&self) -> String {
        self.destination.to_string()
    }

    /// The broker's view of this request.
    pub fn capability_request(&self) -> CapabilityRequest {
        CapabilityRequest {
            action: Action::HttpRequest,
            resource: Resource::Host { name: self.host() },
            details: self.details(),
        }
    }

    fn details(&self) -> Details {
        Details::Http {
            method: self.method.as_str().to_string(),
            scheme: self.scheme.as_str().to_string(),
            host: self.host(),
            port: self.port,
            path: self.url.path().to_string(),
        }
    }

    /// The broker's view of attaching credential `name` to this request.
    pub fn secret_use_request(&self, name: &str) -> CapabilityRequest {
        CapabilityRequest {
            action: Action::SecretUse,
            resource: Resource::Secret {
                name: name.to_string(),
            },
            details: self.details(),
        }
    }

    /// The first live credential value the guest put anywhere in this
    /// request: URL, header or body.
    fn leak(
        &self,
        credentials: &dyn Credentials,
        instance: &str,
    ) -> Option<(String, &'static str)> {
        let host = self.host();
        let host = Some(host.as_str());
        if let Some(name) = credentials.leak(instance, self.url.as_str().as_bytes(), host) {
            return Some((name, "the request URL"));
        }
        if let Some(name) = credentials.leak(instance, self.method.as_str().as_bytes(), host) {
            return Some((name, "the request method"));
        }
        for (name, value) in &self.headers {
            let found = credentials
                .leak(instance, name.as_str().as_bytes(), host)
                .or_else(|| credentials.leak(instance, value.as_bytes(), host));
            if let Some(found) = found {
                return Some((found, "a request header"));
            }
        }
        credentials
            .leak(instance, &self.body, host)
            .map(|name| (name, "the request body"))
    }

    /// Bytes this request sends: request line, headers and body.
    pub fn size(&self) -> u64 {
        let line = self.method.as_str().len()
            + self.url.path().len()
            + self.url.query().map_or(0, str::len)
            + 16;
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        (line + headers + self.host().len() + 8 + self.body.len()) as u64
    }

    fn same_origin(&self, other: &OutboundRequest) -> bool {
        self.scheme == other.scheme
            && self.destination == other.destination
            && self.port == other.port
    }

    /// The request to send for a redirect to `location`, checked as a new
    /// request in full.
    fn redirect(&self, status: u16, location: &str, rules: &HttpRules) -> Result<Self, CallError> {
        let target = self.url.join(location).map_err(|e| {
            invalid(format!(
                "redirect to `{}`: {e}",
                crate::escape(location, 200)
            ))
        })?;
        // 303, and a POST redirected with 301 or 302, become a GET.
        let get =
            status == 303 || (matches!(status, 301 | 302) && self.method == http::Method::POST);
        let method = if get { "GET" } else { self.method.as_str() };
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let body = if get { Vec::new() } else { self.body.clone() };
        let mut next = Self::parse(
            method,
            target.as_str(),
            &headers,
            body,
            self.credential.clone(),
            rules,
        )?;
        if !self.same_origin(&next) {
            // A credential is bound to where it was meant to go.
            next.credential = None;
        }
        Ok(next)
    }
}

/// A response, read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The address the request went to.
    pub peer: Option<SocketAddr>,
}

impl InboundResponse {
    fn access(&self) -> String {
        match self.peer {
            Some(peer) => format!(
                "connected to {peer}, status {}, {} bytes",
                self.status,
                self.body.len()
            ),
            None => format!("status {}, {} bytes", self.status, self.body.len()),
        }
    }

    fn location(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.as_str())
    }
}

/// What a request goes out with.
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    pub egress: &'a dyn Egress,
    pub credentials: &'a dyn Credentials,
    pub rules: &'a HttpRules,
}

impl fmt::Debug for Outbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("rules", self.rules)
            .finish_non_exhaustive()
    }
}

impl InboundResponse {
    /// Replace every live credential value the response carries: a server
    /// that echoes what it was sent must not hand a secret to the guest.
    fn redact(&mut self, credentials: &dyn Credentials, instance: &str) {
        for (_, value) in &mut self.headers {
            if let Some(clean) = credentials.redact(instance, value.as_bytes()) {
                *value = String::from_utf8_lossy(&clean).into_owned();
            }
        }
        if let Some(clean) = credentials.redact(instance, &self.body) {
            self.body = clean;
        }
    }
}

/// What the record of a request that could not be parsed says: the host as
/// far as it can be read, and the method.
fn unparsed(method: &str, url: &str) -> CapabilityRequest {
    let host = url::Url::parse(url.trim())
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    CapabilityRequest {
        action: Action::HttpRequest,
        resource: Resource::Host {
            name: crate::escape(&host, 200),
        },
        details: Details::Http {
            method: crate::escape(method, 40),
            scheme: String::new(),
            host: String::new(),
            port: 0,
            path: String::new(),
        },
    }
}

/// Decide, send and (if the operator allows) follow redirects, each hop
/// decided and checked as a new request. The one path both `http.fetch` and
/// the standard `wasi:http` handler take.
///
/// A hop is: `http.request` decided; the guest's URL, headers and body
/// scanned for live credential values; the named credential decided
/// (`secret.use`, with the destination), checked against its binding and
/// lease and attached host-side; the request sent; the response cleaned of
/// any credential it echoes.
pub async fn fetch(
    broker: &BrokerCtx,
    out: Outbound<'_>,
    mut request: OutboundRequest,
) -> Result<InboundResponse, CallError> {
    let instance = broker.subject().instance.as_str();
    let rules = out.rules;
    let mut hops = 0;
    loop {
        if request.scheme == Scheme::Http && request.credential.is_some() {
            return broker.refuse(
                request.capability_request(),
                invalid("a credential is never sent over plain http"),
            );
        }
        let permit = broker.authorize(request.capability_request()).await?;
        if let Some((name, place)) = request.leak(out.credentials, instance) {
            return permit.conclude(Err(leak_refusal(&name, place)), |_: &InboundResponse| None);
        }
        let attached = match &request.credential {
            Some(name) => {
                let use_permit = match broker.authorize(request.secret_use_request(name)).await {
                    Ok(permit) => permit,
                    // The request fails with the credential's denial, on the record too.
                    Err(e) => return permit.conclude(Err(e), |_: &InboundResponse| None),
                };
                let attached = out
                    .credentials
                    .attach(broker.subject(), name, &request)
                    .await;
                let attached = use_permit.conclude(attached, |a| {
                    Some(format!("attached as `{}` for {}", a.header, request.host()))
                });
                // The request fails with the credential's error, on the record too.
                let attached = match attached {
                    Ok(attached) => attached,
                    Err(e) => return permit.conclude(Err(e), |_: &InboundResponse| None),
                };
                broker.session().lock().secrets_used.insert(name.clone());
                Some(attached)
            }
            None => None,
        };
        let size = request.size();
        {
            let mut session = broker.session().lock();
            if session.bytes_out.saturating_add(size) > rules.max_session_bytes_out {
                let used = session.bytes_out;
                drop(session);
                return permit.conclude(
                    Err(CallError::Limit(format!(
                        "this run may send at most {} bytes out; it has sent {used} and this request is {size}",
                        rules.max_session_bytes_out
                    ))),
                    |_: &InboundResponse| None,
                );
            }
            session.bytes_out += size;
            session.hosts_contacted.insert(request.host());
        }
        let result = match attached {
            Some(attached) => {
                let mut sending = request.clone();
                sending.headers.retain(|(n, _)| *n != attached.header);
                match http::HeaderValue::from_str(attached.value.expose()) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        sending.headers.push((attached.header, value));
                        out.egress.send(&sending).await
                    }
                    Err(_) => Err(CallError::Unavailable(format!(
                        "credential `{}` has a value a header cannot carry",
                        request.credential.as_deref().unwrap_or_default()
                    ))),
                }
            }
            None => out.egress.send(&request).await,
        };
        let mut response = permit.conclude(result, |r| Some(r.access()))?;
        response.redact(out.credentials, instance);
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        let Some(location) = response
            .location()
            .filter(|_| redirect && rules.follow_redirects)
        else {
            return Ok(response);
        };
        hops += 1;
        if hops > rules.max_redirects {
            return Err(CallError::Limit(format!(
                "more than {} redirects",
                rules.max_redirects
            )));
        }
        let next = request.redirect(response.status, location, rules)?;
        if request.scheme == Scheme::Https && next.scheme == Scheme::Http {
            let reason = format!(
                "a redirect from https to http (`{}`) is refused",
                crate::escape(next.url.as_str(), 200)
            );
            return broker.refuse(
                next.capability_request(),
                CallError::guard("https-downgrade", reason),
            );
        }
        request = next;
    }
}

/// Sends requests the broker allowed. Implemented by the runtime.
#[async_trait::async_trait]
pub trait Egress: Send + Sync + 'static {
    /// Send one request the broker allowed, to exactly where it names: the
    /// address connected to must be one the egress checked.
    async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError>;
}

/// No way out: every allowed request fails as unavailable.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEgress;

#[async_trait::async_trait]
impl Egress for NoEgress {
    async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError> {
        Err(CallError::Unavailable(format!(
            "no network egress is configured for this runtime (request to `{}`)",
            request.host()
        )))
    }
}

/// Per-instance state of `airlock:skill/http`.
pub struct HttpCtx {
    egress: Arc<dyn Egress>,
    credentials: Arc<dyn Credentials>,
    rules: Arc<HttpRules>,
}

impl fmt::Debug for HttpCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCtx").finish_non_exhaustive()
    }
}

impl HttpCtx {
    pub fn new(
        egress: Arc<dyn Egress>,
        credentials: Arc<dyn Credentials>,
        rules: Arc<HttpRules>,
    ) -> Self {
        HttpCtx {
            egress,
            credentials,
            rules,
        }
    }

    fn outbound(&self) -> Outbound<'_> {
        Outbound {
            egress: &*self.egress,
            credentials: &*self.credentials,
            rules: &self.rules,
        }
    }

    pub fn egress(&self) -> &Arc<dyn Egress> {
        &self.egress
    }
}

impl Host for SkillCtx {
    async fn fetch(&mut self, req: wit::Request) -> Result<wit::Response, CallError> {
        let request = OutboundRequest::parse(
            &req.method,
            &req.url,
            &req.headers,
            req.body,
            req.credential,
            &self.http.rules,
        );
        let request = match request {
            Ok(request) => request,
            Err(e) => return self.broker.refuse(unparsed(&req.method, &req.url), e),
        };
        let response = fetch(&self.broker, self.http.outbound(), request).await?;
        Ok(wit::Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}

/// The standard `wasi:http/outgoing-handler`, ending in the same broker check
/// and the same [`Egress`] as `http.fetch`.
///
/// The default sender of `wasmtime-wasi-http` is not compiled in: this is the
/// only way a request leaves.
pub struct StandardHttp {
    broker: crate::BrokerCtx,
    http: Arc<HttpCtx>,
}

impl fmt::Debug for StandardHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardHttp").finish_non_exhaustive()
    }
}

impl StandardHttp {
    pub fn new(broker: crate::BrokerCtx, http: Arc<HttpCtx>) -> Self {
        StandardHttp { broker, http }
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
        CallError::Denied(m) | CallError::Guarded { reason: m, .. } => {
            tracing::debug!(reason = %m, "standard http request denied");
            E::HttpRequestDenied
        }
        CallError::Invalid(m) => {
            tracing::debug!(reason = %m, "standard http request refused");
            E::HttpRequestUriInvalid
        }
        CallError::Limit(m) => E::InternalError(Some(m)),
        other => E::InternalError(Some(other.to_string())),
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for StandardHttp {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        // `content-length` may be declared (clients such as the JavaScript
        // engine's `fetch` always do): wasmtime holds the body to it, and
        // it is dropped before sending, where the request is framed again.
        Arc::new(|name| {
            wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
                || (is_broker_header(name.as_str()) && name != http::header::CONTENT_LENGTH)
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
        let http = self.http.clone();
        Box::new(async move {
            let rules = &http.rules;
            let (parts, body) = request.into_parts();
            let max = usize::try_from(rules.max_request_body).unwrap_or(usize::MAX);
            let body = http_body_util::Limited::new(body, max)
                .collect()
                .await
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestBodySize(None))?
                .to_bytes()
                .to_vec();
            let mut headers = Vec::with_capacity(parts.headers.len());
            let mut credential = None;
            for (name, value) in &parts.headers {
                // A header value the broker cannot read as text is not sent.
                let value = value.to_str().map_err(|_| {
                    wasmtime_wasi_http::Error::InternalError(Some(format!(
                        "header `{name}` is not text"
                    )))
                })?;
                if name == http::header::CONTENT_LENGTH {
                    continue;
                }
                if name.as_str() == CREDENTIAL_HEADER {
                    // Names a credential for the broker; never sent.
                    credential = Some(value.to_string());
                    continue;
                }
                headers.push((name.as_str().to_string(), value.to_string()));
            }
            let outbound = OutboundRequest::parse(
                parts.method.as_str(),
                &parts.uri.to_string(),
                &headers,
                body,
                credential,
                rules,
            );
            let outbound = match outbound {
                Ok(outbound) => outbound,
                Err(e) => {
                    let request = unparsed(parts.method.as_str(), &parts.uri.to_string());
                    return broker.refuse(request, e).map_err(to_wasi_error);
                }
            };
            let response = fetch(&broker, http.outbound(), outbound)
                .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(url: &str) -> Result<String, String> {
        canonical_url(url)
            .map(|(_, _, d, _)| d.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_are_canonical() {
        assert_eq!(
            host("https://API.Example.COM./x").as_deref(),
            Ok("api.example.com")
        );
        assert_eq!(
            host("https://bücher.example/").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            host("https://ｅｘａｍｐｌｅ.com/").as_deref(),
            Ok("example.com")
        );
        assert_eq!(host("https://2130706433/").as_deref(), Ok("127.0.0.1"));
        assert_eq!(host("https://0x7f.1/").as_deref(), Ok("127.0.0.1"));
        assert_eq!(
            host("https://[::FFFF:127.0.0.1]/").as_deref(),
            Ok("::ffff:127.0.0.1")
        );
    }

    #[test]
    fn userinfo_schemes_and_empty_labels_are_refused() {
        for url in [
            "https://u:p@example.com/",
            "https://u@example.com/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://a..b/",
            "https://",
        ] {
            assert!(host(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_redirect_drops_the_credential_across_origins() {
        let rules = HttpRules::default();
        let request = OutboundRequest::parse(
            "POST",
            "https://a.example/start",
            &[],
            b"body".to_vec(),
            Some("token".into()),
            &rules,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let same = request
            .redirect(307, "/next", &rules)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(same.credential.as_deref(), Some("token"));
        assert_eq!(same.method, http::Method::POST);
        let other = request
            .redirect(302, "https://b.example/", &rules)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.credential, None);
        assert_eq!(other.method, http::Method::GET);
        assert!(other.body.is_empty());
        // Parsed here; `fetch` refuses the downgrade as a guard's denial.
        let down = request
            .redirect(302, "http://a.example/", &rules)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(down.scheme, Scheme::Http);
    }
}
