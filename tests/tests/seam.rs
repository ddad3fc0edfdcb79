//! The broker seam, driven from inside a guest: a fake broker and fake
//! backends plug in through the same traits the runtime uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use airlock_host_apis::http::{Egress, InboundResponse, OutboundRequest};
use airlock_host_apis::secrets::Credentials;
use airlock_host_apis::storage::{Listing, Storage, Stored};
use airlock_host_apis::tools::{Caller, Tools};
use airlock_host_apis::{
    Action, Broker, CallError, CapabilityRequest, Decision, Outcome, Prepared, SessionState,
    Subject, Verdict,
};
use airlock_runtime::run::{RunStatus, Services};
use airlock_tests::{request, run_with, skills};
use serde_json::{Value, json};

/// Allows everything, and notes how much thread stack it had each time.
#[derive(Default)]
struct AllowAll {
    stacks: Mutex<Vec<Option<usize>>>,
}

impl Broker for AllowAll {
    fn decide(
        &self,
        _: &Prepared,
        _: &Subject,
        _: &SessionState,
        _: &CapabilityRequest,
    ) -> Decision {
        self.stacks.lock().unwrap().push(stacker::remaining_stack());
        Decision::allow(vec!["test/allow-all".into()])
    }
}

#[derive(Default)]
struct MemoryStorage(Mutex<BTreeMap<String, Stored>>);

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Stored>, CallError> {
        Ok(self.0.lock().unwrap().get(&format!("{ns}/{key}")).cloned())
    }
    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        labels: Vec<String>,
    ) -> Result<(), CallError> {
        let stored = Stored { value, labels };
        self.0.lock().unwrap().insert(format!("{ns}/{key}"), stored);
        Ok(())
    }
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, CallError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .remove(&format!("{ns}/{key}"))
            .is_some())
    }
    async fn list(&self, ns: &str, prefix: &str) -> Result<Listing, CallError> {
        let prefix = format!("{ns}/{prefix}");
        let map = self.0.lock().unwrap();
        let listed: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
        Ok(Listing {
            keys: listed
                .iter()
                .map(|(k, _)| k[ns.len() + 1..].to_string())
                .collect(),
            labels: listed.iter().flat_map(|(_, s)| s.labels.clone()).collect(),
        })
    }
    fn classification(&self, _: &str, key: &str) -> Option<String> {
        key.starts_with("hr/").then(|| "confidential".to_string())
    }
}

struct CannedEgress;

#[async_trait::async_trait]
impl Egress for CannedEgress {
    async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError> {
        Ok(InboundResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("{} {}", request.method, request.url).into_bytes(),
            peer: None,
        })
    }
}

struct FixedToken;

#[async_trait::async_trait]
impl Credentials for FixedToken {
    async fn mint(
        &self,
        subject: &Subject,
        name: &str,
        audience: &str,
    ) -> Result<String, CallError> {
        Ok(format!("token:{name}:{audience}:{}", subject.instance))
    }

    fn started(&self, _: &Subject, _: std::time::SystemTime) {}

    async fn attach(
        &self,
        _: &Subject,
        name: &str,
        _: &OutboundRequest,
    ) -> Result<airlock_host_apis::secrets::Attached, CallError> {
        Err(airlock_host_apis::secrets::unknown_credential(name))
    }

    fn leak(&self, _: &str, _: &[u8], _: Option<&str>) -> Option<String> {
        None
    }

    fn redact(&self, _: &str, _: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn ended(&self, _: &str) -> Option<airlock_host_apis::secrets::Revocation> {
        None
    }
}

struct Echo;

#[async_trait::async_trait]
impl Tools for Echo {
    async fn invoke(&self, caller: Caller, name: &str, input: String) -> Result<String, CallError> {
        Ok(format!(
            "{name} for {} got {input}",
            caller.subject.skill.name
        ))
    }
}

fn services(broker: Arc<dyn Broker>) -> Services {
    Services {
        broker,
        egress: Arc::new(CannedEgress),
        storage: Arc::new(MemoryStorage::default()),
        credentials: Arc::new(FixedToken),
        tools: Arc::new(Echo),
        ..Services::default()
    }
}

#[tokio::test]
async fn allowed_calls_reach_their_backends_through_the_broker() {
    let broker = Arc::new(AllowAll::default());
    let calls = json!({"calls": [
        {"op": "storage.put", "key": "hr/salaries", "value": "42"},
        {"op": "storage.get", "key": "hr/salaries"},
        {"op": "storage.list", "prefix": "hr/"},
        {"op": "storage.delete", "key": "hr/salaries"},
        {"op": "storage.get", "key": "hr/salaries"},
        {"op": "http.fetch", "method": "POST", "url": "https://api.example.com/v1"},
        {"op": "wasi-http", "authority": "api.example.com", "path": "/v2"},
        {"op": "secrets.mint", "name": "github", "audience": "api.github.com"},
        {"op": "tools.invoke", "name": "summarize", "input": "{\"n\":1}"},
    ]});
    let report = run_with(
        skills::CAPABILITY_PROBE,
        request("capability_probe", &calls.to_string()),
        &services(broker.clone()),
    )
    .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let output: Value = serde_json::from_str(&report.output.unwrap_or_default()).unwrap();
    let results = &output["results"];
    assert_eq!(results[0], json!({"ok": null}));
    assert_eq!(results[1], json!({"ok": "42"}));
    assert_eq!(results[2], json!({"ok": ["hr/salaries"]}));
    assert_eq!(results[3], json!({"ok": true}));
    assert_eq!(results[4], json!({"ok": null}));
    assert_eq!(results[5]["ok"]["status"], 200);
    assert_eq!(results[5]["ok"]["body"], "POST https://api.example.com/v1");
    assert_eq!(
        results[6],
        json!({"ok": {"status": 200, "body": "GET https://api.example.com/v2"}})
    );
    let token = results[7]["ok"].as_str().unwrap();
    assert!(token.starts_with("token:github:api.github.com:"), "{token}");
    assert_eq!(
        results[8],
        json!({"ok": "summarize for capability_probe got {\"n\":1}"})
    );

    assert_eq!(report.decisions.len(), 9);
    for record in &report.decisions {
        assert_eq!(record.decision.verdict, Verdict::Allow);
        assert_eq!(record.decision.policies, ["test/allow-all"]);
        assert!(matches!(record.outcome, Outcome::Done { .. }), "{record:?}");
    }
    assert_eq!(report.decisions[0].action, Action::StorageWrite);
    // Reading a labelled key put its label on the session; minting noted the secret.
    assert!(report.session.labels.contains("confidential"));
    assert!(report.session.secrets_used.contains("github"));
    assert_eq!(report.session.calls, 9);
}

#[tokio::test]
async fn decisions_run_on_a_real_thread_stack_not_the_guest_fiber() {
    let broker = Arc::new(AllowAll::default());
    let calls = json!({"calls": [
        {"op": "storage.get", "key": "a"},
        {"op": "http.fetch", "url": "https://example.com/"},
        {"op": "wasi-http", "authority": "example.com"},
    ]});
    let report = run_with(
        skills::CAPABILITY_PROBE,
        request("capability_probe", &calls.to_string()),
        &services(broker.clone()),
    )
    .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let stacks = broker.stacks.lock().unwrap().clone();
    assert_eq!(stacks.len(), 3);
    for remaining in stacks {
        // A policy engine checking its stack sees a real thread's: at least
        // the 100 KiB Cedar asks for, and no more than a thread can have.
        let remaining = remaining.expect("stack limit known");
        assert!(
            (100 << 10..=64 << 20).contains(&remaining),
            "remaining stack {remaining}"
        );
    }
}
