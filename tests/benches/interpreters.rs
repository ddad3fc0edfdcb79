//! Large components: the Python and JavaScript examples carry their
//! interpreter (12-18 MiB). This is what the compiled-artifact cache is for.
//! For each example, built with `airlock build`, it prints:
//!
//! - the first load in a process with an empty cache (inspect and compile),
//!   and the first run after it;
//! - loads in later processes (a new engine on the same cache directory);
//! - warm runs in one process (p50, p99);
//! - the CLI end to end: `airlock run --dev` twice in new processes, the first
//!   with an empty cache.
//!
//! The Rust `word-count` example is measured alongside for scale. Run with
//! `cargo bench -p airlock-tests --bench interpreters` (and `RUST_BACKTRACE`
//! unset). A language whose tool is not installed is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_host_apis::{AgentIdentity, Trust};
use airlock_runtime::config::Config;
use airlock_runtime::engine::CompileSource;
use airlock_runtime::node::{Node, NodeOptions};
use airlock_runtime::run::RunStatus;

const WARM: usize = 300;
const LATER_LOADS: usize = 5;
const POLICY: &str =
    "@id(\"bench/data\")\npermit (principal, action in Airlock::Action::\"data\", resource);\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn airlock(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .current_dir(dir)
        .args(args)
        .env_remove("AIRLOCK_CONFIG")
        .env("AIRLOCK_HOME", dir.join("airlock-home"))
        .output()
        .expect("running airlock")
}

/// Copy an example and build it with `airlock build`; `None` (with a note)
/// when its tool is missing.
fn build(example: &str, dir: &Path) -> Option<PathBuf> {
    let from = repo().join("skills-examples").join(example);
    let name = from.file_name()?.to_str()?.to_string();
    let to = dir.join(&name);
    std::fs::create_dir_all(&to).ok()?;
    for entry in std::fs::read_dir(&from).ok()? {
        let path = entry.ok()?.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name()?)).ok()?;
        }
    }
    if to.join("package.json").exists() {
        let out = Command::new("npm")
            .current_dir(&to)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            println!("{example}: skipped (npm install failed or npm is missing)");
            return None;
        }
    }
    let out = airlock(dir, &["build", &name]);
    if !out.status.success() {
        println!(
            "{example}: skipped ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(to.join(format!("{name}.wasm")))
}

/// A node on `data`; without `audit`, the same cache and storage but no
/// audit log (which a data directory turns on).
fn node(data: &Path, policies: &Path, audit: bool) -> std::sync::Arc<Node> {
    let mut config: Config = toml::from_str("").expect("the empty configuration");
    let mut options = NodeOptions {
        policy_dir: Some(policies.to_path_buf()),
        ..NodeOptions::default()
    };
    if audit {
        config.data_dir = Some(data.to_path_buf());
    } else {
        config.storage.root = Some(data.join("storage"));
        options.engine.cache_dir = Some(data.join("cache"));
    }
    Node::new(config, options).expect("a node")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn source_ms(source: CompileSource) -> String {
    match source {
        CompileSource::Compiled { compile_us } => {
            format!("compiled in {:.0} ms", compile_us as f64 / 1e3)
        }
        CompileSource::Cache { load_us } => format!("from cache in {:.1} ms", load_us as f64 / 1e3),
        CompileSource::Memory => "in memory".into(),
    }
}

async fn run_once(
    node: &Node,
    skill: &airlock_runtime::engine::LoadedSkill,
    input: &str,
) -> Duration {
    let mut request = airlock_tests::request("bench", input);
    request.subject.agent = AgentIdentity {
        id: "bench".into(),
        trust: Trust::High,
    };
    let started = Instant::now();
    let report = node.run(skill, request).await;
    let took = started.elapsed();
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    took
}

async fn measure(label: &str, wasm: &Path, input: &str, reads: &str, dir: &Path) {
    let bytes = std::fs::read(wasm).expect("the built component");
    let data = dir.join(format!("data-{label}"));
    let policies = dir.join("policies");
    println!(
        "\n{label}: {} ({:.1} MiB)",
        wasm.display(),
        bytes.len() as f64 / (1 << 20) as f64
    );

    // First process: empty cache.
    let first = node(&data, &policies, true);
    let started = Instant::now();
    let skill = first.load(bytes.clone()).await.expect("loads");
    let load = started.elapsed();
    let run = run_once(&first, &skill, input).await;
    println!(
        "  first load   {:>9.1} ms ({}), then first run {:.2} ms",
        ms(load),
        source_ms(skill.source),
        ms(run)
    );
    drop(skill);
    drop(first);

    // Later processes: a new engine on the same cache.
    let mut loads = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..LATER_LOADS {
        let later = node(&data, &policies, true);
        let started = Instant::now();
        let skill = later.load(bytes.clone()).await.expect("loads");
        loads.push(started.elapsed());
        assert!(
            matches!(skill.source, CompileSource::Cache { .. }),
            "not cached"
        );
        runs.push(run_once(&later, &skill, input).await);
    }
    loads.sort();
    runs.sort();
    println!(
        "  later load   {:>9.1} ms (median of {LATER_LOADS} new engines), then first run {:.2} ms",
        ms(loads[LATER_LOADS / 2]),
        ms(runs[LATER_LOADS / 2])
    );

    // Warm, in one process, one run at a time: as deployed (each run waits
    // for its audit records to be on disk), and with no audit log.
    // And a run that only reads storage: no write to wait for.
    let runs = [
        (true, input, "durable audit"),
        (false, input, "no audit log"),
        (false, reads, "no audit log, reads only"),
    ];
    for (audit, input, what) in runs {
        let warm = node(&data, &policies, audit);
        let skill = warm.load(bytes.clone()).await.expect("loads");
        for _ in 0..WARM / 10 {
            run_once(&warm, &skill, input).await;
        }
        let mut samples = Vec::with_capacity(WARM);
        for _ in 0..WARM {
            samples.push(run_once(&warm, &skill, input).await);
        }
        samples.sort();
        println!(
            "  warm run     p50 {:.2} ms, p99 {:.2} ms ({what}, {WARM} runs)",
            ms(samples[WARM / 2]),
            ms(samples[WARM * 99 / 100])
        );
    }

    // The CLI, as a developer meets it: two `airlock run --dev` processes.
    let home = dir.join(format!("cli-{label}"));
    std::fs::create_dir_all(&home).expect("a directory");
    let mut cli = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let out = airlock(
            &home,
            &[
                "run",
                "--dev",
                &wasm.display().to_string(),
                "--input",
                input,
                "--policy",
                &policies.display().to_string(),
            ],
        );
        cli.push(started.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "  airlock run  {:>9.1} ms first (empty cache), {:.1} ms second",
        ms(cli[0]),
        ms(cli[1])
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("a directory");
    std::fs::write(policies.join("bench.cedar"), POLICY).expect("the policy");
    let text = r#"{"text": "the cat and the hat"}"#;
    if let Some(wasm) = build("python/tally", dir.path()) {
        measure("python tally", &wasm, text, r#"{"text": ""}"#, dir.path()).await;
    }
    if let Some(wasm) = build("js/bookmarks", dir.path()) {
        let input = r#"{"add": {"name": "a", "url": "https://a.example/"}}"#;
        measure("javascript bookmarks", &wasm, input, "{}", dir.path()).await;
    }
    let rust = PathBuf::from(airlock_tests::skills::WORD_COUNT);
    measure("rust word-count", &rust, text, text, dir.path()).await;
}
