//! The `/v1` endpoints.

use std::sync::Arc;
use std::time::Duration;

use airlock_host_apis::{AgentIdentity, Sensitivity, SkillIdentity, Subject, Task, Trust};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use airlock_policy::control::ControlAction;

use super::{Api, ApiError, ErrorBody, Principal};
use crate::SkillDigest;
use crate::admission::{SkillRecord, Submission};
use crate::audit::Record;
use crate::run::{RunReport, RunRequest, RunStatus};

/// The public routes (health), the authenticated ones, and the OpenAPI
/// document of both, built together so they cannot drift apart.
pub(super) fn routes(api: Arc<Api>) -> (Router, Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (public, mut doc) = OpenApiRouter::with_openapi(super::ApiDoc::openapi())
        .routes(routes!(healthz))
        .with_state(api.clone())
        .split_for_parts();
    let (private, v1) = OpenApiRouter::new()
        .routes(routes!(list_skills, submit_skill))
        .routes(routes!(get_skill))
        .routes(routes!(approve))
        .routes(routes!(quarantine))
        .routes(routes!(revoke))
        .routes(routes!(run))
        .routes(routes!(audit))
        .routes(routes!(audit_export))
        .routes(routes!(audit_verify))
        .routes(routes!(metrics))
        .with_state(api)
        .split_for_parts();
    doc.merge(v1);
    (public, private, doc)
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus (OpenMetrics) text", body = String, content_type = "application/openmetrics-text"), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
pub(super) async fn metrics(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    api.authorize(&principal, ControlAction::Metrics, None)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "The server is up", body = Object)))]
pub(super) async fn healthz(State(api): State<Arc<Api>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "runs_in_progress": api.runs_in_progress(),
    }))
}

/// A JSON body whose refusals are [`ApiError`]s with stable codes.
pub(crate) struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_request(
                "invalid_request",
                format!("the request does not fit: {}", e.body_text()),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with `Content-Type: application/json`",
            )),
            Err(e) if super::timed_out(&e) => Err(super::body_timeout()),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the limit (api.max_body)",
            )),
            Err(_) => Err(ApiError::bad_request(
                "unreadable_body",
                "the request body could not be read",
            )),
        }
    }
}

fn digest(text: &str) -> Result<SkillDigest, ApiError> {
    if text.len() != 64 {
        return Err(ApiError::bad_request(
            "invalid_digest",
            "a skill digest is 64 hex digits (the blake3 hash of the component)",
        ));
    }
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_digest",
            "a skill digest is 64 hex digits (the blake3 hash of the component)",
        )
    })
}

async fn record_or_404(api: &Api, digest: &SkillDigest) -> Result<SkillRecord, ApiError> {
    api.node()
        .skills()?
        .get(digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no admitted skill has digest {digest}")))
}

/// The skill, if the caller may do `action` to it.
async fn skill_for(
    api: &Api,
    principal: &Principal,
    text: &str,
    action: ControlAction,
) -> Result<SkillRecord, ApiError> {
    let digest = digest(text)?;
    let record = record_or_404(api, &digest).await?;
    // What the caller may not read (another tenant's) does not exist for it.
    if action != ControlAction::Read
        && api
            .authorize(principal, ControlAction::Read, Some(&record))
            .is_err()
    {
        return Err(ApiError::not_found(format!(
            "no admitted skill has digest {digest}"
        )));
    }
    api.authorize(principal, action, Some(&record))
        .map_err(|e| {
            if action == ControlAction::Read {
                ApiError::not_found(format!("no admitted skill has digest {digest}"))
            } else {
                e
            }
        })?;
    Ok(record)
}

/// The skills the caller may read.
#[utoipa::path(get, path = "/v1/skills", tag = "skills", responses((status = 200, description = "The skills the caller may read, newest first", body = Vec<SkillRecord>), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn list_skills(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<SkillRecord>>, ApiError> {
    api.authorize(&principal, ControlAction::List, None)?;
    let all = api.node().skills()?.list().await?;
    Ok(Json(
        all.into_iter()
            .filter(|r| {
                api.authorize(&principal, ControlAction::Read, Some(r))
                    .is_ok()
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/skills/{digest}", tag = "skills", params(("digest" = String, Path, description = "The skill's blake3 digest: 64 hex digits")), responses((status = 200, description = "The skill's record", body = SkillRecord), (status = 404, description = "No such skill", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn get_skill(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Path(text): Path<String>,
) -> Result<Json<SkillRecord>, ApiError> {
    Ok(Json(
        skill_for(&api, &principal, &text, ControlAction::Read).await?,
    ))
}

/// The `metadata` part of a submission.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// The agent that generated the skill.
    agent: String,
    trust: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    input_schema: Option<serde_json::Value>,
    /// A detached Ed25519 signature over the digest, base64.
    #[serde(default)]
    signature: Option<String>,
}

/// The parts of a submission (documentation only: read as multipart).
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the multipart form in the OpenAPI document"
)]
struct SubmitForm {
    /// JSON: name, agent, trust, and optionally description, input_schema, signature.
    metadata: Metadata,
    /// The component's bytes (.wasm).
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
}

#[derive(Serialize, ToSchema)]
struct Admitted {
    #[schema(value_type = String)]
    digest: SkillDigest,
    /// False when these bytes were admitted before.
    new: bool,
    capabilities: Vec<String>,
    imports: Vec<String>,
    skill: SkillRecord,
}

#[utoipa::path(post, path = "/v1/skills", tag = "skills", request_body(content = inline(SubmitForm), content_type = "multipart/form-data"), responses((status = 201, description = "Admitted, pending review", body = Admitted), (status = 200, description = "These bytes were admitted before", body = Admitted), (status = 409, description = "Refused by admission", body = ErrorBody), (status = 413, description = "Body over api.max_body", body = ErrorBody), (status = 422, description = "Not an acceptable component", body = ErrorBody), (status = 429, description = "api.max_admissions submissions in progress; see Retry-After", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn submit_skill(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&principal, ControlAction::Submit, None)?;
    // Held while the body is read and compiled: each holds up to max_body.
    let admitting = api.admission_slot()?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a `metadata` part (JSON) and a `component` part (the .wasm)",
        )
    })?;
    let (mut metadata, mut component) = (None, None);
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if super::timed_out(&e) {
            super::body_timeout()
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::too_large(api.config().max_body)
        } else {
            ApiError::bad_request("malformed_multipart", e.body_text())
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("metadata") => {
                let bytes = field.bytes().await.map_err(unreadable)?;
                let parsed: Metadata = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::bad_request("invalid_request", format!("`metadata`: {e}"))
                })?;
                metadata = Some(parsed);
            }
            Some("component") => component = Some(field.bytes().await.map_err(unreadable)?),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "unknown part `{}`: expected `metadata` and `component`",
                        airlock_host_apis::escape(other.unwrap_or_default(), 64)
                    ),
                ));
            }
        }
    }
    let (Some(metadata), Some(component)) = (metadata, component) else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a submission needs a `metadata` part (JSON) and a `component` part (the .wasm)",
        ));
    };
    let trust: Trust = metadata
        .trust
        .parse()
        .map_err(|e: String| ApiError::bad_request("invalid_request", e))?;
    let signature = match metadata.signature.as_deref() {
        Some(text) => Some(
            crate::admission::parse_signature(text.as_bytes())
                .map_err(|e| ApiError::bad_request("invalid_signature", e.to_string()))?,
        ),
        None => None,
    };
    let submission = Submission {
        name: metadata.name,
        description: metadata.description,
        agent: metadata.agent,
        trust,
        submitter: principal.name.clone(),
        tenant: principal.tenant.clone(),
        input_schema: metadata.input_schema,
        signature,
    };
    // On a task of its own that keeps the slot: a client that goes away
    // does not stop the compile, so it must not free the slot either.
    let node = api.node().clone();
    let (record, new) = tokio::spawn(async move {
        let admitted = node.admit(component.to_vec(), submission).await;
        drop(admitting);
        admitted
    })
    .await
    .map_err(|e| crate::Error::Engine(format!("the admission task failed: {e}")))??;
    if record.tenant != principal.tenant {
        // One record per digest: the same bytes under another tenant are
        // neither shown nor re-admitted.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "refused",
            "a skill with this digest is admitted under another tenant",
        ));
    }
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Admitted {
        digest: record.digest,
        new,
        capabilities: record.capabilities.clone(),
        imports: record.imports.clone(),
        skill: record,
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Approval {
    /// How long the approval lasts, like `7d` or `12h` (default:
    /// `admission.default_expiry`).
    #[serde(default)]
    expires_in: Option<String>,
}

#[utoipa::path(post, path = "/v1/skills/{digest}/approve", tag = "skills", params(("digest" = String, Path, description = "The skill's blake3 digest: 64 hex digits")), request_body(content = Option<Approval>, description = "Optional; empty means the default expiry"), responses((status = 200, description = "Approved", body = SkillRecord), (status = 404, description = "No such skill", body = ErrorBody), (status = 409, description = "Refused by admission", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn approve(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Path(text): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<SkillRecord>, ApiError> {
    let body = body.map_err(|e| {
        if super::timed_out(&e) {
            super::body_timeout()
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::too_large(api.config().max_body)
        } else {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
        }
    })?;
    let digest = skill_for(&api, &principal, &text, ControlAction::Approve)
        .await?
        .digest;
    // The body is optional: empty means the default expiry.
    let approval: Approval = if body.iter().all(u8::is_ascii_whitespace) {
        Approval::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ApiError::bad_request("invalid_request", format!("the request does not fit: {e}"))
            } else {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        })?
    };
    let ttl = match approval.expires_in.as_deref() {
        Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("`expires_in` is not a duration like `7d`: {e}"),
            )
        })?),
        None => None,
    };
    Ok(Json(
        api.node().approve(digest, &principal.name, ttl).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Hold {
    reason: String,
}

#[utoipa::path(post, path = "/v1/skills/{digest}/quarantine", tag = "skills", params(("digest" = String, Path, description = "The skill's blake3 digest: 64 hex digits")), request_body = Hold, responses((status = 200, description = "Quarantined; running instances are stopped", body = SkillRecord), (status = 404, description = "No such skill", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn quarantine(
    state: State<Arc<Api>>,
    principal: Extension<Principal>,
    path: Path<String>,
    body: Body<Hold>,
) -> Result<Json<SkillRecord>, ApiError> {
    hold(
        state,
        principal,
        path,
        body,
        crate::admission::State::Quarantined,
    )
    .await
}

#[utoipa::path(post, path = "/v1/skills/{digest}/revoke", tag = "skills", params(("digest" = String, Path, description = "The skill's blake3 digest: 64 hex digits")), request_body = Hold, responses((status = 200, description = "Revoked for good; running instances are stopped", body = SkillRecord), (status = 404, description = "No such skill", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn revoke(
    state: State<Arc<Api>>,
    principal: Extension<Principal>,
    path: Path<String>,
    body: Body<Hold>,
) -> Result<Json<SkillRecord>, ApiError> {
    hold(
        state,
        principal,
        path,
        body,
        crate::admission::State::Revoked,
    )
    .await
}

async fn hold(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Path(text): Path<String>,
    Body(hold): Body<Hold>,
    to: crate::admission::State,
) -> Result<Json<SkillRecord>, ApiError> {
    let action = if to == crate::admission::State::Revoked {
        ControlAction::Revoke
    } else {
        ControlAction::Quarantine
    };
    let digest = skill_for(&api, &principal, &text, action).await?.digest;
    let node = api.node();
    let record = if to == crate::admission::State::Revoked {
        node.revoke(digest, &principal.name, &hold.reason).await?
    } else {
        node.quarantine(digest, &principal.name, &hold.reason)
            .await?
    };
    Ok(Json(record))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RunBody {
    /// The approved skill's digest.
    skill: String,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    task: TaskBody,
    #[serde(default)]
    limits: LimitsBody,
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TaskBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    intent: String,
    #[serde(default)]
    sensitivity: Option<String>,
    #[serde(default)]
    environment: String,
}

/// Limits a caller may ask for: each only ever lowers the operator's.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    deadline_ms: Option<u64>,
    memory: Option<u64>,
    output: Option<u64>,
    host_calls: Option<u64>,
}

#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = RunBody, responses((status = 200, description = "The run's report: status, output or error, usage, decisions", body = RunReport), (status = 404, description = "No such skill", body = ErrorBody), (status = 409, description = "The skill is not runnable (pending, expired, quarantined, revoked)", body = ErrorBody), (status = 413, description = "Body over api.max_body, or a queued run over the cluster's message size", body = ErrorBody), (status = 429, description = "Too many runs in progress, or no instance slot free; see Retry-After", body = ErrorBody), (status = 503, description = "The cluster cannot queue the run, or its run was not completed", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn run(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Body(body): Body<RunBody>,
) -> Result<Response, ApiError> {
    let record = skill_for(&api, &principal, &body.skill, ControlAction::Run).await?;
    let digest = record.digest;
    let sensitivity: Sensitivity = match body.task.sensitivity.as_deref() {
        Some(text) => text
            .parse()
            .map_err(|e: String| ApiError::bad_request("invalid_request", e))?,
        None => Sensitivity::default(),
    };
    let mut limits = api.node().config().limits.clone();
    let asked = &body.limits;
    if let Some(ms) = asked.deadline_ms {
        limits.deadline = limits.deadline.min(Duration::from_millis(ms));
    }
    if let Some(v) = asked.memory {
        limits.memory = limits.memory.min(v);
    }
    if let Some(v) = asked.output {
        limits.output = limits.output.min(v);
    }
    if let Some(v) = asked.host_calls {
        limits.host_calls = limits.host_calls.min(v);
    }
    let input = match &body.input {
        Some(value) => value.to_string(),
        None => "{}".to_string(),
    };
    let task = Task {
        id: body.task.id,
        intent: body.task.intent,
        sensitivity,
        environment: body.task.environment,
        requester: principal.name.clone(),
    };
    if let Some(cluster) = api.queue.get() {
        // Refused here, as a local run would be, before taking a slot anywhere.
        if let Some(refusal) = record.refusal() {
            return Err(crate::Error::Admission(refusal).into());
        }
        let _slot = api.slot(&principal.name)?;
        let wait = limits.deadline.saturating_add(Duration::from_secs(30));
        let run = crate::cluster::QueuedRun {
            id: format!("{:032x}", rand::random::<u128>()),
            digest,
            input,
            task,
            limits,
        };
        return match cluster.queue_run(&run, wait).await? {
            // Every delivery found its node full: the caller's retry, as
            // for a local run.
            crate::cluster::RunOutcome::Done { report, .. }
                if crate::audit::field(&report, &["status"]) == "busy" =>
            {
                Err(ApiError::busy(format!(
                    "run {} did not start: {} (the cluster's queue found no node with a free slot)",
                    crate::audit::field(&report, &["instance"]),
                    crate::audit::field(&report, &["error", "message"]),
                )))
            }
            crate::cluster::RunOutcome::Done { report, .. } => Ok(Json(report).into_response()),
            crate::cluster::RunOutcome::Failed { reason } => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "run_not_completed",
                reason,
            )),
        };
    }
    let report = run_skill(&api, &principal, digest, input, task, limits).await?;
    Ok(Json(report).into_response())
}

/// Run an approved skill for `principal`, within a run slot. Dropping the
/// future (the client went away) drops the run with it: the instance is
/// cancelled, its credentials revoked and its end recorded.
pub(super) async fn run_skill(
    api: &Arc<Api>,
    principal: &Principal,
    digest: SkillDigest,
    input: String,
    task: Task,
    limits: crate::limits::Limits,
) -> Result<RunReport, ApiError> {
    let request = RunRequest {
        input,
        subject: Subject {
            instance: String::new(),
            // Name, agent and trust come from the skill's admission record.
            skill: SkillIdentity::default(),
            agent: AgentIdentity::default(),
            task,
            delegation: Default::default(),
        },
        limits,
        session: None,
        ledger: None,
        stop: None,
    };
    let _slot = api.slot(&principal.name)?;
    let counted = api.metrics.run();
    match api.node().run_admitted(digest, request).await {
        Ok(report) => {
            counted.ended(&report);
            // Nothing ran: the caller's retry, not a result.
            if report.status == RunStatus::Busy {
                let why = report.error.map(|e| e.message).unwrap_or_default();
                return Err(ApiError::busy(format!(
                    "run {} did not start: {why}",
                    report.instance
                )));
            }
            Ok(report)
        }
        Err(e) => {
            counted.refused();
            Err(e.into())
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    skill: Option<String>,
    instance: Option<String>,
    task: Option<String>,
    /// `allow` or `deny`: call records with that verdict.
    decision: Option<String>,
    /// Only records after this sequence number (for paging).
    #[serde(default)]
    after: u64,
    /// At most this many records (default 100, at most 1000).
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
struct AuditPage {
    /// Records: `seq`, `at`, the event (`kind` and its fields) and the chain hashes.
    #[schema(value_type = Vec<Object>)]
    records: Vec<Record>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<u64>,
}

fn audit_log(api: &Api) -> Result<Arc<crate::audit::AuditLog>, ApiError> {
    api.node()
        .services()
        .audit
        .clone()
        .ok_or_else(|| ApiError::not_found("this server keeps no audit log"))
}

/// One page of the records after `after` that `filter` matches, read in
/// memory bounded by the page, however long the log.
fn audit_page(
    path: &std::path::Path,
    filter: &crate::audit::Filter,
    after: u64,
    limit: usize,
) -> Result<AuditPage, crate::Error> {
    use std::io::{Seek, SeekFrom};

    use crate::audit::RawLine;
    let io = |e| crate::Error::io(format!("reading the audit log `{}`", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let start = crate::audit::offset_after(&mut file, len, after).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut lines =
        crate::audit::LineReader::new(std::io::BufReader::with_capacity(64 << 10, file));
    let mut records = Vec::new();
    let mut next = None;
    // Torn (still being written) or foreign lines are left out; `airlock
    // audit verify` is where they are reported.
    while let Some(raw) = lines.next_line().map_err(io)? {
        let RawLine::Whole(line) = raw else {
            continue;
        };
        if crate::audit::seq_of(line).is_some_and(|seq| seq <= after) {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Record>(line) else {
            continue;
        };
        if record.seq <= after || !filter.matches(&record.event) {
            continue;
        }
        if records.len() == limit {
            next = records.last().map(|r: &Record| r.seq);
            break;
        }
        records.push(record);
    }
    Ok(AuditPage { records, next })
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, description = "A page of records", body = AuditPage), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn audit(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    api.authorize(&principal, ControlAction::Audit, None)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = crate::audit::Filter {
        skill: q.skill,
        instance: q.instance,
        task: q.task,
        decision: q.decision,
    };
    let log = audit_log(&api)?;
    let page = tokio::task::spawn_blocking(move || audit_page(log.path(), &filter, q.after, limit))
        .await
        .map_err(|e| crate::Error::Engine(e.to_string()))??;
    Ok(Json(page))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    format: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", params(ExportQuery), responses((status = 200, description = "OCSF API Activity events, one JSON object per line", body = String, content_type = "application/x-ndjson"), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn audit_export(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&principal, ControlAction::Audit, None)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    if q.format.as_deref().is_some_and(|f| f != "ocsf") {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the export format is `ocsf` (OCSF API Activity, JSON lines)",
        ));
    }
    let log = audit_log(&api)?;
    let lines = crate::audit::read_lines(log.path())?;
    // Streamed a chunk at a time, each read on a blocking thread only when
    // the client asks for it: the response never holds the whole log, and a
    // client that stops reading holds no thread.
    let body = futures_util::stream::unfold(Some(lines), |lines| async move {
        let lines = lines?;
        match tokio::task::spawn_blocking(move || export_chunk(lines)).await {
            Ok((chunk, lines)) => chunk.map(|chunk| (chunk, lines)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The next chunk of the log's records as OCSF events (blocking), and the
/// reader to go on with; no chunk at the end, no reader after the last one
/// or an error.
fn export_chunk<R: std::io::BufRead>(
    mut lines: crate::audit::LineReader<R>,
) -> (
    Option<std::io::Result<Vec<u8>>>,
    Option<crate::audit::LineReader<R>>,
) {
    const CHUNK: usize = 64 << 10;
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        match lines.next_line() {
            Ok(Some(raw)) => {
                let Some(record) = raw.record() else {
                    continue;
                };
                if let Some(event) = crate::audit::ocsf::event(&record)
                    && serde_json::to_writer(&mut chunk, &event).is_ok()
                {
                    chunk.push(b'\n');
                }
                if chunk.len() >= CHUNK {
                    return (Some(Ok(chunk)), Some(lines));
                }
            }
            Ok(None) if chunk.is_empty() => return (None, None),
            Ok(None) => return (Some(Ok(chunk)), None),
            Err(e) => {
                tracing::warn!(error = %e, "reading the audit log for an export failed");
                return (Some(Err(e)), None);
            }
        }
    }
}

#[derive(Serialize, ToSchema)]
struct Verified {
    ok: bool,
    records: u64,
    /// The first bad line and what is wrong with it.
    problem: Option<Problem>,
}

#[derive(Serialize, ToSchema)]
struct Problem {
    line: u64,
    reason: String,
}

#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", responses((status = 200, description = "Whether the hash chain and checkpoints verify", body = Verified), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No valid API key", body = ErrorBody), (status = 403, description = "Refused by the control-plane policies", body = ErrorBody)))]
async fn audit_verify(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Verified>, ApiError> {
    api.authorize(&principal, ControlAction::Audit, None)?;
    let Some(log) = api.node().services().audit.clone() else {
        return Err(ApiError::not_found("this server keeps no audit log"));
    };
    let issuer = api.node().issuer().clone();
    let found =
        tokio::task::spawn_blocking(move || crate::audit::verify(log.path(), issuer.keys()))
            .await
            .map_err(|e| crate::Error::Engine(e.to_string()))??;
    Ok(Json(Verified {
        ok: found.problem.is_none(),
        records: found.records,
        problem: found.problem.map(|(line, reason)| Problem { line, reason }),
    }))
}
