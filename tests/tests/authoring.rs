//! Skills written in Rust, Python and JavaScript: `airlock new` makes a
//! project, `airlock build` makes it a component with the language's own
//! tool, and the result runs under the same contract. The examples in
//! `skills-examples/python/` and `skills-examples/js/` are built and run
//! the same way. Where a language's tool is not installed, the build must
//! say which tool and how to install it (`.ci/run` installs them all).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{Value, json};

fn airlock(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .current_dir(dir)
        .args(args)
        .env_remove("AIRLOCK_CONFIG")
        .env("AIRLOCK_HOME", dir.join("airlock-home"))
        // Guests share the built dependencies of skills-examples.
        .env("CARGO_TARGET_DIR", repo().join("target/skills"))
        .output()
        .unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn has(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A policy directory allowing storage.
fn storage_policy(dir: &Path) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("storage.cedar"),
        "@id(\"test/storage\")\npermit (principal, action in Airlock::Action::\"data\", resource);\n",
    )
    .unwrap();
    policies
}

/// Build `project` (in `dir`); `Err` with the output when the tool is missing.
fn build(dir: &Path, project: &str) -> Result<String, String> {
    let out = airlock(dir, &["build", project]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.success() {
        assert!(stdout.contains("built "), "{stdout}");
        return Ok(stdout);
    }
    assert!(
        stderr.contains("is not installed here; install it with"),
        "the build failed for another reason than a missing tool:\n{stdout}\n{stderr}"
    );
    Err(stderr)
}

/// The template's skill: denied without a policy (and says so), reads
/// storage with one; its log line shows.
fn check_template(dir: &Path, name: &str) {
    let wasm = format!("{name}/{name}.wasm");
    let input = format!("{name}/input.json");
    let denied = airlock(dir, &["run", "--dev", &wasm, "--input-file", &input]);
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied.stderr));
    let stderr = text(&denied.stderr);
    assert!(
        stderr.contains("not allowed: `storage.read` on Object"),
        "{stderr}"
    );
    assert!(stderr.contains("looking up greeting"), "{stderr}");
    let policy = storage_policy(dir);
    let allowed = airlock(
        dir,
        &[
            "run",
            "--dev",
            &wasm,
            "--input-file",
            &input,
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
    let output: Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(
        output,
        serde_json::json!({"key": "greeting", "value": null})
    );
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["Bad Name", "9lives", "sub/Upper"] {
        let out = airlock(dir.path(), &["new", "--lang", "rust", name]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(text(&out.stderr).contains("cannot name a skill"), "{name}");
    }
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let out = airlock(dir.path(), &["new", "--lang", "python", "taken"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("already exists; nothing was written"));
    let out = airlock(dir.path(), &["build", "taken"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a skill project"));
}

#[test]
fn a_rust_skill_from_the_template_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["new", "--lang", "rust", "rusty"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "wit/world.wit",
        "README.md",
        "input.json",
    ] {
        assert!(dir.path().join("rusty").join(file).is_file(), "{file}");
    }
    let built = build(dir.path(), "rusty").unwrap_or_else(|e| panic!("{e}"));
    assert!(built.contains("asks for storage, log"), "{built}");
    check_template(dir.path(), "rusty");
}

#[test]
fn a_python_skill_from_the_template_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["new", "--lang", "python", "snake"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    match build(dir.path(), "snake") {
        Ok(_) => check_template(dir.path(), "snake"),
        Err(message) => {
            assert!(!has("componentize-py"));
            assert!(message.contains("pip install componentize-py"), "{message}");
        }
    }
}

#[test]
fn a_javascript_skill_from_the_template_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["new", "--lang", "js", "scripty"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    if has("npm") {
        npm_install(&dir.path().join("scripty"));
    }
    match build(dir.path(), "scripty") {
        Ok(_) => check_template(dir.path(), "scripty"),
        Err(message) => assert!(message.contains("npm install"), "{message}"),
    }
}

/// `npm install` once per test run (the template's and the example's
/// package.json name the same tool), linked into `project`.
fn npm_install(project: &Path) {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let modules = INSTALLED.get_or_init(|| {
        let shared = repo().join("target/authoring-npm");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::copy(project.join("package.json"), shared.join("package.json")).unwrap();
        let out = Command::new("npm")
            .current_dir(&shared)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .output()
            .unwrap();
        assert!(out.status.success(), "npm install: {}", text(&out.stderr));
        shared.join("node_modules")
    });
    std::os::unix::fs::symlink(modules, project.join("node_modules")).unwrap();
}

/// Copy an example into `dir`, for building outside the source tree.
fn copy_example(example: &str, dir: &Path) -> PathBuf {
    let from = repo().join("skills-examples").join(example);
    let name = from.file_name().unwrap().to_owned();
    let to = dir.join(&name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    to
}

fn run_with_storage(dir: &Path, wasm: &str, input: &str) -> Value {
    let policy = storage_policy(dir);
    let out = airlock(
        dir,
        &[
            "run",
            "--dev",
            wasm,
            "--input",
            input,
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_python_example_keeps_its_tally_in_storage_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("python/tally", dir.path());
    if build(dir.path(), "tally").is_err() {
        assert!(!has("componentize-py"));
        return;
    }
    let first = run_with_storage(
        dir.path(),
        "tally/tally.wasm",
        r#"{"text": "the cat and the hat"}"#,
    );
    assert_eq!(first["words"], 5);
    let second = run_with_storage(dir.path(), "tally/tally.wasm", r#"{"text": "The end"}"#);
    assert_eq!(
        second["top"],
        serde_json::json!([["the", 3], ["and", 1], ["cat", 1], ["end", 1], ["hat", 1]])
    );
}

#[test]
fn the_javascript_example_keeps_bookmarks_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let project = copy_example("js/bookmarks", dir.path());
    if has("npm") {
        npm_install(&project);
    }
    if build(dir.path(), "bookmarks").is_err() {
        return;
    }
    let wasm = "bookmarks/bookmarks.wasm";
    run_with_storage(
        dir.path(),
        wasm,
        r#"{"add": {"name": "b", "url": "https://b.example/"}}"#,
    );
    let listed = run_with_storage(
        dir.path(),
        wasm,
        r#"{"add": {"name": "a", "url": "https://a.example/"}}"#,
    );
    assert_eq!(
        listed["bookmarks"],
        serde_json::json!([
            {"name": "a", "url": "https://a.example/"},
            {"name": "b", "url": "https://b.example/"}
        ])
    );
}

/// The probe in Python and JavaScript, built from `skills-examples`, or
/// `None` when the language's tool is not installed here.
fn build_probe(dir: &Path, lang: &str) -> Option<String> {
    let project = dir.join(format!("{lang}-probe"));
    let from = copy_example(&format!("{lang}/probe"), dir);
    std::fs::rename(&from, &project).unwrap();
    if lang == "js" && has("npm") {
        npm_install(&project);
    }
    match build(dir, &format!("{lang}-probe")) {
        Ok(_) => Some(
            project
                .join(format!("{lang}-probe.wasm"))
                .display()
                .to_string(),
        ),
        Err(message) => {
            assert!(
                !has(if lang == "js" {
                    "npm"
                } else {
                    "componentize-py"
                }),
                "{message}"
            );
            None
        }
    }
}

const SENTINEL: &str = "sk-PROBE-SENTINEL-93c1d0";

const EVERYTHING: &str = r#"
@id("test/http")
permit (principal, action == Airlock::Action::"http.request", resource);
@id("test/plain-local")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"127.0.0.1");
@id("test/secrets")
permit (principal, action in [Airlock::Action::"secret.use", Airlock::Action::"secret.mint"], resource);
@id("test/data")
permit (principal, action in Airlock::Action::"data", resource);
@id("test/tools")
permit (principal, action == Airlock::Action::"tool.invoke", resource);
@id("test/not-there")
forbid (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"forbidden.example");
"#;

/// A date header differs between runs.
fn comparable(results: &[Value]) -> Vec<Value> {
    let mut results = results.to_vec();
    for result in &mut results {
        if let Some(headers) = result
            .pointer_mut("/ok/headers")
            .and_then(Value::as_array_mut)
        {
            headers.retain(|h| h[0] != "date");
        }
    }
    results
}

/// Every interface of the world from Python and JavaScript, with the same
/// answers, allowed and refused, as the Rust probe gives to the same calls:
/// http with a credential the broker attaches, storage, minting, a tool,
/// log and stdout; denials name the deciding policy, and the JavaScript
/// `fetch` goes through wasi:http and the same broker check.
#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_skills_use_every_interface_like_rust() {
    use airlock_host_apis::Trust;
    use airlock_tests::server::{TestCa, TestServer};

    let dir = tempfile::tempdir().unwrap();
    let probes: Vec<(&str, String)> = ["python", "js"]
        .into_iter()
        .filter_map(|lang| build_probe(dir.path(), lang).map(|wasm| (lang, wasm)))
        .collect();
    let ca = TestCa::new();
    let tls = TestServer::start_tls(&ca).await;
    let plain = TestServer::start().await;
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, &ca.ca_pem).unwrap();
    let secret = dir.path().join("api-key");
    std::fs::write(&secret, SENTINEL).unwrap();
    let port = tls.addr.port();
    let config = format!(
        r#"
[egress]
allow_addresses = ["127.0.0.1"]
extra_roots = {roots:?}

[storage]
max_value_bytes = 64

[credentials.api]
kind = "static"
file = {secret:?}
destination = "https://localhost:{port}/bound"

[credentials.id]
kind = "minted"
destination = "https://localhost:{port}/bound"

[tools.word-count]
skill = "{{skills}}/word_count.wasm"
risk = "low"
"#,
        roots = roots.display().to_string(),
        secret = secret.display().to_string(),
    );
    let resolver = Arc::new(airlock_runtime::egress::StaticResolver::new([(
        "localhost".to_string(),
        vec!["127.0.0.1".parse().unwrap()],
    )]));
    let node =
        airlock_tests::TestNode::with_resolver(&config, &[("p.cedar", EVERYTHING)], resolver);
    let bound = format!("https://localhost:{port}/bound/echo");
    let calls = json!([
        {"op": "log", "level": "warn", "message": "probing"},
        {"op": "print", "message": "from stdout"},
        {"op": "storage.put", "key": "notes/a", "value": "one"},
        {"op": "storage.get", "key": "notes/a"},
        {"op": "storage.list", "prefix": "notes/"},
        {"op": "storage.delete", "key": "notes/a"},
        {"op": "storage.get", "key": "notes/a"},
        {"op": "storage.put", "key": "big", "value": "x".repeat(100)},
        {"op": "storage.get", "key": ""},
        {"op": "secrets.mint", "name": "id", "audience": "https://api.example"},
        {"op": "secrets.mint", "name": "nothing", "audience": "https://api.example"},
        {"op": "http.fetch", "url": bound, "credential": "api"},
        {"op": "http.fetch", "method": "POST", "url": plain.url("/echo"),
         "headers": [["x-probe", "1"]], "body": "hello"},
        {"op": "http.fetch", "url": "https://forbidden.example/"},
        {"op": "http.fetch", "url": "https://localhost/", "headers": [["authorization", "x"]]},
        {"op": "tools.invoke", "name": "word-count", "input": r#"{"text": "one two three"}"#},
        {"op": "tools.invoke", "name": "nothing", "input": "{}"},
        {"op": "no-such-op"},
    ]);
    let input = json!({ "calls": calls }).to_string();
    let rust = node
        .run(airlock_tests::skills::CAPABILITY_PROBE, &input, Trust::High)
        .await;
    let expected = comparable(&airlock_tests::results(&rust));
    let kinds: Vec<&str> = expected
        .iter()
        .map(|r| r["error"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        kinds,
        [
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "limit",
            "invalid",
            "ok",
            "not-found",
            "ok",
            "ok",
            "denied",
            "invalid",
            "ok",
            "not-found",
            "probe"
        ],
        "{expected:#?}"
    );
    assert_eq!(expected[3]["ok"], "one");
    // The minted token was the skill's to use, not to return.
    assert_eq!(expected[9]["ok"], "[redacted]", "{}", expected[9]);
    assert!(
        expected[13]["message"]
            .as_str()
            .unwrap()
            .contains("denied by policy `test/not-there`"),
        "{}",
        expected[13]
    );

    for (lang, wasm) in &probes {
        let report = node.run(wasm, &input, Trust::High).await;
        assert_eq!(
            report.status,
            airlock_runtime::run::RunStatus::Ok,
            "{lang}: {:?}",
            report.error
        );
        let results = comparable(&airlock_tests::results(&report));
        assert_eq!(results, expected, "{lang} answers unlike Rust");
        let logs: Vec<(String, String)> = report
            .logs
            .iter()
            .map(|l| (format!("{:?}", l.source), l.message.clone()))
            .collect();
        assert!(
            logs.contains(&("Log".into(), "probing".into()))
                && logs.contains(&("Stdout".into(), "from stdout".into())),
            "{lang}: {logs:?}"
        );
        let failed = node
            .run(
                wasm,
                r#"{"calls": [{"op": "fail", "message": "gave up"}]}"#,
                Trust::High,
            )
            .await;
        assert_eq!(
            failed.status,
            airlock_runtime::run::RunStatus::SkillError,
            "{lang}"
        );
        assert_eq!(failed.error.unwrap().message, "gave up", "{lang}");
    }
    // The credential reached the bound destination once per language, in
    // the header the broker sets; the skills never saw it.
    let attached = tls
        .seen()
        .iter()
        .filter(|s| s.header("authorization") == Some(&format!("Bearer {SENTINEL}")))
        .count();
    assert_eq!(attached, 1 + probes.len());

    // JavaScript's own `fetch` goes out through wasi:http, decided by the
    // same broker: allowed to the plain server, refused elsewhere (the
    // script sees a network error; the denial is in the run's record).
    if let Some((_, wasm)) = probes.iter().find(|(lang, _)| *lang == "js") {
        let calls = json!({"calls": [
            {"op": "fetch", "method": "POST", "url": plain.url("/echo"), "body": "via fetch"},
            {"op": "fetch", "url": plain.url("/echo"), "headers": [["x-probe", "2"]]},
            {"op": "fetch", "url": "https://forbidden.example/"},
        ]});
        let report = node.run(wasm, &calls.to_string(), Trust::High).await;
        let results = airlock_tests::results(&report);
        assert_eq!(results[0]["ok"]["status"], 200, "{results:?}");
        let echoed: Value =
            serde_json::from_str(results[0]["ok"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(echoed["body"], "via fetch");
        assert_eq!(echoed["method"], "POST");
        let echoed: Value =
            serde_json::from_str(results[1]["ok"]["body"].as_str().unwrap()).unwrap();
        assert!(
            echoed["headers"]
                .as_array()
                .unwrap()
                .contains(&json!(["x-probe", "2"])),
            "{echoed}"
        );
        assert_eq!(results[2]["error"], "fetch", "{results:?}");
        let denied = report
            .decisions
            .iter()
            .find(|d| {
                matches!(&d.resource, airlock_host_apis::Resource::Host { name } if name == "forbidden.example")
            })
            .expect("the refused fetch is recorded");
        assert!(
            denied
                .decision
                .policies
                .iter()
                .any(|p| p == "test/not-there"),
            "{denied:?}"
        );
    }
}
