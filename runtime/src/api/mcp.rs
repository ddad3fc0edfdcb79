//! MCP: every approved skill the caller may run, as a tool.
//!
//! Served on stdio (`airlock mcp`, the caller fixed at start) and as
//! streamable HTTP at `/mcp` (behind the same Host check and API keys as the
//! rest; the caller is the key's principal, read from each request). A tool
//! call is a run whose intent is the tool's name and whose requester is the
//! caller; denials and limits come back as tool errors with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_host_apis::{Sensitivity, Task, Verdict};
use airlock_policy::control::ControlAction;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use super::{Api, ApiError, Principal};
use crate::admission::{SkillRecord, State};
use crate::run::{RunReport, RunStatus};

/// The MCP server: one per session (HTTP) or process (stdio).
#[derive(Clone)]
pub struct Tools {
    api: Arc<Api>,
    /// The caller on stdio; over HTTP, each request's key says.
    caller: Option<Principal>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("caller", &self.caller.as_ref().map(|p| &p.name))
            .finish_non_exhaustive()
    }
}

impl Tools {
    /// Tools for one local caller (`airlock mcp`).
    pub fn for_caller(api: Arc<Api>, caller: Principal) -> Self {
        Tools {
            api,
            caller: Some(caller),
        }
    }

    fn principal(&self, context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
        if let Some(caller) = &self.caller {
            return Ok(caller.clone());
        }
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            // The key check runs before the MCP service; this would be a bug.
            .ok_or_else(|| ErrorData::invalid_request("the request carries no principal", None))
    }

    /// Tool name -> skill, for the approved skills `principal` may run.
    /// A name shared by several skills gets each one's short digest.
    async fn runnable(
        &self,
        principal: &Principal,
    ) -> Result<Vec<(String, SkillRecord)>, ErrorData> {
        let store = self
            .api
            .node()
            .skills()
            .map_err(|e| internal(&e.into()))?
            .clone();
        let records = store.list().await.map_err(|e| internal(&e.into()))?;
        let mine: Vec<SkillRecord> = records
            .into_iter()
            .filter(|r| r.state == State::Approved)
            .filter(|r| {
                self.api
                    .authorize(principal, ControlAction::Run, Some(r))
                    .is_ok()
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for record in &mine {
            *counts.entry(tool_name(&record.name)).or_default() += 1;
        }
        let mut tools: Vec<(String, SkillRecord)> = mine
            .into_iter()
            .map(|record| {
                let base = tool_name(&record.name);
                let name = if counts.get(&base).copied().unwrap_or(0) > 1 {
                    format!("{base}-{}", record.digest.short())
                } else {
                    base
                };
                (name, record)
            })
            .collect();
        tools.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tools)
    }

    /// Serve `/mcp` over streamable HTTP.
    pub(crate) fn http_service(
        api: Arc<Api>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> StreamableHttpService<Tools, LocalSessionManager> {
        let max_body = usize::try_from(api.config().max_body).unwrap_or(usize::MAX);
        let config = StreamableHttpServerConfig::default()
            // The server's own guard checks Host against api.allowed_hosts.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(max_body)
            .with_cancellation_token(shutdown);
        StreamableHttpService::new(
            move || {
                Ok(Tools {
                    api: api.clone(),
                    caller: None,
                })
            },
            Arc::new(LocalSessionManager::default()),
            config,
        )
    }
}

/// Sessions by id, each with the principal that opened it: another key
/// presenting the id is told there is no such session. The oldest are
/// forgotten past a bound (rmcp ends idle sessions on its own).
#[derive(Debug, Default)]
pub(crate) struct SessionOwners {
    owners: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

const MAX_SESSIONS: usize = 10_000;

impl SessionOwners {
    fn bind(&mut self, id: &str, principal: &str) {
        if self.owners.contains_key(id) {
            return;
        }
        if self.order.len() >= MAX_SESSIONS
            && let Some(oldest) = self.order.pop_front()
        {
            self.owners.remove(&oldest);
        }
        self.owners.insert(id.to_string(), principal.to_string());
        self.order.push_back(id.to_string());
    }
}

/// Keep each MCP session to the principal that opened it.
pub(super) async fn bind_session(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let principal = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let presented = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &presented {
        let sessions = api
            .mcp_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions
            .owners
            .get(id)
            .is_some_and(|owner| *owner != principal)
        {
            return ApiError::not_found("no such MCP session").into_response();
        }
    }
    let response = next.run(request).await;
    if let Some(id) = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        api.mcp_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .bind(id, &principal);
    }
    response
}

/// MCP tool names are `[A-Za-z0-9_.-]{1,64}`: anything else becomes `_`.
fn tool_name(skill: &str) -> String {
    let mut name: String = skill
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if name.is_empty() {
        name.push_str("skill");
    }
    name
}

fn internal(e: &ApiError) -> ErrorData {
    ErrorData::internal_error(e.message.clone(), None)
}

fn tool_error(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

/// Each call policy denied (and that did not go ahead), in words.
fn denials(report: &RunReport) -> Vec<String> {
    report
        .decisions
        .iter()
        .filter(|call| call.decision.verdict == Verdict::Deny && !call.decision.proceeds())
        .map(|call| {
            let mut text = format!("`{}` on {} denied", call.action, call.resource);
            match call.decision.policies.as_slice() {
                [] => text.push_str(": no policy permits it"),
                ids => text.push_str(&format!(" by {}", ids.join(", "))),
            }
            if let Some(reason) = &call.decision.reason {
                text.push_str(&format!(" ({reason})"));
            }
            text
        })
        .collect()
}

/// The tool result of a run: a success only when the skill returned output
/// and policy denied nothing; otherwise an error saying what ended the run
/// and every denial.
fn result_of(report: RunReport) -> CallToolResponse {
    let denied = denials(&report);
    if report.status == RunStatus::Ok && denied.is_empty() {
        let output = report.output.unwrap_or_default();
        let mut result = CallToolResult::success(vec![ContentBlock::text(output.clone())]);
        if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_str(&output) {
            result.structured_content = Some(value);
        }
        return result.into();
    }
    let mut text = if report.status == RunStatus::Ok {
        "the skill finished, but policy denied calls it made".to_string()
    } else {
        let status = serde_json::to_value(report.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!(
            "the skill's run ended `{status}`: {}",
            report
                .error
                .as_ref()
                .map_or("no output", |e| e.message.as_str())
        )
    };
    for line in denied {
        text.push('\n');
        text.push_str(&line);
    }
    let mut content = vec![ContentBlock::text(text)];
    if let Some(output) = report.output {
        content.push(ContentBlock::text(output));
    }
    CallToolResult::error(content).into()
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is an approved Airlock skill, run in a WebAssembly sandbox under \
                 policy. Arguments are the skill's JSON input; a denied capability or a limit \
                 comes back as a tool error naming the policy or the limit.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal(&context)?;
        let tools = self
            .runnable(&principal)
            .await?
            .into_iter()
            .map(|(name, record)| {
                let schema: JsonObject = match &record.input_schema {
                    Some(serde_json::Value::Object(schema)) => schema.clone(),
                    _ => {
                        let mut any = JsonObject::new();
                        any.insert("type".into(), "object".into());
                        any
                    }
                };
                let description = record.description.clone().unwrap_or_else(|| {
                    format!(
                        "The Airlock skill `{}` ({}).",
                        record.name,
                        record.digest.short()
                    )
                });
                Tool::new(name, description, schema)
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let principal = self.principal(&context)?;
        let Some((name, record)) = self
            .runnable(&principal)
            .await?
            .into_iter()
            .find(|(name, _)| *name == request.name)
        else {
            return Err(ErrorData::invalid_params(
                format!(
                    "no tool `{}` (tools/list shows what you may run)",
                    airlock_host_apis::escape(&request.name, 64)
                ),
                None,
            ));
        };
        let input = serde_json::Value::Object(request.arguments.unwrap_or_default()).to_string();
        let task = Task {
            id: format!("mcp-{}", context.id),
            intent: name,
            sensitivity: Sensitivity::default(),
            environment: String::new(),
            requester: principal.name.clone(),
        };
        let limits = self.api.node().config().limits.clone();
        let run =
            super::handlers::run_skill(&self.api, &principal, record.digest, input, task, limits);
        // A cancelled request drops the run with it.
        let report = tokio::select! {
            report = run => report,
            () = context.ct.cancelled() => return Ok(tool_error("the call was cancelled".into())),
        };
        let report = match report {
            Ok(report) => report,
            Err(e) if e.status.is_client_error() => return Ok(tool_error(e.message)),
            Err(e) => return Err(internal(&e)),
        };
        Ok(result_of(report))
    }
}

#[cfg(test)]
mod tests {
    use super::tool_name;

    #[test]
    fn skill_names_become_valid_tool_names() {
        assert_eq!(tool_name("word-count"), "word-count");
        assert_eq!(tool_name("fetch weather/v2"), "fetch_weather_v2");
        assert_eq!(tool_name(""), "skill");
        assert_eq!(tool_name(&"x".repeat(100)).len(), 48);
    }
}
