//! Shared helpers for Airlock's end-to-end tests and benchmarks.
//!
//! [`skills`] holds the path of every guest built from `skills-examples/`.

use std::sync::{Arc, OnceLock};

use airlock_runtime::engine::{Engine, EngineConfig, LoadedSkill};
use airlock_runtime::run::{RunReport, RunRequest, Services};
use airlock_runtime::{Error, Limits};

/// Paths of the guest components, and `foreach_example!` / `foreach_hostile!`.
pub mod skills {
    include!(concat!(env!("OUT_DIR"), "/skills.rs"));
}

/// Read a built guest.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading guest `{path}`: {e}"))
}

/// One engine per test binary: tests share it as a server would.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(EngineConfig {
            max_instances: 64,
            ..EngineConfig::default()
        })
        .unwrap_or_else(|e| panic!("engine: {e}"))
    })
}

/// Load a guest into the shared engine.
pub fn load(path: &str) -> Result<Arc<LoadedSkill>, Error> {
    engine().load(&wasm(path))
}

/// A run request with default limits and an anonymous subject.
pub fn request(name: &str, input: &str) -> RunRequest {
    let mut subject = airlock_host_apis::Subject::default();
    subject.skill.name = name.to_string();
    RunRequest {
        input: input.to_string(),
        subject,
        limits: Limits::default(),
        session: None,
        ledger: None,
    }
}

/// Load and run a guest with default services (the deny-all broker).
pub async fn run(path: &str, input: &str) -> RunReport {
    run_with(path, request(name_of(path), input), &Services::default()).await
}

/// Load and run a guest with the given request and services.
pub async fn run_with(path: &str, request: RunRequest, services: &Services) -> RunReport {
    let skill = load(path).unwrap_or_else(|e| panic!("loading `{path}`: {e}"));
    engine().run(&skill, request, services).await
}

/// A guest's name, from its file name.
pub fn name_of(path: &str) -> &str {
    std::path::Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("skill")
}
