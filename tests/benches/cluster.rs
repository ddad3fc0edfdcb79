//! Revocation propagation on loopback: how long after a node starts a
//! quarantine another node's running instances hear of it (the moment its
//! `Registry::held` resolves, which stops them). One `nats-server -js`, two
//! nodes' connections, one skill quarantined and approved again in turn.
//!
//! Run with `cargo bench -p airlock-tests --bench cluster` (needs
//! `nats-server`; `RUST_BACKTRACE` unset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_runtime::admission::registry::Registry;
use airlock_runtime::admission::{AdmissionConfig, Submission};
use airlock_runtime::cluster::{Cluster, ClusterConfig};
use airlock_tests::nats::NatsServer;
use airlock_tests::{skills, wasm};

const ROUNDS: usize = 500;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let Some(server) = NatsServer::start() else {
        println!("nats-server is not installed: nothing measured");
        return;
    };
    let config = ClusterConfig {
        url: server.url(),
        ..ClusterConfig::default()
    };
    let a = Cluster::connect(&config).await.expect("node A");
    let c = Arc::new(Cluster::connect(&config).await.expect("node C"));
    let bytes = wasm(skills::HELLO);
    let inspection = airlock_runtime::inspect::inspect(&bytes, 1 << 27).expect("inspects");
    let submission = Submission {
        name: "hello".into(),
        agent: "planner".into(),
        submitter: "alice".into(),
        ..Submission::default()
    };
    let (record, _) = a
        .admit(&bytes, &inspection, &submission, None)
        .await
        .expect("admits");
    let digest = record.digest;
    let admission = AdmissionConfig::default();
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        a.approve(&digest, "bob", Duration::from_secs(3600), &admission)
            .await
            .expect("approves");
        let waiter = c.clone();
        let heard = tokio::spawn(async move {
            Registry::held(waiter.as_ref(), &digest).await;
            Instant::now()
        });
        // Let the waiter look first, as a running instance already has.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        a.quarantine(&digest, "monitor", &format!("round {round}"))
            .await
            .expect("quarantines");
        let heard = heard.await.expect("the waiter ends");
        samples.push(heard.saturating_duration_since(started));
    }
    samples.sort();
    println!(
        "revocation propagation, loopback, {ROUNDS} rounds: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(samples[ROUNDS / 2]),
        ms(samples[ROUNDS * 99 / 100]),
        ms(samples[ROUNDS - 1])
    );
}
