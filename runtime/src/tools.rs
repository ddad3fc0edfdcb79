//! Skills registered as named tools, invoked by other skills.
//!
//! A tool runs in its own instance, with its own limits, on its own tokio
//! task (so its broker decisions run on a thread stack, not inside the
//! caller's host call). It inherits the caller's task, agent, session and
//! ledger; its delegation chain is the caller's plus the caller. Its calls are
//! decided for the tool and must also be allowed for the caller
//! ([`DelegatedBroker`]). Cycles and chains past the configured depth are
//! refused before anything runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use airlock_host_apis::tools::{Caller, Tools};
use airlock_host_apis::{CallError, Delegation, SkillIdentity, Subject};

use crate::broker::DelegatedBroker;
use crate::config::Config;
use crate::engine::LoadedSkill;
use crate::node::Node;
use crate::run::{RunRequest, RunStatus};

/// The tools an operator registered.
pub struct ToolRegistry {
    node: Weak<Node>,
    config: Arc<Config>,
    loaded: Mutex<HashMap<String, Arc<LoadedSkill>>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.config.tools.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Aborts the task when dropped: a cancelled caller cancels its tool.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl ToolRegistry {
    pub fn new(node: Weak<Node>, config: Arc<Config>) -> Self {
        ToolRegistry {
            node,
            config,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    async fn skill(&self, node: &Arc<Node>, name: &str) -> Result<Arc<LoadedSkill>, CallError> {
        let Some(tool) = self.config.tools.get(name) else {
            return Err(not_found(name));
        };
        if let Some(digest) = tool.digest {
            // An admitted skill may be held at any time: checked every call.
            let store = node
                .skills()
                .map_err(|e| CallError::Unavailable(format!("tool `{name}`: {e}")))?
                .clone();
            let refusal = store
                .get(&digest)
                .await
                .map(|r| r.map_or(Some("it is not admitted".into()), |r| r.refusal()))
                .map_err(|e| CallError::Unavailable(format!("tool `{name}`: {e}")))?;
            if let Some(refusal) = refusal {
                return Err(CallError::Unavailable(format!(
                    "tool `{name}` is not available: {refusal}"
                )));
            }
        }
        if let Some(skill) = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(skill.clone());
        }
        let path = tool.skill.clone();
        let loader = node.clone();
        let stored = match tool.digest {
            Some(digest) => {
                let max = node.engine().config().max_component_size;
                match node.skills() {
                    Ok(store) => Some(store.load(&digest, max).await.map_err(|e| e.to_string())),
                    Err(e) => Some(Err(e.to_string())),
                }
            }
            None => None,
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = match (stored, path) {
                (Some(stored), _) => stored?,
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
                (None, None) => return Err("no skill is configured".to_string()),
            };
            loader.engine().load(&bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| CallError::Unavailable(format!("loading tool `{name}` failed: {e}")))?
        .map_err(|e| {
            tracing::warn!(tool = name, error = %e, "a registered tool does not load");
            CallError::Unavailable(format!("tool `{name}` is not available"))
        })?;
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }
}

fn not_found(name: &str) -> CallError {
    CallError::NotFound(format!(
        "no tool named `{}` is registered",
        airlock_host_apis::escape(name, 100)
    ))
}

#[async_trait::async_trait]
impl Tools for ToolRegistry {
    async fn invoke(&self, caller: Caller, name: &str, input: String) -> Result<String, CallError> {
        let Some(tool) = self.config.tools.get(name) else {
            return Err(not_found(name));
        };
        let Some(node) = self.node.upgrade() else {
            return Err(CallError::Unavailable(
                "the runtime is shutting down".into(),
            ));
        };
        let from = &caller.subject;
        let mut chain = from.delegation.chain.clone();
        chain.push(from.skill.name.clone());
        let mut callers = from.delegation.callers.clone();
        callers.push(airlock_host_apis::broker::CallerInstance {
            digest: from.skill.digest.clone(),
            instance: from.instance.clone(),
        });
        if chain.iter().any(|s| s == name) {
            return Err(CallError::guard(
                "tool-cycle",
                format!(
                    "tool `{name}` is already running in this chain ({} -> {name}): cycles are refused",
                    chain.join(" -> ")
                ),
            ));
        }
        let depth = from.delegation.depth + 1;
        let max = self.config.delegation.max_depth;
        if depth > max {
            return Err(CallError::Limit(format!(
                "tool calls nest at most {max} deep; this one would be {depth}"
            )));
        }
        let skill = self.skill(&node, name).await?;
        let subject = Subject {
            instance: String::new(),
            skill: SkillIdentity {
                digest: String::new(),
                name: name.to_string(),
                // Registered by the operator; an admitted one is approved now.
                approved: true,
                labels: Default::default(),
            },
            agent: from.agent.clone(),
            task: from.task.clone(),
            delegation: Delegation {
                depth,
                chain,
                callers,
            },
        };
        let mut services = node.services().clone();
        services.broker = Arc::new(DelegatedBroker::new(
            node.services().broker.clone(),
            caller.clone(),
        ));
        // A tool by digest stops, like any admitted skill, when it is held.
        let stop = crate::run::Stopper::default();
        let _held = match (tool.digest, node.skills()) {
            (Some(digest), Ok(store)) => Some(node.hold_on(store.clone(), digest, stop.clone())),
            _ => None,
        };
        let request = RunRequest {
            input,
            subject,
            limits: tool
                .limits
                .clone()
                .unwrap_or_else(|| self.config.limits.clone()),
            session: Some(caller.session.clone()),
            ledger: Some(caller.ledger.clone()),
            stop: Some(stop),
        };
        let runner = node.clone();
        let _aside = node.services().audit.as_ref().map(|log| log.set_aside());
        let report = AbortOnDrop(tokio::spawn(async move {
            runner.engine().run(&skill, request, &services).await
        }))
        .await
        .map_err(|e| CallError::Unavailable(format!("tool `{name}` did not finish: {e}")))?;
        // An admitted tool answers for its own calls too, as it would run
        // alone: not for what its callers' policies refused, nor for a cycle
        // its chain made. (A skill called as its own tool answers twice.)
        if let Some(digest) = tool.digest {
            let own = report.decisions.iter().filter(|r| {
                r.instance == report.instance
                    && !r.decision.by_caller
                    && !r.decision.policies.iter().any(|p| p == "guard:tool-cycle")
            });
            let denied = crate::admission::node::denials(own);
            // Apart from the caller's call: a quarantine's store write and
            // record are not the caller's to wait for, nor to cut short.
            if denied > 0 {
                let node = node.clone();
                tokio::spawn(async move { node.count_denials(digest, denied).await });
            }
        }
        match (report.status, report.output, report.error) {
            (RunStatus::Ok, Some(output), _) => Ok(output),
            (RunStatus::SkillError, _, error) => Err(CallError::Unavailable(format!(
                "tool `{name}` returned an error: {}",
                error.map(|e| e.message).unwrap_or_default()
            ))),
            (_, _, error) => Err(CallError::Unavailable(format!(
                "tool `{name}` failed: {}",
                error.map(|e| e.message).unwrap_or_default()
            ))),
        }
    }
}
