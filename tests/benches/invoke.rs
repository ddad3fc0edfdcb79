//! Warm invocation of `hello` (instantiate, call, tear down): Airlock's engine
//! against bare wasmtime with the same component, pooling configuration and
//! `InstancePre`, in one run. Prints p50/p99 of both and their ratio, and
//! invocations per second on one core and on all cores.
//!
//! Run with `cargo bench -p airlock-tests --bench invoke` (and `RUST_BACKTRACE`
//! unset: a captured backtrace on any error path distorts the figures).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_runtime::engine::{Engine, EngineConfig};
use airlock_runtime::run::{RunStatus, Services};
use airlock_tests::{request, skills, wasm};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bare wasmtime, configured as Airlock's engine is.
fn bare_engine(config: &EngineConfig) -> wasmtime::Engine {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .memory_init_cow(true)
        .max_wasm_stack(512 << 10)
        .async_stack_size(1 << 20);
    let mut pool = PoolingAllocationConfig::new();
    let n = config.max_instances;
    pool.total_component_instances(n)
        .total_core_instances(n * 4)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_memory_size(config.max_memory as usize)
        .linear_memory_keep_resident(config.keep_resident)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasmtime::Engine::new(&c).unwrap()
}

fn bare_pre(engine: &wasmtime::Engine, bytes: &[u8]) -> InstancePre<Bare> {
    let component = Component::new(engine, bytes).unwrap();
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.instantiate_pre(&component).unwrap()
}

async fn bare_invoke(engine: &wasmtime::Engine, pre: &InstancePre<Bare>) {
    let mut store = Store::new(
        engine,
        Bare {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        },
    );
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let run = instance
        .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
        .unwrap();
    let (out,) = run.call_async(&mut store, ("{}",)).await.unwrap();
    assert!(out.is_ok());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50 and p99 of `a` and `b`, measured in alternating rounds so that drift
/// in the machine (frequency, other load) falls on both alike.
fn latencies<A, FA, B, FB>(
    rt: &tokio::runtime::Runtime,
    mut a: A,
    mut b: B,
) -> ((Duration, Duration), (Duration, Duration))
where
    A: FnMut() -> FA,
    FA: std::future::Future<Output = ()>,
    B: FnMut() -> FB,
    FB: std::future::Future<Output = ()>,
{
    const ROUNDS: usize = 10;
    rt.block_on(async {
        for _ in 0..WARMUP {
            a().await;
            b().await;
        }
        let mut sa = Vec::with_capacity(SAMPLES);
        let mut sb = Vec::with_capacity(SAMPLES);
        for _ in 0..ROUNDS {
            for _ in 0..SAMPLES / ROUNDS {
                let t = Instant::now();
                a().await;
                sa.push(t.elapsed());
            }
            for _ in 0..SAMPLES / ROUNDS {
                let t = Instant::now();
                b().await;
                sb.push(t.elapsed());
            }
        }
        sa.sort();
        sb.sort();
        (
            (percentile(&sa, 0.5), percentile(&sa, 0.99)),
            (percentile(&sb, 0.5), percentile(&sb, 0.99)),
        )
    })
}

/// Invocations per second with `workers` threads each running a loop.
///
/// Each loop checks the clock itself: a skill this small never yields, so a
/// timer on the same runtime would not get to fire.
fn throughput<F, Fut>(workers: usize, once: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    throughput_tasks(workers, workers, THROUGHPUT_TIME, once)
}

/// Invocations per second with `tasks` loops on `workers` threads.
fn throughput_tasks<F, Fut>(workers: usize, tasks: usize, time: Duration, once: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    throughput_counted(workers, tasks, time, once).0
}

/// Invocations per second, and every run made, warm-up included.
fn throughput_counted<F, Fut>(workers: usize, tasks: usize, time: Duration, once: F) -> (f64, u64)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let all = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_millis(300);
    let end = warm_until + time;
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let once = once.clone();
            let count = count.clone();
            let all = all.clone();
            handles.push(tokio::spawn(async move {
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    once().await;
                    all.fetch_add(1, Ordering::Relaxed);
                    if now >= warm_until {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
    });
    (
        count.load(Ordering::Relaxed) as f64 / time.as_secs_f64(),
        all.load(Ordering::Relaxed),
    )
}

/// CPU time (user and system, in clock ticks) of the whole process,
/// threads that have exited included. Per thread, tick accounting charges
/// threads woken by a timer (the audit writer) for more than they use.
fn cpu_ticks() -> u64 {
    // Fields after the command's closing parenthesis: state is the first,
    // utime the 12th, stime the 13th.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|close| stat[close + 1..].split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Microseconds of CPU a run, from clock ticks and runs counted.
fn per_run_us(ticks: u64, runs: u64) -> f64 {
    // Linux reports these in USER_HZ, 100 on every architecture we run on.
    ticks as f64 * 10_000.0 / runs.max(1) as f64
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        eprintln!("note: RUST_BACKTRACE is set; error paths will cost more than they should");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bytes = wasm(skills::HELLO);
    let mut config = EngineConfig {
        // Room for every run in flight when measuring the audit log.
        max_instances: 256.max(audit_in_flight() as u32),
        ..EngineConfig::default()
    };
    // For exploring the pool's reset cost: bytes kept resident per memory.
    if let Some(bytes) = std::env::var("AIRLOCK_BENCH_KEEP_RESIDENT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.keep_resident = bytes;
    }
    println!("pooling, keep_resident = {} bytes", config.keep_resident);

    let airlock = Arc::new(Engine::new(config.clone()).unwrap());
    let skill = airlock.load(&bytes).unwrap();
    let services = Arc::new(Services::default());
    let bare = bare_engine(&config);
    let pre = Arc::new(bare_pre(&bare, &bytes));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let airlock_once = {
        let (airlock, skill, services) = (airlock.clone(), skill.clone(), services.clone());
        move || {
            let (airlock, skill, services) = (airlock.clone(), skill.clone(), services.clone());
            async move {
                let report = airlock.run(&skill, request("hello", "{}"), &services).await;
                assert_eq!(report.status, RunStatus::Ok);
            }
        }
    };
    let bare_once = {
        let (bare, pre) = (bare.clone(), pre.clone());
        move || {
            let (bare, pre) = (bare.clone(), pre.clone());
            async move { bare_invoke(&bare, &pre).await }
        }
    };

    // The same log records for a run about ten times as long.
    let text = (0..1500)
        .map(|i| ["alpha", "beta", "gamma", "delta", "epsilon"][i % 5])
        .collect::<Vec<_>>()
        .join(" ");
    let workloads = [
        Workload {
            label: "hello (no host calls)".into(),
            skill: skill.clone(),
            input: "{}".into(),
        },
        Workload {
            label: "word-count, 1,500 words (no host calls)".into(),
            skill: airlock.load(&wasm(skills::WORD_COUNT)).unwrap(),
            input: serde_json::json!({ "text": text, "top": 3 }).to_string(),
        },
    ];
    if std::env::var_os("AIRLOCK_BENCH_AUDIT_ONLY").is_some() {
        audit_cost(&airlock, &workloads, cores);
        return;
    }
    println!("warm invocation of `hello` (instantiate, call, tear down), {SAMPLES} samples");
    let ((bare_p50, bare_p99), (air_p50, air_p99)) = latencies(&rt, &bare_once, &airlock_once);
    println!(
        "  bare wasmtime   p50 {:7.1} µs   p99 {:7.1} µs",
        us(bare_p50),
        us(bare_p99)
    );
    println!(
        "  airlock         p50 {:7.1} µs   p99 {:7.1} µs",
        us(air_p50),
        us(air_p99)
    );
    println!(
        "  ratio           p50 {:7.2}x     p99 {:7.2}x   (target: p50 at most 1.5x)",
        us(air_p50) / us(bare_p50),
        us(air_p99) / us(bare_p99)
    );

    audit_cost(&airlock, &workloads, cores);

    println!("invocations per second ({cores} cores available)");
    let mut workers = vec![1];
    if cores > 1 {
        workers.push(cores);
    }
    for n in workers {
        let bare_rate = throughput(n, bare_once.clone());
        let air_rate = throughput(n, airlock_once.clone());
        println!(
            "  {n} worker(s)     bare {:9.0}/s   airlock {:9.0}/s   ({:.2}x of bare)",
            bare_rate,
            air_rate,
            air_rate / bare_rate
        );
    }
}

/// Runs in flight when measuring the audit log: group commit shares one
/// fsync among the runs that finish while the last one is written, so with
/// few in flight the figure measures the fsync's latency, not the log's cost.
const IN_FLIGHT: usize = 256;

/// The audit comparison alternates short rounds, each off then durable, and
/// reports the median of their ratios: this machine's speed drifts by more
/// than the 10% being measured, over seconds, and a ratio of neighbouring
/// rounds drifts far less than either figure.
const AUDIT_ROUNDS: usize = 7;
const AUDIT_ROUND_TIME: Duration = Duration::from_millis(1500);

fn audit_in_flight() -> usize {
    std::env::var("AIRLOCK_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IN_FLIGHT)
}

/// A skill and its input, for measuring the audit log's cost.
struct Workload {
    label: String,
    skill: Arc<airlock_runtime::LoadedSkill>,
    input: String,
}

/// The least any durable log could cost a run, whatever its writer, disk or
/// way of waiting: serializing the run's records, and hashing them as the
/// chain's lines (each framed with its seq, time and previous hash, about
/// 100 bytes more). One thread, caches warm: under load it costs more.
struct Floor {
    serialize_us: f64,
    hash_us: f64,
    bytes: usize,
}

fn record_floor(airlock: &Engine, workload: &Workload) -> Floor {
    const N: u32 = 20_000;
    const FRAMING: usize = 100;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(airlock.run(
        &workload.skill,
        request("audit", &workload.input),
        &Services::default(),
    ));
    let mut subject = request("audit", &workload.input).subject;
    subject.instance = report.instance.clone();
    subject.skill.digest = workload.skill.digest().to_hex();
    let max_identical = airlock_runtime::config::AuditConfig::default().max_identical_denials;
    let records = || {
        let mut lines = vec![airlock_runtime::audit::line(
            &airlock_runtime::audit::start_event(&subject),
        )];
        lines.extend(airlock_runtime::audit::end_events(
            &subject,
            &report,
            max_identical,
        ));
        lines
    };
    let framed: Vec<Vec<u8>> = records()
        .iter()
        .map(|line| {
            let mut framed = vec![b' '; FRAMING];
            framed.extend_from_slice(line.as_bytes());
            framed
        })
        .collect();
    let bytes = framed.iter().map(Vec::len).sum();
    for _ in 0..N / 10 {
        std::hint::black_box(records());
    }
    let started = Instant::now();
    for _ in 0..N {
        std::hint::black_box(records());
    }
    let serialize_us = us(started.elapsed()) / f64::from(N);
    let started = Instant::now();
    for _ in 0..N {
        for line in &framed {
            std::hint::black_box(blake3::hash(std::hint::black_box(line)));
        }
    }
    let hash_us = us(started.elapsed()) / f64::from(N);
    Floor {
        serialize_us,
        hash_us,
        bytes,
    }
}

/// Invocations per second with the audit log off and on (durable: each
/// run's records fsynced before its report returns), alternated twice, for
/// each workload: the log's cost per run is about fixed (two records), so
/// its share depends on how much the run itself costs.
fn audit_cost(airlock: &Arc<Engine>, workloads: &[Workload], cores: usize) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(airlock_runtime::identity::Keyring::ephemeral(
        Duration::from_secs(3600),
    ));
    let mut settings = airlock_runtime::config::AuditConfig::default();
    // For exploring the trade: AIRLOCK_BENCH_COMMIT_US=0 syncs every batch
    // as soon as the one before is on disk.
    if let Some(us) = std::env::var("AIRLOCK_BENCH_COMMIT_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.commit_interval = Duration::from_micros(us);
    }
    let interval = settings.commit_interval;
    let log = airlock_runtime::audit::AuditLog::open(&dir.path().join("audit.jsonl"), keys)
        .unwrap()
        .with_settings(settings);
    let off = Arc::new(Services::default());
    let on = Arc::new(Services {
        audit: Some(Arc::new(log)),
        ..Services::default()
    });
    let once = |services: Arc<Services>, workload: &Workload| {
        let (airlock, skill) = (airlock.clone(), workload.skill.clone());
        let input: Arc<str> = workload.input.as_str().into();
        move || {
            let (airlock, skill, services) = (airlock.clone(), skill.clone(), services.clone());
            let input = input.clone();
            async move {
                let report = airlock
                    .run(&skill, request("audit", &input), &services)
                    .await;
                assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
            }
        }
    };
    let in_flight = audit_in_flight();
    // For profiling one phase alone (`off` or `durable`, with the workload
    // numbered by AIRLOCK_BENCH_WORKLOAD, from 0); any other value measures
    // both, alternated, and nothing else.
    let chosen = std::env::var("AIRLOCK_BENCH_WORKLOAD")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if let Ok(phase) = std::env::var("AIRLOCK_BENCH_AUDIT_ONLY")
        && (phase == "off" || phase == "durable")
        && let Some(workload) = workloads.get(chosen)
    {
        let services = if phase == "off" { off } else { on };
        let rate = throughput_tasks(cores, in_flight, THROUGHPUT_TIME, once(services, workload));
        println!("audit log {phase}, {in_flight} in flight: {rate:9.0}/s");
        return;
    }
    let rounds: usize = std::env::var("AIRLOCK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(AUDIT_ROUNDS)
        .max(1);
    println!(
        "audit log: invocations per second, {in_flight} runs in flight on {cores} threads, commit interval {interval:?}, \
         {rounds} rounds of off then durable, {AUDIT_ROUND_TIME:?} each"
    );
    for workload in workloads {
        println!("  {}", workload.label);
        let floor = record_floor(airlock, workload);
        let mut ratios = Vec::new();
        let mut offs = Vec::new();
        let (mut cpu_off, mut cpu_on) = (0, 0);
        let (mut runs_off, mut runs_on) = (0, 0);
        for round in 1..=rounds {
            let before = cpu_ticks();
            let (rate_off, made) = throughput_counted(
                cores,
                in_flight,
                AUDIT_ROUND_TIME,
                once(off.clone(), workload),
            );
            let between = cpu_ticks();
            let (rate_on, made_on) = throughput_counted(
                cores,
                in_flight,
                AUDIT_ROUND_TIME,
                once(on.clone(), workload),
            );
            let after = cpu_ticks();
            cpu_off += between - before;
            cpu_on += after - between;
            (runs_off, runs_on) = (runs_off + made, runs_on + made_on);
            println!(
                "    round {round:2}   off {rate_off:9.0}/s   durable {rate_on:9.0}/s   {:.3}",
                rate_on / rate_off
            );
            ratios.push(rate_on / rate_off);
            offs.push(rate_off);
        }
        // CPU a run, for seeing where the log's cost goes: a rate alone
        // cannot tell a busier run from an idle core.
        println!(
            "    CPU a run (all rounds, this process)   off {:.1} µs   durable {:.1} µs",
            per_run_us(cpu_off, runs_off),
            per_run_us(cpu_on, runs_on),
        );
        ratios.sort_by(f64::total_cmp);
        offs.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v[v.len() / 2];
        let ratio = median(&ratios);
        println!(
            "    durable / off  {ratio:.3} of the rate (median of rounds; {:.3} to {:.3}), {:.1}% lower   \
             (target: at most 10% lower); off, a run costs {:.1} µs of the {cores} cores",
            ratios[0],
            ratios[ratios.len() - 1],
            (1.0 - ratio) * 100.0,
            cores as f64 * 1e6 / median(&offs)
        );
        let run_us = cores as f64 * 1e6 / median(&offs);
        let least = floor.serialize_us + floor.hash_us;
        println!(
            "    floor (one thread, warm): serializing the run's records {:.2} µs, hashing them as lines {:.2} µs \
             ({} bytes); at {run_us:.1} µs a run, no durable log could keep more than {:.3} of the rate",
            floor.serialize_us,
            floor.hash_us,
            floor.bytes,
            run_us / (run_us + least)
        );
    }
}
