//! Ephemeral credentials against a hostile skill.
//!
//! A static credential carries a sentinel value. The capability probe tries
//! every way to get it (or a token) somewhere it should not be: an allowed
//! but unbound host, another path, plain http, a URL, a header, a body,
//! storage, a tool's input, its output, its logs, its error text. A local
//! server reflects every request it gets and keeps them all; afterwards the
//! sentinel may appear in exactly one place: the bound header of requests to
//! the bound destination.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_host_apis::Trust;
use airlock_runtime::Limits;
use airlock_runtime::egress::StaticResolver;
use airlock_runtime::run::{RunReport, RunStatus};
use airlock_tests::server::{TestCa, TestServer};
use airlock_tests::{TestNode, results, skills};
use base64::Engine as _;
use serde_json::{Value, json};

const SENTINEL: &str = "sk-SENTINEL-7f3a9c2e41d8b6a0";

const POLICIES: &str = r#"
@id("test/any-host")
permit (principal, action == Airlock::Action::"http.request", resource);

@id("test/plain-local")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"127.0.0.1");

@id("test/use")
permit (principal, action == Airlock::Action::"secret.use", resource);

@id("test/mint")
permit (principal, action == Airlock::Action::"secret.mint", resource);

@id("test/storage")
permit (principal, action == Airlock::Action::"storage.write", resource);

@id("test/tools")
permit (principal, action == Airlock::Action::"tool.invoke", resource);

@id("test/no-admin")
forbid (principal, action == Airlock::Action::"secret.use", resource)
when { context.destination.path like "/bound/admin*" };
"#;

/// A TLS server for `localhost` and `127.0.0.1`, a plain one, and a node
/// whose credentials are bound to `https://localhost:<port>/bound`.
struct Setup {
    tls: TestServer,
    plain: TestServer,
    node: Arc<TestNode>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(extra: &str) -> Self {
        let ca = TestCa::new();
        let tls = TestServer::start_tls(&ca).await;
        let plain = TestServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("ca.pem");
        std::fs::write(&roots, &ca.ca_pem).unwrap();
        let secret = dir.path().join("api-key");
        std::fs::write(&secret, format!("{SENTINEL}\n")).unwrap();
        let other_secret = dir.path().join("other-key");
        std::fs::write(&other_secret, "sk-OTHER-SKILLS-KEY-5e6f7a8b9c").unwrap();
        let port = tls.addr.port();
        let config = format!(
            r#"
[egress]
allow_addresses = ["127.0.0.1"]
extra_roots = {roots:?}
connect_timeout = "1s"
timeout = "3s"

[credentials.api]
kind = "static"
file = {secret:?}
destination = "https://localhost:{port}/bound"

[credentials.elsewhere]
kind = "static"
file = {other_secret:?}
destination = "https://localhost:{port}/bound"
skills = ["some-other-skill"]

[credentials.id]
kind = "minted"
destination = "https://localhost:{port}/bound"

[credentials.short]
kind = "minted"
destination = "https://localhost:{port}/bound"
ttl = "1s"

[credentials.downstream]
kind = "exchanged"
destination = "https://localhost:{port}/bound"
audience = "https://data.example"
token_endpoint = "https://localhost:{port}/token"
revocation_endpoint = "https://localhost:{port}/revoke"
scope = "read"
{extra}
"#,
            roots = roots.display().to_string(),
            secret = secret.display().to_string(),
            other_secret = other_secret.display().to_string(),
        );
        let resolver = Arc::new(StaticResolver::new([(
            "localhost".to_string(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        )]));
        let node = TestNode::with_resolver(&config, &[("p.cedar", POLICIES)], resolver);
        Setup {
            tls,
            plain,
            node: Arc::new(node),
            _dir: dir,
        }
    }

    fn bound(&self, path: &str) -> String {
        format!("https://localhost:{}/bound{path}", self.tls.addr.port())
    }

    fn origin(&self) -> String {
        format!("https://localhost:{}", self.tls.addr.port())
    }

    async fn probe(&self, calls: Vec<Value>) -> (RunReport, Vec<Value>) {
        let input = json!({ "calls": calls }).to_string();
        let report = self
            .node
            .run(skills::CAPABILITY_PROBE, &input, Trust::High)
            .await;
        let results = results(&report);
        (report, results)
    }
}

fn fetch(url: &str, credential: Option<&str>) -> Value {
    json!({"op": "http.fetch", "url": url, "credential": credential})
}

fn kind(result: &Value) -> &str {
    result["error"].as_str().unwrap_or("ok")
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

fn assert_clean(what: &str, text: &str) {
    for form in forms() {
        assert!(!text.contains(&form), "{what} carries the sentinel: {text}");
    }
}

#[tokio::test]
async fn the_sentinel_reaches_only_the_bound_header_at_the_bound_destination() {
    let setup = Setup::new("").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x{SENTINEL}"));
    let hex: String = SENTINEL.bytes().map(|b| format!("{b:02x}")).collect();
    let plain_echo = setup.plain.url("/echo");
    let unbound_host = format!("https://127.0.0.1:{}/bound/echo", setup.tls.addr.port());
    let calls = vec![
        // 0: the bound use; the server echoes the header back.
        fetch(&setup.bound("/echo"), Some("api")),
        // 1-4: an allowed but unbound host, another path, plain http, a
        // path policy forbids.
        fetch(&unbound_host, Some("api")),
        fetch(&format!("{}/elsewhere", setup.origin()), Some("api")),
        fetch(&plain_echo, Some("api")),
        fetch(&setup.bound("/admin/x"), Some("api")),
        // 5-8: the value itself, wherever a skill could put it.
        fetch(&format!("{}?k={SENTINEL}", setup.bound("/echo")), None),
        json!({"op": "http.fetch", "method": "POST", "url": plain_echo, "body": b64}),
        json!({"op": "http.fetch", "url": plain_echo, "headers": [["x-key", hex]]}),
        json!({"op": "wasi-http", "scheme": "http", "authority": format!("127.0.0.1:{}", setup.plain.addr.port()), "path": format!("/echo?{SENTINEL}")}),
        // 9-10: storage and a tool.
        json!({"op": "storage.put", "key": "notes", "value": format!("key={SENTINEL}")}),
        json!({"op": "tools.invoke", "name": "word-count", "input": SENTINEL}),
        // 11-12: logs and stdout.
        json!({"op": "log", "message": format!("the key is {SENTINEL}")}),
        json!({"op": "print", "message": SENTINEL}),
        // 13: the standard path, naming the credential in its header.
        json!({"op": "wasi-http", "authority": format!("localhost:{}", setup.tls.addr.port()), "path": "/bound/echo", "headers": [["airlock-credential", "api"]]}),
        // 14: and to a host it is not bound to.
        json!({"op": "wasi-http", "authority": format!("127.0.0.1:{}", setup.tls.addr.port()), "path": "/bound/echo", "headers": [["airlock-credential", "api"]]}),
        // 15: its output (an unknown op is echoed back).
        json!({"op": SENTINEL}),
        // 16: another skill's credential is refused without being named.
        json!({"op": "storage.put", "key": "k", "value": "sk-OTHER-SKILLS-KEY-5e6f7a8b9c"}),
        // 17-19: paths that a server would resolve outside the binding.
        fetch(&setup.bound("/..%2Felsewhere"), Some("api")),
        fetch(&setup.bound("/..;/elsewhere"), Some("api")),
        json!({"op": "wasi-http", "authority": format!("localhost:{}", setup.tls.addr.port()), "path": "/bound/%2e%2e%5celsewhere", "headers": [["airlock-credential", "api"]]}),
    ];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);

    // The bound use worked, and the echo came back redacted.
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    let echoed = results[0]["ok"]["body"].as_str().unwrap_or_default();
    assert!(echoed.contains("Bearer [redacted]"), "{echoed}");
    for (n, text) in [
        (1, "is bound to https://localhost"),
        (2, "is bound to https://localhost"),
        (3, "never sent over plain http"),
        (4, "test/no-admin"),
        (5, "the request URL carries the value of credential `api`"),
        (6, "the request body carries the value of credential `api`"),
        (7, "a request header carries the value of credential `api`"),
        (9, "the stored value carries the value of credential `api`"),
        (10, "the tool input carries the value of credential `api`"),
        (
            16,
            "the stored value carries the value of credential `[withheld]`",
        ),
        (17, "is bound to https://localhost"),
        (18, "is bound to https://localhost"),
        (1, "denied by policy `guard:credential-binding`"),
        (5, "denied by policy `guard:credential-leak`"),
        (
            10,
            "`tool.invoke` on Tool `word-count` denied by policy `guard:credential-leak`",
        ),
    ] {
        let got = results[n].to_string();
        assert_ne!(kind(&results[n]), "ok", "{n}: {got}");
        assert!(got.contains(text), "{n}: expected `{text}` in {got}");
    }
    assert_eq!(kind(&results[8]), "http", "{}", results[8]);
    assert_eq!(kind(&results[13]), "ok", "{}", results[13]);
    let echoed = results[13]["ok"]["body"].as_str().unwrap_or_default();
    assert!(echoed.contains("Bearer [redacted]"), "{echoed}");
    assert!(!echoed.contains("airlock-credential"), "{echoed}");
    assert_eq!(kind(&results[14]), "http", "{}", results[14]);
    assert_eq!(kind(&results[19]), "http", "{}", results[19]);

    // What the servers got: the sentinel only as the bound header, only at
    // the bound destination (and the plain server never saw it at all).
    let mut bound_uses = 0;
    for seen in setup.tls.seen().iter().chain(setup.plain.seen().iter()) {
        let mut text = seen.text();
        if seen.header("authorization") == Some(&format!("Bearer {SENTINEL}")) {
            assert!(seen.uri.starts_with("/bound/"), "{}", seen.uri);
            assert!(
                seen.header("host")
                    .is_some_and(|h| h.starts_with("localhost:"))
            );
            bound_uses += 1;
            text = text.replace(&format!("Bearer {SENTINEL}"), "");
        }
        assert_clean("a request a server received", &text);
    }
    assert_eq!(bound_uses, 2, "the two bound uses, and nothing else");
    assert!(
        setup
            .plain
            .seen()
            .iter()
            .all(|s| !s.uri.contains("SENTINEL"))
    );

    // Nothing the orchestrator sees carries it either.
    let everything = serde_json::to_string(&report).unwrap();
    assert_clean("the run report", &everything);
    let logs: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        logs.iter().any(|l| l.contains("the key is [redacted]")),
        "{logs:?}"
    );
    assert!(
        report
            .output
            .as_deref()
            .unwrap_or_default()
            .contains("[redacted]")
    );
    assert!(report.session.secrets_used.contains("api"));
}

/// A tool shares its caller's ledger. The caller's records (here, a read
/// under a key that is the caller's live token) are written once, at the
/// caller's end and cleaned of the caller's credentials; never at the tool's
/// end, cleaned only of the tool's.
#[tokio::test]
async fn a_callers_token_never_reaches_the_audit_log_through_its_tools_records() {
    let setup = Setup::new("[tools.word-count]\nskill = \"{skills}/word_count.wasm\"\n").await;
    let calls = vec![
        json!({"op": "secrets.mint-key", "name": "id", "audience": setup.origin()}),
        json!({"op": "tools.invoke", "name": "word-count", "input": r#"{"text": "one two"}"#}),
    ];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    assert_eq!(kind(&results[1]), "ok", "{}", results[1]);
    let path = setup.node.node.services().audit.as_ref().unwrap().path();
    let log = std::fs::read_to_string(path).unwrap();
    let reads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"storage.read\""))
        .collect();
    assert_eq!(reads.len(), 1, "one call, one record: {reads:#?}");
    assert!(reads[0].contains("[redacted]"), "{}", reads[0]);
    // Minted tokens are JWTs: a header starts `eyJ`.
    assert!(!log.contains("eyJ"), "a token reached the audit log");
}

/// A tool's records are in its caller's report too. Cleaned there, at the
/// caller's end, the tool's token was no longer live, so not known as one.
/// And a denial's text names the resource cut short: a token in it is no
/// longer whole when the tool's output is cleaned.
#[tokio::test]
async fn a_tools_token_never_reaches_its_callers_report() {
    let setup = Setup::new("[tools.inner]\nskill = \"{skills}/capability_probe.wasm\"\n").await;
    let mint = json!({"op": "secrets.mint-key", "name": "id", "audience": setup.origin()});
    let inner = json!({ "calls": [mint] }).to_string();
    let calls = vec![json!({"op": "tools.invoke", "name": "inner", "input": inner})];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    let reads: Vec<_> = report
        .decisions
        .iter()
        .filter(|d| d.action.as_str() == "storage.read")
        .collect();
    assert_eq!(reads.len(), 1, "{:#?}", report.decisions);
    assert_ne!(reads[0].instance, report.instance, "the tool's call");
    let read = serde_json::to_string(reads[0]).unwrap();
    assert!(read.contains("[redacted]"), "{read}");
    // Minted tokens are JWTs: a header starts `eyJ`. The tool's output
    // carries its denial, which names the key cut short.
    let everything = serde_json::to_string(&report).unwrap();
    assert!(
        !everything.contains("eyJ"),
        "a token reached the report: {everything}"
    );
    assert!(everything.contains("inner/[redacted]…"), "{everything}");
}

#[tokio::test]
async fn an_instance_holds_a_bounded_number_of_tokens() {
    use airlock_runtime::credentials::MAX_LIVE_TOKENS;
    let setup = Setup::new("").await;
    let mint = json!({"op": "secrets.mint", "name": "id", "audience": setup.origin()});
    let (report, results) = setup.probe(vec![mint; MAX_LIVE_TOKENS + 2]).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    for result in &results[..MAX_LIVE_TOKENS] {
        assert_eq!(kind(result), "ok", "{result}");
    }
    for result in &results[MAX_LIVE_TOKENS..] {
        assert_eq!(kind(result), "limit", "{result}");
        assert!(
            result
                .to_string()
                .contains(&format!("{MAX_LIVE_TOKENS} live tokens")),
            "{result}"
        );
    }
}

/// A leased token counts toward the same bound: held, it leaves room for one
/// mint fewer; at the bound, no lease is taken (the token endpoint is never
/// asked).
#[tokio::test]
async fn leased_tokens_count_toward_the_bound() {
    use airlock_runtime::credentials::MAX_LIVE_TOKENS;
    let setup = Setup::new("").await;
    let mint = json!({"op": "secrets.mint", "name": "id", "audience": setup.origin()});
    let lease = fetch(&setup.bound("/echo"), Some("downstream"));
    let mut calls = vec![lease.clone()];
    calls.extend(std::iter::repeat_n(mint.clone(), MAX_LIVE_TOKENS));
    let (_, results) = setup.probe(calls).await;
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    assert_eq!(setup.tls.exchanged().len(), 1);
    for result in &results[1..MAX_LIVE_TOKENS] {
        assert_eq!(kind(result), "ok", "{result}");
    }
    let last = &results[MAX_LIVE_TOKENS];
    assert_eq!(kind(last), "limit", "the lease took one place: {last}");

    let mut calls = vec![mint; MAX_LIVE_TOKENS];
    calls.push(lease);
    let (_, results) = setup.probe(calls).await;
    let refused = &results[MAX_LIVE_TOKENS];
    assert_eq!(kind(refused), "limit", "{refused}");
    assert!(
        refused
            .to_string()
            .contains(&format!("{MAX_LIVE_TOKENS} live tokens")),
        "{refused}"
    );
    assert_eq!(setup.tls.exchanged().len(), 1, "no second exchange");
}

#[tokio::test]
async fn error_text_never_carries_a_credential() {
    let setup = Setup::new("").await;
    let calls = vec![json!({"op": "fail", "message": format!("giving up, key was {SENTINEL}")})];
    let (report, _) = setup.probe(calls).await;
    assert_eq!(report.status, RunStatus::SkillError);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert_eq!(message, "giving up, key was [redacted]");
}

#[tokio::test]
async fn a_minted_token_may_be_sent_to_its_audience_and_nowhere_else() {
    let setup = Setup::new("").await;
    let origin = setup.origin();
    // The probe cannot refer to a result, so it mints, and the test reads
    // the token from where it was allowed to go.
    let calls = vec![json!({"op": "secrets.mint", "name": "id", "audience": origin})];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    assert_eq!(results[0]["ok"], "[redacted]", "the output never shows it");
    assert_eq!(report.decisions[0].action.as_str(), "secret.mint");

    // A second run mints, then tries to spread its token: in a header, a
    // query and a body, to its audience and to another host; into storage
    // and its logs.
    let audience = setup.bound("/echo");
    let other = format!("https://127.0.0.1:{}/bound/echo", setup.tls.addr.port());
    let calls = vec![
        json!({"op": "secrets.mint-send", "name": "id", "audience": origin, "url": audience, "key": "a"}),
        json!({"op": "secrets.mint-send", "name": "id", "audience": origin, "url": other, "key": "b"}),
        json!({"op": "secrets.mint", "name": "api", "audience": origin}),
    ];
    let (report, results) = setup.probe(calls).await;
    let to_audience = &results[0]["ok"];
    for sent in to_audience["sent"].as_array().unwrap() {
        assert_eq!(sent["ok"], 200, "to its audience: {sent}");
    }
    let to_other = &results[1]["ok"];
    for sent in to_other["sent"].as_array().unwrap() {
        assert_eq!(kind(sent), "denied", "to another host: {sent}");
        assert!(
            sent["message"]
                .as_str()
                .unwrap()
                .contains("credential `id`")
        );
    }
    for stored in [&to_audience["stored"], &to_other["stored"]] {
        assert_eq!(kind(stored), "denied", "{stored}");
    }
    assert_eq!(to_other["token"], "[redacted]");
    assert_eq!(
        kind(&results[2]),
        "invalid",
        "a static credential is never minted"
    );
    let logs: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(logs, ["minted [redacted]", "minted [redacted]"]);
    // The other host never saw a token.
    let at_other = setup
        .tls
        .seen()
        .iter()
        .filter(|s| s.header("host").is_some_and(|h| h.starts_with("127.0.0.1")))
        .count();
    assert_eq!(at_other, 0);
}

#[tokio::test]
async fn unknown_other_skills_and_ended_instances_get_the_same_error() {
    let setup = Setup::new("").await;
    let calls = vec![
        fetch(&setup.bound("/echo"), Some("no-such-credential")),
        fetch(&setup.bound("/echo"), Some("elsewhere")),
        json!({"op": "secrets.mint", "name": "no-such-credential", "audience": "x"}),
        json!({"op": "secrets.mint", "name": "elsewhere", "audience": "x"}),
    ];
    let (_, results) = setup.probe(calls).await;
    let shape = |r: &Value, name: &str| {
        assert_eq!(kind(r), "not-found", "{r}");
        let message = r["message"].as_str().unwrap_or_default();
        assert_eq!(
            message,
            format!("no credential named `{name}` is available")
        );
    };
    shape(&results[0], "no-such-credential");
    shape(&results[1], "elsewhere");
    shape(&results[2], "no-such-credential");
    shape(&results[3], "elsewhere");
    assert!(setup.tls.seen().is_empty(), "nothing was sent");

    // An instance that is not running (ended, or never this runtime's)
    // holds nothing, whatever it names.
    use airlock_host_apis::secrets::Credentials;
    let subject = airlock_host_apis::Subject {
        instance: "0123456789abcdef0123456789abcdef".into(),
        skill: airlock_host_apis::SkillIdentity {
            name: "capability-probe".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let request = airlock_host_apis::http::OutboundRequest::parse(
        "GET",
        &setup.bound("/echo"),
        &[],
        Vec::new(),
        Some("api".into()),
        &Default::default(),
    )
    .unwrap();
    let vault = setup.node.node.vault();
    let err = vault.attach(&subject, "api", &request).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "not found: no credential named `api` is available"
    );
}

/// Run the probe in the background; return the identity token the bound
/// server receives while it runs, and the finished report.
async fn token_during_run(setup: &Setup, tail: Value, limits: Limits) -> (String, RunReport) {
    let calls = vec![
        fetch(&setup.bound("/echo"), Some("id")),
        json!({"op": "sleep", "count": 1500}),
        tail,
    ];
    let input = json!({ "calls": calls }).to_string();
    let node = setup.node.clone();
    let before = setup.tls.seen().len();
    let run = tokio::spawn(async move {
        node.run_limited(skills::CAPABILITY_PROBE, &input, Trust::High, limits)
            .await
    });
    let mut token = None;
    // Generous: the first run in a test binary compiles the probe.
    for _ in 0..3000 {
        token = setup
            .tls
            .seen()
            .iter()
            .skip(before)
            .find_map(|s| s.header("authorization").map(String::from));
        if token.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = token
        .and_then(|t| t.strip_prefix("Bearer ").map(String::from))
        .expect("the bound server got a token");
    let issuer = setup.node.node.issuer();
    let active = issuer.introspect(&token);
    assert_eq!(active["active"], true, "active while the instance runs");
    assert_eq!(active["aud"], setup.origin());
    assert_eq!(active["task_id"], "task-1");
    let report = run.await.unwrap();
    let sub = active["sub"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        sub,
        format!(
            "spiffe://airlock.local/skill/{}/run/{}",
            airlock_runtime::SkillDigest::of(&airlock_tests::wasm(skills::CAPABILITY_PROBE))
                .to_hex(),
            report.instance
        )
    );
    (token, report)
}

#[tokio::test]
async fn a_token_is_inactive_as_soon_as_its_instance_ends_however_it_ends() {
    let setup = Setup::new("").await;
    // Only the timed-out run has a deadline short enough to reach: on a
    // loaded machine the others must not outlive their token by accident.
    let ends = [
        (json!({"op": "log", "message": "done"}), RunStatus::Ok, 120),
        (
            json!({"op": "panic", "message": "boom"}),
            RunStatus::Trap,
            120,
        ),
        (json!({"op": "spin"}), RunStatus::Limit, 3),
    ];
    for (tail, status, deadline) in ends {
        let limits = Limits {
            deadline: Duration::from_secs(deadline),
            ..Limits::default()
        };
        let (token, report) = token_during_run(&setup, tail, limits).await;
        assert_eq!(report.status, status, "{:?}", report.error);
        let issuer = setup.node.node.issuer();
        // After a timeout the token has also expired: it lives no longer
        // than the instance's deadline.
        match issuer.verify(&token) {
            Ok(_) => assert_ne!(status, RunStatus::Limit),
            Err(e) => assert_eq!(
                (e, status),
                (
                    airlock_runtime::identity::Invalid::Expired,
                    RunStatus::Limit
                )
            ),
        }
        assert_eq!(
            issuer.introspect(&token),
            json!({"active": false}),
            "inactive after a run that ended {status:?}"
        );
        assert!(setup.node.node.vault().leases(&report.instance).is_empty());
    }
}

#[tokio::test]
async fn a_lease_used_after_its_ttl_is_refused_at_injection() {
    let setup = Setup::new("").await;
    let calls = vec![
        fetch(&setup.bound("/echo"), Some("short")),
        json!({"op": "sleep", "count": 1200}),
        fetch(&setup.bound("/echo"), Some("short")),
    ];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    assert_eq!(kind(&results[2]), "denied", "{}", results[2]);
    let message = results[2]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the lease on credential `short` expired"),
        "{message}"
    );
    // Allowed by policy, refused at injection by the lease guard.
    let uses: Vec<_> = report
        .decisions
        .iter()
        .filter(|d| d.action.as_str() == "secret.use")
        .collect();
    assert_eq!(uses.len(), 2);
    assert_eq!(uses[0].decision.verdict, airlock_host_apis::Verdict::Allow);
    assert_eq!(uses[1].decision.verdict, airlock_host_apis::Verdict::Deny);
    assert_eq!(uses[1].decision.policies, ["guard:credential-lease"]);
    let sent = setup
        .tls
        .seen()
        .iter()
        .filter(|s| s.header("authorization").is_some())
        .count();
    assert_eq!(sent, 1, "the expired lease never went out");
}

#[tokio::test]
async fn an_exchanged_token_is_fetched_with_the_instance_identity_and_revoked_at_the_end() {
    let setup = Setup::new("").await;
    let calls = vec![fetch(&setup.bound("/echo"), Some("downstream"))];
    let (report, results) = setup.probe(calls).await;
    assert_eq!(kind(&results[0]), "ok", "{}", results[0]);
    // The identity token presented: the instance's, for the token endpoint.
    let presented = setup.tls.exchanged();
    assert_eq!(presented.len(), 1);
    let claims = setup.node.node.issuer().verify(&presented[0]).unwrap();
    assert_eq!(claims.aud, format!("{}/token", setup.origin()));
    assert_eq!(claims.instance(), Some(report.instance.as_str()));
    // The downstream token went to the bound destination, and was revoked
    // when the instance ended.
    let sent = setup
        .tls
        .seen()
        .iter()
        .find_map(|s| {
            (s.uri.starts_with("/bound/"))
                .then(|| s.header("authorization").map(String::from))
                .flatten()
        })
        .unwrap();
    let downstream = sent.strip_prefix("Bearer ").unwrap();
    assert!(downstream.starts_with("xchg-"));
    assert_eq!(setup.tls.revoked(), vec![downstream.to_string()]);
    let token_request = setup
        .tls
        .seen()
        .into_iter()
        .find(|s| s.uri == "/token")
        .unwrap();
    let form = String::from_utf8_lossy(&token_request.body).into_owned();
    assert!(
        form.contains("audience=https%3A%2F%2Fdata.example"),
        "{form}"
    );
    assert!(form.contains("scope=read"), "{form}");
}

#[tokio::test]
async fn a_downstream_service_verifies_a_token_with_the_published_keys() {
    use tower::ServiceExt;
    let setup = Setup::new("").await;
    let (token, _) = token_during_run(
        &setup,
        json!({"op": "log", "message": "done"}),
        Limits::default(),
    )
    .await;
    let router = setup.node.node.identity_router();
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let body = |response: axum::response::Response| async move {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let discovery = body(
        router
            .clone()
            .oneshot(get("/.well-known/openid-configuration"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(discovery["issuer"], "http://127.0.0.1:8480");
    assert_eq!(
        discovery["jwks_uri"],
        "http://127.0.0.1:8480/.well-known/jwks.json"
    );
    let jwks = body(
        router
            .clone()
            .oneshot(get("/.well-known/jwks.json"))
            .await
            .unwrap(),
    )
    .await;
    // An independent JWT library, as a downstream service would use.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[setup.origin()]);
    validation.set_issuer(&["http://127.0.0.1:8480"]);
    let decoded = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert!(
        decoded.claims["sub"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://airlock.local/skill/")
    );
    // And introspection says the instance has ended.
    let introspect = axum::http::Request::post("/oauth2/introspect")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("token={token}")))
        .unwrap();
    let answer = body(router.oneshot(introspect).await.unwrap()).await;
    assert_eq!(answer, json!({"active": false}));
}
