//! MCP with a real client (the official Rust SDK): `airlock mcp` on stdio as
//! a child process, and the server's `/mcp` endpoint over streamable HTTP.

use std::sync::Arc;

use airlock_runtime::SkillDigest;
use airlock_runtime::admission::Submission;
use airlock_runtime::api::{Api, new_key};
use airlock_tests::{TestNode, skills, wasm};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};

async fn admit(node: &TestNode, path: &str, name: &str, schema: Option<Value>) -> SkillDigest {
    let submission = Submission {
        name: name.into(),
        description: Some(format!("{name}, for the MCP tests")),
        agent: "planner".into(),
        trust: airlock_host_apis::Trust::Medium,
        submitter: "orchestrator".into(),
        input_schema: schema,
        ..Submission::default()
    };
    let (record, _) = node
        .node
        .admit(wasm(path), submission)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    record.digest
}

async fn approve(node: &TestNode, digest: SkillDigest) {
    node.node
        .approve(digest, "reviewer", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn args(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The audit log's events, parsed.
fn audit(node: &TestNode) -> Vec<Value> {
    let path = node.dir.path().join("data/audit/audit.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<airlock_runtime::audit::Record>(l).ok())
        .map(|r| r.event)
        .collect()
}

/// Three skills: `hello` (approved, with an input schema), `probe` (approved;
/// its HTTP call is denied: no policy permits it), `wc` (pending).
async fn skills_node() -> TestNode {
    let node = TestNode::new("", &[]);
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}});
    let hello = admit(&node, skills::HELLO, "hello", Some(schema)).await;
    approve(&node, hello).await;
    let probe = admit(&node, skills::CAPABILITY_PROBE, "probe", None).await;
    approve(&node, probe).await;
    admit(&node, skills::WORD_COUNT, "wc", None).await;
    node
}

#[tokio::test]
async fn airlock_mcp_on_stdio_lists_approved_skills_and_runs_them_as_tools() {
    let node = skills_node().await;
    let data = node.dir.path().join("data");
    let policies = node.dir.path().join("policies");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock-under-test"));
    command
        .current_dir(node.dir.path())
        .arg("--data-dir")
        .arg(&data)
        .args(["mcp", "--as", "agent-x", "--policy"])
        .arg(&policies);
    let transport = TokioChildProcess::new(command).unwrap_or_else(|e| panic!("{e}"));
    let client = ().serve(transport).await.unwrap_or_else(|e| panic!("{e}"));
    let info = client
        .peer_info()
        .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone()));
    assert_eq!(info.as_deref(), Some("airlock"));

    let tools = client
        .list_tools(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["hello", "probe"], "pending skills are not tools");
    let hello = &tools.tools[0];
    assert_eq!(
        hello.description.as_deref(),
        Some("hello, for the MCP tests")
    );
    assert_eq!(
        hello.input_schema["properties"]["name"]["type"], "string",
        "{:?}",
        hello.input_schema
    );

    let result = client
        .call_tool(CallToolRequestParams::new("hello").with_arguments(args(json!({"name": "Ada"}))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert!(text(&result).contains("Ada"), "{result:?}");

    // A denial comes back as a tool error naming the action and resource.
    let result = client
        .call_tool(CallToolRequestParams::new("probe").with_arguments(args(
            json!({"calls": [{"op": "http.fetch", "url": "https://api.example.com/x"}]}),
        )))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.is_error, Some(true), "{result:?}");
    assert!(
        text(&result)
            .contains("`http.request` on Host `api.example.com` denied: no policy permits it"),
        "{}",
        text(&result)
    );

    // Not a tool: pending, or no such skill.
    for name in ["wc", "nothing"] {
        let refused = client
            .call_tool(CallToolRequestParams::new(name))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("no tool")),
            "{name}: {refused:?}"
        );
    }
    client.cancel().await.unwrap_or_else(|e| panic!("{e}"));

    // Each call is a run: intent is the tool's name, requester the client.
    let records = audit(&node);
    let starts: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "run.start")
        .collect();
    assert_eq!(starts.len(), 2, "{records:?}");
    for (start, tool) in starts.iter().zip(["hello", "probe"]) {
        assert_eq!(start["intent"], tool);
        assert_eq!(start["requester"], "agent-x");
    }
}

struct HttpServer {
    socket: String,
    /// The same server on TCP, for a plain HTTP client.
    tcp: String,
    runner: String,
    red: String,
    node: TestNode,
    _dir: tempfile::TempDir,
}

async fn http_server() -> HttpServer {
    let (runner, runner_hash) = new_key();
    let (red, red_hash) = new_key();
    let node = skills_node().await;
    let config = format!(
        "[[api.keys]]\nprincipal = \"runner\"\nroles = [\"runner\"]\nhash = \"{runner_hash}\"\n\
         [[api.keys]]\nprincipal = \"mallory\"\nroles = [\"runner\"]\ntenant = \"red\"\nhash = \"{red_hash}\"\n"
    );
    let api_config: airlock_runtime::Config =
        toml::from_str(&config).unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(node.node.clone(), api_config.api).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("airlock.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap_or_else(|e| panic!("{e}"));
    let router = airlock_runtime::api::router(Arc::clone(&api));
    let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tcp = format!(
        "http://{}",
        tcp_listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let tcp_router = router.clone();
    tokio::spawn(async move { axum::serve(tcp_listener, tcp_router).await });
    tokio::spawn(async move { axum::serve(listener, router).await });
    HttpServer {
        socket: socket.display().to_string(),
        tcp,
        runner,
        red,
        node,
        _dir: dir,
    }
}

impl HttpServer {
    async fn client(
        &self,
        key: Option<&str>,
    ) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ()>, String> {
        let mut config = StreamableHttpClientTransportConfig::with_uri("http://localhost/mcp");
        if let Some(key) = key {
            config = config.auth_header(key);
        }
        let transport =
            StreamableHttpClientTransport::from_unix_socket_with_config(&self.socket, config);
        ().serve(transport).await.map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn the_mcp_endpoint_needs_a_key_and_offers_only_the_callers_tools() {
    let s = http_server().await;
    let refused = s.client(None).await.err().unwrap_or_default();
    assert!(!refused.is_empty(), "no key, no session");
    let refused = s
        .client(Some("airlock_not-a-key"))
        .await
        .err()
        .unwrap_or_default();
    assert!(!refused.is_empty(), "a wrong key, no session");

    // Another tenant's principal sees no tools and runs none.
    let red = s
        .client(Some(&s.red))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tools = red
        .list_tools(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tools.tools.is_empty(), "{tools:?}");
    let refused = red
        .call_tool(CallToolRequestParams::new("hello"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(refused.is_some_and(|e| e.contains("no tool")));
    red.cancel().await.unwrap_or_else(|e| panic!("{e}"));

    let client = s
        .client(Some(&s.runner))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tools = client
        .list_tools(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["hello", "probe"]);
    let result = client
        .call_tool(
            CallToolRequestParams::new("hello").with_arguments(args(json!({"name": "Grace"}))),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert!(text(&result).contains("Grace"), "{result:?}");
    client.cancel().await.unwrap_or_else(|e| panic!("{e}"));

    let records = audit(&s.node);
    let start = records
        .iter()
        .find(|r| r["kind"] == "run.start")
        .unwrap_or_else(|| panic!("no run.start in {records:?}"));
    assert_eq!(start["requester"], "runner");
    assert_eq!(start["intent"], "hello");
}

#[tokio::test]
async fn an_mcp_session_answers_only_the_key_that_opened_it() {
    let s = http_server().await;
    let client = reqwest::Client::new();
    let post = |key: &str, session: Option<&str>, body: Value| {
        let mut request = client
            .post(format!("{}/mcp", s.tcp))
            .bearer_auth(key)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(id) = session {
            request = request
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-06-18");
        }
        request.send()
    };
    let opened = post(
        &s.runner,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"}}}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(opened.status().is_success(), "{}", opened.status());
    let id = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "no session id");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let stolen = post(&s.red, Some(&id), list.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stolen.status(), reqwest::StatusCode::NOT_FOUND);
    let body: Value = stolen.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let own = post(&s.runner, Some(&id), list)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(own.status(), reqwest::StatusCode::NOT_FOUND);
}
