//! One policy-checked host call round trip from inside a guest (a
//! `storage.get` the policy allows, answered from memory), with 10, 1,000 and
//! 10,000 policies loaded: Airlock's indexed evaluation against Cedar
//! evaluating the whole set, in the same run. Round trips are timed by the
//! guest itself, less the cost of reading its clock.
//!
//! Run with `cargo bench -p airlock-tests --bench policy` (and
//! `RUST_BACKTRACE` unset).

use std::sync::Arc;

use airlock_host_apis::storage::{Listing, Storage, Stored};
use airlock_host_apis::{
    AgentIdentity, Broker, CallError, CapabilityRequest, Decision, Prepared, SessionState, Subject,
    Trust,
};
use airlock_policy::{Policies, SourceFile};
use airlock_runtime::SkillDigest;
use airlock_runtime::broker::PolicyBroker;
use airlock_runtime::config::{Config, PolicyMode};
use airlock_runtime::engine::{Engine, EngineConfig};
use airlock_runtime::run::{RunStatus, Services};
use airlock_tests::{request, skills, wasm};
use serde_json::{Value, json};

/// Answers every read with "no such key", at once.
struct Empty;

#[async_trait::async_trait]
impl Storage for Empty {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Stored>, CallError> {
        Ok(None)
    }
    async fn put(&self, _: &str, _: &str, _: Vec<u8>, _: Vec<String>) -> Result<(), CallError> {
        Ok(())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<bool, CallError> {
        Ok(false)
    }
    async fn list(&self, _: &str, _: &str) -> Result<Listing, CallError> {
        Ok(Listing::default())
    }
    fn classification(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// Allows everything without evaluating anything: the floor.
struct AllowAll;

impl Broker for AllowAll {
    fn decide(
        &self,
        _: &Prepared,
        _: &Subject,
        _: &SessionState,
        _: &CapabilityRequest,
    ) -> Decision {
        Decision::allow(vec!["bench/allow-all".into()])
    }
}

/// `n` policies: one allowing the benchmarked skill to read, and `n - 1`
/// for other skills and actions, the shape of a fleet's policy set.
fn policies(n: usize, digest: &str) -> Policies {
    let actions = [
        "storage.read",
        "storage.write",
        "http.request",
        "tool.invoke",
    ];
    let mut text = format!(
        "@id(\"bench/allow\")\npermit (principal == Airlock::Skill::\"{digest}\", action == Airlock::Action::\"storage.read\", resource)\nwhen {{ context.key like \"k*\" && context.agent_trust_level >= 2 }};\n"
    );
    for i in 1..n {
        let action = actions[i % actions.len()];
        text.push_str(&format!(
            "@id(\"bench/{i}\")\npermit (principal == Airlock::Skill::\"{i:064x}\", action == Airlock::Action::\"{action}\", resource)\nwhen {{ context.agent_trust_level >= 1 }};\n"
        ));
    }
    Policies::from_files(&[SourceFile {
        name: "bench.cedar".into(),
        text,
    }])
    .unwrap()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// p50 and p99 of one round trip, in µs, as the guest saw them.
async fn measure(engine: &Engine, services: &Services, count: usize) -> (f64, f64) {
    let skill = engine.load(&wasm(skills::CAPABILITY_PROBE)).unwrap();
    let input = json!({"calls": [{"op": "timed", "key": "k1", "count": count}]}).to_string();
    let mut req = request("capability_probe", &input);
    req.subject.agent = AgentIdentity {
        id: "bench".into(),
        trust: Trust::Medium,
    };
    req.limits.host_calls = count as u64 + 10;
    req.limits.deadline = std::time::Duration::from_secs(600);
    let report = engine.run(&skill, req, services).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert!(
        report
            .decisions
            .iter()
            .all(|d| d.decision.verdict == airlock_host_apis::Verdict::Allow)
    );
    let output: Value = serde_json::from_str(report.output.as_deref().unwrap()).unwrap();
    let ok = &output["results"][0]["ok"];
    let mut clock: Vec<u64> = serde_json::from_value(ok["clock"].clone()).unwrap();
    clock.sort_unstable();
    let overhead = percentile(&clock, 0.5);
    let mut nanos: Vec<u64> = serde_json::from_value::<Vec<u64>>(ok["nanos"].clone())
        .unwrap()
        .into_iter()
        .map(|n| n.saturating_sub(overhead))
        .collect();
    nanos.sort_unstable();
    (
        percentile(&nanos, 0.5) as f64 / 1e3,
        percentile(&nanos, 0.99) as f64 / 1e3,
    )
}

fn main() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        eprintln!("note: RUST_BACKTRACE is set; error paths will cost more than they should");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new(EngineConfig {
        max_instances: 8,
        ..EngineConfig::default()
    })
    .unwrap();
    let digest = SkillDigest::of(&wasm(skills::CAPABILITY_PROBE)).to_hex();
    let config = Arc::new(Config::default());
    let services = |broker: Arc<dyn Broker>| Services {
        broker,
        storage: Arc::new(Empty),
        ..Services::default()
    };

    rt.block_on(async {
        let (p50, p99) = measure(&engine, &services(Arc::new(AllowAll)), 20_000).await;
        println!("policy-checked host call round trip (storage.get from the guest)");
        println!("  no policy engine (allow all)        p50 {p50:6.2} µs   p99 {p99:6.2} µs");
        let mut indexed_p50 = Vec::new();
        for n in [10usize, 1_000, 10_000] {
            let policies = Arc::new(policies(n, &digest));
            let loaded = policies.ids().len();
            let broker: Arc<dyn Broker> =
                Arc::new(PolicyBroker::new(policies.clone(), config.clone(), PolicyMode::Enforce));
            // Loading thousands of policies leaves the allocator busy for a
            // while: warm up as long as the measurement.
            measure(&engine, &services(broker.clone()), 20_000).await;
            let (p50, p99) = measure(&engine, &services(broker), 20_000).await;
            indexed_p50.push(p50);
            // The whole set is slow at size: fewer samples.
            let samples = (200_000 / n).clamp(50, 20_000);
            let (w50, w99) = if std::env::var_os("AIRLOCK_BENCH_INDEXED_ONLY").is_some() {
                (f64::NAN, f64::NAN)
            } else {
                let whole =
                    PolicyBroker::new(policies, config.clone(), PolicyMode::Enforce).unindexed();
                measure(&engine, &services(Arc::new(whole)), samples).await
            };
            println!(
                "  {loaded:>6} policies  airlock (indexed)  p50 {p50:6.2} µs   p99 {p99:6.2} µs   |   Cedar, whole set  p50 {w50:9.2} µs   p99 {w99:9.2} µs"
            );
        }
        println!(
            "  growth of p50 from 10 to 10,000 policies: {:.2}x (target: at most 1.2x; p50 under 10 µs, p99 under 25 µs)",
            indexed_p50[2] / indexed_p50[0]
        );
    });
}
