//! Shared helpers for Airlock's end-to-end tests and benchmarks.
//!
//! [`skills`] holds the path of every guest built from `skills-examples/`.

use std::sync::{Arc, OnceLock};

use airlock_host_apis::{AgentIdentity, Trust};
use airlock_runtime::config::PolicyMode;
use airlock_runtime::engine::{Engine, EngineConfig, LoadedSkill};
use airlock_runtime::run::{RunReport, RunRequest, Services};
use airlock_runtime::{Config, Error, Limits, Node, NodeOptions};

pub mod nats;
pub mod server;
pub mod serving;

/// Paths of the guest components, and `foreach_example!` / `foreach_hostile!`.
pub mod skills {
    include!(concat!(env!("OUT_DIR"), "/skills.rs"));
}

/// Read a built guest.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading guest `{path}`: {e}"))
}

/// One engine per test binary: tests share it as a server would.
pub fn engine() -> &'static Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Arc::new(
            Engine::new(EngineConfig {
                max_instances: 64,
                ..EngineConfig::default()
            })
            .unwrap_or_else(|e| panic!("engine: {e}")),
        )
    })
}

/// A node for one test: its own state directory, policies and
/// configuration, on the shared engine. `config` is TOML in which
/// `{skills}` stands for the directory of the built guests.
pub struct TestNode {
    pub node: Arc<Node>,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub fn new(config: &str, policies: &[(&str, &str)]) -> Self {
        Self::with_mode(config, policies, None)
    }

    pub fn with_mode(config: &str, policies: &[(&str, &str)], mode: Option<PolicyMode>) -> Self {
        Self::with_options(config, policies, mode, None, None, None)
    }

    /// With host names resolved by `resolver`.
    pub fn with_resolver(
        config: &str,
        policies: &[(&str, &str)],
        resolver: Arc<dyn airlock_runtime::egress::Resolver>,
    ) -> Self {
        Self::with_options(config, policies, None, Some(resolver), None, None)
    }

    /// With admitted skills in `registry` (a cluster's) instead of the
    /// data directory.
    pub fn with_registry(
        config: &str,
        policies: &[(&str, &str)],
        registry: Arc<dyn airlock_runtime::admission::registry::Registry>,
    ) -> Self {
        Self::with_options(config, policies, None, None, Some(registry), None)
    }

    /// On `engine` (for its pool's size, say) instead of the shared one,
    /// with admitted skills in `registry` if given.
    pub fn with_engine(
        config: &str,
        policies: &[(&str, &str)],
        registry: Option<Arc<dyn airlock_runtime::admission::registry::Registry>>,
        engine: Arc<Engine>,
    ) -> Self {
        Self::with_options(config, policies, None, None, registry, Some(engine))
    }

    fn with_options(
        config: &str,
        policies: &[(&str, &str)],
        mode: Option<PolicyMode>,
        resolver: Option<Arc<dyn airlock_runtime::egress::Resolver>>,
        registry: Option<Arc<dyn airlock_runtime::admission::registry::Registry>>,
        engine: Option<Arc<Engine>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let skills_dir = std::path::Path::new(skills::HELLO).parent().unwrap();
        let config = config.replace("{skills}", &skills_dir.display().to_string());
        let mut config: Config = toml::from_str(&config).unwrap_or_else(|e| panic!("{e}"));
        config.check().unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        for (name, text) in policies {
            std::fs::write(policy_dir.join(name), text).unwrap();
        }
        config.storage.root = Some(dir.path().join("storage"));
        config.data_dir = Some(dir.path().join("data"));
        let node = Node::new(
            config,
            NodeOptions {
                shared_engine: Some(engine.unwrap_or_else(|| self::engine().clone())),
                policy_dir: Some(policy_dir),
                policy_mode: mode,
                resolver,
                registry,
                ..NodeOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        TestNode { node, dir }
    }

    /// Run a guest as `agent` with `trust`.
    pub async fn run(&self, path: &str, input: &str, trust: Trust) -> RunReport {
        self.run_limited(path, input, trust, Limits::default())
            .await
    }

    /// Run a guest as `agent` with `trust`, under `limits`.
    pub async fn run_limited(
        &self,
        path: &str,
        input: &str,
        trust: Trust,
        limits: Limits,
    ) -> RunReport {
        let skill = self
            .node
            .load(wasm(path))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut req = request(name_of(path), input);
        req.limits = limits;
        req.subject.agent = AgentIdentity {
            id: "agent-1".into(),
            trust,
        };
        req.subject.task.id = "task-1".into();
        req.subject.task.intent = "testing".into();
        self.node.run(&skill, req).await
    }
}

/// The decisions of a run, as (action, verdict, policies).
pub fn decisions(report: &RunReport) -> Vec<(String, String, Vec<String>)> {
    report
        .decisions
        .iter()
        .map(|r| {
            (
                r.action.as_str().to_string(),
                format!("{:?}", r.decision.verdict).to_lowercase(),
                r.decision.policies.clone(),
            )
        })
        .collect()
}

/// The probe's results array.
pub fn results(report: &RunReport) -> Vec<serde_json::Value> {
    let output: serde_json::Value =
        serde_json::from_str(report.output.as_deref().unwrap_or("{}")).unwrap_or_default();
    output["results"].as_array().cloned().unwrap_or_default()
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
        stop: None,
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
