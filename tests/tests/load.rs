//! Load: 1,000 concurrent skill runs through `airlock serve` on loopback.
//! Bounded in count and time. Every request ends in a run that returns
//! output, or in 429 beyond the server's run limit (the client then backs
//! off and retries); nothing else. The server's memory after a burst is back
//! where it was after the one before: no growth per run.
//!
//! Prints runs/s and latency percentiles (`--nocapture`). Figures in
//! docs/PERFORMANCE.md come from `cargo test --release`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_runtime::api::new_key;
use airlock_tests::serving::Serving;
use airlock_tests::{skills, wasm};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const CONCURRENT: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Burst {
    ok: usize,
    too_many: u64,
    errors: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Burst {
    fn report(&mut self, what: &str) {
        self.latencies.sort();
        let at = |q: f64| {
            let i = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
            self.latencies.get(i).copied().unwrap_or_default()
        };
        println!(
            "load ({what}): {} runs, {CONCURRENT} at once, in {:.2} s = {:.0} runs/s; \
             429s retried: {}; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.ok as f64 / self.elapsed.as_secs_f64(),
            self.too_many,
            at(0.50).as_secs_f64() * 1e3,
            at(0.90).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            at(1.0).as_secs_f64() * 1e3,
        );
    }
}

async fn burst(client: &reqwest::Client, base: &str, key: &str, digest: &str) -> Burst {
    let too_many = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CONCURRENT);
    for i in 0..CONCURRENT {
        let client = client.clone();
        let url = format!("{base}/v1/runs");
        let key = key.to_string();
        let body = json!({"skill": digest, "input": {"name": format!("caller-{i}")}});
        let too_many = too_many.clone();
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            loop {
                let response = client.post(&url).bearer_auth(&key).json(&body).send().await;
                let response = match response {
                    Ok(r) => r,
                    Err(e) => return Err(format!("request failed: {e}")),
                };
                let status = response.status();
                if status == StatusCode::TOO_MANY_REQUESTS {
                    if response.headers().get("retry-after").is_none() {
                        return Err("429 without Retry-After".into());
                    }
                    too_many.fetch_add(1, Ordering::Relaxed);
                    // Sooner than Retry-After: this client wants the figures.
                    tokio::time::sleep(Duration::from_millis(5 + (i % 20) as u64)).await;
                    continue;
                }
                let text = response.text().await.unwrap_or_default();
                let report: Value = serde_json::from_str(&text).unwrap_or_default();
                if status != StatusCode::OK || report["status"] != "ok" {
                    return Err(format!("{status}: {text}"));
                }
                return Ok(asked.elapsed());
            }
        }));
    }
    let mut result = Burst {
        ok: 0,
        too_many: 0,
        errors: Vec::new(),
        latencies: Vec::with_capacity(CONCURRENT),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok(Ok(latency)) => {
                result.ok += 1;
                result.latencies.push(latency);
            }
            Ok(Err(e)) => result.errors.push(e),
            Err(e) => result.errors.push(e.to_string()),
        }
    }
    result.elapsed = started.elapsed();
    result.too_many = too_many.load(Ordering::Relaxed);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_runs_through_the_api() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (submitter, submitter_hash) = new_key();
    let (reviewer, reviewer_hash) = new_key();
    let (runner, runner_hash) = new_key();
    let config = format!(
        "[api]\nmax_runs = 256\nmax_runs_per_principal = 256\n\
         [[api.keys]]\nprincipal = \"orchestrator\"\nroles = [\"submitter\"]\nhash = \"{submitter_hash}\"\n\
         [[api.keys]]\nprincipal = \"reviewer\"\nroles = [\"reviewer\"]\nhash = \"{reviewer_hash}\"\n\
         [[api.keys]]\nprincipal = \"load\"\nroles = [\"runner\"]\nhash = \"{runner_hash}\"\n"
    );
    let config_path = dir.path().join("airlock.toml");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"));
    command
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("serve");
    let server = Serving::start(command);
    let base = server.base();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENT)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut up = false;
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the server did not come up");

    let form = Form::new()
        .part(
            "metadata",
            Part::text(json!({"name": "hello", "agent": "planner", "trust": "medium"}).to_string()),
        )
        .part("component", Part::bytes(wasm(skills::HELLO)));
    let admitted: Value = client
        .post(format!("{base}/v1/skills"))
        .bearer_auth(&submitter)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let digest = admitted["digest"].as_str().unwrap_or_default().to_string();
    let approved = client
        .post(format!("{base}/v1/skills/{digest}/approve"))
        .bearer_auth(&reviewer)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(approved.status(), StatusCode::OK);

    let pid = server.child.id();
    let bounded = tokio::time::timeout(Duration::from_secs(300), async {
        let mut first = burst(&client, &base, &runner, &digest).await;
        first.report("first burst: pool and allocator warm up");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let baseline = rss_kib(pid);
        let mut second = burst(&client, &base, &runner, &digest).await;
        second.report("second burst");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        println!(
            "load: server RSS {:.1} MiB after the first burst, {:.1} MiB after the second",
            baseline as f64 / 1024.0,
            after as f64 / 1024.0
        );
        (first, second, baseline, after)
    })
    .await;
    let (first, second, baseline, after) =
        bounded.unwrap_or_else(|_| panic!("2,000 runs took over 5 minutes"));
    for b in [&first, &second] {
        assert!(
            b.errors.is_empty(),
            "errors besides 429: {:?}",
            &b.errors[..b.errors.len().min(5)]
        );
        assert_eq!(b.ok, CONCURRENT);
    }
    assert!(
        second.too_many > 0,
        "1,000 at once against max_runs = 256 must meet the limit"
    );
    // The same work again may not hold on to more: 10% and 16 MiB of slack
    // for allocator noise.
    assert!(
        after <= baseline + baseline / 10 + 16 * 1024,
        "the server grew from {baseline} KiB to {after} KiB over 1,000 runs"
    );
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(health["runs_in_progress"], 0, "{health}");
}
