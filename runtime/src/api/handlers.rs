//! The `/v1` endpoints.

use std::sync::Arc;
use std::time::Duration;

use airlock_host_apis::{AgentIdentity, Sensitivity, SkillIdentity, Subject, Task, Trust};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use airlock_policy::control::ControlAction;

use super::{Api, ApiError, Principal};
use crate::SkillDigest;
use crate::admission::{SkillRecord, Submission};
use crate::audit::Record;
use crate::run::RunRequest;

pub(super) fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/skills", get(list_skills).post(submit_skill))
        .route("/v1/skills/{digest}", get(get_skill))
        .route("/v1/skills/{digest}/approve", post(approve))
        .route("/v1/skills/{digest}/quarantine", post(quarantine))
        .route("/v1/skills/{digest}/revoke", post(revoke))
        .route("/v1/runs", post(run))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/metrics", get(metrics))
        .with_state(api)
}

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

fn record_or_404(api: &Api, digest: &SkillDigest) -> Result<SkillRecord, ApiError> {
    api.node()
        .skills()?
        .get(digest)?
        .ok_or_else(|| ApiError::not_found(format!("no admitted skill has digest {digest}")))
}

/// The skill, if the caller may do `action` to it.
fn skill_for(
    api: &Api,
    principal: &Principal,
    text: &str,
    action: ControlAction,
) -> Result<SkillRecord, ApiError> {
    let record = record_or_404(api, &digest(text)?)?;
    api.authorize(principal, action, Some(&record))?;
    Ok(record)
}

/// The skills the caller may read.
async fn list_skills(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<SkillRecord>>, ApiError> {
    api.authorize(&principal, ControlAction::List, None)?;
    let all = api.node().skills()?.list()?;
    Ok(Json(
        all.into_iter()
            .filter(|r| {
                api.authorize(&principal, ControlAction::Read, Some(r))
                    .is_ok()
            })
            .collect(),
    ))
}

async fn get_skill(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Path(text): Path<String>,
) -> Result<Json<SkillRecord>, ApiError> {
    Ok(Json(skill_for(
        &api,
        &principal,
        &text,
        ControlAction::Read,
    )?))
}

/// The `metadata` part of a submission.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// The agent that generated the skill.
    agent: String,
    trust: String,
    #[serde(default)]
    input_schema: Option<serde_json::Value>,
    /// A detached Ed25519 signature over the digest, base64.
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Serialize)]
struct Admitted {
    digest: SkillDigest,
    /// False when these bytes were admitted before.
    new: bool,
    capabilities: Vec<String>,
    imports: Vec<String>,
    skill: SkillRecord,
}

async fn submit_skill(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&principal, ControlAction::Submit, None)?;
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
    let (record, new) = api.node().admit(component.to_vec(), submission).await?;
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

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    /// How long the approval lasts, like `7d` or `12h` (default:
    /// `admission.default_expiry`).
    #[serde(default)]
    expires_in: Option<String>,
}

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
    let digest = skill_for(&api, &principal, &text, ControlAction::Approve)?.digest;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    reason: String,
}

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
    let digest = skill_for(&api, &principal, &text, action)?.digest;
    let node = api.node();
    let record = if to == crate::admission::State::Revoked {
        node.revoke(digest, &principal.name, &hold.reason).await?
    } else {
        node.quarantine(digest, &principal.name, &hold.reason)
            .await?
    };
    Ok(Json(record))
}

#[derive(Deserialize)]
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

#[derive(Default, Deserialize)]
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
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    deadline_ms: Option<u64>,
    memory: Option<u64>,
    output: Option<u64>,
    host_calls: Option<u64>,
}

async fn run(
    State(api): State<Arc<Api>>,
    Extension(principal): Extension<Principal>,
    Body(body): Body<RunBody>,
) -> Result<Response, ApiError> {
    let digest = skill_for(&api, &principal, &body.skill, ControlAction::Run)?.digest;
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
) -> Result<crate::run::RunReport, ApiError> {
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
            Ok(report)
        }
        Err(e) => {
            counted.refused();
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
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

#[derive(Serialize)]
struct AuditPage {
    records: Vec<Record>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<u64>,
}

fn audit_records(api: &Api) -> Result<Vec<Record>, ApiError> {
    let Some(log) = api.node().services().audit.clone() else {
        return Err(ApiError::not_found("this server keeps no audit log"));
    };
    let text = std::fs::read_to_string(log.path()).map_err(|e| {
        crate::Error::io(
            format!("reading the audit log `{}`", log.path().display()),
            e,
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Record>(line).ok())
        .collect())
}

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
    let api2 = api.clone();
    let records = tokio::task::spawn_blocking(move || audit_records(&api2))
        .await
        .map_err(|e| crate::Error::Engine(e.to_string()))??;
    let mut page = Vec::new();
    let mut next = None;
    for record in records.into_iter().filter(|r| r.seq > q.after) {
        if !filter.matches(&record.event) {
            continue;
        }
        if page.len() == limit {
            next = page.last().map(|r: &Record| r.seq);
            break;
        }
        page.push(record);
    }
    Ok(Json(AuditPage {
        records: page,
        next,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    format: Option<String>,
}

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
    let api2 = api.clone();
    let records = tokio::task::spawn_blocking(move || audit_records(&api2))
        .await
        .map_err(|e| crate::Error::Engine(e.to_string()))??;
    let mut out = String::new();
    for record in &records {
        if let Some(event) = crate::audit::ocsf::event(record) {
            out.push_str(&event.to_string());
            out.push('\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

#[derive(Serialize)]
struct Verified {
    ok: bool,
    records: u64,
    /// The first bad line and what is wrong with it.
    problem: Option<Problem>,
}

#[derive(Serialize)]
struct Problem {
    line: u64,
    reason: String,
}

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
