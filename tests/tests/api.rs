//! `airlock serve` end to end: a real HTTP client against the API on
//! 127.0.0.1:0. Every endpoint, every refusal of authentication and
//! authorization, and bad input answered with a stable code.

use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::api::{Api, new_key};
use airlock_tests::{TestNode, skills, wasm};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

/// Principals and their keys.
struct Keys {
    submitter: String,
    reviewer: String,
    runner: String,
    auditor: String,
    /// Submitter and reviewer at once.
    both: String,
    /// Runner and reviewer of another tenant.
    red: String,
}

struct Server {
    base: String,
    client: reqwest::Client,
    keys: Keys,
    node: TestNode,
}

fn stanza(principal: &str, roles: &[&str], tenant: &str, hash: &str) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[[api.keys]]\nprincipal = \"{principal}\"\nroles = [{}]\ntenant = \"{tenant}\"\nhash = \"{hash}\"\n",
        roles.join(", ")
    )
}

async fn server(extra: &str) -> Server {
    server_on(extra, None).await
}

/// A server on `engine` instead of the tests' shared one.
async fn server_on(extra: &str, engine: Option<Arc<airlock_runtime::engine::Engine>>) -> Server {
    let mut config = String::from(extra);
    let mut key = |principal: &str, roles: &[&str]| {
        let (key, hash) = new_key();
        let (principal, tenant) = principal.split_once('@').unwrap_or((principal, "default"));
        config.push_str(&stanza(principal, roles, tenant, &hash));
        key
    };
    let keys = Keys {
        submitter: key("orchestrator", &["submitter"]),
        reviewer: key("reviewer", &["reviewer"]),
        runner: key("runner", &["runner"]),
        auditor: key("auditor", &["auditor"]),
        both: key("alice", &["submitter", "reviewer"]),
        red: key("mallory@red", &["runner", "reviewer"]),
    };
    let policies = [("allow.cedar", "permit(principal, action, resource);")];
    let node = match engine {
        Some(engine) => TestNode::with_engine(&config, &policies, None, engine),
        None => TestNode::new(&config, &policies),
    };
    let api = Api::new(node.node.clone(), node.node.config().api.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let router = airlock_runtime::api::router(api);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        keys,
        node,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn submit(&self, key: &str, path: &str, metadata: Value) -> (StatusCode, Value) {
        let form = Form::new()
            .part(
                "metadata",
                Part::text(metadata.to_string())
                    .mime_str("application/json")
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .part("component", Part::bytes(wasm(path)).file_name("skill.wasm"));
        let response = self
            .client
            .post(self.url("/v1/skills"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        answer(response).await
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        answer(response).await
    }

    async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        answer(response).await
    }

    /// Admitted by the submitter and approved by the reviewer.
    async fn approved(&self, path: &str) -> String {
        let (status, body) = self
            .submit(&self.keys.submitter, path, metadata("skill"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let digest = body["digest"].as_str().unwrap_or_default().to_string();
        let (status, body) = self
            .post(
                &self.keys.reviewer,
                &format!("/v1/skills/{digest}/approve"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        digest
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn metadata(name: &str) -> Value {
    json!({"name": name, "agent": "planner", "trust": "medium", "description": "says hello"})
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn no_request_without_a_valid_key_reaches_a_handler() {
    let s = server("").await;
    for (method, path) in [
        ("GET", "/v1/skills"),
        ("POST", "/v1/skills"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/audit/verify"),
        ("POST", "/oauth2/introspect"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/mcp"),
        ("GET", "/v1/no-such-endpoint"),
    ] {
        let url = s.url(path);
        let request = match method {
            "GET" => s.client.get(&url),
            _ => s.client.post(&url),
        };
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
        let (status, body) = answer(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert_eq!(code(&body), "unauthenticated");

        let request = match method {
            "GET" => s.client.get(&url),
            _ => s.client.post(&url),
        };
        let response = request
            .bearer_auth("airlock_not-a-key")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (status, body) = answer(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert_eq!(body["error"]["message"], "the API key is not valid");
    }
    // What is public: health, and what relying parties need to verify tokens.
    for path in [
        "/healthz",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    ] {
        let response = s
            .client
            .get(s.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_even_with_a_key() {
    let s = server("").await;
    // DNS rebinding: the browser sends the attacker's name.
    let response = s
        .client
        .get(s.url("/v1/skills"))
        .header("host", "evil.example:8480")
        .bearer_auth(&s.keys.runner)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(code(&body), "host_not_allowed");
    let response = s
        .client
        .get(s.url("/healthz"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    let (status, _) = s.get(&s.keys.runner, "/v1/skills").await;
    assert_eq!(status, StatusCode::OK);
    // The scheme is case-insensitive.
    let response = s
        .client
        .get(s.url("/v1/skills"))
        .header("authorization", format!("bEaReR {}", s.keys.runner))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = s.get(&s.keys.runner, "/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "not_found");
}

#[tokio::test]
async fn a_skill_is_submitted_reviewed_and_run_by_the_roles_that_may() {
    let s = server("").await;
    // Only a submitter submits.
    let (status, body) = s
        .submit(&s.keys.runner, skills::HELLO, metadata("hello"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "forbidden");
    assert_eq!(
        body["error"]["message"],
        "`runner` may not `submit` the server: no policy permits it for roles [runner] in tenant `default`"
    );

    let (status, body) = s
        .submit(&s.keys.submitter, skills::HELLO, metadata("hello"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let digest = body["digest"].as_str().unwrap_or_default().to_string();
    assert_eq!(digest.len(), 64);
    assert_eq!(body["new"], true);
    assert_eq!(body["skill"]["state"], "pending");
    assert_eq!(body["skill"]["submitter"], "orchestrator");
    assert!(body["capabilities"].is_array(), "{body}");
    // The same bytes again: the same skill, not a new one.
    let (status, body) = s
        .submit(&s.keys.submitter, skills::HELLO, metadata("hello"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["new"], false);

    let run = json!({"skill": digest, "input": {"name": "Ada"}, "task": {"id": "t-1", "intent": "greet"}});
    // Pending: not runnable.
    let (status, body) = s.post(&s.keys.runner, "/v1/runs", run.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "refused");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("pending"),
        "{body}"
    );

    // Neither a runner nor the submitter approves.
    let approve = format!("/v1/skills/{digest}/approve");
    let (status, body) = s.post(&s.keys.runner, &approve, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = s.post(&s.keys.both, &approve, json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "alice did not submit this one: {body}"
    );
    let (status, body) = s
        .submit(&s.keys.both, skills::WORD_COUNT, metadata("wc"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let own = body["digest"].as_str().unwrap_or_default().to_string();
    let (status, body) = s
        .post(
            &s.keys.both,
            &format!("/v1/skills/{own}/approve"),
            json!({}),
        )
        .await;
    // Refused by the control-plane policy, which the refusal names.
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`approve`") && message.contains("control/no-self-approval"),
        "{body}"
    );

    // Approved: it runs, and only for a runner.
    let (status, body) = s.post(&s.keys.submitter, "/v1/runs", run.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = s.post(&s.keys.runner, "/v1/runs", run).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert!(
        body["output"].as_str().unwrap_or_default().contains("Ada"),
        "{body}"
    );
    assert!(body["usage"]["duration_us"].as_u64().is_some(), "{body}");

    let (status, body) = s.get(&s.keys.runner, "/v1/skills").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    let (status, body) = s
        .get(&s.keys.auditor, &format!("/v1/skills/{digest}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "approved");
    assert_eq!(body["reviewer"], "alice");
}

#[tokio::test]
async fn quarantine_and_revoke_need_a_reviewer_and_a_reason() {
    let s = server("").await;
    let digest = s.approved(skills::HELLO).await;
    let quarantine = format!("/v1/skills/{digest}/quarantine");
    let (status, body) = s
        .post(&s.keys.submitter, &quarantine, json!({"reason": "x"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = s.post(&s.keys.reviewer, &quarantine, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_request");
    let (status, body) = s
        .post(
            &s.keys.reviewer,
            &quarantine,
            json!({"reason": "exfiltrates"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "quarantined");
    let (status, body) = s
        .post(&s.keys.runner, "/v1/runs", json!({"skill": digest}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exfiltrates"),
        "{body}"
    );
    let (status, body) = s
        .post(
            &s.keys.reviewer,
            &format!("/v1/skills/{digest}/revoke"),
            json!({"reason": "for good"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_no_internal_detail() {
    let s = server("[api]\nmax_body = 200000\n").await;
    let digest = s.approved(skills::HELLO).await;
    let send = |body: String| {
        s.client
            .post(s.url("/v1/runs"))
            .bearer_auth(&s.keys.runner)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        ("{\"skill\": ", StatusCode::BAD_REQUEST, "malformed_json"),
        (
            &*format!("{{\"skill\": \"{digest}\", \"colour\": 1}}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &*format!(
                "{{\"skill\": \"{digest}\", \"input\": {}1{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "{\"skill\": \"abc\"}",
            StatusCode::BAD_REQUEST,
            "invalid_digest",
        ),
        (
            &*format!("{{\"skill\": \"{}\"}}", "z".repeat(64)),
            StatusCode::BAD_REQUEST,
            "invalid_digest",
        ),
        (
            &*format!("{{\"skill\": \"{}\"}}", "0".repeat(64)),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            &*format!("{{\"skill\": \"{digest}\", \"task\": {{\"sensitivity\": \"cosmic\"}}}}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    let data_dir = s.node.dir.path().display().to_string();
    for (body, want_status, want_code) in cases {
        let response = send(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (status, reply) = answer(response).await;
        assert_eq!(
            status,
            want_status,
            "{}: {reply}",
            &body[..body.len().min(80)]
        );
        assert_eq!(code(&reply), want_code, "{reply}");
        assert!(!reply.to_string().contains(&data_dir), "{reply}");
    }
    // Oversized: refused on the declared length, before the body is read.
    let (status, reply) = {
        let response = send(format!(
            "{{\"skill\": \"{digest}\", \"input\": \"{}\"}}",
            "a".repeat(300_000)
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        answer(response).await
    };
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    assert_eq!(code(&reply), "body_too_large");
    // Not JSON at all.
    let response = s
        .client
        .post(s.url("/v1/runs"))
        .bearer_auth(&s.keys.runner)
        .body("skill=x")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, reply) = answer(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{reply}");
    // A path that is not a digest.
    let (status, reply) = s.get(&s.keys.runner, "/v1/skills/..%2F..%2Fetc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(code(&reply), "invalid_digest");
    // A submission without its component, and one that is not a component.
    let form = Form::new().part("metadata", Part::text(metadata("x").to_string()));
    let response = s
        .client
        .post(s.url("/v1/skills"))
        .bearer_auth(&s.keys.submitter)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, reply) = answer(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let form = Form::new()
        .part("metadata", Part::text(metadata("x").to_string()))
        .part("component", Part::bytes(b"\0asm not really".to_vec()));
    let response = s
        .client
        .post(s.url("/v1/skills"))
        .bearer_auth(&s.keys.submitter)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, reply) = answer(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(code(&reply), "skill_rejected");
    assert!(!reply.to_string().contains(&data_dir), "{reply}");
    // Metadata every backend would keep for the skill's life: bounded.
    let long = "n".repeat(129);
    let mut described = metadata("described");
    described["description"] = json!("d".repeat(5000));
    let mut schema = metadata("schema");
    schema["input_schema"] = json!({"enum": vec!["x".repeat(1000); 70]});
    for (sent, what) in [
        (metadata(&long), "name is 129 bytes"),
        (described, "description is 5000 bytes"),
        (schema, "input schema is"),
    ] {
        let (status, reply) = s.submit(&s.keys.submitter, skills::HELLO, sent).await;
        assert_eq!(status, StatusCode::CONFLICT, "{reply}");
        assert_eq!(code(&reply), "refused");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "{reply}");
        assert!(message.contains("over the bound"), "{reply}");
    }
}

#[tokio::test]
async fn runs_beyond_a_principals_limit_get_429_with_retry_after() {
    let s = server("[api]\nmax_runs_per_principal = 1\n").await;
    let digest = s.approved(skills::INFINITE_LOOP).await;
    let slow = json!({"skill": digest, "limits": {"deadline_ms": 1500}});
    let s = Arc::new(s);
    let first = {
        let s = s.clone();
        let slow = slow.clone();
        tokio::spawn(async move { s.post(&s.keys.runner, "/v1/runs", slow).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = s
        .client
        .post(s.url("/v1/runs"))
        .bearer_auth(&s.keys.runner)
        .json(&slow)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "too_many_requests");
    let (status, body) = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["status"], "limit",
        "bounded by the deadline asked for: {body}"
    );
    // The slot is free again.
    let (status, body) = s.get(&s.keys.runner, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["runs_in_progress"], 0);
}

/// With `max_runs` runs in progress, one of them calls a tool: the tool
/// runs in a slot kept for tool calls, on a pool sized as `airlock serve`
/// sizes it. Without slots kept, the same call finds the pool full.
#[tokio::test]
async fn tool_calls_find_a_slot_while_every_run_slot_is_taken() {
    let hello = airlock_runtime::digest::SkillDigest::of(&wasm(skills::HELLO));
    for tool_slots in [1, 0] {
        let config = format!(
            "[api]\nmax_runs = 2\ntool_slots = {tool_slots}\n[tools.greet]\ndigest = \"{hello}\"\nrisk = \"low\"\n"
        );
        let api = airlock_runtime::api::ApiConfig {
            max_runs: 2,
            tool_slots,
            ..Default::default()
        };
        let engine = airlock_runtime::engine::Engine::new(airlock_runtime::engine::EngineConfig {
            max_instances: api.instance_slots(false),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let s = Arc::new(server_on(&config, Some(Arc::new(engine))).await);
        s.approved(skills::HELLO).await;
        let probe = s.approved(skills::CAPABILITY_PROBE).await;
        let sleeper = {
            let s = s.clone();
            let body =
                json!({"skill": probe, "input": {"calls": [{"op": "sleep", "count": 1500}]}});
            tokio::spawn(async move { s.post(&s.keys.runner, "/v1/runs", body).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let call = json!({"calls": [{"op": "tools.invoke", "name": "greet", "input": "{\"name\":\"Tool\"}"}]});
        let (status, body) = s
            .post(
                &s.keys.runner,
                "/v1/runs",
                json!({"skill": probe, "input": call}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let output = body["output"].as_str().unwrap_or_default();
        if tool_slots == 1 {
            assert!(output.contains("hello, Tool"), "{body}");
        } else {
            assert!(output.contains("at capacity"), "{body}");
        }
        let (status, body) = sleeper.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("ok")),
            "{body}"
        );
    }
}

/// Exports whose clients stop reading hold no thread of the server's:
/// on a runtime with two blocking threads, three stalled exports still
/// leave room for the next audit request.
#[test]
fn exports_that_stall_do_not_starve_other_requests() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let s = server("").await;
        let log = s.node.node.services().audit.clone().unwrap();
        // Tens of megabytes of events: more than a stalled client's sockets
        // take in.
        let pad = "x".repeat(500);
        let events: Vec<Value> = (0..40_000)
            .map(|i| json!({"kind": "run.start", "instance": format!("i{i}"), "skill": pad}))
            .collect();
        log.append(&events).unwrap_or_else(|e| panic!("{e}"));
        let mut stalled = Vec::new();
        for _ in 0..3 {
            let response = s
                .client
                .get(s.url("/v1/audit/export"))
                .bearer_auth(&s.keys.auditor)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(response.status(), StatusCode::OK);
            // The headers are read; the body never is.
            stalled.push(response);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(15),
            s.get(&s.keys.auditor, "/v1/audit?limit=1"),
        )
        .await
        .unwrap_or_else(|_| panic!("an audit request waited behind stalled exports"));
        assert_eq!(status, StatusCode::OK, "{body}");
        drop(stalled);
    });
}

#[tokio::test]
async fn auditors_read_filter_page_verify_and_export_the_log() {
    let s = server("").await;
    let digest = s.approved(skills::HELLO).await;
    for task in ["t-1", "t-2"] {
        let (status, body) = s
            .post(
                &s.keys.runner,
                "/v1/runs",
                json!({"skill": digest, "task": {"id": task, "intent": "greet"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = s.get(&s.keys.runner, "/v1/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = s.get(&s.keys.auditor, "/v1/audit?task=t-2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = body["records"].as_array().cloned().unwrap_or_default();
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["event"]["task_id"] == "t-2"),
        "{body}"
    );
    // Paging: one at a time, in order, to the end.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (_, page) = s
            .get(&s.keys.auditor, &format!("/v1/audit?limit=1&after={after}"))
            .await;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        seen.extend(records.iter().filter_map(|r| r["seq"].as_u64()));
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert!(seen.len() > 4, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let (status, body) = s.get(&s.keys.auditor, "/v1/audit?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = s.get(&s.keys.auditor, "/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert!(body["records"].as_u64().unwrap_or_default() > 4);

    let text = export(&s).await;
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["class_uid"] == 6003), "{text}");

    // A log longer than one chunk of the streamed export, and than one
    // step of the bisection a deep page starts with.
    let log = s
        .node
        .node
        .services()
        .audit
        .clone()
        .unwrap_or_else(|| panic!("no log"));
    let padding = "p".repeat(500);
    let filler: Vec<Value> = (0..3000)
        .map(|n| json!({"kind": "call", "n": n, "pad": padding}))
        .collect();
    log.append(&filler).unwrap_or_else(|e| panic!("{e}"));
    let path = s.node.dir.path().join("data/audit/audit.jsonl");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    let total = written.lines().count() as u64;
    let (_, page) = s
        .get(
            &s.keys.auditor,
            &format!("/v1/audit?limit=2&after={}", total - 10),
        )
        .await;
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [total - 9, total - 8], "{page}");
    assert_eq!(page["next"], total - 8, "{page}");
    let expected = written
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r| airlock_runtime::audit::ocsf::event(r).is_some())
        .count();
    let text = export(&s).await;
    assert!(text.len() > 64 << 10);
    assert_eq!(text.lines().count(), expected);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );

    // Tampering shows through the API too.
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, log.replacen("t-1", "t-9", 1)).unwrap_or_else(|e| panic!("{e}"));
    let (_, body) = s.get(&s.keys.auditor, "/v1/audit/verify").await;
    assert_eq!(body["ok"], false, "{body}");
    assert!(body["problem"]["line"].as_u64().is_some(), "{body}");
}

/// The OCSF export, as an auditor reads it.
async fn export(s: &Server) -> String {
    let response = s
        .client
        .get(s.url("/v1/audit/export?format=ocsf"))
        .bearer_auth(&s.keys.auditor)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response.text().await.unwrap_or_default()
}

#[tokio::test]
async fn another_tenants_skills_cannot_be_seen_run_or_reviewed() {
    let s = server("").await;
    let digest = s.approved(skills::HELLO).await;
    let (status, body) = s.get(&s.keys.red, "/v1/skills").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]), "the list shows only the caller's tenant");
    // Another tenant's skill does not exist for the caller: the same 404 as
    // a digest nobody admitted, so not even its existence leaks.
    let (status, body) = s.get(&s.keys.red, &format!("/v1/skills/{digest}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("no admitted skill has digest {digest}")
    );
    for (path, payload) in [
        ("/v1/runs".to_string(), json!({"skill": digest})),
        (format!("/v1/skills/{digest}/approve"), json!({})),
        (
            format!("/v1/skills/{digest}/revoke"),
            json!({"reason": "sabotage"}),
        ),
    ] {
        let (status, body) = s.post(&s.keys.red, &path, payload).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(
            !body.to_string().contains("hello"),
            "{path}: the skill's name leaked: {body}"
        );
    }
    let (_, body) = s.get(&s.keys.runner, &format!("/v1/skills/{digest}")).await;
    assert_eq!(body["state"], "approved", "nothing changed: {body}");
    assert_eq!(body["tenant"], "default");
}

#[tokio::test]
async fn an_operators_control_policy_restricts_the_api() {
    let policies = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        policies.path().join("ops.cedar"),
        r#"@id("ops/no-low-trust-runs")
@reason("skills from low-trust agents are not run through the API")
forbid (principal, action == AirlockControl::Action::"run", resource)
when { resource.trust == "low" };"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let s = server(&format!(
        "[api]\npolicies = {:?}\n",
        policies.path().display().to_string()
    ))
    .await;
    let (status, body) = s
        .submit(
            &s.keys.submitter,
            skills::HELLO,
            json!({"name": "hello", "agent": "intern", "trust": "low"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let digest = body["digest"].as_str().unwrap_or_default().to_string();
    let (status, body) = s
        .post(
            &s.keys.reviewer,
            &format!("/v1/skills/{digest}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .post(&s.keys.runner, "/v1/runs", json!({"skill": digest}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ops/no-low-trust-runs: skills from low-trust agents"),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_count_runs_decisions_and_requests_for_auditors() {
    let s = server("").await;
    let digest = s.approved(skills::CAPABILITY_PROBE).await;
    let run = json!({"skill": digest, "input": {"calls": [{"op": "storage.get", "key": "k"}]}});
    let (status, body) = s.post(&s.keys.runner, "/v1/runs", run).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.get(&s.keys.runner, "/metrics").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let response = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&s.keys.auditor)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap_or_default();
    for line in [
        "airlock_runs_total{status=\"ok\"} 1",
        "airlock_run_duration_seconds_count 1",
        "airlock_decisions_total{action=\"storage.read\",verdict=\"allow\"} 1",
        "airlock_instances_live 0",
        "airlock_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/runs\",status=\"200\"} 1",
        "airlock_http_request_duration_seconds_count{method=\"GET\",route=\"/metrics\",status=\"403\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_run() {
    let s = server("").await;
    let digest = s.approved(skills::INFINITE_LOOP).await;
    let gone = s
        .client
        .post(s.url("/v1/runs"))
        .bearer_auth(&s.keys.runner)
        .json(&json!({"skill": digest, "limits": {"deadline_ms": 30000}}))
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    // The run ends long before its 30 s deadline, and is recorded.
    let mut ended = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, page) = s.get(&s.keys.auditor, "/v1/audit").await;
        ended = page["records"]
            .as_array()
            .map(|records| {
                records
                    .iter()
                    .filter(|r| r["event"]["kind"] == "run.end")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !ended.is_empty() {
            break;
        }
    }
    assert_eq!(ended.len(), 1, "no run.end for the dropped run");
    assert_eq!(ended[0]["event"]["status"], "cancelled", "{}", ended[0]);
    let (_, health) = s.get(&s.keys.runner, "/healthz").await;
    assert_eq!(health["runs_in_progress"], 0, "{health}");
}

#[tokio::test]
async fn submissions_beyond_max_admissions_get_429_while_one_is_read() {
    use tokio::io::AsyncWriteExt;
    let s = server("[api]\nmax_admissions = 1\n").await;
    let address = s.base.trim_start_matches("http://").to_string();
    // A submission whose body stops after its first bytes holds the one slot.
    let mut slow = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = format!(
        "POST /v1/skills HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n",
        s.keys.submitter
    );
    slow.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, reply) = s
        .submit(&s.keys.submitter, skills::HELLO, metadata("second"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");
    assert_eq!(code(&reply), "too_many_requests");
    assert!(reply.to_string().contains("api.max_admissions"), "{reply}");
    // The client goes away: its slot is free again.
    drop(slow);
    let mut last = (StatusCode::TOO_MANY_REQUESTS, Value::Null);
    for _ in 0..50 {
        last = s
            .submit(&s.keys.submitter, skills::HELLO, metadata("second"))
            .await;
        if last.0 != StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, StatusCode::CREATED, "{}", last.1);
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server("[api]\nbody_timeout = \"1s\"\n").await;
    let address = s.base.trim_start_matches("http://").to_string();
    for path in ["/v1/runs", "/mcp"] {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Accept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"skill\": ",
            s.keys.runner
        );
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || answer.ends_with(b"}}") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{path}: the server kept waiting for the body");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("\"body_timeout\""), "{path}: {answer}");
    }
}

/// The document a client can generate code from: every endpoint, each
/// answering where the document says, and the copy in docs/ current.
#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_is_current() {
    let s = server("").await;
    let (status, doc) = s.get(&s.keys.runner, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{doc}"
    );
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let public = path == "/healthz";
            assert_eq!(
                operation.get("security") == Some(&json!([{}])),
                public,
                "{method} {path}: only health is public"
            );
            assert!(
                operation["responses"]["200"].is_object()
                    || operation["responses"]["201"].is_object(),
                "{method} {path}"
            );
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "GET /healthz",
            "GET /metrics",
            "GET /v1/audit",
            "GET /v1/audit/export",
            "GET /v1/audit/verify",
            "GET /v1/skills",
            "GET /v1/skills/{digest}",
            "POST /v1/runs",
            "POST /v1/skills",
            "POST /v1/skills/{digest}/approve",
            "POST /v1/skills/{digest}/quarantine",
            "POST /v1/skills/{digest}/revoke",
        ]
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["RunBody"]["additionalProperties"], false,
        "{schemas}"
    );
    for name in [
        "RunReport",
        "SkillRecord",
        "ErrorBody",
        "AuditPage",
        "Admitted",
    ] {
        assert!(schemas[name].is_object(), "no schema {name}");
    }
    // Each documented operation is routed (the fallback says "no such endpoint").
    let zero = "0".repeat(64);
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap_or_default();
        let url = s.url(&path.replace("{digest}", &zero));
        let request = match method {
            "GET" => s.client.get(&url),
            _ => s.client.post(&url).json(&json!({})),
        };
        let response = request
            .bearer_auth(&s.keys.runner)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{operation}");
        assert!(!text.contains("no such endpoint"), "{operation}: {text}");
    }
    // docs/openapi.json is what the server serves (AIRLOCK_BLESS=1 rewrites it).
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let current = format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    );
    if std::env::var_os("AIRLOCK_BLESS").is_some() {
        std::fs::write(&committed, &current).unwrap_or_else(|e| panic!("{e}"));
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == current,
        "docs/openapi.json is out of date: run this test with AIRLOCK_BLESS=1"
    );
}
