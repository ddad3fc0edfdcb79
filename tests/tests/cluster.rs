//! Nodes sharing one control plane on a real `nats-server -js`: a skill
//! admitted on one node is approved on another and loaded and run on a
//! third, under the same rules as the embedded store; a changed shared
//! component is refused; racing changes never bring a revoked skill back;
//! every node sees a hold as it happens.

use std::time::Duration;

use airlock_runtime::admission::{AdmissionConfig, State, Submission};
use airlock_runtime::cluster::{COMPONENTS_BUCKET, Cluster, ClusterConfig};
use airlock_runtime::digest::SkillDigest;
use airlock_runtime::inspect::Inspection;
use airlock_runtime::run::{RunStatus, Services};
use airlock_tests::nats::NatsServer;
use airlock_tests::{engine, request, skills, wasm};
use futures_util::StreamExt;

async fn node(server: &NatsServer) -> Cluster {
    Cluster::connect(&ClusterConfig {
        url: server.url(),
        ..ClusterConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn component(path: &str) -> (Vec<u8>, Inspection) {
    let bytes = wasm(path);
    let inspection = airlock_runtime::inspect::inspect(&bytes, 128 << 20).unwrap();
    (bytes, inspection)
}

fn submission(name: &str) -> Submission {
    Submission {
        name: name.into(),
        agent: "planner".into(),
        submitter: "alice".into(),
        ..Submission::default()
    }
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

#[tokio::test(flavor = "multi_thread")]
async fn admitted_on_one_node_approved_on_another_and_run_on_a_third() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, b, c) = (
        node(&server).await,
        node(&server).await,
        node(&server).await,
    );
    let (bytes, inspection) = component(skills::HELLO);
    let config = AdmissionConfig::default();

    let (record, fresh) = a
        .admit(&bytes, &inspection, &submission("hello"), None)
        .await
        .unwrap();
    assert!(fresh);
    assert_eq!(record.state, State::Pending);
    let (again, fresh) = b
        .admit(&bytes, &inspection, &submission("other name"), None)
        .await
        .unwrap();
    assert!(!fresh, "the same bytes are the same skill on every node");
    assert_eq!(again.name, "hello");

    // The embedded store's rules hold on the shared one.
    let own = b.approve(&record.digest, "alice", WEEK, &config).await;
    assert!(
        own.as_ref()
            .is_err_and(|e| e.to_string().contains("cannot approve it")),
        "{own:?}"
    );
    let too_long = b.approve(&record.digest, "bob", WEEK * 520, &config).await;
    assert!(too_long.is_err());
    let approved = b
        .approve(&record.digest, "bob", WEEK, &config)
        .await
        .unwrap();
    assert_eq!(
        (approved.from, approved.record.state),
        (State::Pending, State::Approved)
    );

    let seen = c.get(&record.digest).await.unwrap().unwrap();
    assert_eq!(seen.state, State::Approved);
    assert_eq!(seen.reviewer.as_deref(), Some("bob"));
    assert!(seen.refusal().is_none());
    let loaded = c.load(&record.digest, 128 << 20).await.unwrap();
    assert_eq!(loaded, bytes);
    let skill = engine().load(&loaded).unwrap();
    let report = engine()
        .run(
            &skill,
            request("hello", r#"{"name": "Ada"}"#),
            &Services::default(),
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!(
        report.output.as_deref(),
        Some(r#"{"greeting":"hello, Ada"}"#)
    );

    let history = c.history(&record.digest).await.unwrap();
    let steps: Vec<(Option<&str>, &str, &str)> = history
        .iter()
        .map(|t| (t.from.as_deref(), t.to.as_str(), t.actor.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (None, "pending", "alice"),
            (Some("pending"), "approved", "bob")
        ]
    );
    let listed = a.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, State::Approved);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_shared_component_is_refused_at_load() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let a = node(&server).await;
    let (bytes, inspection) = component(skills::HELLO);
    let (record, _) = a
        .admit(&bytes, &inspection, &submission("hello"), None)
        .await
        .unwrap();
    // Someone with write access to the bucket swaps the object's bytes.
    let client = async_nats::connect(server.url()).await.unwrap();
    let store = async_nats::jetstream::new(client)
        .get_object_store(COMPONENTS_BUCKET)
        .await
        .unwrap();
    let other = wasm(skills::WORD_COUNT);
    let mut reader = other.as_slice();
    store
        .put(record.digest.to_hex().as_str(), &mut reader)
        .await
        .unwrap();
    let refused = a.load(&record.digest, 128 << 20).await.unwrap_err();
    assert!(refused.to_string().contains("has changed"), "{refused}");
    // And an object over the size limit is not read at all.
    let big = a.load(&record.digest, 1024).await.unwrap_err();
    assert!(big.to_string().contains("larger than 1024 bytes"), "{big}");
    let missing = SkillDigest::of(b"never stored");
    assert!(a.load(&missing, 1 << 20).await.is_err());
}

/// Approvals from two nodes race a revocation from a third. Whatever the
/// order, the skill ends revoked and nothing was approved after the
/// revocation: each change was written against the revision it checked.
#[tokio::test(flavor = "multi_thread")]
async fn racing_changes_never_bring_a_revoked_skill_back() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, b, c) = (
        node(&server).await,
        node(&server).await,
        node(&server).await,
    );
    let config = AdmissionConfig::default();
    for path in [skills::HELLO, skills::WORD_COUNT, skills::NOTES] {
        let (bytes, inspection) = component(path);
        let (record, _) = a
            .admit(&bytes, &inspection, &submission("racer"), None)
            .await
            .unwrap();
        let digest = record.digest;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let node = if i % 2 == 0 { b.clone() } else { c.clone() };
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                node.approve(&digest, &format!("reviewer-{i}"), WEEK, &config)
                    .await
                    .is_ok()
            }));
        }
        let revoked = a.revoke(&digest, "security", "leaked a key").await;
        let mut approvals = 0;
        for task in tasks {
            approvals += usize::from(task.await.unwrap());
        }
        revoked.unwrap();
        let now = c.get(&digest).await.unwrap().unwrap();
        assert_eq!(now.state, State::Revoked);
        let history = c.history(&digest).await.unwrap();
        let at = history.iter().position(|t| t.to == "revoked").unwrap();
        assert_eq!(
            at,
            history.len() - 1,
            "changed after the revocation: {history:?}"
        );
        let approved = history.iter().filter(|t| t.to == "approved").count();
        assert_eq!(approved, approvals, "an approval was lost or invented");
        let again = b.approve(&digest, "reviewer-9", WEEK, &config).await;
        assert!(again.is_err_and(|e| e.to_string().contains("is revoked")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_sees_a_hold_as_it_happens() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, c) = (node(&server).await, node(&server).await);
    let config = AdmissionConfig::default();
    let (bytes, inspection) = component(skills::HELLO);
    let (record, _) = a
        .admit(&bytes, &inspection, &submission("hello"), None)
        .await
        .unwrap();
    let mut holds = Box::pin(c.holds().await.unwrap());
    for round in 0..5 {
        a.approve(&record.digest, "bob", WEEK, &config)
            .await
            .unwrap();
        a.quarantine(&record.digest, "monitor", &format!("round {round}"))
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), holds.next())
            .await
            .expect("the hold arrives")
            .unwrap();
        assert_eq!(seen, (record.digest, State::Quarantined));
    }
    a.revoke(&record.digest, "security", "done").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), holds.next())
        .await
        .expect("the revocation arrives")
        .unwrap();
    assert_eq!(seen, (record.digest, State::Revoked));
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // Held for the whole test, so no server started in parallel can take
    // the port; every connection is closed before a word of NATS.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let e = Cluster::connect(&ClusterConfig {
        url: url.clone(),
        connect_timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");
}

/// Three nodes on one cluster, each with its own data directory (its own
/// audit log, cache and storage) and the shared registry.
async fn three_nodes(server: &NatsServer) -> [airlock_tests::TestNode; 3] {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let registry = std::sync::Arc::new(node(server).await);
        nodes.push(airlock_tests::TestNode::with_registry("", &[], registry));
    }
    let [a, b, c]: [airlock_tests::TestNode; 3] = nodes.try_into().ok().unwrap();
    [a, b, c]
}

/// Admitted on A, approved on B, run on C (by digest, the component fetched
/// from the cluster); a revocation on A stops C's running instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_on_one_node_stops_an_instance_on_another() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [a, b, c] = three_nodes(&server).await;
    let (record, fresh) = a
        .node
        .admit(wasm(skills::CAPABILITY_PROBE), submission("probe"))
        .await
        .unwrap();
    assert!(fresh);
    let refused = b.node.approve(record.digest, "alice", None).await;
    assert!(refused.is_err(), "the submitter approved on another node");
    b.node.approve(record.digest, "bob", None).await.unwrap();

    let quick = c
        .node
        .run_admitted(
            record.digest,
            request(
                "ignored",
                r#"{"calls": [{"op": "print", "message": "from C"}]}"#,
            ),
        )
        .await
        .unwrap();
    assert_eq!(quick.status, RunStatus::Ok, "{:?}", quick.error);
    assert_eq!(quick.skill, "probe");

    let runner = c.node.clone();
    let digest = record.digest;
    let running = tokio::spawn(async move {
        let sleep = r#"{"calls": [{"op": "sleep", "count": 20000}]}"#;
        runner.run_admitted(digest, request("ignored", sleep)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.node
        .revoke(record.digest, "security", "leaked in a prompt")
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the instance on C was not stopped")
        .unwrap()
        .unwrap();
    assert_eq!(report.status, RunStatus::Stopped);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("revoked: leaked in a prompt"), "{message}");
    let again = b
        .node
        .run_admitted(record.digest, request("ignored", "{}"))
        .await;
    assert!(
        again.is_err_and(|e| e.to_string().contains("is revoked")),
        "a revoked skill ran on B"
    );
}

/// Denials are counted across the cluster: a skill whose runs are spread
/// over nodes gets one budget before it is quarantined, not one per node.
#[tokio::test(flavor = "multi_thread")]
async fn denials_on_different_nodes_add_up_to_one_automatic_quarantine() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let config = "[admission]\nquarantine_after = 4\nquarantine_window = \"1m\"\n";
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let registry = std::sync::Arc::new(node(&server).await);
        nodes.push(airlock_tests::TestNode::with_registry(
            config,
            &[],
            registry,
        ));
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let (record, _) = a
        .node
        .admit(wasm(skills::CAPABILITY_PROBE), submission("probe"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    b.node
        .approve(record.digest, "bob", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // No policy allows storage: each get is denied.
    let two_denied = r#"{"calls": [
        {"op": "storage.get", "key": "a"},
        {"op": "storage.get", "key": "b"}
    ]}"#;
    let state = async || {
        a.node
            .skills()
            .unwrap_or_else(|e| panic!("{e}"))
            .get(&record.digest)
            .await
            .ok()
            .flatten()
            .map(|r| (r.state, r.reason))
    };
    let report = a
        .node
        .run_admitted(record.digest, request("ignored", two_denied))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    assert_eq!(
        state().await,
        Some((State::Approved, None)),
        "2 of 4 so far"
    );
    b.node
        .run_admitted(record.digest, request("ignored", two_denied))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Each node alone has seen 2; together they have seen 4.
    assert_eq!(
        state().await,
        Some((
            State::Quarantined,
            Some("4 denied calls within 1m".to_string())
        ))
    );
    let again = a
        .node
        .run_admitted(record.digest, request("ignored", "{}"))
        .await;
    assert!(
        again.is_err_and(|e| e.to_string().contains("quarantined")),
        "a quarantined skill ran on A"
    );
}

/// A node that loses NATS refuses new runs rather than running without
/// seeing revocations.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_loses_nats_refuses_runs() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let [a, _, _] = three_nodes(&server).await;
    let (record, _) = a
        .node
        .admit(wasm(skills::HELLO), submission("hello"))
        .await
        .unwrap();
    a.node.approve(record.digest, "bob", None).await.unwrap();
    let ok = a
        .node
        .run_admitted(record.digest, request("ignored", r#"{"name": "Ada"}"#))
        .await
        .unwrap();
    assert_eq!(ok.status, RunStatus::Ok);
    drop(server);
    // The client notices the server is gone within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = a
            .node
            .run_admitted(record.digest, request("ignored", r#"{"name": "Ada"}"#))
            .await;
        match attempt {
            Err(e) if e.to_string().contains("connection to NATS is lost") => break,
            _ if std::time::Instant::now() > deadline => {
                panic!("runs went on without NATS: {attempt:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The CLI on three machines (three homes) with one `[cluster]`: admitted
/// on the first, approved on the second, run by a short digest on the third,
/// revoked on the first and refused on the third.
#[test]
fn the_cli_shares_skills_through_the_cluster_configuration() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let homes: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = homes[0].path().join("airlock.toml");
    std::fs::write(&config, format!("[cluster]\nurl = \"{}\"\n", server.url())).unwrap();
    let at = |home: usize, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
            .args(args)
            .env("AIRLOCK_HOME", homes[home].path())
            .env("AIRLOCK_CONFIG", &config)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = at(
        0,
        &[
            "admit",
            skills::HELLO,
            "--name",
            "hello",
            "--agent",
            "planner",
            "--trust",
            "medium",
            "--by",
            "orchestrator",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let digest = stdout.lines().next().unwrap_or_default().to_string();
    let short = &digest[..12];
    let (code, _, stderr) = at(
        1,
        &["approve", short, "--by", "reviewer", "--expires-in", "1h"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = at(2, &["run", short, "--input", r#"{"name":"Ada"}"#]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "{\"greeting\":\"hello, Ada\"}\n");
    let (code, stdout, _) = at(2, &["skills"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(short) && stdout.contains("approved"),
        "{stdout}"
    );
    let args = [
        "revoke",
        short,
        "--reason",
        "superseded",
        "--by",
        "security",
    ];
    let (code, _, stderr) = at(0, &args);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = at(2, &["run", short, "--input", "{}"]);
    assert_eq!(code, Some(3));
    assert!(stderr.contains("revoked"), "{stderr}");
    // Each home has its own audit log, with its own part of the story.
    let (code, stdout, stderr) = at(2, &["audit", "verify"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // A server on the first home joins the cluster and ships that home's
    // log (the admission and the revocation); any machine then verifies and
    // exports it from the stream.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_airlock-under-test"));
    command
        .env("AIRLOCK_HOME", homes[0].path())
        .env("AIRLOCK_CONFIG", &config)
        .arg("serve");
    let serve = airlock_tests::serving::Serving::start(command);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let verified = loop {
        let (code, stdout, stderr) = at(2, &["audit", "verify", "--cluster"]);
        if code == Some(0) && stdout.contains("records verify") {
            break stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing shipped: {code:?} {stdout}{stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let name = std::fs::read_to_string(homes[0].path().join("node-name")).unwrap();
    assert!(
        verified.starts_with(&format!("node {name}: ")),
        "{verified}"
    );
    let (code, exported, stderr) = at(1, &["audit", "export", "--cluster"]);
    drop(serve);
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().all(|e| e["airlock_node"] == name.as_str()),
        "{exported}"
    );
    assert!(
        exported.contains("superseded"),
        "the revocation is exported: {exported}"
    );
}

/// Every node's audit log reaches the cluster's stream, each on its own
/// subject with its own chain; verifying the stream checks all three with
/// the keys each node published, and a record forged onto one node's
/// subject is found on that node only.
#[tokio::test(flavor = "multi_thread")]
async fn every_nodes_audit_chain_is_shipped_and_verified_from_the_stream() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut nodes = Vec::new();
    let mut shippers = Vec::new();
    for name in ["a", "b", "c"] {
        let cluster = node(&server).await;
        let test_node =
            airlock_tests::TestNode::with_registry("", &[], std::sync::Arc::new(cluster.clone()));
        let jwks = test_node.node.issuer().jwks();
        cluster
            .publish_keys(name, jwks["keys"].as_array().unwrap())
            .await
            .unwrap();
        let path = test_node
            .node
            .services()
            .audit
            .as_ref()
            .unwrap()
            .path()
            .to_path_buf();
        shippers.push(cluster.ship_audit(name.to_string(), path.clone()));
        nodes.push((test_node, cluster, path));
    }
    let (a, b, c) = (&nodes[0].0, &nodes[1].0, &nodes[2].0);
    let (record, _) = a
        .node
        .admit(wasm(skills::HELLO), submission("hello"))
        .await
        .unwrap();
    b.node.approve(record.digest, "bob", None).await.unwrap();
    for _ in 0..3 {
        let report = c
            .node
            .run_admitted(record.digest, request("ignored", r#"{"name": "Ada"}"#))
            .await
            .unwrap();
        assert_eq!(report.status, RunStatus::Ok);
    }

    // What each node's own log holds, verified locally.
    let local: Vec<u64> = nodes
        .iter()
        .map(|(node, _, path)| {
            let found = airlock_runtime::audit::verify(path, node.node.issuer().keys()).unwrap();
            assert!(found.problem.is_none(), "{found:?}");
            found.records
        })
        .collect();
    assert!(local.iter().all(|n| *n > 0), "{local:?}");
    let checker = &nodes[0].1;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let shipped = loop {
        let found = checker.verify_audit().await.unwrap();
        let counts: Vec<u64> = found.iter().map(|n| n.verification.records).collect();
        if counts == local {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream has {counts:?} records, the logs {local:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = shipped.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    for node in &shipped {
        assert!(node.verification.problem.is_none(), "{node:?}");
    }
    // The stream holds each log as written: C's runs are in C's chain.
    let c_lines = checker.records_of("c").await.unwrap();
    assert_eq!(c_lines, std::fs::read(&nodes[2].2).unwrap());

    // Forge a record onto B's subject (stop B's shipper first, so only the
    // forgery is added).
    shippers[1].abort();
    let forged = String::from_utf8(checker.records_of("b").await.unwrap())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .replace("bob", "mallory");
    let client = async_nats::connect(server.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .publish("airlock.audit.b", forged.into_bytes().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let found = checker.verify_audit().await.unwrap();
    assert!(found[0].verification.problem.is_none());
    let (_, why) = found[1]
        .verification
        .problem
        .clone()
        .expect("the forgery is found");
    assert!(why.contains("sequence"), "{why}");
    assert!(found[2].verification.problem.is_none());
}

/// A node that joins with a long log ships it a window at a time, all of
/// it, and the stream's copy verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_longer_than_a_shipping_window_is_shipped_whole() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let cluster = node(&server).await;
    let test_node =
        airlock_tests::TestNode::with_registry("", &[], std::sync::Arc::new(cluster.clone()));
    let jwks = test_node.node.issuer().jwks();
    cluster
        .publish_keys("long", jwks["keys"].as_array().unwrap())
        .await
        .unwrap();
    let log = test_node.node.services().audit.clone().unwrap();
    // About 12 MiB in batches of 1,000 records: more than one 8 MiB window.
    let padding = "p".repeat(1000);
    for batch in 0..12 {
        let events: Vec<serde_json::Value> = (0..1000)
            .map(|n| serde_json::json!({"kind": "call", "n": batch * 1000 + n, "pad": padding}))
            .collect();
        log.append(&events).unwrap();
    }
    let path = log.path().to_path_buf();
    assert!(std::fs::metadata(&path).unwrap().len() > 9 << 20);
    let local = airlock_runtime::audit::verify(&path, test_node.node.issuer().keys()).unwrap();
    assert!(local.problem.is_none(), "{local:?}");

    let shipper = cluster.ship_audit("long".into(), path.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = cluster.verify_audit().await.unwrap();
        let shipped = found.first().map_or(0, |n| n.verification.records);
        if shipped == local.records {
            assert!(found[0].verification.problem.is_none(), "{:?}", found[0]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream has {shipped} records, the log {}",
            local.records
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shipper.abort();
    assert_eq!(
        cluster.records_of("long").await.unwrap(),
        std::fs::read(&path).unwrap()
    );
}

/// A burst of queued runs while the only node serving dies with runs in
/// hand: every run is completed once, by the nodes that start serving
/// later, and none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn queued_runs_survive_a_node_dying_with_runs_in_hand() {
    use airlock_runtime::cluster::{QueuedRun, RunOutcome};
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let cluster = node(&server).await;
        let test_node =
            airlock_tests::TestNode::with_registry("", &[], std::sync::Arc::new(cluster.clone()));
        nodes.push((test_node, cluster));
    }
    let (record, _) = nodes[0]
        .0
        .node
        .admit(wasm(skills::CAPABILITY_PROBE), submission("probe"))
        .await
        .unwrap();
    nodes[1]
        .0
        .node
        .approve(record.digest, "bob", None)
        .await
        .unwrap();
    let ack_wait = Duration::from_secs(2);
    // Only B serves at first, four at a time; each run takes a second.
    let b = nodes[1]
        .1
        .serve_runs(nodes[1].0.node.clone(), "b".into(), 4, ack_wait);
    let mut waiting = Vec::new();
    for i in 0..8 {
        let queue = nodes[0].1.clone();
        let run = QueuedRun {
            id: format!("run-{i}"),
            digest: record.digest,
            input: r#"{"calls": [{"op": "sleep", "count": 1000}]}"#.into(),
            task: airlock_host_apis::Task {
                id: format!("task-{i}"),
                ..Default::default()
            },
            limits: airlock_runtime::Limits::default(),
        };
        waiting.push(tokio::spawn(async move {
            queue.queue_run(&run, Duration::from_secs(60)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.abort();
    let _a = nodes[0]
        .1
        .serve_runs(nodes[0].0.node.clone(), "a".into(), 4, ack_wait);
    let _c = nodes[2]
        .1
        .serve_runs(nodes[2].0.node.clone(), "c".into(), 4, ack_wait);
    let mut by = std::collections::BTreeMap::new();
    for waiter in waiting {
        match waiter.await.unwrap().unwrap() {
            RunOutcome::Done { node, report } => {
                assert_eq!(report["status"], "ok", "{report}");
                *by.entry(node).or_insert(0) += 1;
            }
            RunOutcome::Failed { reason } => panic!("a queued run failed: {reason}"),
        }
    }
    assert_eq!(by.values().sum::<i32>(), 8, "{by:?}");
    assert!(
        !by.contains_key("b"),
        "B died before completing any: {by:?}"
    );
    // B had started runs when it died (its own log says so): those were
    // redelivered and completed elsewhere.
    let b_log = nodes[1]
        .0
        .node
        .services()
        .audit
        .as_ref()
        .unwrap()
        .path()
        .to_path_buf();
    let b_started = std::fs::read_to_string(b_log)
        .unwrap()
        .matches("\"run.start\"")
        .count();
    assert!(b_started >= 1, "B took no run before it died");

    // A run that cannot start is answered as failed, not dropped.
    let (pending, _) = nodes[0]
        .0
        .node
        .admit(wasm(skills::HELLO), submission("hello"))
        .await
        .unwrap();
    let run = QueuedRun {
        id: "run-pending".into(),
        digest: pending.digest,
        input: "{}".into(),
        task: Default::default(),
        limits: airlock_runtime::Limits::default(),
    };
    match nodes[0]
        .1
        .queue_run(&run, Duration::from_secs(30))
        .await
        .unwrap()
    {
        RunOutcome::Failed { reason } => assert!(reason.contains("pending review"), "{reason}"),
        done => panic!("a pending skill ran: {done:?}"),
    }
}

/// `POST /v1/runs` on a node that queues runs: the request is refused or
/// answered as a local run would be, and the run happens on the node with
/// room (here the only one serving).
#[tokio::test(flavor = "multi_thread")]
async fn the_api_queues_runs_for_the_node_with_room() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (key, hash) = airlock_runtime::api::new_key();
    let config = format!(
        "[[api.keys]]\nprincipal = \"runner\"\nroles = [\"runner\", \"submitter\", \"reviewer\"]\nhash = \"{hash}\"\n"
    );
    let front_cluster = node(&server).await;
    let front = airlock_tests::TestNode::with_registry(
        &config,
        &[],
        std::sync::Arc::new(front_cluster.clone()),
    );
    let back_cluster = node(&server).await;
    let back = airlock_tests::TestNode::with_registry(
        &config,
        &[],
        std::sync::Arc::new(back_cluster.clone()),
    );
    let (record, _) = front
        .node
        .admit(wasm(skills::HELLO), submission("hello"))
        .await
        .unwrap();
    let _serving =
        back_cluster.serve_runs(back.node.clone(), "back".into(), 4, Duration::from_secs(5));

    let api = airlock_runtime::api::Api::new(front.node.clone(), front.node.config().api.clone())
        .unwrap();
    api.queue_runs(front_cluster.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = airlock_runtime::api::router(api);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        client
            .post(format!("http://{addr}/v1/runs"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let body = serde_json::json!({"skill": record.digest.to_hex(), "input": {"name": "Ada"}});
    let pending = post(body.clone()).await.unwrap();
    assert_eq!(pending.status(), reqwest::StatusCode::CONFLICT);
    front
        .node
        .approve(record.digest, "bob", None)
        .await
        .unwrap();
    let done = post(body).await.unwrap();
    assert_eq!(done.status(), reqwest::StatusCode::OK);
    let report: serde_json::Value = done.json().await.unwrap();
    assert_eq!(report["output"], r#"{"greeting":"hello, Ada"}"#, "{report}");
    let started = |node: &airlock_tests::TestNode| {
        let path = node
            .node
            .services()
            .audit
            .as_ref()
            .unwrap()
            .path()
            .to_path_buf();
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches("\"run.start\"")
            .count()
    };
    assert_eq!((started(&front), started(&back)), (0, 1));
}

/// A node on the cluster whose engine has one instance slot, with `probe`
/// (the capability probe) and `hello` approved.
async fn one_slot_node(
    cluster: &Cluster,
    config: &str,
) -> (airlock_tests::TestNode, SkillDigest, SkillDigest) {
    let engine = airlock_runtime::engine::Engine::new(airlock_runtime::engine::EngineConfig {
        max_instances: 1,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let node = airlock_tests::TestNode::with_engine(
        config,
        &[],
        Some(std::sync::Arc::new(cluster.clone())),
        std::sync::Arc::new(engine),
    );
    let mut digests = Vec::new();
    for (path, name) in [
        (skills::CAPABILITY_PROBE, "probe"),
        (skills::HELLO, "hello"),
    ] {
        let (record, _) = node.node.admit(wasm(path), submission(name)).await.unwrap();
        node.node.approve(record.digest, "bob", None).await.unwrap();
        digests.push(record.digest);
    }
    (node, digests[0], digests[1])
}

/// Take `node`'s one slot for `ms` milliseconds with a local run.
async fn hold_the_slot(
    node: &airlock_tests::TestNode,
    probe: SkillDigest,
    ms: u64,
) -> tokio::task::JoinHandle<airlock_runtime::run::RunReport> {
    let input = format!(r#"{{"calls": [{{"op": "sleep", "count": {ms}}}]}}"#);
    let holder = {
        let node = node.node.clone();
        tokio::spawn(async move {
            node.run_admitted(probe, request("probe", &input))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder
}

/// Run ends of status `busy` in `node`'s audit log.
fn busy_ends(node: &airlock_tests::TestNode) -> usize {
    let path = node.node.services().audit.as_ref().unwrap().path();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| line.contains("\"run.end\"") && line.contains("\"status\":\"busy\""))
        .count()
}

/// A queued run that finds its node's instance pool full is put back on the
/// queue, not answered busy: it runs once a slot is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_run_that_finds_no_free_slot_goes_back_on_the_queue() {
    use airlock_runtime::cluster::{QueuedRun, RunOutcome};
    let Some(server) = NatsServer::start() else {
        return;
    };
    let cluster = node(&server).await;
    let (small, probe, hello) = one_slot_node(&cluster, "").await;
    let holder = hold_the_slot(&small, probe, 1_000).await;
    let _serving = cluster.serve_runs(
        small.node.clone(),
        "small".into(),
        4,
        Duration::from_secs(5),
    );
    let run = QueuedRun {
        id: "run-while-full".into(),
        digest: hello,
        input: r#"{"name":"Ada"}"#.into(),
        task: Default::default(),
        limits: airlock_runtime::Limits::default(),
    };
    match cluster
        .queue_run(&run, Duration::from_secs(30))
        .await
        .unwrap()
    {
        RunOutcome::Done { report, .. } => {
            assert_eq!(report["status"], "ok", "{report}");
            assert_eq!(report["output"], r#"{"greeting":"hello, Ada"}"#);
        }
        failed => panic!("the run did not complete: {failed:?}"),
    }
    let held = holder.await.unwrap();
    assert_eq!(held.status, RunStatus::Ok, "{:?}", held.error);
    assert!(busy_ends(&small) >= 1, "the run never found the slot taken");
}

/// `POST /v1/runs` on a cluster whose every delivery of the run finds no
/// free slot: 429 with Retry-After, as on a single node, after the queue's
/// last delivery.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_busy_when_every_delivery_finds_no_free_slot() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (key, hash) = airlock_runtime::api::new_key();
    let config =
        format!("[[api.keys]]\nprincipal = \"runner\"\nroles = [\"runner\"]\nhash = \"{hash}\"\n");
    let cluster = node(&server).await;
    let (small, probe, hello) = one_slot_node(&cluster, &config).await;
    // Held through all five deliveries (2.5 s of pauses between them).
    let holder = hold_the_slot(&small, probe, 7_000).await;
    let _serving = cluster.serve_runs(
        small.node.clone(),
        "small".into(),
        4,
        Duration::from_secs(5),
    );
    let api = airlock_runtime::api::Api::new(small.node.clone(), small.node.config().api.clone())
        .unwrap();
    api.queue_runs(cluster.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = airlock_runtime::api::router(api);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/v1/runs"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"skill": hello.to_hex(), "input": {"name": "Ada"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers().contains_key("retry-after"));
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at capacity"), "{body}");
    assert!(message.contains("no node with a free slot"), "{body}");
    assert_eq!(
        busy_ends(&small),
        usize::try_from(airlock_runtime::cluster::MAX_DELIVER).unwrap()
    );
    assert_eq!(holder.await.unwrap().status, RunStatus::Ok);
}

/// A node on `cluster` serving the queue itself, with `skills` approved.
async fn serving_node(
    cluster: &Cluster,
    config: &str,
    skills: &[&str],
) -> (airlock_tests::TestNode, Vec<SkillDigest>) {
    let node =
        airlock_tests::TestNode::with_registry(config, &[], std::sync::Arc::new(cluster.clone()));
    let mut digests = Vec::new();
    for path in skills {
        let (record, _) = node
            .node
            .admit(wasm(path), submission("skill"))
            .await
            .unwrap();
        node.node.approve(record.digest, "bob", None).await.unwrap();
        digests.push(record.digest);
    }
    (node, digests)
}

fn queued(id: &str, digest: SkillDigest, input: &str) -> airlock_runtime::cluster::QueuedRun {
    airlock_runtime::cluster::QueuedRun {
        id: id.into(),
        digest,
        input: input.into(),
        task: Default::default(),
        limits: airlock_runtime::Limits::default(),
    }
}

/// The report of `run`, which must complete.
async fn completed(
    cluster: &Cluster,
    run: &airlock_runtime::cluster::QueuedRun,
) -> serde_json::Value {
    match cluster
        .queue_run(run, Duration::from_secs(60))
        .await
        .unwrap()
    {
        airlock_runtime::cluster::RunOutcome::Done { report, .. } => report,
        failed => panic!("run {} was not completed: {failed:?}", run.id),
    }
}

/// Run starts of `digest` in `node`'s audit log.
fn starts_of(node: &airlock_tests::TestNode, digest: SkillDigest) -> usize {
    let path = node.node.services().audit.as_ref().unwrap().path();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| line.contains("\"run.start\"") && line.contains(&digest.to_hex()))
        .count()
}

/// NATS closes a connection that publishes a message over its
/// `max_payload`. A run too large to queue is refused before it is sent,
/// and a report too large to carry ends the run, once, instead of breaking
/// the connection and running the skill again on every delivery.
#[tokio::test(flavor = "multi_thread")]
async fn runs_and_reports_over_the_message_size_are_refused_not_sent() {
    use airlock_runtime::cluster::RunOutcome;
    let Some(server) = NatsServer::start_with("max_payload: 262144") else {
        return;
    };
    let cluster = node(&server).await;
    assert_eq!(cluster.max_message(), 262_144 - 4096);
    let (runner, digests) = serving_node(&cluster, "", &[skills::HELLO, skills::HUGE_OUTPUT]).await;
    let (hello, huge) = (digests[0], digests[1]);
    let _serving = cluster.serve_runs(
        runner.node.clone(),
        "runner".into(),
        4,
        Duration::from_secs(5),
    );

    let big = format!(r#"{{"name":"{}"}}"#, "A".repeat(300 << 10));
    let refused = cluster
        .queue_run(&queued("too-big", hello, &big), Duration::from_secs(30))
        .await
        .expect_err("a run over the message size was queued");
    assert!(
        matches!(refused, airlock_runtime::Error::TooLarge(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("max_payload"), "{refused}");

    // The connection survived: a run that fits completes.
    let run = queued("fits", hello, r#"{"name":"Ada"}"#);
    assert_eq!(completed(&cluster, &run).await["status"], "ok");

    // 1 MiB of stdout kept in the report: over 256 KiB.
    let started = std::time::Instant::now();
    match cluster
        .queue_run(
            &queued("loud", huge, r#""stdout""#),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
    {
        RunOutcome::Failed { reason } => {
            assert!(reason.contains("its report is"), "{reason}");
            assert!(reason.contains("status ok"), "{reason}");
        }
        done => panic!("a report over the message size came back: {done:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the answer waited for the timeout"
    );
    // Answered and acknowledged: no delivery runs it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(starts_of(&runner, huge), 1);
    let run = queued("after", hello, r#"{"name":"Bo"}"#);
    assert_eq!(completed(&cluster, &run).await["status"], "ok");
}

/// A queued run carries the limits of the node that queued it; the node
/// that runs it keeps to its own as well.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_run_keeps_to_the_limits_of_the_node_that_runs_it() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let cluster = node(&server).await;
    let (runner, digests) =
        serving_node(&cluster, "[limits]\nlog = 65536\n", &[skills::HUGE_OUTPUT]).await;
    let _serving = cluster.serve_runs(
        runner.node.clone(),
        "runner".into(),
        4,
        Duration::from_secs(5),
    );
    let mut run = queued("generous", digests[0], r#""stdout""#);
    run.limits.log = 64 << 20;
    let report = completed(&cluster, &run).await;
    assert_eq!(report["status"], "ok", "{report}");
    let kept: usize = report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().len())
        .sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of logs");
}

/// A token minted on node A is introspected as active on node C while its
/// instance runs, and inactive once it ends; C's JWKS lists A's keys. A node
/// outside the cluster knows nothing of it.
#[tokio::test(flavor = "multi_thread")]
async fn introspection_on_any_node_answers_for_tokens_minted_anywhere() {
    use airlock_host_apis::secrets::Credentials as _;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let config = "[credentials.id]\nkind = \"minted\"\ndestination = \"https://api.example\"\n";
    let mut nodes = Vec::new();
    for name in ["a", "c"] {
        let cluster = node(&server).await;
        let test_node = airlock_tests::TestNode::with_registry(
            config,
            &[],
            std::sync::Arc::new(cluster.clone()),
        );
        let jwks = test_node.node.issuer().jwks();
        cluster
            .publish_keys(name, jwks["keys"].as_array().unwrap())
            .await
            .unwrap();
        test_node.node.issuer().share(std::sync::Arc::new(cluster));
        nodes.push(test_node);
    }
    let outsider = airlock_tests::TestNode::new(config, &[]);
    let (a, c) = (&nodes[0], &nodes[1]);

    let mut subject = airlock_host_apis::Subject {
        instance: "instance-on-a".into(),
        ..Default::default()
    };
    subject.skill.digest = "d".repeat(64);
    let deadline = std::time::SystemTime::now() + Duration::from_secs(60);
    a.node.vault().started(&subject, deadline);
    let token = a
        .node
        .vault()
        .mint(&subject, "id", "https://api.example")
        .await
        .unwrap();

    let on_c = c.node.issuer().introspect_anywhere(&token).await;
    assert_eq!(on_c["active"], true, "{on_c}");
    assert!(
        on_c["sub"]
            .as_str()
            .unwrap()
            .ends_with("/run/instance-on-a")
    );
    let a_kid = a.node.issuer().jwks()["keys"][0]["kid"].clone();
    let c_jwks = c.node.issuer().jwks_anywhere().await;
    assert!(
        c_jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == a_kid),
        "{c_jwks}"
    );
    let outside = outsider.node.issuer().introspect_anywhere(&token).await;
    assert_eq!(outside["active"], false);

    if let Some(revocation) = a.node.vault().ended(&subject.instance) {
        revocation.await;
    }
    let after = c.node.issuer().introspect_anywhere(&token).await;
    assert_eq!(after["active"], false, "{after}");
    assert_eq!(
        a.node.issuer().introspect_anywhere(&token).await["active"],
        false
    );
}
