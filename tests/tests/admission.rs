//! Admission and lifecycle on a node: only approved, unexpired skills run by
//! digest, as the agent they were admitted with; holding a skill stops its
//! running instances, here or from another process; a skill that keeps
//! being denied is quarantined on its own.

use std::time::Duration;

use airlock_host_apis::broker::CallRecord;
use airlock_runtime::LoadedSkill;
use airlock_runtime::admission::{State, Submission};
use airlock_runtime::run::{RunReport, RunStatus};
use airlock_runtime::{Error, SkillDigest, audit};
use airlock_tests::{TestNode, request, skills, wasm};
use base64::Engine as _;
use serde_json::{Value, json};

fn submission(name: &str) -> Submission {
    Submission {
        name: name.into(),
        agent: "planner".into(),
        trust: airlock_host_apis::Trust::Medium,
        submitter: "orchestrator".into(),
        ..Submission::default()
    }
}

async fn admit(node: &TestNode, path: &str) -> SkillDigest {
    let (record, fresh) = node
        .node
        .admit(wasm(path), submission(airlock_tests::name_of(path)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fresh);
    assert_eq!(record.state, State::Pending);
    record.digest
}

/// Policy that lets any skill call any tool.
const TOOL_INVOKE: &str = r#"
@id("test/tools")
permit (principal, action == Airlock::Action::"tool.invoke", resource);
"#;

async fn run(node: &TestNode, digest: SkillDigest, input: &str) -> Result<RunReport, Error> {
    node.node
        .run_admitted(digest, request("ignored", input))
        .await
}

fn refusal(result: Result<RunReport, Error>) -> String {
    match result {
        Ok(report) => panic!("ran: {:?}", report.status),
        Err(e) => e.to_string(),
    }
}

/// Every audit event of `kind`.
fn events(node: &TestNode, kind: &str) -> Vec<Value> {
    let path = node.dir.path().join("data/audit/audit.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<audit::Record>(l).ok())
        .map(|r| r.event)
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn only_an_approved_skill_runs_and_as_the_agent_it_was_admitted_with() {
    let node = TestNode::new("", &[]);
    let digest = admit(&node, skills::HELLO).await;
    let err = refusal(run(&node, digest, r#"{"name":"Ada"}"#).await);
    assert!(err.contains("pending review"), "{err}");

    let err = node
        .node
        .approve(digest, "orchestrator", None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("cannot approve it"), "{err}");

    node.node
        .approve(digest, "reviewer", Some(Duration::from_secs(3600)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = run(&node, digest, r#"{"name":"Ada"}"#)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.output.as_deref(),
        Some(r#"{"greeting":"hello, Ada"}"#)
    );

    let start = events(&node, "run.start");
    let start = start.last().unwrap_or_else(|| panic!("no run.start"));
    assert_eq!(start["digest"], digest.to_hex());
    assert_eq!(start["agent"], "planner");
    assert_eq!(start["trust"], "medium");
    assert_eq!(start["dev"], false);
    let kinds: Vec<Value> = ["skill.admit", "skill.approve"]
        .iter()
        .map(|k| events(&node, k).len().into())
        .collect();
    assert_eq!(kinds, vec![json!(1), json!(1)]);
}

#[tokio::test]
async fn an_expired_skill_is_refused() {
    let node = TestNode::new("", &[]);
    let digest = admit(&node, skills::HELLO).await;
    node.node
        .approve(digest, "reviewer", Some(Duration::from_millis(50)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = refusal(run(&node, digest, "{}").await);
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn a_flipped_byte_in_the_stored_component_is_refused_at_load() {
    let node = TestNode::new("", &[]);
    let digest = admit(&node, skills::HELLO).await;
    node.node
        .approve(digest, "reviewer", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let blob = node
        .dir
        .path()
        .join(format!("data/skills/blobs/{digest}.wasm"));
    let mut bytes = std::fs::read(&blob).unwrap_or_default();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap_or_else(|e| panic!("{e}"));
    // A process that has not loaded it yet reads it from disk: refused.
    let fresh = airlock_runtime::Node::new(
        airlock_runtime::Config::default(),
        airlock_runtime::NodeOptions {
            engine: airlock_runtime::EngineConfig {
                max_instances: 2,
                ..airlock_runtime::EngineConfig::default()
            },
            data_dir: Some(node.dir.path().join("data")),
            ..airlock_runtime::NodeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = match fresh.run_admitted(digest, request("ignored", "{}")).await {
        Ok(report) => panic!("ran: {:?}", report.status),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("has changed on disk"), "{err}");
}

#[tokio::test]
async fn admission_refuses_what_the_engine_would_refuse_and_stores_nothing() {
    let node = TestNode::new("[admission]\nrefuse_socket_imports = true\n", &[]);
    let err = node
        .node
        .admit(wasm(skills::RAW_SOCKET), submission("raw-socket"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("wasi:sockets"), "{err}");
    let err = node
        .node
        .admit(b"\0asm\x01\0\0\0".to_vec(), submission("core-module"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("not a component"), "{err}");
    let store = node.node.skills().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.list().await.map(|l| l.len()).ok(), Some(0));
    assert!(events(&node, "skill.admit").is_empty());
}

#[tokio::test]
async fn admission_records_what_the_skill_can_request() {
    let node = TestNode::new("", &[]);
    let (record, _) = node
        .node
        .admit(wasm(skills::CAPABILITY_PROBE), submission("probe"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for capability in ["http", "storage", "secrets", "tools"] {
        assert!(
            record.capabilities.iter().any(|c| c == capability),
            "{:?}",
            record.capabilities
        );
    }
    let (hello, _) = node
        .node
        .admit(wasm(skills::HELLO), submission("hello"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !hello.capabilities.iter().any(|c| c == "http"),
        "{:?}",
        hello.capabilities
    );
}

#[tokio::test]
async fn a_signature_from_a_trusted_key_can_be_required() {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let config = format!(
        "[admission]\nrequire_signature = true\n[admission.trusted_keys]\nrelease = \"{public}\"\n"
    );
    let node = TestNode::new(&config, &[]);
    let bytes = wasm(skills::HELLO);
    let err = node
        .node
        .admit(bytes.clone(), submission("hello"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("only signed skills"), "{err}");

    let digest = SkillDigest::of(&bytes);
    let forged = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).sign(digest.as_bytes());
    let mut signed = submission("hello");
    signed.signature = Some(forged.to_bytes().to_vec());
    let err = node
        .node
        .admit(bytes.clone(), signed.clone())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("does not verify"), "{err}");

    signed.signature = Some(key.sign(digest.as_bytes()).to_bytes().to_vec());
    let (record, _) = node
        .node
        .admit(bytes, signed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(record.signed_by.as_deref(), Some("release"));
}

/// Start a run of the probe that sleeps, in the background.
fn sleeping_run(
    node: &TestNode,
    digest: SkillDigest,
) -> tokio::task::JoinHandle<Result<RunReport, Error>> {
    let input = json!({"calls": [{"op": "sleep", "count": 20000}]}).to_string();
    let runner = node.node.clone();
    tokio::spawn(async move {
        runner
            .run_admitted(digest, request("ignored", &input))
            .await
    })
}

async fn approved_probe(node: &TestNode) -> SkillDigest {
    let digest = admit(node, skills::CAPABILITY_PROBE).await;
    node.node
        .approve(digest, "reviewer", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    digest
}

#[tokio::test]
async fn quarantining_a_skill_stops_its_running_instances() {
    let node = TestNode::new("", &[]);
    let digest = approved_probe(&node).await;
    let running = sleeping_run(&node, digest);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    node.node
        .quarantine(digest, "security", "it tried the metadata service")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = running
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.status, RunStatus::Stopped);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(
        message.contains("quarantined: it tried the metadata service"),
        "{message}"
    );
    assert!(node.node.vault().leases(&report.instance).is_empty());
    let err = refusal(run(&node, digest, "{}").await);
    assert!(err.contains("quarantined"), "{err}");
    let end = events(&node, "run.end");
    assert_eq!(
        end.last().map(|e| e["status"].clone()),
        Some(json!("stopped"))
    );
}

#[tokio::test]
async fn revoking_from_another_process_stops_running_instances() {
    let node = TestNode::new("", &[]);
    let digest = approved_probe(&node).await;
    let running = sleeping_run(&node, digest);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another process on the same data directory: its own store handle.
    let other = airlock_runtime::admission::SkillStore::open(&node.dir.path().join("data/skills"))
        .unwrap_or_else(|e| panic!("{e}"));
    other
        .revoke(&digest, "security", "leaked in a prompt")
        .unwrap_or_else(|e| panic!("{e}"));
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap_or_else(|_| panic!("the instance was not stopped"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.status, RunStatus::Stopped);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("revoked: leaked in a prompt"), "{message}");
}

#[tokio::test]
async fn repeated_denials_quarantine_a_skill_automatically() {
    let node = TestNode::new(
        "[admission]\nquarantine_after = 5\nquarantine_window = \"1m\"\n",
        &[],
    );
    let digest = approved_probe(&node).await;
    // No policy allows storage: each get is denied.
    let denied = json!({"calls": [
        {"op": "storage.get", "key": "a"},
        {"op": "storage.get", "key": "b"},
        {"op": "storage.get", "key": "c"},
    ]})
    .to_string();
    let first = run(&node, digest, &denied)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status, RunStatus::Ok);
    let store = node.node.skills().unwrap_or_else(|e| panic!("{e}"));
    let state = async |d| store.get(&d).await.ok().flatten().map(|r| r.state);
    assert_eq!(state(digest).await, Some(State::Approved), "3 of 5 so far");
    run(&node, digest, &denied)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(digest).await, Some(State::Quarantined));
    let record = store.get(&digest).await.ok().flatten();
    assert_eq!(
        record.and_then(|r| r.reason).as_deref(),
        Some("5 denied calls within 1m")
    );
    let quarantine = events(&node, "skill.quarantine");
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0]["automatic"], true);
    let err = refusal(run(&node, digest, &denied).await);
    assert!(err.contains("quarantined: 5 denied calls"), "{err}");
}

/// Policy allows the host, but it resolves inside: the host's own guard
/// refuses, and that is a denial like any other. It names the guard, and it
/// counts toward the automatic quarantine.
#[tokio::test]
async fn refusals_by_the_hosts_guards_are_denials_that_count_toward_quarantine() {
    let policies = r#"
@id("test/inside")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"inside.test");
"#;
    let resolver = std::sync::Arc::new(airlock_runtime::egress::StaticResolver::new([(
        "inside.test".to_string(),
        vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()],
    )]));
    let node = TestNode::with_resolver(
        "[admission]\nquarantine_after = 3\nquarantine_window = \"1m\"\n",
        &[("p.cedar", policies)],
        resolver,
    );
    let digest = approved_probe(&node).await;
    let fetch = json!({"op": "http.fetch", "url": "http://inside.test/"});
    let input = json!({"calls": [fetch, fetch]}).to_string();
    let report = run(&node, digest, &input)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let results = airlock_tests::results(&report);
    let error = results[0].to_string();
    assert!(
        error.contains(
            "`http.request` on Host `inside.test` denied by policy `guard:egress-address`"
        ),
        "{error}"
    );
    assert!(error.contains("10.1.2.3"), "{error}");
    let call = &report.decisions[0];
    assert_eq!(call.decision.verdict, airlock_host_apis::Verdict::Deny);
    assert_eq!(call.decision.policies, ["guard:egress-address"]);
    assert_eq!(call.outcome, airlock_host_apis::broker::Outcome::Denied);
    let recorded = events(&node, "call");
    assert_eq!(
        recorded[0]["decision"]["policies"][0],
        "guard:egress-address"
    );
    assert_eq!(recorded[0]["outcome"]["status"], "denied");

    let store = node.node.skills().unwrap_or_else(|e| panic!("{e}"));
    let state = async |d| store.get(&d).await.ok().flatten().map(|r| r.state);
    assert_eq!(state(digest).await, Some(State::Approved), "2 of 3 so far");
    run(&node, digest, &input)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(digest).await, Some(State::Quarantined));
}

#[tokio::test]
async fn a_tool_by_digest_runs_only_while_its_skill_is_approved() {
    let hello = SkillDigest::of(&wasm(skills::HELLO));
    let config = format!("[tools.greet]\ndigest = \"{hello}\"\nrisk = \"low\"\n");
    let node = TestNode::new(&config, &[("p.cedar", TOOL_INVOKE)]);
    let caller = approved_probe(&node).await;
    let invoke =
        json!({"calls": [{"op": "tools.invoke", "name": "greet", "input": "{\"name\":\"Tool\"}"}]})
            .to_string();
    let result = |report: RunReport| airlock_tests::results(&report)[0].clone();

    // Not admitted yet.
    let report = run(&node, caller, &invoke)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = result(report);
    assert!(first.to_string().contains("tool `greet`"), "{first}");
    assert!(!first.to_string().contains("hello, Tool"), "{first}");

    admit(&node, skills::HELLO).await;
    node.node
        .approve(hello, "reviewer", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = run(&node, caller, &invoke)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ok = result(report);
    assert!(ok.to_string().contains("hello, Tool"), "{ok}");

    // Quarantined: refused at the next invocation, though already loaded.
    node.node
        .quarantine(hello, "security", "under review")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = run(&node, caller, &invoke)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let held = result(report);
    assert!(
        held.to_string().contains("quarantined: under review"),
        "{held}"
    );
}

/// A node whose tool `inner` is the probe by digest, approved, quarantined
/// after 3 denials; and a developer's file to call it from, so that only the
/// tool is an admitted skill.
async fn inner_tool(policies: &str) -> (TestNode, SkillDigest, std::sync::Arc<LoadedSkill>) {
    let probe = SkillDigest::of(&wasm(skills::CAPABILITY_PROBE));
    let config = format!(
        "[admission]\nquarantine_after = 3\nquarantine_window = \"1m\"\n\
         [tools.inner]\ndigest = \"{probe}\"\nrisk = \"low\"\n"
    );
    let node = TestNode::new(&config, &[("p.cedar", TOOL_INVOKE), ("q.cedar", policies)]);
    approved_probe(&node).await;
    let caller = node
        .node
        .load(wasm(skills::CAPABILITY_PROBE))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (node, probe, caller)
}

/// The caller runs `inner` with `calls`; the denials in its report.
async fn call_inner(node: &TestNode, caller: &LoadedSkill, calls: &[Value]) -> Vec<CallRecord> {
    let inner = json!({ "calls": calls }).to_string();
    let input =
        json!({"calls": [{"op": "tools.invoke", "name": "inner", "input": inner}]}).to_string();
    let report = node.node.run(caller, request("caller", &input)).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let result = airlock_tests::results(&report)[0].to_string();
    assert!(!result.contains("quarantined"), "{result}");
    report
        .decisions
        .into_iter()
        .filter(|d| d.decision.verdict == airlock_host_apis::Verdict::Deny)
        .collect()
}

/// The state of `digest` once `wanted`, or after 5 s.
async fn state_becomes(node: &TestNode, digest: SkillDigest, wanted: State) -> Option<State> {
    let store = node.node.skills().unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = store.get(&digest).await.ok().flatten().map(|r| r.state);
        if state == Some(wanted) || std::time::Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tool by digest answers for its own denials, as it would run alone: a
/// skill that is denied again and again is quarantined though it only ever
/// runs as another's tool.
#[tokio::test]
async fn a_tools_denials_count_toward_its_own_quarantine() {
    let (node, probe, caller) = inner_tool("").await;
    // No policy allows storage: each get is denied.
    let get = json!({"op": "storage.get", "key": "a"});
    let denied = call_inner(&node, &caller, &[get.clone(), get.clone(), get]).await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
    assert!(denied.iter().all(|d| d.skill == "inner"), "{denied:#?}");
    assert_eq!(
        state_becomes(&node, probe, State::Quarantined).await,
        Some(State::Quarantined)
    );
    // Recorded just after the change.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let quarantine = loop {
        let found = events(&node, "skill.quarantine");
        if !found.is_empty() || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(quarantine.len(), 1, "{quarantine:#?}");
    assert_eq!(quarantine[0]["automatic"], true);
    assert_eq!(quarantine[0]["digest"], probe.to_hex());
}

/// What the caller's policies refuse is not the tool's doing: a caller with
/// fewer rights cannot get a shared tool quarantined through it.
#[tokio::test]
async fn a_tool_does_not_answer_for_what_its_caller_may_not_do() {
    let reads = r#"
@id("test/inner-reads")
permit (principal, action == Airlock::Action::"storage.read", resource)
when { principal.name == "inner" };
"#;
    let (node, probe, caller) = inner_tool(reads).await;
    let get = json!({"op": "storage.get", "key": "a"});
    let denied = call_inner(&node, &caller, &[get.clone(), get.clone(), get.clone()]).await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
    assert!(denied.iter().all(|d| d.decision.by_caller), "{denied:#?}");
    let reason = denied[0].decision.reason.clone().unwrap_or_default();
    assert!(reason.contains("calling skill `caller`"), "{reason}");
    // Given time to count them, it would have been quarantined by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state_becomes(&node, probe, State::Approved).await,
        Some(State::Approved)
    );
    // Its own denials still count: writes no policy allows.
    let put = json!({"op": "storage.put", "key": "a", "value": "v"});
    let denied = call_inner(&node, &caller, &[put.clone(), put.clone(), put, get]).await;
    assert_eq!(denied.iter().filter(|d| !d.decision.by_caller).count(), 3);
    assert_eq!(
        state_becomes(&node, probe, State::Quarantined).await,
        Some(State::Quarantined)
    );
}

#[tokio::test]
async fn quarantining_a_tool_stops_it_in_the_middle_of_a_call() {
    let probe = SkillDigest::of(&wasm(skills::CAPABILITY_PROBE));
    let config = format!("[tools.sleeper]\ndigest = \"{probe}\"\nrisk = \"low\"\n");
    let node = TestNode::new(&config, &[("p.cedar", TOOL_INVOKE)]);
    approved_probe(&node).await;
    let sleep = json!({"calls": [{"op": "sleep", "count": 20000}]}).to_string();
    let input =
        json!({"calls": [{"op": "tools.invoke", "name": "sleeper", "input": sleep}]}).to_string();
    // The caller is a developer's file: only the tool is the admitted skill.
    let caller = {
        let node = node.node.clone();
        tokio::spawn(async move {
            let skill = node
                .load(wasm(skills::CAPABILITY_PROBE))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            node.run(&skill, request("caller", &input)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    node.node
        .quarantine(probe, "security", "hung a caller")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .unwrap_or_else(|_| panic!("the tool was not stopped"))
        .unwrap_or_else(|e| panic!("{e}"));
    let result = airlock_tests::results(&report)[0].to_string();
    assert!(result.contains("quarantined: hung a caller"), "{result}");
}
