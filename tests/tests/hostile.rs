//! Hostile skills against the engine's guards: each test asserts the exact
//! outcome, that nothing leaked, and that the host still runs `hello` after.

use std::time::{Duration, Instant};

use airlock_host_apis::Limit;
use airlock_runtime::run::{RunReport, RunStatus};
use airlock_runtime::{Error, Limits, Rejection};
use airlock_tests::{request, run, run_with, skills};
use serde_json::Value;

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
airlock_tests::foreach_hostile!(assert_test_exists);

fn limit_of(report: &RunReport) -> Option<Limit> {
    report.error.as_ref().and_then(|e| e.limit)
}

/// The host is still healthy: a well-behaved skill still runs.
async fn assert_host_healthy() {
    let report = run(skills::HELLO, r#"{"name":"after"}"#).await;
    assert_eq!(report.status, RunStatus::Ok, "{report:?}");
    assert_eq!(
        report.output.as_deref(),
        Some(r#"{"greeting":"hello, after"}"#)
    );
}

fn with_limits(path: &str, input: &str, limits: Limits) -> airlock_runtime::RunRequest {
    let mut req = request(airlock_tests::name_of(path), input);
    req.limits = limits;
    req
}

#[tokio::test]
async fn infinite_loop() {
    let limits = Limits {
        deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let started = Instant::now();
    let report = run_with(
        skills::INFINITE_LOOP,
        with_limits(skills::INFINITE_LOOP, "{}", limits),
        &Default::default(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::Deadline));
    let message = &report
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(message.contains("300ms"), "{message}");
    // Stopped promptly after its deadline, not at some later safety net.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_host_healthy().await;
}

#[tokio::test]
async fn memory_bomb() {
    let limits = Limits {
        memory: 16 << 20,
        ..Limits::default()
    };
    let report = run_with(
        skills::MEMORY_BOMB,
        with_limits(skills::MEMORY_BOMB, "{}", limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::Memory));
    assert!(
        report.usage.peak_memory_bytes <= 16 << 20,
        "{:?}",
        report.usage
    );
    assert!(
        report.usage.peak_memory_bytes > 8 << 20,
        "{:?}",
        report.usage
    );
    assert_host_healthy().await;
}

#[tokio::test]
async fn deep_recursion() {
    let report = run(skills::DEEP_RECURSION, "{}").await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::Stack));
    assert_host_healthy().await;
}

#[tokio::test]
async fn huge_output() {
    let report = run(skills::HUGE_OUTPUT, "{}").await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::Output));
    assert!(report.output.is_none());
    assert_host_healthy().await;
}

#[tokio::test]
async fn huge_stdout_is_bounded_and_counted_not_fatal() {
    let limits = Limits {
        log: 64 << 10,
        ..Limits::default()
    };
    let report = run_with(
        skills::HUGE_OUTPUT,
        with_limits(skills::HUGE_OUTPUT, r#""stdout""#, limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let kept: usize = report.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of logs");
    assert!(report.logs_dropped > 0);
    assert_eq!(report.logs.len() as u64 + report.logs_dropped, 8192);
}

#[tokio::test]
async fn ambient_probe() {
    let report = run(skills::AMBIENT_PROBE, "{}").await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let output = report.output.unwrap_or_default();
    let found: Value = serde_json::from_str(&output).unwrap_or_default();
    assert_eq!(found["env"], serde_json::json!([]), "{output}");
    assert_eq!(found["args"], serde_json::json!([]), "{output}");
    assert_eq!(found["created_file"], Value::Bool(false));
    assert_eq!(found["stdin_bytes"], serde_json::json!(0));
    let files = found["files"].as_object().cloned().unwrap_or_default();
    assert_eq!(files.len(), 10, "{output}");
    for (path, outcome) in files {
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("error"),
            "{path} was reachable: {outcome}"
        );
    }
    // Nothing of the host's environment appears anywhere.
    for (key, value) in std::env::vars() {
        if value.len() >= 6 {
            assert!(!output.contains(&value), "host variable {key} leaked");
        }
    }
    assert!(!std::path::Path::new("/tmp/airlock-escape").exists());
    assert_host_healthy().await;
}

#[tokio::test]
async fn raw_socket() {
    // Sockets are linked with every network use off: the connection fails
    // before a packet leaves, and no name resolves.
    let server = airlock_tests::server::TestServer::start().await;
    let input = format!("\"127.0.0.1:{}\"", server.addr.port());
    for (input, expected) in [
        (input.as_str(), "Permission denied"),
        ("\"example.com:80\"", "lookup"),
    ] {
        let report = run(skills::RAW_SOCKET, input).await;
        assert_eq!(report.status, RunStatus::SkillError, "{report:?}");
        let message = report.error.map(|e| e.message).unwrap_or_default();
        assert!(message.contains(expected), "{message}");
        assert!(
            report.decisions.is_empty(),
            "sockets never reach the broker"
        );
    }
    assert_eq!(server.connections(), 0);
    // An operator may refuse the import outright.
    let node = airlock_tests::TestNode::new("[admission]\nrefuse_socket_imports = true\n", &[]);
    match node
        .node
        .load(airlock_tests::wasm(skills::RAW_SOCKET))
        .await
    {
        Err(Error::Rejected(Rejection::ForbiddenImport { name, hint })) => {
            assert!(name.starts_with("wasi:sockets/"), "{name}");
            assert!(hint.contains("airlock:skill/http"), "{hint}");
        }
        other => panic!("expected a forbidden-import rejection, got {other:?}"),
    }
    assert_host_healthy().await;
}

#[tokio::test]
async fn capability_probe() {
    let calls = serde_json::json!({"calls": [
        {"op": "http.fetch", "url": "https://api.example.com/v1/items?q=1"},
        {"op": "wasi-http", "authority": "api.example.com", "path": "/v1"},
        {"op": "storage.get", "key": "reports/q3"},
        {"op": "storage.put", "key": "a", "value": "b"},
        {"op": "storage.delete", "key": "a"},
        {"op": "storage.list", "prefix": "r"},
        {"op": "secrets.mint", "name": "github", "audience": "api.github.com"},
        {"op": "tools.invoke", "name": "summarize", "input": "{}"},
    ]});
    let report = run(skills::CAPABILITY_PROBE, &calls.to_string()).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let output: Value =
        serde_json::from_str(&report.output.unwrap_or_default()).unwrap_or_default();
    let results = output["results"].as_array().cloned().unwrap_or_default();
    let expected = [
        "`http.request` on Host `api.example.com` denied",
        "",
        "`storage.read` on Object `capability_probe/reports/q3` denied",
        "`storage.write` on Object `capability_probe/a` denied",
        "`storage.delete` on Object `capability_probe/a` denied",
        "`storage.list` on Object `capability_probe/r` denied",
        "`secret.mint` on Secret `github` denied",
        "`tool.invoke` on Tool `summarize` denied",
    ];
    assert_eq!(results.len(), expected.len());
    for (result, want) in results.iter().zip(expected) {
        if want.is_empty() {
            // The standard wasi:http path: the guest sees the WASI error code.
            assert_eq!(
                result["message"], "ErrorCode::HttpRequestDenied",
                "{result}"
            );
            continue;
        }
        assert_eq!(result["error"], "denied", "{result}");
        let message = result["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(want), "{message}");
        assert!(message.contains("no policy permits it"), "{message}");
    }
    // Every call was decided and recorded, the standard path included.
    assert_eq!(report.decisions.len(), 8);
    assert!(
        report
            .decisions
            .iter()
            .all(|d| d.decision.verdict == airlock_host_apis::Verdict::Deny)
    );
    assert_eq!(report.usage.host_calls, 8);
    assert_host_healthy().await;
}

#[tokio::test]
async fn host_call_flood_ends_at_the_budget() {
    let calls: Vec<Value> = (0..50)
        .map(|i| serde_json::json!({"op": "storage.get", "key": format!("k{i}")}))
        .collect();
    let input = serde_json::json!({ "calls": calls }).to_string();
    let limits = Limits {
        host_calls: 20,
        ..Limits::default()
    };
    let report = run_with(
        skills::CAPABILITY_PROBE,
        with_limits(skills::CAPABILITY_PROBE, &input, limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::HostCalls));
    assert_eq!(report.decisions.len(), 20);
    assert_host_healthy().await;
}

#[tokio::test]
async fn handle_flood_ends_at_the_resource_table_cap() {
    let input = serde_json::json!({"calls": [{"op": "handles", "count": 100_000}]}).to_string();
    let limits = Limits {
        resource_table: 500,
        ..Limits::default()
    };
    let report = run_with(
        skills::CAPABILITY_PROBE,
        with_limits(skills::CAPABILITY_PROBE, &input, limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::ResourceTable));
    assert_host_healthy().await;
}

#[tokio::test]
async fn huge_host_call_argument_ends_at_the_hostcall_fuel() {
    let input = serde_json::json!({"calls": [{"op": "storage.put", "key": "k", "size": 4 << 20}]})
        .to_string();
    let limits = Limits {
        hostcall_fuel: 1 << 20,
        ..Limits::default()
    };
    let report = run_with(
        skills::CAPABILITY_PROBE,
        with_limits(skills::CAPABILITY_PROBE, &input, limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::HostcallFuel));
    assert!(
        report.decisions.is_empty(),
        "the call never reached the broker"
    );
    assert_host_healthy().await;
}

#[tokio::test]
async fn too_few_instances_allowed_is_named() {
    let limits = Limits {
        instances: 1,
        ..Limits::default()
    };
    let report = run_with(
        skills::HELLO,
        with_limits(skills::HELLO, "{}", limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::Instances));
    assert_host_healthy().await;
}

#[tokio::test]
async fn too_few_table_elements_allowed_is_named() {
    let limits = Limits {
        table_elements: 1,
        ..Limits::default()
    };
    let report = run_with(
        skills::HELLO,
        with_limits(skills::HELLO, "{}", limits),
        &Default::default(),
    )
    .await;
    assert_eq!(report.status, RunStatus::Limit, "{report:?}");
    assert_eq!(limit_of(&report), Some(Limit::TableElements));
    assert_host_healthy().await;
}

#[tokio::test]
async fn core_module_is_rejected() {
    // The smallest core module: magic and version 1.
    let core = b"\0asm\x01\0\0\0";
    match airlock_tests::engine().load(core) {
        Err(Error::Rejected(Rejection::CoreModule)) => {}
        other => panic!("{other:?}"),
    }
    assert_host_healthy().await;
}

#[tokio::test]
async fn truncated_component_is_rejected_as_malformed() {
    let bytes = airlock_tests::wasm(skills::HELLO);
    for cut in [9, bytes.len() / 3, bytes.len() - 1] {
        match airlock_tests::engine().load(&bytes[..cut]) {
            Err(Error::Rejected(Rejection::Malformed { detail })) => {
                assert!(!detail.is_empty());
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert_host_healthy().await;
}

/// A skill passes huge names, keys, paths and audiences, call after call:
/// each is refused as invalid before policy, and what the host keeps of it
/// (the call's record, for the report and the log) is cut short.
#[tokio::test]
async fn huge_call_arguments_are_refused_before_policy_and_kept_short() {
    let node =
        airlock_tests::TestNode::new("", &[("p.cedar", "permit(principal, action, resource);")]);
    let big = "k".repeat(100 << 10);
    let calls = serde_json::json!({"calls": [
        {"op": "storage.get", "key": big},
        {"op": "storage.delete", "key": format!("{big}x")},
        {"op": "http.fetch", "url": format!("https://api.example.com/{big}")},
        {"op": "secrets.mint", "name": "n", "audience": format!("https://{big}.example")},
        {"op": "tools.invoke", "name": big, "input": "{}"},
    ]});
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls.to_string(),
            airlock_host_apis::Trust::High,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let results = airlock_tests::results(&report);
    let expected = [
        "the key is 102400 bytes, over the limit of 1024",
        "the key is 102401 bytes, over the limit of 1024",
        "over the limit of 8192",
        "the audience is 102416 bytes, over the limit of 1024",
        "the tool name is 102400 bytes, over the limit of 256",
    ];
    assert_eq!(results.len(), expected.len());
    for (result, expected) in results.iter().zip(expected) {
        assert_eq!(result["error"], "invalid", "{result}");
        let message = result["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
    assert_eq!(report.decisions.len(), expected.len());
    for record in &report.decisions {
        let kept = serde_json::to_string(record).unwrap_or_default();
        assert!(kept.len() < 2048, "a record keeps {} bytes", kept.len());
    }
}
