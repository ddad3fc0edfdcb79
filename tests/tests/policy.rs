//! The Cedar broker, driven from inside guests: decisions with the run's
//! context, on every call, that guest arguments cannot steer.

use airlock_host_apis::{Mode, Trust, Verdict};
use airlock_runtime::config::PolicyMode;
use airlock_runtime::run::RunStatus;
use airlock_tests::{TestNode, decisions, results, skills};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[[storage.labels]]
prefix = "hr/"
label = "confidential"

[storage.namespaces]
capability_probe = "team"
"#;

const PROBE_STORAGE: &str = r#"
@id("test/probe-storage")
permit (principal, action in Airlock::Action::"data", resource)
when { principal.name == "capability_probe" };

@id("test/probe-egress")
permit (principal, action == Airlock::Action::"http.request", resource)
when { principal.name == "capability_probe" };
"#;

fn calls(calls: Value) -> String {
    json!({ "calls": calls }).to_string()
}

#[tokio::test]
async fn an_allowed_call_is_allowed_from_inside_a_running_guest() {
    let node = TestNode::new(CONFIG, &[("p.cedar", PROBE_STORAGE)]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([{"op": "storage.get", "key": "missing"}])),
            Trust::Medium,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert_eq!(results(&report)[0], json!({"ok": null}));
    assert_eq!(
        decisions(&report),
        [(
            "storage.read".into(),
            "allow".into(),
            vec!["test/probe-storage".to_string()]
        )]
    );
}

#[tokio::test]
async fn reading_a_confidential_key_then_calling_out_is_denied() {
    let node = TestNode::new(CONFIG, &[("p.cedar", PROBE_STORAGE)]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([
                {"op": "http.fetch", "url": "https://api.example.com/before"},
                {"op": "storage.put", "key": "hr/salaries", "value": "42"},
                {"op": "http.fetch", "url": "https://api.example.com/after-write"},
                {"op": "storage.get", "key": "hr/salaries"},
                {"op": "http.fetch", "url": "https://api.example.com/after-read"},
                {"op": "wasi-http", "authority": "api.example.com", "path": "/after-read"},
            ])),
            Trust::Medium,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let d = decisions(&report);
    // Before the read, egress is allowed (and fails only for want of a network).
    assert_eq!(d[0].1, "allow");
    assert_eq!(
        d[2].1, "allow",
        "writing a labelled key does not label the session"
    );
    assert_eq!(
        d[3],
        (
            "storage.read".into(),
            "allow".into(),
            vec!["test/probe-storage".into()]
        )
    );
    for after in [&d[4], &d[5]] {
        assert_eq!(
            after,
            &(
                "http.request".into(),
                "deny".into(),
                vec!["base/no-egress-after-confidential-read".to_string()]
            )
        );
    }
    let message = results(&report)[4]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        message,
        "`http.request` on Host `api.example.com` denied by policy \
         `base/no-egress-after-confidential-read` (the session has read data labelled \
         confidential, and this host is not a sink for it)"
    );
    assert!(report.session.labels.contains("confidential"));
}

#[tokio::test]
async fn spoofed_arguments_do_not_change_any_decision() {
    // Reads are allowed only for skills of high-trust agents; the tool and
    // the secret only to agent `root`.
    let policy = r#"
@id("test/high-trust-reads")
permit (principal, action == Airlock::Action::"storage.read", resource)
when { context.agent_trust_level >= 3 && context.task.intent == "audit" };

@id("test/root-only")
permit (principal in Airlock::Agent::"root", action, resource);
"#;
    let node = TestNode::new(CONFIG, &[("p.cedar", policy)]);
    let spoofs = [
        "plain",
        r#"x", "agent_trust": "high", "agent_trust_level": 3, "y": ""#,
        "Airlock::Agent::\"root\"",
        r#"principal in Airlock::Agent::"root""#,
        "../../../root",
        "%2e%2e%2froot",
        "\\\\root\\x",
        "task.intent=audit",
        "{\"trust\":\"high\"}",
    ];
    let mut all = Vec::new();
    for spoof in spoofs {
        all.push(json!({"op": "storage.get", "key": spoof}));
        all.push(json!({"op": "storage.list", "prefix": spoof}));
        all.push(
            json!({"op": "http.fetch", "url": format!("https://root:high@{}/", "api.example.com"),
                        "headers": [["x-agent-trust", spoof]]}),
        );
        all.push(json!({"op": "tools.invoke", "name": spoof, "input": spoof}));
        all.push(json!({"op": "secrets.mint", "name": spoof, "audience": spoof}));
    }
    let report = node
        .run(skills::CAPABILITY_PROBE, &calls(json!(all)), Trust::Low)
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    // Every call was denied, by the same (lack of) policy, whatever it carried.
    let denied = report
        .decisions
        .iter()
        .filter(|r| r.decision.verdict == Verdict::Deny)
        .count();
    // Malformed ones (the URL's userinfo) are refused before policy, and
    // recorded as denials too.
    assert_eq!(denied, all.len(), "{:?}", decisions(&report));
    let malformed = report
        .decisions
        .iter()
        .filter(|r| {
            r.decision
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("refused before policy"))
        })
        .count();
    assert_eq!(
        malformed,
        results(&report)
            .iter()
            .filter(|r| r["error"] == "invalid")
            .count()
    );
    for record in &report.decisions {
        assert_eq!(record.decision.verdict, Verdict::Deny, "{record:?}");
        // Unregistered tools count as high-risk: the guard rail speaks first.
        let expected: &[&str] = match record.action.as_str() {
            "secret.mint" => &["base/low-trust-cannot-mint"],
            "tool.invoke" => &["base/high-risk-tools-need-high-trust"],
            _ => &[],
        };
        assert_eq!(record.decision.policies, expected, "{record:?}");
    }

    // The same calls from a high-trust agent with the right intent: the
    // reads go through, so the guard is real and not just always-deny.
    let skill = node
        .node
        .load(airlock_tests::wasm(skills::CAPABILITY_PROBE))
        .await
        .unwrap();
    let mut request = airlock_tests::request(
        "capability_probe",
        &calls(json!([{"op": "storage.get", "key": "plain"}])),
    );
    request.subject.agent.trust = Trust::High;
    request.subject.task.intent = "audit".into();
    let report = node.node.run(&skill, request).await;
    assert_eq!(decisions(&report)[0].1, "allow");
}

#[tokio::test]
async fn shadow_mode_reports_would_deny_and_lets_calls_proceed() {
    let node = TestNode::with_mode(CONFIG, &[], Some(PolicyMode::Shadow));
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([
                {"op": "storage.put", "key": "draft", "value": "v1"},
                {"op": "storage.get", "key": "draft"},
            ])),
            Trust::Untrusted,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert_eq!(
        results(&report)[1],
        json!({"ok": "v1"}),
        "the write really happened"
    );
    for record in &report.decisions {
        assert_eq!(record.decision.verdict, Verdict::Deny);
        assert_eq!(record.decision.mode, Mode::Shadow);
        assert!(matches!(
            record.outcome,
            airlock_host_apis::Outcome::Done { .. }
        ));
    }
}

#[tokio::test]
async fn without_shadow_mode_the_same_calls_are_stopped() {
    let node = TestNode::new(CONFIG, &[]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([{"op": "storage.put", "key": "draft", "value": "v1"}])),
            Trust::Untrusted,
        )
        .await;
    assert_eq!(results(&report)[0]["error"], "denied");
    assert!(
        !node
            .dir
            .path()
            .join("storage/team")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    );
}

const TOOLS: &str = r#"
[[storage.labels]]
prefix = "hr/"
label = "confidential"

[storage.namespaces]
capability_probe = "team"
courier = "team"
reader = "team"

[tools.courier]
skill = "{skills}/capability_probe.wasm"
risk = "low"

[tools.reader]
skill = "{skills}/capability_probe.wasm"
risk = "low"

[tools.loop]
skill = "{skills}/capability_probe.wasm"
risk = "low"

[tools.relay]
skill = "{skills}/capability_probe.wasm"
risk = "low"

[tools.deploy]
skill = "{skills}/hello.wasm"
risk = "high"

[delegation]
max_depth = 5
"#;

const TOOL_POLICIES: &str = r#"
@id("test/tools")
permit (principal, action == Airlock::Action::"tool.invoke", resource);

@id("test/data")
permit (principal, action in Airlock::Action::"data", resource);

@id("test/egress")
permit (principal, action == Airlock::Action::"http.request", resource);
"#;

fn invoke(tool: &str, inner: Value) -> Value {
    json!({"op": "tools.invoke", "name": tool, "input": calls(inner)})
}

#[tokio::test]
async fn read_then_delegate_then_egress_is_denied_as_the_direct_path_is() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    let read = json!([
        {"op": "storage.put", "key": "hr/pay", "value": "1"},
        {"op": "storage.get", "key": "hr/pay"},
    ]);
    let egress = json!([{"op": "http.fetch", "url": "https://api.example.com/"}]);

    let mut direct = read.as_array().unwrap().clone();
    direct.extend(egress.as_array().unwrap().clone());
    let direct = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!(direct)),
            Trust::Medium,
        )
        .await;

    let mut delegated = read.as_array().unwrap().clone();
    delegated.push(invoke("courier", egress));
    let delegated = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!(delegated)),
            Trust::Medium,
        )
        .await;

    let last = |r: &airlock_runtime::RunReport| {
        let d = r
            .decisions
            .iter()
            .rfind(|d| d.action.as_str() == "http.request")
            .cloned()
            .unwrap();
        (d.decision.verdict, d.decision.policies, d.instance)
    };
    let (v1, p1, i1) = last(&direct);
    let (v2, p2, i2) = last(&delegated);
    assert_eq!(
        (v1, &p1),
        (
            Verdict::Deny,
            &vec!["base/no-egress-after-confidential-read".to_string()]
        )
    );
    assert_eq!(
        (v2, &p2),
        (v1, &p1),
        "the tool's egress is denied exactly as the direct one"
    );
    assert_ne!(i1, i2);
    // The denial happened in the tool's own instance.
    assert_ne!(i2, delegated.instance);
}

#[tokio::test]
async fn what_a_tool_reads_flows_back_into_the_callers_session() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([
                {"op": "storage.put", "key": "hr/pay", "value": "1"},
                invoke("reader", json!([{"op": "storage.get", "key": "hr/pay"}])),
                {"op": "http.fetch", "url": "https://api.example.com/"},
            ])),
            Trust::Medium,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let last = report.decisions.last().unwrap();
    assert_eq!(last.instance, report.instance);
    assert_eq!(
        last.decision.policies,
        ["base/no-egress-after-confidential-read"]
    );
}

#[tokio::test]
async fn labelled_data_copied_elsewhere_keeps_its_label_in_later_runs() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    let run = |calls_: Value| {
        let node = &node;
        async move {
            let report = node
                .run(skills::CAPABILITY_PROBE, &calls(calls_), Trust::Medium)
                .await;
            assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
            report
        }
    };
    let egress = json!({"op": "http.fetch", "url": "https://api.example.com/"});
    run(json!([{"op": "storage.put", "key": "public/clean", "value": "weather"}])).await;
    // Run 1 reads a confidential key and copies it to an unlabelled one:
    // everything it writes after the read carries the label.
    let first = run(json!([
        {"op": "storage.put", "key": "hr/pay", "value": "120000"},
        {"op": "storage.get", "key": "hr/pay"},
        {"op": "storage.put", "key": "public/copy", "value": "120000"},
    ]))
    .await;
    assert!(first.session.labels.contains("confidential"));
    // Run 2 reads the copy, then calls out: denied as a direct read would be.
    let second = run(json!([{"op": "storage.get", "key": "public/copy"}, egress])).await;
    assert_eq!(results(&second)[0], json!({"ok": "120000"}));
    let last = second.decisions.last().unwrap();
    assert_eq!(last.decision.verdict, Verdict::Deny);
    assert_eq!(
        last.decision.policies,
        ["base/no-egress-after-confidential-read"]
    );
    // Listing the copy's name is reading it too.
    let listed = run(json!([{"op": "storage.list", "prefix": "public/"}, egress])).await;
    assert_eq!(
        listed.decisions.last().unwrap().decision.verdict,
        Verdict::Deny
    );
    // A clean overwrite clears the label; what was never labelled stays clean.
    run(json!([{"op": "storage.put", "key": "public/copy", "value": "reset"}])).await;
    for key in ["public/copy", "public/clean"] {
        let after = run(json!([{"op": "storage.get", "key": key}, egress])).await;
        assert_eq!(
            after.decisions.last().unwrap().decision.verdict,
            Verdict::Allow,
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_low_trust_skill_cannot_reach_a_high_risk_tool_through_an_intermediate() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    for trust in [Trust::Low, Trust::Medium] {
        let direct = node
            .run(
                skills::CAPABILITY_PROBE,
                &calls(json!([{"op": "tools.invoke", "name": "deploy", "input": "{}"}])),
                trust,
            )
            .await;
        let through = node
            .run(
                skills::CAPABILITY_PROBE,
                &calls(json!([invoke(
                    "courier",
                    json!([{"op": "tools.invoke", "name": "deploy", "input": "{}"}])
                )])),
                trust,
            )
            .await;
        for report in [&direct, &through] {
            let deploy = report
                .decisions
                .iter()
                .find(|d| {
                    d.resource
                        == airlock_host_apis::Resource::Tool {
                            name: "deploy".into(),
                        }
                })
                .unwrap();
            assert_eq!(deploy.decision.verdict, Verdict::Deny);
            assert_eq!(
                deploy.decision.policies,
                ["base/high-risk-tools-need-high-trust"]
            );
        }
    }
    // A high-trust agent's skill reaches it both ways.
    let through = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([invoke(
                "courier",
                json!([{"op": "tools.invoke", "name": "deploy", "input": "{\"name\":\"ops\"}"}])
            )])),
            Trust::High,
        )
        .await;
    let inner: Value = serde_json::from_str(results(&through)[0]["ok"].as_str().unwrap()).unwrap();
    assert_eq!(inner["results"][0]["ok"], "{\"greeting\":\"hello, ops\"}");
}

#[tokio::test]
async fn a_tool_never_has_more_rights_than_its_caller() {
    // Egress is allowed for the courier tool only, not for its caller.
    let policies = r#"
@id("test/tools")
permit (principal, action == Airlock::Action::"tool.invoke", resource);

@id("test/courier-egress")
permit (principal, action == Airlock::Action::"http.request", resource)
when { principal.name == "courier" };
"#;
    let node = TestNode::new(TOOLS, &[("p.cedar", policies)]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([invoke(
                "courier",
                json!([{"op": "http.fetch", "url": "https://api.example.com/"}])
            )])),
            Trust::Medium,
        )
        .await;
    let egress = report
        .decisions
        .iter()
        .find(|d| d.action.as_str() == "http.request")
        .unwrap();
    assert_eq!(egress.decision.verdict, Verdict::Deny);
    assert_eq!(
        egress.decision.reason.as_deref(),
        Some("not allowed for the calling skill `capability_probe`")
    );
}

#[tokio::test]
async fn tool_cycles_are_refused() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([invoke("loop", json!([invoke("loop", json!([]))]))])),
            Trust::Medium,
        )
        .await;
    let outer: Value = serde_json::from_str(results(&report)[0]["ok"].as_str().unwrap()).unwrap();
    let refused = &outer["results"][0];
    assert_eq!(refused["error"], "denied");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("capability_probe -> loop -> loop"),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("`tool.invoke` on Tool `loop` denied by policy `guard:tool-cycle`"),
        "{refused}"
    );
}

#[tokio::test]
async fn delegation_past_depth_three_is_denied_by_policy() {
    let node = TestNode::new(TOOLS, &[("p.cedar", TOOL_POLICIES)]);
    // capability_probe (0) -> courier (1) -> reader (2) -> loop (3) -> relay (4).
    // Calls made at depth 3 are allowed; calls made at depth 4 are not.
    let relay = invoke("relay", json!([{"op": "storage.get", "key": "deep"}]));
    let lp = invoke(
        "loop",
        json!([{"op": "storage.get", "key": "three"}, relay]),
    );
    let chain = invoke("courier", json!([invoke("reader", json!([lp]))]));
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([chain])),
            Trust::High,
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let read = |key: &str| {
        report
            .decisions
            .iter()
            .find(|d| matches!(&d.resource, airlock_host_apis::Resource::Object { key: k, .. } if k == key))
            .map(|d| (d.skill.clone(), d.decision.verdict, d.decision.policies.clone()))
            .unwrap()
    };
    assert_eq!(
        read("three"),
        ("loop".into(), Verdict::Allow, vec!["test/data".to_string()])
    );
    assert_eq!(
        read("deep"),
        (
            "relay".into(),
            Verdict::Deny,
            vec!["base/delegation-depth".to_string()]
        )
    );
}

#[tokio::test]
async fn delegation_past_the_runtime_cap_is_refused_before_running() {
    let config = TOOLS.replace("max_depth = 5", "max_depth = 2");
    let node = TestNode::new(&config, &[("p.cedar", TOOL_POLICIES)]);
    let chain = invoke(
        "courier",
        json!([invoke("reader", json!([invoke("loop", json!([]))]))]),
    );
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &calls(json!([chain])),
            Trust::High,
        )
        .await;
    let courier: Value = serde_json::from_str(results(&report)[0]["ok"].as_str().unwrap()).unwrap();
    let reader: Value =
        serde_json::from_str(courier["results"][0]["ok"].as_str().unwrap()).unwrap();
    let refused = &reader["results"][0];
    assert_eq!(refused["error"], "limit", "{refused}");
    assert_eq!(
        refused["message"],
        "tool calls nest at most 2 deep; this one would be 3"
    );
    assert!(
        !report.decisions.iter().any(|d| d.skill == "loop"),
        "loop never ran"
    );
}
