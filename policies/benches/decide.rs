//! The cost of one decision, without wasm: `Policies::decide` with 10, 1,000
//! and 10,000 policies, indexed and whole-set. Prints figures.
//!
//! `cargo bench -p airlock-policy --bench decide`

// A benchmark: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use airlock_policy::{
    Action, CallInput, Policies, PrincipalInput, Query, ResourceInput, SessionInput, SourceFile,
    SubjectInput, TaskInput,
};

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

/// p50 and p99 after a warm-up as long as the measurement: loading
/// thousands of policies leaves the allocator busy for a while.
fn time(samples: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..samples {
        f();
    }
    let mut t: Vec<Duration> = (0..samples)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[t.len() * 99 / 100])
}

fn main() {
    let digest = "ab".repeat(32);
    let subject = SubjectInput {
        principal: PrincipalInput {
            digest: digest.clone(),
            name: "bench".into(),
            approved: true,
            labels: BTreeSet::new(),
            agent: "agent".into(),
            trust: "medium".into(),
            trust_level: 2,
        },
        task: TaskInput {
            id: "t".into(),
            intent: "bench".into(),
            sensitivity: "internal".into(),
            sensitivity_level: 1,
            environment: "bench".into(),
        },
        delegation_depth: 0,
        delegation_chain: BTreeSet::new(),
    };
    let resource = ResourceInput::Object {
        namespace: "team".into(),
        key: "k1".into(),
        classification: "none".into(),
    };
    let call = CallInput::Storage { key: "k1".into() };
    let labels: BTreeSet<String> = ["internal".to_string()].into();
    let session = SessionInput {
        labels: &labels,
        calls: 3,
        ..SessionInput::default()
    };
    let query = Query {
        action: Action::StorageRead,
        resource: &resource,
        call: &call,
        session,
    };
    for n in [10, 1_000, 10_000] {
        let policies = policies(n, &digest);
        let prepared = policies.prepare(&subject);
        assert!(policies.decide(&prepared, &query).allowed);
        let (p50, p99) = time(20_000, || {
            std::hint::black_box(policies.decide(&prepared, &query));
        });
        let samples = (100_000 / n).clamp(20, 20_000);
        let (w50, w99) = time(samples, || {
            std::hint::black_box(policies.decide_unindexed(&prepared, &query));
        });
        println!(
            "{n:>6} policies: indexed p50 {:6.2} µs p99 {:6.2} µs | whole set p50 {:9.2} µs p99 {:9.2} µs",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            w50.as_secs_f64() * 1e6,
            w99.as_secs_f64() * 1e6
        );
    }
}
