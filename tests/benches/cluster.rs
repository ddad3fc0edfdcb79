//! Revocation propagation on loopback: how long after a node starts a
//! quarantine another node's running instances hear of it (the moment its
//! `Registry::held` resolves, which stops them). One `nats-server -js`, two
//! nodes' connections, one skill quarantined and approved again in turn.
//!
//! Queued-run throughput: `hello` runs queued from one connection and served
//! by one node, then by three nodes in the same process (the same 2 cores).
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

const QUEUED: usize = 2_000;
const IN_FLIGHT: usize = 256;

/// Queued runs per second with `serving` nodes, each taking 16 at a time.
async fn queued_throughput(serving: usize) -> Option<f64> {
    use airlock_runtime::cluster::{QueuedRun, RunOutcome};
    let server = NatsServer::start()?;
    let config = ClusterConfig {
        url: server.url(),
        ..ClusterConfig::default()
    };
    let front = Cluster::connect(&config).await.expect("a connection");
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for i in 0..serving {
        let cluster = Cluster::connect(&config).await.expect("a node");
        let node = airlock_tests::TestNode::with_registry("", &[], Arc::new(cluster.clone()));
        servers.push(cluster.serve_runs(
            node.node.clone(),
            format!("node-{i}"),
            16,
            Duration::from_secs(30),
        ));
        nodes.push(node);
    }
    let bytes = wasm(skills::HELLO);
    let (record, _) = nodes[0]
        .node
        .admit(
            bytes,
            Submission {
                name: "hello".into(),
                agent: "planner".into(),
                submitter: "alice".into(),
                ..Submission::default()
            },
        )
        .await
        .expect("admits");
    nodes[0]
        .node
        .approve(record.digest, "bob", None)
        .await
        .expect("approves");
    let room = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(QUEUED);
    for i in 0..QUEUED {
        let permit = room.clone().acquire_owned().await.expect("room");
        let front = front.clone();
        let run = QueuedRun {
            id: format!("bench-{serving}-{i}"),
            digest: record.digest,
            input: r#"{"name": "Ada"}"#.into(),
            task: Default::default(),
            limits: airlock_runtime::Limits::default(),
        };
        waiting.push(tokio::spawn(async move {
            let outcome = front.queue_run(&run, Duration::from_secs(120)).await;
            drop(permit);
            matches!(outcome, Ok(RunOutcome::Done { .. }))
        }));
    }
    let mut done = 0;
    for waiter in waiting {
        done += usize::from(waiter.await.expect("a waiter"));
    }
    let elapsed = started.elapsed();
    assert_eq!(done, QUEUED, "queued runs were lost");
    for server in servers {
        server.abort();
    }
    Some(QUEUED as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() {
    for serving in [1, 3] {
        match queued_throughput(serving).await {
            Some(rate) => println!(
                "queued runs, {serving} node(s) serving, {IN_FLIGHT} in flight: {rate:.0} runs/s ({QUEUED} runs)"
            ),
            None => println!("nats-server is not installed: nothing measured"),
        }
    }
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
