use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    keys: Arc<Keyring>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = Keyring::open(&dir.path().join("keys.json"), Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            dir,
            keys: Arc::new(keys),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("audit/audit.jsonl")
    }

    /// A log of three batches: 2 + 1 + 2 events, each with its checkpoint.
    fn written(&self) -> Vec<String> {
        let log = AuditLog::open(&self.path(), self.keys.clone()).unwrap_or_else(|e| panic!("{e}"));
        for batch in [vec![1, 2], vec![3], vec![4, 5]] {
            let events: Vec<_> = batch
                .iter()
                .map(|n| json!({"kind": "call", "n": n}))
                .collect();
            log.append(&events).unwrap_or_else(|e| panic!("{e}"));
        }
        self.lines()
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn rewrite(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.path(), text).unwrap_or_else(|e| panic!("{e}"));
    }

    fn verify(&self) -> Verification {
        verify(&self.path(), &self.keys).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problem(&self) -> (u64, String) {
        self.verify()
            .problem
            .unwrap_or_else(|| panic!("tampering went unnoticed"))
    }
}

#[test]
fn an_untouched_log_verifies() {
    let f = Fixture::new();
    let lines = f.written();
    assert_eq!(lines.len(), 8);
    assert_eq!(
        f.verify(),
        Verification {
            records: 8,
            problem: None
        }
    );
}

#[test]
fn a_modified_record_is_found() {
    let f = Fixture::new();
    let mut lines = f.written();
    lines[1] = lines[1].replace("\"n\":2", "\"n\":7");
    f.rewrite(&lines);
    let (line, why) = f.problem();
    assert_eq!(line, 3, "{why}");
    assert!(why.contains("modified"), "{why}");
}

#[test]
fn a_deleted_record_is_found() {
    let f = Fixture::new();
    let mut lines = f.written();
    lines.remove(1);
    f.rewrite(&lines);
    let (line, why) = f.problem();
    assert_eq!(line, 2);
    assert!(why.contains("deleted, inserted or moved"), "{why}");
}

#[test]
fn an_inserted_record_is_found() {
    let f = Fixture::new();
    let mut lines = f.written();
    let forged = lines[1].clone();
    lines.insert(2, forged);
    f.rewrite(&lines);
    let (line, _) = f.problem();
    assert_eq!(line, 3);
}

#[test]
fn reordered_records_are_found() {
    let f = Fixture::new();
    let mut lines = f.written();
    lines.swap(0, 1);
    f.rewrite(&lines);
    assert_eq!(f.problem().0, 1);
}

#[test]
fn a_truncated_tail_is_found_even_at_a_checkpoint() {
    let f = Fixture::new();
    let mut lines = f.written();
    // Drop the last batch with its checkpoint: what is left is a valid chain
    // ending in a valid checkpoint. The head file knows better.
    lines.truncate(5);
    f.rewrite(&lines);
    let (_, why) = f.problem();
    assert!(why.contains("truncated"), "{why}");
}

#[test]
fn a_rewritten_tail_without_the_key_is_found() {
    let f = Fixture::new();
    let lines = f.written();
    // Rebuild the last batch with another value and a consistent chain; the
    // checkpoint's signature cannot be made without the key.
    let mut rebuilt: Vec<String> = lines[..5].to_vec();
    let mut prev = hash(rebuilt[4].as_bytes());
    for (seq, event) in [
        (6, json!({"kind": "call", "n": 99})),
        (7, json!({"kind": "call", "n": 5})),
    ] {
        let record = Record {
            seq,
            time_ms: 0,
            prev: prev.clone(),
            event,
        };
        let line = serde_json::to_string(&record).unwrap_or_default();
        prev = hash(line.as_bytes());
        rebuilt.push(line);
    }
    let old: Record = serde_json::from_str(&lines[7]).unwrap_or_else(|e| panic!("{e}"));
    let mut checkpoint: Checkpoint =
        serde_json::from_value(old.event).unwrap_or_else(|e| panic!("{e}"));
    checkpoint.head = prev.clone();
    let record = Record {
        seq: 8,
        time_ms: 0,
        prev,
        event: serde_json::to_value(checkpoint).unwrap_or_default(),
    };
    rebuilt.push(serde_json::to_string(&record).unwrap_or_default());
    f.rewrite(&rebuilt);
    let (line, why) = f.problem();
    assert_eq!(line, 8);
    assert!(why.contains("rewritten"), "{why}");
}

#[test]
fn a_torn_line_is_reported_then_cut_off_with_a_recovery_record() {
    let f = Fixture::new();
    f.written();
    let mut file = OpenOptions::new()
        .append(true)
        .open(f.path())
        .unwrap_or_else(|e| panic!("{e}"));
    file.write_all(b"{\"seq\":9,\"time_ms\":1,\"pr")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(file);
    let (line, why) = f.problem();
    assert_eq!(line, 9);
    assert!(why.contains("torn"), "{why}");
    // The writer comes back: the torn line is cut off and said so.
    let log = AuditLog::open(&f.path(), f.keys.clone()).unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    assert_eq!(f.verify().problem, None);
    let lines = f.lines();
    let recovery: Record = serde_json::from_str(&lines[8]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recovery.event["kind"], "recovery");
    assert_eq!(recovery.event["torn_bytes"], 24);
}

#[test]
fn writers_in_turn_continue_one_chain() {
    let f = Fixture::new();
    let writers: Vec<_> = (0..2)
        .map(|_| AuditLog::open(&f.path(), f.keys.clone()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    std::thread::scope(|scope| {
        for (n, log) in writers.iter().enumerate() {
            scope.spawn(move || {
                for i in 0..50 {
                    log.append(&[json!({"kind": "call", "writer": n, "i": i})])
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    });
    assert_eq!(
        f.verify(),
        Verification {
            records: 200,
            problem: None
        }
    );
    let lines = f.lines();
    for writer in 0..2 {
        let mine: Vec<i64> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Record>(l).ok())
            .filter(|r| r.event["writer"] == writer)
            .filter_map(|r| r.event["i"].as_i64())
            .collect();
        assert_eq!(mine, (0..50).collect::<Vec<_>>(), "writer {writer}");
    }
}

#[test]
fn a_line_without_an_end_that_never_ends_is_skipped_not_held() {
    let f = Fixture::new();
    let mut lines = f.written();
    // A line longer than any record, inserted mid-log; the reader drops it
    // and goes on with the next line.
    lines.insert(3, "x".repeat(MAX_LINE + 10));
    f.rewrite(&lines);
    let (line, why) = f.problem();
    assert_eq!(line, 4);
    assert!(why.contains("longer than 16 MiB"), "{why}");

    let mut reader = read_lines(&f.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    while let Some(raw) = reader.next_line().unwrap_or_else(|e| panic!("{e}")) {
        seen.push(match raw {
            RawLine::Whole(line) => seq_of(line),
            RawLine::TooLong => None,
            RawLine::Torn(_) => panic!("no line is torn"),
        });
    }
    let expected: Vec<_> = (1..=3)
        .map(Some)
        .chain([None])
        .chain((4..=8).map(Some))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(reader.number(), 9);
}

#[test]
fn paging_seeks_near_the_record_wanted_and_misses_none() {
    let f = Fixture::new();
    let log = AuditLog::open(&f.path(), f.keys.clone()).unwrap_or_else(|e| panic!("{e}"));
    let padding = "p".repeat(200);
    for batch in 0..20 {
        let events: Vec<_> = (0..100)
            .map(|n| json!({"kind": "call", "n": batch * 100 + n, "pad": padding}))
            .collect();
        log.append(&events).unwrap_or_else(|e| panic!("{e}"));
    }
    drop(log);
    let bytes = std::fs::read(f.path()).unwrap_or_else(|e| panic!("{e}"));
    let records = u64::try_from(bytes.iter().filter(|b| **b == b'\n').count()).unwrap_or(0);
    assert_eq!(records, 2020);
    let len = bytes.len() as u64;
    for after in [0, 1, 99, 1000, 1500, 2019, 2020, 5000] {
        let mut file = std::io::Cursor::new(&bytes);
        let start = offset_after(&mut file, len, after).unwrap_or_else(|e| panic!("{e}"));
        let rest = bytes
            .get(usize::try_from(start).unwrap_or(0)..)
            .unwrap_or_default();
        assert!(start == 0 || bytes.get(usize::try_from(start - 1).unwrap_or(0)) == Some(&b'\n'));
        // Nothing wanted is before the offset, and little else is after it.
        let first = rest.split(|b| *b == b'\n').next().and_then(seq_of);
        if after < records {
            assert!(
                first.is_some_and(|seq| seq <= after + 1),
                "{after}: {first:?}"
            );
            assert!(
                rest.len() as u64 <= (records - after + 1) * 400 + (64 << 10),
                "{after}: {} bytes left to read",
                rest.len()
            );
        }
    }
    // A line that is not a record stops the bisection, never the records.
    let mut broken = bytes.clone();
    let middle = broken.len() / 2;
    broken.splice(middle..middle, b"\nnot a record\n".iter().copied());
    let start = offset_after(
        &mut std::io::Cursor::new(&broken),
        broken.len() as u64,
        2000,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(start < middle as u64);
}

#[test]
fn a_torn_last_line_reads_as_torn() {
    let mut reader = LineReader::new(&b"{\"seq\":1}\n{\"seq\":2,\"ti"[..]);
    assert_eq!(
        reader.next_line().ok().flatten(),
        Some(RawLine::Whole(b"{\"seq\":1}"))
    );
    assert_eq!(
        reader.next_line().ok().flatten(),
        Some(RawLine::Torn(b"{\"seq\":2,\"ti"))
    );
    assert_eq!(reader.next_line().ok().flatten(), None);
    assert_eq!(seq_of(b"{\"seq\":12,"), Some(12));
    assert_eq!(seq_of(b"{\"seq\":12"), None, "a torn number is no number");
    assert_eq!(seq_of(b"{ \"seq\":12,"), None);
}

#[test]
fn guest_strings_cannot_forge_a_record() {
    let f = Fixture::new();
    let log = AuditLog::open(&f.path(), f.keys.clone()).unwrap_or_else(|e| panic!("{e}"));
    let forged = "x\"}\n{\"seq\":2,\"time_ms\":0,\"prev\":\"00\",\"event\":{\"kind\":\"run.end\"}}\n\u{1b}[2J\u{202e}";
    log.append(&[json!({"kind": "call", "key": forged})])
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = f.lines();
    assert_eq!(lines.len(), 2, "one record and its checkpoint");
    assert!(!lines[0].contains('\u{1b}'), "{}", lines[0]);
    let record: Record = serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(record.event["key"], forged);
    assert_eq!(f.verify().problem, None);
}

#[test]
fn long_guest_strings_are_cut_and_marked() {
    let f = Fixture::new();
    let log = AuditLog::open(&f.path(), f.keys.clone()).unwrap_or_else(|e| panic!("{e}"));
    // Multi-byte characters and escapes count as one character each.
    let long = "é\n".repeat(MAX_STRING);
    let short = "ok\u{7}";
    log.append(&[json!({"kind": "call", "key": long, "nested": [{"short": short}]})])
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = f.lines();
    let record: Record = serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}"));
    let kept = record.event["key"].as_str().unwrap_or_default();
    assert_eq!(kept.chars().count(), MAX_STRING + 1, "{kept}");
    assert!(kept.starts_with("é\né\n"), "{kept}");
    assert!(kept.ends_with('…'), "{kept}");
    assert_eq!(
        record.event["nested"][0]["short"], short,
        "short strings are whole"
    );
    assert_eq!(f.verify().problem, None);
}

#[test]
fn strings_are_cut_at_exactly_the_bound_in_characters() {
    let event = |key: String| {
        let line = super::line(&json!({ "key": key }));
        let value: serde_json::Value =
            serde_json::from_slice(line.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        value["key"].as_str().unwrap_or_default().to_string()
    };
    let ascii = "a".repeat(MAX_STRING);
    assert_eq!(event(ascii.clone()), ascii, "at the bound: whole");
    let over = event(format!("{ascii}b"));
    assert_eq!(over, format!("{ascii}…"), "one over: cut and marked");
    // ASCII, an escape, then two-byte characters: each counts as one.
    let mixed = format!("{}\t{}", "a".repeat(MAX_STRING - 4), "é".repeat(4));
    let kept = event(mixed);
    assert_eq!(kept.chars().count(), MAX_STRING + 1, "{kept}");
    assert!(kept.ends_with("a\tééé…"), "{kept}");
}

#[test]
fn records_export_as_ocsf_api_activity() {
    let call = Record {
        seq: 7,
        time_ms: 1_700_000_000_000,
        prev: GENESIS.into(),
        event: json!({
            "kind": "call",
            "instance": "i-1",
            "skill": "report",
            "agent": "planner",
            "task_id": "t-9",
            "action": "http.request",
            "resource": {"type": "host", "name": "reports.example.com"},
            "decision": {
                "verdict": "deny",
                "policies": ["base/no-egress-after-confidential-read"],
                "mode": "enforce",
            },
            "outcome": {"status": "denied"},
        }),
    };
    let event = ocsf::event(&call).unwrap_or_else(|| panic!("no event"));
    assert_eq!(event["class_uid"], 6003);
    assert_eq!(event["type_uid"], 600399);
    assert_eq!(event["time"], 1_700_000_000_000u64);
    assert_eq!(event["api"]["operation"], "http.request");
    assert_eq!(event["actor"]["app_name"], "report");
    assert_eq!(event["actor"]["user"]["name"], "planner");
    assert_eq!(event["resources"][0]["name"], "reports.example.com");
    assert_eq!(event["status_id"], 2);
    assert_eq!(event["disposition"], "Blocked");
    assert_eq!(event["severity_id"], 3);
    assert_eq!(
        event["unmapped"]["policies"][0],
        "base/no-egress-after-confidential-read"
    );
    assert_eq!(event["metadata"]["uid"], "7");

    let read = Record {
        event: json!({
            "kind": "call",
            "action": "storage.read",
            "resource": {"type": "object", "namespace": "team", "key": "reports/q3"},
            "decision": {"verdict": "allow", "policies": ["p"], "mode": "enforce"},
        }),
        ..call.clone()
    };
    let event = ocsf::event(&read).unwrap_or_else(|| panic!("no event"));
    assert_eq!(
        (event["activity_name"].as_str(), event["status"].as_str()),
        (Some("Read"), Some("Success"))
    );
    assert_eq!(event["resources"][0]["name"], "team/reports/q3");

    // A run's end is a failure unless the run returned a result.
    for (status, expected) in [
        ("ok", "Success"),
        ("skill_error", "Failure"),
        ("busy", "Failure"),
        ("cancelled", "Failure"),
    ] {
        let end = Record {
            event: json!({"kind": "run.end", "instance": "i-1", "skill": "report", "status": status}),
            ..call.clone()
        };
        let event = ocsf::event(&end).unwrap_or_else(|| panic!("no event"));
        assert_eq!(event["status"].as_str(), Some(expected), "{status}");
    }

    let checkpoint = Record {
        event: json!({"kind": "checkpoint", "count": 6, "head": GENESIS, "kid": "k", "sig": "s"}),
        ..call
    };
    assert_eq!(ocsf::event(&checkpoint), None);
}

#[test]
fn every_single_bit_flip_anywhere_in_the_log_is_found() {
    let fx = Fixture::new();
    fx.written();
    let original = std::fs::read(fx.path()).unwrap_or_else(|e| panic!("{e}"));
    let bytes = original.as_slice();
    for at in 0..bytes.len() {
        for bit in [0u8, 5] {
            let mut flipped = bytes.to_vec();
            if let Some(b) = flipped.get_mut(at) {
                *b ^= 1 << bit;
            }
            std::fs::write(fx.path(), &flipped).unwrap_or_else(|e| panic!("{e}"));
            let found = verify(&fx.path(), &fx.keys);
            assert!(
                found.as_ref().map_or(true, |v| v.problem.is_some()),
                "bit {bit} of byte {at} ({:?}) flipped unnoticed",
                bytes.get(at).map(|b| *b as char)
            );
        }
    }
}

#[test]
fn the_last_checkpoints_time_and_layout_are_covered() {
    let fx = Fixture::new();
    let lines = fx.written();
    let last = lines.len() - 1;
    let record: Record = serde_json::from_str(&lines[last]).unwrap();
    let time = format!("\"time_ms\":{}", record.time_ms);
    for text in [
        // A later time, the bytes otherwise the same.
        lines[last].replace(&time, &format!("\"time_ms\":{}", record.time_ms + 1)),
        // The same record, spaced out: parses the same, is not the same.
        lines[last].replace(",\"prev\"", ", \"prev\""),
    ] {
        let mut changed = lines.clone();
        changed[last] = text;
        fx.rewrite(&changed);
        let (line, why) = fx.problem();
        assert_eq!(line, lines.len() as u64, "{why}");
    }
}

/// While another run is open, a finished run's records wait for the commit
/// interval to share a batch; the last open run's end writes them all at
/// once, however long the interval, and so does a tool run's end while its
/// caller waits for it.
#[test]
fn the_last_open_run_never_waits_for_the_commit_interval() {
    let fixture = Fixture::new();
    let log = AuditLog::open(&fixture.path(), fixture.keys.clone())
        .unwrap_or_else(|e| panic!("{e}"))
        .with_settings(crate::config::AuditConfig {
            commit_interval: Duration::from_secs(600),
            ..crate::config::AuditConfig::default()
        });
    let durable = |ticket: &Ticket| ticket.0.outcome.get().is_some();
    let wait = |ticket: &Ticket| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !durable(ticket) {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A lone run: written as soon as it ends (the writer has written
    // nothing yet, so there is no interval to wait out either).
    let _ = log.enqueue_run_start(&json!({"kind": "run.start", "n": 1}));
    let first = log.enqueue_run_end(&[line(&json!({"kind": "run.end", "n": 1}))]);
    wait(&first);
    // Two overlapping runs, right after a batch: the first to end is held
    // while the other is open.
    let _ = log.enqueue_run_start(&json!({"kind": "run.start", "n": 2}));
    let _ = log.enqueue_run_start(&json!({"kind": "run.start", "n": 3}));
    let held = log.enqueue_run_end(&[line(&json!({"kind": "run.end", "n": 2}))]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!durable(&held), "written while another run was open");
    let last = log.enqueue_run_end(&[line(&json!({"kind": "run.end", "n": 3}))]);
    wait(&last);
    assert!(durable(&held));
    // A run calling a tool (a run of its own) is set aside while it waits:
    // the tool's records do not wait for their caller to end.
    let _ = log.enqueue_run_start(&json!({"kind": "run.start", "n": 4}));
    let aside = log.set_aside();
    let _ = log.enqueue_run_start(&json!({"kind": "run.start", "n": 5}));
    let tool = log.enqueue_run_end(&[line(&json!({"kind": "run.end", "n": 5}))]);
    wait(&tool);
    drop(aside);
    let caller = log.enqueue_run_end(&[line(&json!({"kind": "run.end", "n": 4}))]);
    wait(&caller);
    drop(log);
    let ends = fixture
        .lines()
        .iter()
        .filter(|l| l.contains("run.end"))
        .count();
    assert_eq!(ends, 5);
    assert!(fixture.verify().problem.is_none());
}

#[test]
fn a_run_end_names_a_bounded_number_of_hosts() {
    let mut session = airlock_host_apis::SessionState::default();
    for n in 0..(MAX_HOSTS + 36) {
        session
            .hosts_contacted
            .insert(format!("h{n:03}.{}.example", "x".repeat(200)));
    }
    let report = crate::run::RunReport {
        instance: "i".into(),
        skill: "s".into(),
        status: crate::run::RunStatus::Ok,
        output: None,
        error: None,
        usage: crate::run::Usage {
            duration_us: 1,
            peak_memory_bytes: 1,
            host_calls: 100,
            compile: crate::engine::CompileSource::Memory,
        },
        decisions: Vec::new(),
        session,
        logs: Vec::new(),
        logs_dropped: 0,
    };
    let events = end_events(&airlock_host_apis::Subject::default(), &report, 10);
    let end: serde_json::Value =
        serde_json::from_slice(&events.last().unwrap_or_else(|| panic!("no run.end")).0)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(end["kind"], "run.end");
    let hosts = end["session"]["hosts_contacted"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hosts.len(), MAX_HOSTS);
    assert_eq!(end["session"]["hosts_contacted_total"], MAX_HOSTS + 36);
    assert!(events.last().map_or(0, |l| l.0.len()) < 32 << 10);
}
