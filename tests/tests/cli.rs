//! `airlock run` as a user runs it: a process, its stdout, stderr and exit code.

use std::process::{Command, Output};

use airlock_tests::skills;
use serde_json::Value;

fn airlock(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .args(args)
        .env("AIRLOCK_HOME", home.path())
        // A user's backtrace setting must not turn errors into backtraces.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_prints_output_and_exits_0() {
    let out = airlock(&[
        "run",
        "--dev",
        skills::HELLO,
        "--input",
        r#"{"name":"Ada"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"greeting\":\"hello, Ada\"}\n");
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn json_envelope_has_status_output_usage_and_decisions() {
    let out = airlock(&["run", "--dev", skills::HELLO, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["status"], "ok");
    assert_eq!(envelope["output"], "{\"greeting\":\"hello, world\"}");
    assert!(envelope["usage"]["duration_us"].as_u64().is_some());
    assert!(envelope["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(envelope["usage"]["host_calls"], 0);
    assert_eq!(envelope["usage"]["compile"]["source"], "compiled");
    assert_eq!(envelope["decisions"], serde_json::json!([]));
}

#[test]
fn denied_capability_calls_are_listed_with_action_resource_and_reason() {
    let input = r#"{"calls":[{"op":"http.fetch","url":"https://api.example.com/x"}]}"#;
    let out = airlock(&[
        "run",
        "--dev",
        skills::CAPABILITY_PROBE,
        "--input",
        input,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
    let decision = &envelope["decisions"][0];
    assert_eq!(decision["action"], "http.request");
    assert_eq!(
        decision["resource"],
        serde_json::json!({"type": "host", "name": "api.example.com"})
    );
    assert_eq!(decision["decision"]["verdict"], "deny");
    assert_eq!(decision["outcome"]["status"], "denied");

    let human = airlock(&["run", "--dev", skills::CAPABILITY_PROBE, "--input", input]);
    assert!(
        text(&human.stderr).contains(
            "airlock: `http.request` on Host `api.example.com` denied: no policy permits it"
        ),
        "{}",
        text(&human.stderr)
    );
}

#[test]
fn skill_error_exits_1() {
    let out = airlock(&["run", "--dev", skills::WORD_COUNT, "--input", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("airlock: the skill returned an error: input must be"));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn usage_errors_exit_2_with_a_plain_sentence() {
    let out = airlock(&["run", "--dev", skills::HELLO, "--input", "not json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("airlock: the input from --input is not JSON"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let missing = airlock(&["run", "--dev", "/nonexistent/skill.wasm"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).starts_with("airlock: cannot read `/nonexistent/skill.wasm`"));

    let bad_size = airlock(&["run", "--dev", skills::HELLO, "--memory", "lots"]);
    assert_eq!(bad_size.status.code(), Some(2));
}

#[test]
fn rejected_skills_exit_3_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(&config, "[admission]\nrefuse_socket_imports = true\n").unwrap();
    let out = airlock(&[
        "run",
        "--dev",
        skills::RAW_SOCKET,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("imports `wasi:sockets/"), "{stderr}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = airlock(&["run", "--dev", core.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["status"], "rejected");
    assert!(
        envelope["error"]["message"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module")
    );
}

#[test]
fn limits_exit_4_naming_the_limit() {
    let out = airlock(&["run", "--dev", skills::INFINITE_LOOP, "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        text(&out.stderr),
        "airlock: limit `deadline` reached: ran longer than 200ms\n"
    );
    let out = airlock(&["run", "--dev", skills::MEMORY_BOMB, "--memory", "8MiB"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).starts_with("airlock: limit `memory` reached"));
}

#[test]
fn traps_exit_5_and_stderr_carries_the_panic_message() {
    let input = r#"{"calls": [{"op": "panic", "message": "boom"}]}"#;
    let out = airlock(&["run", "--dev", skills::CAPABILITY_PROBE, "--input", input]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    // The guest's panic message went to its stderr, which is a log line.
    assert!(stderr.contains("boom"), "{stderr}");
    assert!(
        stderr.contains(
            "airlock: the skill trapped: wasm trap: wasm `unreachable` instruction executed"
        ),
        "{stderr}"
    );
}

#[test]
fn input_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"name": "file"}"#).unwrap();
    let out = airlock(&[
        "run",
        "--dev",
        skills::HELLO,
        "--input-file",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"greeting\":\"hello, file\"}\n");
}

#[test]
fn help_documents_exit_codes() {
    let out = airlock(&["run", "--dev", "--help"]);
    let help = text(&out.stdout);
    for line in [
        "0  the skill returned output",
        "1  the skill returned an error",
        "2  usage or configuration error",
        "3  skill rejected",
        "4  a limit was hit",
        "5  the skill trapped",
    ] {
        assert!(help.contains(line), "missing `{line}` in:\n{help}");
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn policy_validate_reports_each_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.cedar",
        "@id(\"ok\")\npermit (principal, action, resource);\n",
    );
    write(
        dir.path(),
        "team/bad.cedar",
        "// bad\npermit (principal, action == Airlock::Action::\"http.request\", resource)\nwhen { resource.owner == \"me\" };\n",
    );
    let out = airlock(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let expected = format!("{}:3:", dir.path().join("team/bad.cedar").display());
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(
        stdout.contains("error:") && stdout.contains("owner"),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr),
        format!("airlock: 1 problem in `{}`\n", dir.path().display())
    );

    std::fs::remove_file(dir.path().join("team/bad.cedar")).unwrap();
    let out = airlock(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("policies are valid"));
}

#[test]
fn invalid_policies_stop_a_run_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.cedar",
        "permit (principal, action, resource) when { context.nope };\n",
    );
    let out = airlock(&[
        "run",
        "--dev",
        skills::HELLO,
        "--policy",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("do not load") && stderr.contains("p.cedar:1:"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn a_configuration_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "airlock.toml", "[storage]\nmax_keyz = 3\n");
    let out = airlock(&["--config", &config, "run", "--dev", skills::HELLO]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown field `max_keyz`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shadow_mode_says_what_would_be_denied() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let input =
        r#"{"calls":[{"op":"storage.put","key":"k","value":"v"},{"op":"storage.get","key":"k"}]}"#;
    let out = airlock(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "run",
        "--dev",
        skills::CAPABILITY_PROBE,
        "--policy",
        policies.to_str().unwrap(),
        "--policy-mode",
        "shadow",
        "--input",
        input,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("airlock: would deny (shadow mode, the call went ahead): `storage.write` on Object `capability_probe/k` denied: no policy permits it"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains(r#"{"ok":"v"}"#),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn run_context_flags_reach_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    write(
        &policies,
        "audit.cedar",
        "@id(\"audit-reads\")\npermit (principal, action == Airlock::Action::\"storage.read\", resource)\nwhen { context.task.intent == \"audit\" && context.agent_trust == \"high\" && principal in Airlock::Agent::\"auditor\" };\n",
    );
    let input = r#"{"calls":[{"op":"storage.get","key":"k"}]}"#;
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--data-dir",
            dir.path().to_str().unwrap(),
            "run",
            "--dev",
            skills::CAPABILITY_PROBE,
            "--policy",
            policies.to_str().unwrap(),
            "--input",
            input,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = airlock(&args);
        let envelope: Value = serde_json::from_slice(&out.stdout).unwrap();
        envelope["decisions"][0]["decision"]["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(run(&[]), "deny", "the defaults are the least trusted");
    assert_eq!(
        run(&["--intent", "audit", "--trust", "high", "--agent", "auditor"]),
        "allow"
    );
    assert_eq!(
        run(&[
            "--intent", "audit", "--trust", "medium", "--agent", "auditor"
        ]),
        "deny"
    );
    assert_eq!(
        run(&["--intent", "audit", "--trust", "high", "--agent", "other"]),
        "deny"
    );
}

#[test]
fn an_unknown_trust_level_is_a_usage_error() {
    let out = airlock(&["run", "--dev", skills::HELLO, "--trust", "total"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown trust level `total`"),
        "{}",
        text(&out.stderr)
    );
}

fn airlock_in(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .args(args)
        .env("AIRLOCK_HOME", home)
        .output()
        .unwrap()
}

#[test]
fn identity_rotate_adds_a_key_and_keeps_the_old_one_in_the_jwks() {
    let home = tempfile::tempdir().unwrap();
    let kids = |out: &Output| -> Vec<String> {
        let jwks: Value = serde_json::from_slice(&out.stdout).unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                assert_eq!(k["kty"], "OKP");
                assert_eq!(k["crv"], "Ed25519");
                assert!(k.get("d").is_none(), "a private part in the JWKS: {k}");
                k["kid"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let first = airlock_in(home.path(), &["identity", "jwks"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let before = kids(&first);
    assert_eq!(before.len(), 1);
    let rotated = airlock_in(home.path(), &["identity", "rotate"]);
    assert_eq!(rotated.status.code(), Some(0), "{}", text(&rotated.stderr));
    let new_kid = text(&rotated.stdout).trim().to_string();
    let after = kids(&airlock_in(home.path(), &["identity", "jwks"]));
    assert_eq!(after, vec![before[0].clone(), new_kid]);
}

#[test]
fn a_configuration_with_an_unusable_credential_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "airlock.toml",
        "[credentials.github]\nkind = \"static\"\ndestination = \"https://api.github.com\"\n",
    );
    let out = airlock(&["--config", &config, "run", "--dev", skills::HELLO]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "airlock: credentials.github: a static credential takes exactly one of `env` and `file`\n"
    );
}

#[test]
fn every_run_lands_in_an_audit_log_that_verifies_and_shows_safely() {
    let home = tempfile::tempdir().unwrap();
    let input = r#"{"calls":[{"op":"storage.get","key":"a\u001b[31mred\nforged"},{"op":"http.fetch","url":"https://api.example.com/x"}]}"#;
    let out = airlock_in(
        home.path(),
        &["run", "--dev", skills::CAPABILITY_PROBE, "--input", input],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = airlock_in(home.path(), &["run", "--dev", skills::HELLO]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let verified = airlock_in(home.path(), &["audit", "verify"]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        text(&verified.stderr)
    );
    // Run 1: start, two calls, end. Run 2: start, end. Each batch ends in a
    // checkpoint (a start may go out in a batch of its own).
    let log = home.path().join("audit/audit.jsonl");
    let written = std::fs::read_to_string(&log).unwrap();
    let kinds: Vec<String> = written
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"]["kind"].to_string())
        .filter(|k| k != "\"checkpoint\"")
        .collect();
    assert_eq!(
        kinds,
        [
            "run.start",
            "call",
            "call",
            "run.end",
            "run.start",
            "run.end"
        ]
        .map(|k| format!("\"{k}\""))
    );
    assert!(
        text(&verified.stdout)
            .ends_with(&format!(": {} records verify\n", written.lines().count())),
        "{}",
        text(&verified.stdout)
    );

    let exported = airlock_in(home.path(), &["audit", "export", "--format", "ocsf"]);
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        text(&exported.stderr)
    );
    let events: Vec<Value> = text(&exported.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 6, "every record but the checkpoints");
    assert!(events.iter().all(|e| e["class_uid"] == 6003));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["disposition"] == "Blocked")
            .count(),
        2
    );

    let shown = airlock_in(home.path(), &["audit", "show", "--decision", "deny"]);
    let shown = text(&shown.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].contains("storage.read"), "{shown}");
    assert!(
        lines[1].contains("http.request `api.example.com` deny"),
        "{shown}"
    );
    assert!(
        !shown.contains('\u{1b}'),
        "an escape sequence reached the terminal: {shown}"
    );
    assert!(shown.contains("\\u{1b}[31m"), "{shown}");

    // One modified byte, and verify names the line after it.
    let modified = 1 + written
        .lines()
        .position(|l| l.contains("api.example.com"))
        .unwrap();
    let tampered =
        std::fs::read_to_string(&log)
            .unwrap()
            .replacen("api.example.com", "api.example.org", 1);
    std::fs::write(&log, tampered).unwrap();
    let verified = airlock_in(home.path(), &["audit", "verify"]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(
        text(&verified.stdout).contains(&format!(
            "line {}: its `prev` is not the hash",
            modified + 1
        )),
        "{}",
        text(&verified.stdout)
    );
}

#[test]
fn a_skill_is_admitted_approved_run_by_digest_and_revoked() {
    let home = tempfile::tempdir().unwrap();
    let at = |args: &[&str]| airlock_in(home.path(), args);

    let out = at(&["run", skills::HELLO]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("developer mode (add --dev)"),
        "{}",
        text(&out.stderr)
    );

    let out = at(&[
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
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let digest = stdout.lines().next().unwrap_or_default().to_string();
    assert_eq!(digest.len(), 64, "{stdout}");
    assert!(stdout.contains("hello pending"), "{stdout}");
    let short = &digest[..12];

    let out = at(&["run", short, "--input", r#"{"name":"Ada"}"#]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("pending review"),
        "{}",
        text(&out.stderr)
    );

    let out = at(&["approve", short, "--by", "orchestrator"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("submitted skill `hello` and cannot approve it"),
        "{}",
        text(&out.stderr)
    );
    let out = at(&["approve", short, "--by", "reviewer", "--expires-in", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = at(&["run", short, "--input", r#"{"name":"Ada"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"greeting\":\"hello, Ada\"}\n");

    let out = at(&["skills"]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains(short) && listing.contains("approved"),
        "{listing}"
    );
    assert!(listing.contains("none (compute only)"), "{listing}");

    let out = at(&[
        "revoke",
        short,
        "--reason",
        "superseded by v2",
        "--by",
        "security",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = at(&["run", short]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("is revoked: superseded by v2"),
        "{}",
        text(&out.stderr)
    );

    let out = at(&["inspect", short, "--json"]);
    let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
    let history: Vec<&str> = inspected["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(history, ["pending", "approved", "revoked"]);

    let out = at(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn denials_in_separate_runs_of_the_cli_add_up_to_an_automatic_quarantine() {
    let home = tempfile::tempdir().unwrap();
    let config = write(
        home.path(),
        "airlock.toml",
        "[admission]\nquarantine_after = 4\nquarantine_window = \"10m\"\n",
    );
    let at = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        airlock_in(home.path(), &all)
    };
    let digest = admitted(&at, skills::CAPABILITY_PROBE, "probe");
    let out = at(&["approve", &digest, "--by", "reviewer", "--expires-in", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // No policy permits storage: two denials a run, each run its own process.
    let denied = r#"{"calls":[{"op":"storage.get","key":"a"},{"op":"storage.get","key":"b"}]}"#;
    let out = at(&["run", &digest, "--input", denied]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = at(&["inspect", &digest, "--json"]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["skill"]["state"], "approved", "2 of 4 so far");
    let out = at(&["run", &digest, "--input", denied]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = at(&["run", &digest, "--input", denied]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("quarantined: 4 denied calls within 10m"),
        "{}",
        text(&out.stderr)
    );
}

/// `path` admitted as `name` (by `orchestrator`, for `planner`, trust low):
/// its digest.
fn admitted(at: &dyn Fn(&[&str]) -> Output, path: &str, name: &str) -> String {
    let out = at(&[
        "admit",
        path,
        "--name",
        name,
        "--agent",
        "planner",
        "--trust",
        "low",
        "--by",
        "orchestrator",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Names and reasons chosen by others (a submitter over the API, a
/// reviewer) reach the operator's terminal escaped, in refusals too.
#[test]
fn a_skill_name_with_escape_sequences_reaches_the_terminal_escaped() {
    let home = tempfile::tempdir().unwrap();
    let at = |args: &[&str]| airlock_in(home.path(), args);
    let name = "hello\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{202e}";
    let digest = admitted(&at, skills::HELLO, name);
    let out = at(&[
        "quarantine",
        &digest,
        "--reason",
        "bad\u{1b}[2Jreason",
        "--by",
        "security",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = at(&["run", &digest]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("quarantined"), "{stderr}");
    assert!(stderr.contains("\\u{1b}]52;c;"), "{stderr}");
    assert!(stderr.contains("bad\\u{1b}[2Jreason"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}') && !stderr.contains('\u{202e}'),
        "{stderr:?}"
    );
}

/// A forged record dated past year 9999, with a control sequence for a
/// kind, is shown, not a panic.
#[test]
fn audit_show_survives_a_record_from_after_year_9999() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forged.log");
    std::fs::write(
        &log,
        format!(
            "{{\"seq\":0,\"time_ms\":{},\"prev\":\"{}\",\"event\":{{\"kind\":\"run.start\\u001b[31m\"}}}}\n",
            u64::MAX,
            "0".repeat(64)
        ),
    )
    .unwrap();
    let out = airlock(&["audit", "show", "--path", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("{}ms #0 run.start\\u{{1b}}[31m", u64::MAX)),
        "{shown}"
    );
}

/// A timeout too long for any clock is as good as none.
#[test]
fn an_enormous_timeout_runs_the_skill() {
    let out = airlock(&["run", "--dev", skills::HELLO, "--timeout", "300000000000y"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"greeting\":\"hello, world\"}\n");
}

#[test]
fn a_signing_key_signs_what_admission_verifies() {
    let home = tempfile::tempdir().unwrap();
    let at = |args: &[&str]| airlock_in(home.path(), args);
    let key = home.path().join("release.key");
    let out = at(&["signing-key", "new", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_string();
    let config = home.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!("[admission]\nrequire_signature = true\n[admission.trusted_keys]\nrelease = \"{public}\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let admit = [
        "--config",
        config,
        "admit",
        skills::HELLO,
        "--name",
        "hello",
        "--agent",
        "a",
        "--trust",
        "low",
        "--by",
        "s",
    ];
    let out = at(&admit);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("only signed skills"),
        "{}",
        text(&out.stderr)
    );

    let out = at(&["sign", skills::HELLO, "--key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let signature = home.path().join("hello.sig");
    std::fs::write(&signature, &out.stdout).unwrap();
    let mut signed = admit.to_vec();
    signed.extend(["--signature", signature.to_str().unwrap(), "--json"]);
    let out = at(&signed);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["signed_by"], "release");
}

#[test]
fn serve_answers_with_a_key_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let made = airlock(&["api-key", "--principal", "ops", "--role", "admin"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let key = text(&made.stdout).trim().to_string();
    let stanza = text(&made.stderr);
    let stanza = stanza
        .get(stanza.find("[[api.keys]]").unwrap_or(0)..)
        .unwrap_or_default();
    let config = write(dir.path(), "airlock.toml", stanza);
    let data = dir.path().join("data").display().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"));
    command.args(["--config", &config, "--data-dir", &data, "serve"]);
    let server = airlock_tests::serving::Serving::start(command);
    let listen = server.addr;
    let get = |path: &str, key: Option<&str>| -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(listen).ok()?;
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let mut health = None;
    for _ in 0..100 {
        health = get("/healthz", None);
        if health.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let health = health.unwrap_or_else(|| panic!("the server did not come up"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let skills = get("/v1/skills", Some(&key)).unwrap_or_default();
    assert!(skills.starts_with("HTTP/1.1 200"), "{skills}");
    assert!(skills.ends_with("[]"), "{skills}");
    let refused = get("/v1/skills", Some("airlock_wrong")).unwrap_or_default();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn audit_show_and_export_into_a_pipe_closed_early_end_quietly() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("audit")).unwrap();
    // Far more than a pipe holds, so the writer meets the closed pipe.
    let mut log = String::new();
    for seq in 1..=20_000 {
        log += &format!(
            r#"{{"seq":{seq},"time_ms":0,"prev":"","event":{{"kind":"run.end","instance":"i-{seq}","status":"ok"}}}}"#
        );
        log.push('\n');
    }
    std::fs::write(home.path().join("audit/audit.jsonl"), log).unwrap();
    for args in [
        &["audit", "show"][..],
        &["audit", "export", "--format", "ocsf"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
            .args(args)
            .env("AIRLOCK_HOME", home.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -1`: one line, then the reader goes away.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("i-1"), "{args:?}: {first}");
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
}
