//! The engine's loading path: the compiled-artifact cache, the per-digest
//! `InstancePre`, and what it refuses.

use airlock_runtime::engine::{CompileSource, Engine, EngineConfig};
use airlock_runtime::run::{RunStatus, Services};
use airlock_runtime::{Error, Rejection, SkillDigest};
use airlock_tests::{request, skills, wasm};

fn engine_with_cache(dir: &std::path::Path) -> Engine {
    Engine::new(EngineConfig {
        max_instances: 8,
        cache_dir: Some(dir.to_path_buf()),
        ..EngineConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn second_run_of_a_skill_does_not_recompile() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(skills::HELLO);

    let first = engine_with_cache(dir.path()).load(&bytes).unwrap();
    assert!(
        matches!(first.source, CompileSource::Compiled { .. }),
        "{:?}",
        first.source
    );

    // A new engine (a new process, as far as the cache knows) loads from disk.
    let engine = engine_with_cache(dir.path());
    let second = engine.load(&bytes).unwrap();
    assert!(
        matches!(second.source, CompileSource::Cache { .. }),
        "{:?}",
        second.source
    );
    let report = engine
        .run(&second, request("hello", "{}"), &Services::default())
        .await;
    assert_eq!(report.status, RunStatus::Ok);

    // The same engine keeps it in memory.
    let third = engine.load(&bytes).unwrap();
    assert_eq!(third.source, CompileSource::Memory);
    assert_eq!(third.digest(), SkillDigest::of(&bytes));
}

#[tokio::test]
async fn corrupt_cache_entry_is_rebuilt_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(skills::HELLO);
    engine_with_cache(dir.path()).load(&bytes).unwrap();
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cache entry");
    let mut artifact = std::fs::read(&entry).unwrap();
    let middle = artifact.len() / 2;
    artifact[middle] ^= 0xff;
    std::fs::write(&entry, &artifact).unwrap();

    let engine = engine_with_cache(dir.path());
    let skill = engine.load(&bytes).unwrap();
    assert!(
        matches!(skill.source, CompileSource::Compiled { .. }),
        "{:?}",
        skill.source
    );
    let report = engine
        .run(&skill, request("hello", "{}"), &Services::default())
        .await;
    assert_eq!(report.status, RunStatus::Ok);
    // The rebuilt entry is sound again.
    let again = engine_with_cache(dir.path()).load(&bytes).unwrap();
    assert!(
        matches!(again.source, CompileSource::Cache { .. }),
        "{:?}",
        again.source
    );
}

#[test]
fn precompiled_artifacts_are_never_accepted_as_skills() {
    let engine = Engine::new(EngineConfig {
        max_instances: 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let plain = wasmtime::Engine::default();
    let precompiled = plain.precompile_component(&wasm(skills::HELLO)).unwrap();
    match engine.load(&precompiled) {
        Err(Error::Rejected(Rejection::Precompiled)) => {}
        other => panic!("{other:?}"),
    }
}

/// A full pool is the node's state, not the skill's fault: the run says it
/// is busy (retry), not that the skill trapped, and the slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_no_free_instance_slot_is_busy_not_a_trap() {
    let engine = std::sync::Arc::new(
        Engine::new(EngineConfig {
            max_instances: 1,
            ..EngineConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let hello = engine
        .load(&wasm(skills::HELLO))
        .unwrap_or_else(|e| panic!("{e}"));
    let spin = engine
        .load(&wasm(skills::INFINITE_LOOP))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut long = request("infinite-loop", "{}");
    long.limits.deadline = std::time::Duration::from_secs(3);
    let holder = {
        let engine = engine.clone();
        tokio::spawn(async move {
            // It may start while a `hello` below has the slot: then again.
            loop {
                let report = engine.run(&spin, long.clone(), &Services::default()).await;
                if report.status != RunStatus::Busy {
                    break report;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    };
    // The holder takes the one slot as soon as it is scheduled.
    let mut busy = None;
    for _ in 0..100 {
        let report = engine
            .run(&hello, request("hello", "{}"), &Services::default())
            .await;
        if report.status == RunStatus::Busy {
            busy = Some(report);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let busy = busy.unwrap_or_else(|| panic!("no run was refused for want of a slot"));
    assert_eq!(busy.output, None);
    let message = busy.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("at capacity"), "{message}");
    assert!(message.contains("max_instances"), "{message}");
    assert!(!message.contains("trapped"), "{message}");
    let held = holder.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held.status, RunStatus::Limit, "{:?}", held.error);
    // The slot is free again.
    let report = engine
        .run(
            &hello,
            request("hello", r#"{"name":"x"}"#),
            &Services::default(),
        )
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
}

#[tokio::test]
async fn on_demand_allocation_runs_skills_too() {
    let engine = Engine::new(EngineConfig {
        pooling: false,
        ..EngineConfig::default()
    })
    .unwrap();
    let skill = engine.load(&wasm(skills::HELLO)).unwrap();
    let report = engine
        .run(
            &skill,
            request("hello", r#"{"name":"x"}"#),
            &Services::default(),
        )
        .await;
    assert_eq!(report.output.as_deref(), Some(r#"{"greeting":"hello, x"}"#));
}

#[test]
fn oversized_components_are_rejected_before_parsing() {
    let engine = Engine::new(EngineConfig {
        max_instances: 2,
        max_component_size: 1024,
        ..EngineConfig::default()
    })
    .unwrap();
    let bytes = wasm(skills::HELLO);
    match engine.load(&bytes) {
        Err(Error::Rejected(Rejection::TooLarge { size, max })) => {
            assert_eq!(size, bytes.len() as u64);
            assert_eq!(max, 1024);
        }
        other => panic!("{other:?}"),
    }
}
