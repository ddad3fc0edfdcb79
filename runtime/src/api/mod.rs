//! `airlock serve`: the HTTP API for agent orchestrators.
//!
//! Every request passes, in order: the Host allowlist (DNS rebinding), the
//! body limit (checked against `Content-Length` before anything is read),
//! then authentication by bearer API key and the caller's roles. Only then
//! does a handler run. Errors are JSON with a stable code and a plain
//! message; internal detail is logged, never returned.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use airlock_policy::control::{Caller, ControlAction, ControlPolicies, SkillFacts};

use crate::Error;
use crate::admission::SkillRecord;
use crate::node::Node;

mod handlers;
pub mod mcp;
mod metrics;

/// `[api]` in `airlock.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Host header values served (without the port). Anything else is
    /// refused, so a page on another name cannot reach a loopback server
    /// through DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// The largest request body, in bytes.
    pub max_body: u64,
    /// Runs in progress at once, over all callers.
    pub max_runs: u32,
    /// Runs in progress at once per principal.
    pub max_runs_per_principal: u32,
    /// Submissions read and compiled at once (each holds a body of up to
    /// `max_body` and a compile); more get 429.
    pub max_admissions: u32,
    /// Instance slots kept for tool calls, beyond `max_runs`: runs never
    /// take them, so a run's tool calls find room while `max_runs` runs
    /// are in progress.
    pub tool_slots: u32,
    /// Time to read a request's headers.
    #[serde(with = "crate::limits::humantime_serde")]
    pub header_timeout: Duration,
    /// Time to read a request's body, from the end of its headers: a client
    /// trickling bytes does not hold a connection for longer.
    #[serde(with = "crate::limits::humantime_serde")]
    pub body_timeout: Duration,
    /// API keys: each maps to a principal with roles.
    pub keys: Vec<KeyConfig>,
    /// A directory of control-plane Cedar policies (`AirlockControl`
    /// schema), added to the built-in ones.
    pub policies: Option<std::path::PathBuf>,
}

impl ApiConfig {
    /// The engine's instance pool for a server: a slot for every run it
    /// admits, and those kept for tool calls. A node that serves the
    /// cluster's queue also runs up to `max_runs` queued runs, beside its
    /// own (MCP's).
    pub fn instance_slots(&self, serves_queue: bool) -> u32 {
        let runs = if serves_queue {
            self.max_runs.saturating_mul(2)
        } else {
            self.max_runs
        };
        runs.saturating_add(self.tool_slots).max(1)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            max_body: 32 << 20,
            max_runs: 256,
            max_runs_per_principal: 64,
            max_admissions: 4,
            tool_slots: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keys: Vec::new(),
            policies: None,
        }
    }
}

/// One API key, as the operator configures it: only its hash is stored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Who holds the key; recorded as the submitter, reviewer or actor.
    pub principal: String,
    pub roles: BTreeSet<Role>,
    /// The tenant whose skills the principal works with.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// `blake3:` and the hex blake3 hash of the key (`airlock api-key`).
    pub hash: String,
}

fn default_tenant() -> String {
    crate::admission::DEFAULT_TENANT.to_string()
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submit skills for admission.
    Submitter,
    /// Approve, quarantine and revoke skills.
    Reviewer,
    /// Run approved skills.
    Runner,
    /// Read and verify the audit log.
    Auditor,
    /// All of the above.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Submitter,
        Role::Reviewer,
        Role::Runner,
        Role::Auditor,
        Role::Admin,
    ];

    /// The name policies see in `principal.roles`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Reviewer => "reviewer",
            Role::Runner => "runner",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// A new API key and the hash to configure for it.
pub fn new_key() -> (String, String) {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "airlock_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = format!("blake3:{}", blake3::hash(key.as_bytes()).to_hex());
    (key, hash)
}

/// The caller, once its key is known.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub tenant: String,
}

struct Key {
    hash: blake3::Hash,
    principal: Principal,
}

/// An error answer: a status, a stable code and a plain message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn busy(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Rejected(_) | Error::Incompatible(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "skill_rejected",
                e.to_string(),
            ),
            Error::Admission(why) => ApiError::new(StatusCode::CONFLICT, "refused", why),
            Error::TooLarge(why) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", why),
            Error::Cluster(why) => {
                tracing::error!(error = %why, "the cluster failed a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    "the cluster cannot serve this now; try again later",
                )
            }
            other => {
                // Paths and upstream detail stay in the server's log.
                tracing::error!(error = %other, "a request failed inside the runtime");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the runtime failed to complete the request; see the server's log",
                )
            }
        }
    }
}

/// Every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// Stable: `unauthenticated`, `forbidden`, `not_found`, `invalid_request`,
    /// `malformed_json`, `invalid_digest`, `body_too_large`, `body_timeout`,
    /// `too_many_requests`, `refused`, `skill_rejected`, ...
    #[schema(value_type = String)]
    code: &'static str,
    /// Plain words for a person; may change.
    message: String,
}

/// The OpenAPI document's frame; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Airlock",
        description = "Submit, review and run agent-generated skills; read the audit log. \
            Every request but /healthz needs `Authorization: Bearer <API key>`. \
            Also served, and specified elsewhere: OpenID discovery and JWKS \
            (/.well-known/openid-configuration, /.well-known/jwks.json), token \
            introspection (/oauth2/introspect, RFC 7662) and MCP (/mcp, streamable HTTP)."
    ),
    security(("bearer" = [])),
    modifiers(&BearerScheme),
    tags(
        (name = "skills", description = "Admission and review"),
        (name = "runs", description = "Running approved skills"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What the handlers share.
pub struct Api {
    node: Arc<Node>,
    config: ApiConfig,
    keys: Vec<Key>,
    control: ControlPolicies,
    metrics: metrics::Metrics,
    /// Which principal opened each MCP session.
    mcp_sessions: Mutex<mcp::SessionOwners>,
    /// Cancelled when the server begins to shut down: ends MCP streams.
    shutdown: tokio_util::sync::CancellationToken,
    /// Runs in progress, over all and per principal.
    runs: Mutex<(u32, HashMap<String, u32>)>,
    /// Submissions being read or compiled.
    admissions: Arc<tokio::sync::Semaphore>,
    /// Where runs go when they are queued for any node of a cluster.
    queue: std::sync::OnceLock<crate::cluster::Cluster>,
}

impl Api {
    /// Queue `POST /v1/runs` on the cluster's work queue: any node with
    /// room runs them. Set once, when the server joins a cluster.
    pub fn queue_runs(&self, cluster: crate::cluster::Cluster) {
        let _ = self.queue.set(cluster);
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// A run slot, given back when dropped (also when the client goes away).
pub(crate) struct Slot {
    api: Arc<Api>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut runs = self.api.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.0 = runs.0.saturating_sub(1);
        if let Some(n) = runs.1.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                runs.1.remove(&self.principal);
            }
        }
    }
}

impl Api {
    pub fn new(node: Arc<Node>, config: ApiConfig) -> Result<Arc<Self>, Error> {
        for (name, value) in [
            ("max_runs", config.max_runs),
            ("max_runs_per_principal", config.max_runs_per_principal),
            ("max_admissions", config.max_admissions),
        ] {
            if value == 0 {
                return Err(Error::Config(format!(
                    "api.{name} is 0: the server could do nothing; it is at least 1"
                )));
            }
        }
        let mut keys = Vec::new();
        for (n, key) in config.keys.iter().enumerate() {
            let hex = key.hash.strip_prefix("blake3:").ok_or_else(|| {
                Error::Config(format!(
                    "api.keys[{n}] (`{}`): the hash must start with `blake3:` (make one with `airlock api-key`)",
                    key.principal
                ))
            })?;
            let hash = blake3::Hash::from_hex(hex).map_err(|e| {
                Error::Config(format!(
                    "api.keys[{n}] (`{}`): the hash is not 64 hex digits: {e}",
                    key.principal
                ))
            })?;
            if key.principal.trim().is_empty() || key.roles.is_empty() {
                return Err(Error::Config(format!(
                    "api.keys[{n}]: a key needs a principal and at least one role"
                )));
            }
            keys.push(Key {
                hash,
                principal: Principal {
                    name: key.principal.clone(),
                    roles: key.roles.clone(),
                    tenant: key.tenant.clone(),
                },
            });
        }
        let control = match &config.policies {
            Some(dir) => ControlPolicies::load(dir),
            None => ControlPolicies::base(),
        }
        .map_err(|e| Error::Config(format!("control-plane policies (api.policies):\n{e}")))?;
        let admissions = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(config.max_admissions).unwrap_or(usize::MAX),
        ));
        Ok(Arc::new(Api {
            node,
            config,
            keys,
            control,
            metrics: metrics::Metrics::new(),
            mcp_sessions: Mutex::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            runs: Mutex::default(),
            admissions,
            queue: std::sync::OnceLock::new(),
        }))
    }

    /// The server is shutting down: open MCP event streams end, so they do
    /// not hold the grace period up.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The principal whose key this is. Every configured key is compared
    /// (blake3 hashes compare in constant time), so timing says nothing
    /// about which keys exist.
    fn authenticate(&self, presented: &str) -> Option<Principal> {
        let hash = blake3::hash(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if key.hash == hash {
                found = Some(key.principal.clone());
            }
        }
        found
    }

    /// Refused (403) unless the control-plane policies let `principal` do
    /// `action`, to `skill` for actions on one skill. A refusal names the
    /// action, the resource and the deciding policies.
    pub(crate) fn authorize(
        &self,
        principal: &Principal,
        action: ControlAction,
        skill: Option<&SkillRecord>,
    ) -> Result<(), ApiError> {
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        let caller = Caller {
            name: &principal.name,
            roles: &roles,
            tenant: &principal.tenant,
        };
        let (digest, trust) = skill.map_or((String::new(), String::new()), |s| {
            (s.digest.to_hex(), s.trust.to_string())
        });
        let facts = skill.map(|s| SkillFacts {
            digest: &digest,
            name: &s.name,
            submitter: &s.submitter,
            agent: &s.agent,
            trust: &trust,
            tenant: &s.tenant,
            state: s.state.as_str(),
        });
        let answer = self.control.decide(&caller, action, facts.as_ref());
        if answer.allowed {
            return Ok(());
        }
        let resource = match skill {
            Some(s) => format!("skill `{}` ({})", s.name, s.digest.short()),
            None => "the server".to_string(),
        };
        let why = if answer.policies.is_empty() {
            format!(
                "no policy permits it for roles [{}] in tenant `{}`",
                roles.join(", "),
                principal.tenant
            )
        } else {
            format!(
                "denied by {}{}",
                answer.policies.join(", "),
                answer
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        };
        tracing::info!(
            principal = %principal.name,
            action = action.as_str(),
            %resource,
            policies = ?answer.policies,
            "control-plane request denied"
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "`{}` may not `{}` {resource}: {why}",
                principal.name,
                action.as_str()
            ),
        ))
    }

    /// Room to read and compile one submission, while the permit lives.
    pub(crate) fn admission_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.admissions.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(format!(
                "the server is admitting {} skills at once, its limit (api.max_admissions); retry shortly",
                self.config.max_admissions
            ))
        })
    }

    /// A run slot for `principal`, or 429 when the server or the principal
    /// has as many runs going as it may.
    pub(crate) fn slot(self: &Arc<Self>, principal: &str) -> Result<Slot, ApiError> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if runs.0 >= self.config.max_runs {
            return Err(ApiError::busy(format!(
                "the server has {} runs in progress, its limit; retry shortly",
                runs.0
            )));
        }
        let mine = runs.1.get(principal).copied().unwrap_or(0);
        if mine >= self.config.max_runs_per_principal {
            return Err(ApiError::busy(format!(
                "principal `{principal}` has {mine} runs in progress, its limit; retry shortly"
            )));
        }
        runs.0 += 1;
        runs.1.insert(principal.to_string(), mine + 1);
        Ok(Slot {
            api: self.clone(),
            principal: principal.to_string(),
        })
    }

    /// Runs in progress now.
    pub fn runs_in_progress(&self) -> u32 {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// The whole server: the API under `/v1`, health, and the identity
/// endpoints (discovery and JWKS are public, as relying parties need them;
/// introspection needs a key).
pub fn router(api: Arc<Api>) -> Router {
    let issuer = api.node.issuer().clone();
    let measured = axum::middleware::from_fn_with_state(api.clone(), measure);
    let (health, v1, doc) = handlers::routes(api.clone());
    let doc = Arc::new(doc);
    let public = health
        .merge(crate::identity::server::public(issuer.clone()))
        .route_layer(measured.clone());
    let private = v1
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .merge(crate::identity::server::introspection(issuer))
        .merge(
            Router::new()
                .nest_service(
                    "/mcp",
                    mcp::Tools::http_service(api.clone(), api.shutdown.clone()),
                )
                .layer(axum::middleware::from_fn_with_state(
                    api.clone(),
                    mcp::bind_session,
                ))
                .layer(axum::middleware::from_fn_with_state(api.clone(), read_body)),
        )
        .route_layer(measured)
        // Unknown paths too: nothing about the API is told without a key.
        .fallback(|| async { ApiError::not_found("no such endpoint; the API is under /v1") })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ));
    let max_body = usize::try_from(api.config.max_body).unwrap_or(usize::MAX);
    public
        .merge(private)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(api, guard))
}

/// Read the whole body first, so a slow or oversized one is answered here
/// (408, 413) in the API's error shape rather than by the MCP service.
async fn read_body(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(api.config.max_body).unwrap_or(usize::MAX);
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) if timed_out(&e) => body_timeout().into_response(),
        Err(e) if caused_by::<http_body_util::LengthLimitError>(&e) => {
            too_large(api.config.max_body).into_response()
        }
        Err(_) => ApiError::bad_request("unreadable_body", "the request body could not be read")
            .into_response(),
    }
}

fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<T>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Request latency by route, once routed (authenticated requests only).
async fn measure(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // Only the standard methods: any other would be a new series per name.
    let method = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::PATCH => "PATCH",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    api.metrics
        .request(method, &route, response.status().as_u16(), started);
    response
}

/// Before anything else: the Host allowlist and the declared body size.
async fn guard(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(strip_port);
    let allowed = host.is_some_and(|host| {
        api.config
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host))
    });
    if !allowed {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            "this server does not answer for that Host (api.allowed_hosts)",
        )
        .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.config.max_body) {
        return too_large(api.config.max_body).into_response();
    }
    let deadline = tokio::time::Instant::now() + api.config.body_timeout;
    let request = request.map(|body| {
        axum::body::Body::new(Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        })
    });
    next.run(request).await
}

/// A request body that fails once its deadline passes.
struct Deadline {
    body: axum::body::Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The body was not all read in time (`api.body_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within api.body_timeout")]
pub(crate) struct BodyTimedOut;

impl http_body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether `error` comes from a body that took too long.
pub(crate) fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTimedOut>(error)
}

pub(crate) fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body was not received in time (api.body_timeout)",
    )
}

pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over the limit of {limit} bytes (api.max_body)"),
    )
}

/// `host:port`, `[v6]:port` or a bare host, without the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// No request without a valid key reaches a handler.
async fn authenticate(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send an API key: `Authorization: Bearer <key>`",
        )
        .into_response();
    };
    let Some(principal) = api.authenticate(presented) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the API key is not valid",
        )
        .into_response();
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests;
