//! Policy tests as data: every `scenarios/*.toml` is a policy set (the base
//! guard rails plus listed files and inline policies) and cases, each a
//! request with its expected decision and deciding policy ids. Both the
//! indexed and the unindexed evaluation must give the expected answer.

// Test code: a broken fixture should fail loudly.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::Path;

use airlock_policy::{
    Action, CallInput, Policies, PrincipalInput, Query, ResourceInput, SessionInput, SourceFile,
    SubjectInput, TaskInput,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    policy: Vec<Inline>,
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inline {
    name: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    action: String,
    resource: ResourceSpec,
    #[serde(default)]
    principal: PrincipalSpec,
    #[serde(default)]
    task: TaskSpec,
    #[serde(default)]
    session: SessionSpec,
    #[serde(default)]
    delegation: i64,
    call: Option<CallSpec>,
    expect: String,
    policies: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResourceSpec {
    host: Option<String>,
    #[serde(default)]
    sinks: Vec<String>,
    object: Option<String>,
    classification: Option<String>,
    secret: Option<String>,
    tool: Option<String>,
    risk: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PrincipalSpec {
    name: String,
    digest: String,
    agent: String,
    trust: String,
    approved: bool,
    labels: Vec<String>,
}

impl Default for PrincipalSpec {
    fn default() -> Self {
        PrincipalSpec {
            name: "skill".into(),
            digest: "0".repeat(64),
            agent: "agent".into(),
            trust: "medium".into(),
            approved: true,
            labels: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TaskSpec {
    id: String,
    intent: String,
    sensitivity: String,
    environment: String,
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            id: "task-1".into(),
            intent: "testing".into(),
            sensitivity: "internal".into(),
            environment: "test".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct SessionSpec {
    labels: Vec<String>,
    secrets_used: Vec<String>,
    hosts_contacted: Vec<String>,
    calls: i64,
    bytes_out: i64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CallSpec {
    method: Option<String>,
    url: Option<String>,
    key: Option<String>,
    audience: Option<String>,
    destination: Option<String>,
    input_bytes: Option<i64>,
}

fn level(names: &[&str], name: &str) -> i64 {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("unknown level `{name}`")) as i64
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// `scheme://host[:port]/path` into its parts.
fn split_url(url: &str) -> (String, String, i64, String) {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().expect("port")),
        None => (authority, default),
    };
    (scheme.into(), host.into(), port, path.into())
}

fn run_case(policies: &Policies, case: &Case) -> Result<(), String> {
    let action: Action = case.action.parse()?;
    let r = &case.resource;
    let resource = if let Some(host) = &r.host {
        ResourceInput::Host {
            name: host.clone(),
            sinks: set(&r.sinks),
        }
    } else if let Some(object) = &r.object {
        let (namespace, key) = object.split_once('/').expect("object is namespace/key");
        ResourceInput::Object {
            namespace: namespace.into(),
            key: key.into(),
            classification: r.classification.clone().unwrap_or_else(|| "none".into()),
        }
    } else if let Some(secret) = &r.secret {
        ResourceInput::Secret {
            name: secret.clone(),
            classification: r.classification.clone().unwrap_or_else(|| "secret".into()),
        }
    } else if let Some(tool) = &r.tool {
        let risk = r.risk.clone().unwrap_or_else(|| "low".into());
        ResourceInput::Tool {
            name: tool.clone(),
            risk_level: level(&["low", "medium", "high"], &risk),
            risk,
        }
    } else {
        return Err("resource names nothing".into());
    };
    let spec = case.call.as_ref();
    let field = |f: fn(&CallSpec) -> Option<String>| spec.and_then(f);
    let call = match action {
        Action::HttpRequest => {
            let url = field(|c| c.url.clone()).unwrap_or_else(|| match &resource {
                ResourceInput::Host { name, .. } => format!("https://{name}/"),
                _ => String::new(),
            });
            let (scheme, _, port, path) = split_url(&url);
            CallInput::Http {
                method: field(|c| c.method.clone()).unwrap_or_else(|| "GET".into()),
                scheme,
                port,
                path,
            }
        }
        Action::StorageRead
        | Action::StorageWrite
        | Action::StorageDelete
        | Action::StorageList => {
            let key = match &resource {
                ResourceInput::Object { key, .. } => key.clone(),
                _ => String::new(),
            };
            CallInput::Storage {
                key: field(|c| c.key.clone()).unwrap_or(key),
            }
        }
        Action::SecretUse => {
            let destination =
                field(|c| c.destination.clone()).unwrap_or_else(|| "https://example.com/".into());
            let (scheme, host, port, path) = split_url(&destination);
            CallInput::SecretUse {
                scheme,
                host,
                port,
                path,
            }
        }
        Action::SecretMint => CallInput::Mint {
            audience: field(|c| c.audience.clone()).unwrap_or_else(|| "api.example.com".into()),
        },
        Action::ToolInvoke => CallInput::Tool {
            input_bytes: spec.and_then(|c| c.input_bytes).unwrap_or(2),
        },
    };
    let p = &case.principal;
    let t = &case.task;
    let subject = SubjectInput {
        principal: PrincipalInput {
            digest: p.digest.clone(),
            name: p.name.clone(),
            approved: p.approved,
            labels: set(&p.labels),
            agent: p.agent.clone(),
            trust: p.trust.clone(),
            trust_level: level(&["untrusted", "low", "medium", "high"], &p.trust),
        },
        task: TaskInput {
            id: t.id.clone(),
            intent: t.intent.clone(),
            sensitivity_level: level(
                &["public", "internal", "confidential", "secret"],
                &t.sensitivity,
            ),
            sensitivity: t.sensitivity.clone(),
            environment: t.environment.clone(),
        },
        delegation_depth: case.delegation,
        delegation_chain: BTreeSet::new(),
    };
    let s = &case.session;
    let (labels, secrets_used, hosts_contacted) = (
        set(&s.labels),
        set(&s.secrets_used),
        set(&s.hosts_contacted),
    );
    let session = SessionInput {
        labels: &labels,
        secrets_used: &secrets_used,
        hosts_contacted: &hosts_contacted,
        calls: s.calls,
        bytes_out: s.bytes_out,
    };
    let prepared = policies.prepare(&subject);
    let query = Query {
        action,
        resource: &resource,
        call: &call,
        session,
    };
    let want_allow = match case.expect.as_str() {
        "allow" => true,
        "deny" => false,
        other => return Err(format!("expect must be allow or deny, not `{other}`")),
    };
    for (how, answer) in [
        ("indexed", policies.decide(&prepared, &query)),
        ("unindexed", policies.decide_unindexed(&prepared, &query)),
    ] {
        if answer.allowed != want_allow || answer.policies != case.policies {
            return Err(format!(
                "{how}: expected {} by {:?}, got {} by {:?} ({:?})",
                case.expect,
                case.policies,
                if answer.allowed { "allow" } else { "deny" },
                answer.policies,
                answer.reason
            ));
        }
    }
    Ok(())
}

#[test]
fn scenarios() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut entries: Vec<_> = std::fs::read_dir(root.join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty());
    for path in entries {
        let scenario: Scenario = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut files: Vec<SourceFile> = scenario
            .files
            .iter()
            .map(|f| SourceFile {
                name: f.clone(),
                text: std::fs::read_to_string(root.join(f)).unwrap(),
            })
            .collect();
        files.extend(scenario.policy.iter().map(|p| SourceFile {
            name: p.name.clone(),
            text: p.text.clone(),
        }));
        let policies = Policies::from_files(&files)
            .unwrap_or_else(|e| panic!("{}: policies do not load:\n{e}", path.display()));
        for case in &scenario.case {
            cases += 1;
            if let Err(e) = run_case(&policies, case) {
                failures.push(format!("{} / {}: {e}", path.display(), case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
