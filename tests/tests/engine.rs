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
