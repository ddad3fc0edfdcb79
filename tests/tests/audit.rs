//! The audit log under pressure: floods of denials, a full disk, a log that
//! cannot be written, and a writer killed mid-burst.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use airlock_host_apis::Trust;
use airlock_runtime::audit::{AuditLog, Record, verify};
use airlock_runtime::run::RunStatus;
use airlock_tests::{TestNode, skills};
use serde_json::{Value, json};

fn records(node: &TestNode) -> Vec<Value> {
    let path = node.dir.path().join("data/audit/audit.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .map(|r| r.event)
        .collect()
}

#[tokio::test]
async fn a_flood_of_identical_denials_is_counted_not_repeated() {
    let node = TestNode::new("[audit]\nmax_identical_denials = 3\n", &[]);
    let mut calls: Vec<Value> = (0..40)
        .map(|_| json!({"op": "storage.get", "key": "same"}))
        .collect();
    calls.push(json!({"op": "storage.get", "key": "other"}));
    let input = json!({ "calls": calls }).to_string();
    let report = node.run(skills::CAPABILITY_PROBE, &input, Trust::Low).await;
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!(report.decisions.len(), 41, "the report keeps every call");

    let events = records(&node);
    let calls: Vec<&Value> = events.iter().filter(|e| e["kind"] == "call").collect();
    assert_eq!(calls.len(), 4, "three of the same, one other");
    let repeated: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "call.repeated")
        .collect();
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0]["suppressed"], 37);
    assert_eq!(repeated[0]["total"], 40);
    assert_eq!(repeated[0]["resource"]["key"], "same");
    assert_eq!(repeated[0]["action"], "storage.read");
}

#[tokio::test]
async fn below_the_free_space_floor_runs_are_refused_not_unrecorded() {
    // A floor no disk meets.
    let node = TestNode::new("[audit]\nmin_free_space = 18446744073709551615\n", &[]);
    let report = node.run(skills::HELLO, "{}", Trust::Low).await;
    assert_eq!(report.status, RunStatus::AuditFailed);
    assert_eq!(report.output, None);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(
        message.contains("the run was refused") && message.contains("audit.min_free_space"),
        "{message}"
    );
    assert!(
        records(&node).iter().all(|e| e["kind"] != "run.start"),
        "nothing ran"
    );
}

#[tokio::test]
async fn a_result_that_cannot_be_recorded_is_withheld() {
    let node = TestNode::new("", &[]);
    let first = node.run(skills::HELLO, r#"{"name":"a"}"#, Trust::Low).await;
    assert_eq!(first.status, RunStatus::Ok);
    // Someone writes a line that is not a record: the chain cannot be
    // continued, so every batch now fails.
    let log = node.dir.path().join("data/audit/audit.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut file, b"not a record\n").unwrap_or_else(|e| panic!("{e}"));
    let report = node.run(skills::HELLO, r#"{"name":"b"}"#, Trust::Low).await;
    assert_eq!(report.status, RunStatus::AuditFailed);
    assert_eq!(report.output, None, "no output without a record");
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("withheld"), "{message}");
}

#[test]
fn a_writer_killed_mid_burst_leaves_a_log_that_verifies_to_the_last_ack() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("audit/audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-burst"))
        .arg(dir.path())
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = HashSet::new();
    // Let it write for a while, then kill it without warning.
    while acked.len() < 300 {
        match lines.next() {
            Some(Ok(line)) => {
                acked.insert(line);
            }
            _ => panic!("the writer stopped early"),
        }
    }
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    // Everything it printed before it died was acknowledged.
    for line in lines.map_while(Result::ok) {
        acked.insert(line);
    }
    let _ = child.wait();

    // A new writer opens it: a torn tail, if any, is cut off and recorded.
    let issuer = airlock_runtime::identity::Issuer::open(dir.path(), Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    drop(AuditLog::open(&log, issuer.keys().clone()).unwrap_or_else(|e| panic!("{e}")));
    let found = verify(&log, issuer.keys()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.problem, None);

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let written: HashSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .filter(|r| r.event["kind"] == "call")
        .map(|r| format!("acked {} {}", r.event["writer"], r.event["i"]))
        .collect();
    let lost: Vec<&String> = acked.difference(&written).collect();
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
}
