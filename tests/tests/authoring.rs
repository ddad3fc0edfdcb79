//! Skills written in Rust, Python and JavaScript: `airlock new` makes a
//! project, `airlock build` makes it a component with the language's own
//! tool, and the result runs under the same contract. The examples in
//! `skills-examples/python/` and `skills-examples/js/` are built and run
//! the same way. Where a language's tool is not installed, the build must
//! say which tool and how to install it (`.ci/run` installs them all).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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
