//! A node: the engine, the broker and the backends its capabilities reach,
//! built from the configuration. The CLI runs one per command; a server runs
//! one for its life.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_host_apis::{Broker, DenyAll};
use airlock_policy::Policies;

use crate::Error;
use crate::admission::node::Running;
use crate::admission::registry::{Embedded, Registry};
use crate::admission::{SkillStore, TrustedKey};
use crate::broker::PolicyBroker;
use crate::config::{Config, PolicyMode};
use crate::credentials::Vault;
use crate::egress::{HttpEgress, Resolver, SystemResolver};
use crate::engine::{Engine, EngineConfig, LoadedSkill};
use crate::identity::Issuer;
use crate::run::{RunReport, RunRequest, Services};
use crate::storage::{DirStorage, StorageHandle};
use crate::tools::ToolRegistry;

/// How to build a node beyond its configuration file.
#[derive(Clone, Default)]
pub struct NodeOptions {
    pub engine: EngineConfig,
    /// Use this engine instead of building one from `engine` (tests share
    /// one engine across nodes).
    pub shared_engine: Option<Arc<Engine>>,
    /// Where state lives (cache, storage); overrides the configuration.
    pub data_dir: Option<PathBuf>,
    /// Overrides the configured policy directory.
    pub policy_dir: Option<PathBuf>,
    /// Overrides the configured policy mode.
    pub policy_mode: Option<PolicyMode>,
    /// How host names are resolved (default: the system resolver).
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Where admitted skills live, instead of the data directory's store
    /// (a cluster's shared registry).
    pub registry: Option<Arc<dyn Registry>>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("engine", &self.engine)
            .field("data_dir", &self.data_dir)
            .field("policy_dir", &self.policy_dir)
            .field("policy_mode", &self.policy_mode)
            .finish_non_exhaustive()
    }
}

/// One Airlock node.
pub struct Node {
    engine: Arc<Engine>,
    vault: Arc<Vault>,
    services: Services,
    config: Arc<Config>,
    policies: Option<Arc<Policies>>,
    /// Admitted skills; `None` without a data directory.
    pub(crate) store: Option<Arc<dyn Registry>>,
    pub(crate) trusted_keys: Arc<Vec<TrustedKey>>,
    pub(crate) running: Arc<Running>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("engine", &self.engine)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Build a node. Policies that do not validate stop it here, with every
    /// problem named by file and line.
    pub fn new(mut config: Config, options: NodeOptions) -> Result<Arc<Self>, Error> {
        if let Some(dir) = options.data_dir {
            config.data_dir = Some(dir);
        }
        if let Some(dir) = options.policy_dir {
            config.policy.dir = Some(dir);
        }
        if let Some(mode) = options.policy_mode {
            config.policy.mode = mode;
        }
        config.check()?;
        let policies = match &config.policy.dir {
            Some(dir) => Some(Arc::new(Policies::load(&[dir.as_path()]).map_err(|e| {
                Error::Policy {
                    dir: dir.display().to_string(),
                    source: e,
                }
            })?)),
            None => None,
        };
        let engine = match options.shared_engine {
            Some(engine) => engine,
            None => {
                let mut engine_config = options.engine;
                if engine_config.cache_dir.is_none() {
                    engine_config.cache_dir = config.data_dir.as_ref().map(|d| d.join("cache"));
                }
                engine_config.max_memory = engine_config.max_memory.max(config.limits.memory);
                Arc::new(Engine::new(engine_config)?)
            }
        };
        let storage_root = config
            .storage
            .root
            .clone()
            .or_else(|| config.data_dir.as_ref().map(|d| d.join("storage")));
        let config = Arc::new(config);
        let storage: Arc<dyn airlock_host_apis::storage::Storage> = match storage_root {
            Some(root) => Arc::new(StorageHandle(Arc::new(DirStorage::open(
                &root,
                config.clone(),
            )?))),
            None => Arc::new(airlock_host_apis::storage::NoStorage),
        };
        let broker: Arc<dyn Broker> = match &policies {
            Some(policies) => Arc::new(PolicyBroker::new(
                policies.clone(),
                config.clone(),
                config.policy.mode,
            )),
            None => Arc::new(DenyAll),
        };
        let resolver = options.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        let egress = Arc::new(HttpEgress::new(&config.egress, resolver.clone())?);
        let issuer = match &config.data_dir {
            Some(dir) => Issuer::open(dir, config.identity.clone())?,
            None => Issuer::ephemeral(config.identity.clone()),
        };
        // The operator's own token endpoints: trusted, wherever they are.
        let operator = crate::config::EgressConfig {
            allow_addresses: vec!["0.0.0.0/0".into(), "::/0".into()],
            ..config.egress.clone()
        };
        let operator = Arc::new(HttpEgress::new(&operator, resolver)?);
        let audit = match &config.data_dir {
            Some(dir) => Some(Arc::new(
                crate::audit::AuditLog::open(
                    &dir.join("audit").join("audit.jsonl"),
                    issuer.keys().clone(),
                )?
                .with_settings(config.audit.clone()),
            )),
            None => None,
        };
        let vault = Arc::new(Vault::new(
            &config,
            issuer.clone(),
            operator,
            config.data_dir.as_deref(),
        )?);
        let http_rules = Arc::new(config.egress.rules());
        let store: Option<Arc<dyn Registry>> = match (options.registry, &config.data_dir) {
            (Some(registry), _) => Some(registry),
            (None, Some(dir)) => Some(Arc::new(Embedded::new(Arc::new(SkillStore::open(
                &dir.join("skills"),
            )?)))),
            (None, None) => None,
        };
        let trusted_keys = Arc::new(config.admission.keys()?);
        Ok(Arc::new_cyclic(|node| {
            let namespaces = config.clone();
            Node {
                services: Services {
                    broker,
                    egress,
                    http_rules,
                    storage,
                    namespace: Arc::new(move |subject| {
                        namespaces.namespace_for(&subject.skill.name)
                    }),
                    tools: Arc::new(ToolRegistry::new(node.clone(), config.clone())),
                    credentials: vault.clone(),
                    audit,
                },
                engine,
                vault,
                config,
                policies,
                store,
                trusted_keys,
                running: Arc::default(),
            }
        }))
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The credential vault: leases by instance.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The identity issuer: keys, signing, introspection.
    pub fn issuer(&self) -> &Arc<Issuer> {
        self.vault.issuer()
    }

    /// The verification endpoints (OIDC discovery, JWKS, introspection).
    pub fn identity_router(&self) -> axum::Router {
        crate::identity::server::router(self.issuer().clone())
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The loaded policies, if a policy directory is configured.
    pub fn policies(&self) -> Option<&Arc<Policies>> {
        self.policies.as_ref()
    }

    /// Replace the broker (tests and benchmarks compare brokers this way).
    pub fn with_broker(self: &Arc<Self>, broker: Arc<dyn Broker>) -> Arc<Self> {
        Arc::new_cyclic(|node| {
            let mut services = self.services.clone();
            services.broker = broker;
            services.tools = Arc::new(ToolRegistry::new(node.clone(), self.config.clone()));
            Node {
                engine: self.engine.clone(),
                vault: self.vault.clone(),
                services,
                config: self.config.clone(),
                policies: self.policies.clone(),
                store: self.store.clone(),
                trusted_keys: self.trusted_keys.clone(),
                running: self.running.clone(),
            }
        })
    }

    /// Inspect, compile or fetch from cache, and link a component, off the
    /// async executor.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Arc<LoadedSkill>, Error> {
        let engine = self.engine.clone();
        let skill = tokio::task::spawn_blocking(move || engine.load(&bytes))
            .await
            .map_err(|e| Error::Engine(format!("loading a skill: {e}")))??;
        self.allowed_imports(&skill.inspection)?;
        Ok(skill)
    }

    /// What this operator allows beyond the engine: sockets, unless refused.
    fn allowed_imports(&self, inspection: &crate::Inspection) -> Result<(), Error> {
        if self.config().admission.refuse_socket_imports
            && let Some(rejection) = crate::inspect::socket_import(inspection)
        {
            return Err(Error::Rejected(rejection));
        }
        Ok(())
    }

    /// Run a loaded skill once.
    pub async fn run(&self, skill: &LoadedSkill, request: RunRequest) -> RunReport {
        self.engine.run(skill, request, &self.services).await
    }
}
