//! `airlock:skill/tools`: invoke another skill registered as a named tool
//! (`tool.invoke` on a `Tool`). The callee runs in its own instance; the
//! runtime decides how.

use std::fmt;
use std::sync::Arc;

use crate::bindings::airlock::skill::tools::Host;
use crate::broker::{
    Action, Broker, CapabilityRequest, Details, Ledger, Prepared, Resource, Session, Subject,
};
use crate::{CallError, SkillCtx};

/// The instance invoking a tool: what the callee inherits.
#[derive(Clone)]
pub struct Caller {
    pub subject: Arc<Subject>,
    /// The broker that decides the caller's calls; a callee's calls must pass
    /// it too, so a tool never has more rights than its caller.
    pub broker: Arc<dyn Broker>,
    /// What the caller's broker prepared for the caller.
    pub prepared: Prepared,
    pub session: Session,
    pub ledger: Ledger,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Runs tools. Implemented by the runtime.
#[async_trait::async_trait]
pub trait Tools: Send + Sync + 'static {
    async fn invoke(&self, caller: Caller, name: &str, input: String) -> Result<String, CallError>;
}

/// No tools: every allowed invocation fails as not found.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTools;

#[async_trait::async_trait]
impl Tools for NoTools {
    async fn invoke(&self, _: Caller, name: &str, _: String) -> Result<String, CallError> {
        Err(CallError::NotFound(format!(
            "no tool named `{}` is registered",
            crate::escape(name, 100)
        )))
    }
}

/// Per-instance state of `airlock:skill/tools`.
pub struct ToolsCtx {
    tools: Arc<dyn Tools>,
}

impl fmt::Debug for ToolsCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolsCtx").finish_non_exhaustive()
    }
}

impl ToolsCtx {
    pub fn new(tools: Arc<dyn Tools>) -> Self {
        ToolsCtx { tools }
    }
}

impl Host for SkillCtx {
    async fn invoke(&mut self, name: String, input: String) -> Result<String, CallError> {
        let request = CapabilityRequest {
            action: Action::ToolInvoke,
            resource: Resource::Tool { name: name.clone() },
            details: Details::Tool {
                input_bytes: input.len() as u64,
            },
        };
        let permit = self.broker.authorize(request).await?;
        let leak = self.secrets.credentials().leak(
            &self.broker.subject().instance,
            input.as_bytes(),
            None,
        );
        if let Some(name) = leak {
            return permit.conclude(
                Err(crate::secrets::leak_refusal(&name, "the tool input")),
                |_: &String| None,
            );
        }
        let caller = Caller {
            subject: self.broker.subject().clone(),
            broker: self.broker.broker().clone(),
            prepared: self.broker.prepared().clone(),
            session: self.broker.session().clone(),
            ledger: self.broker.ledger().clone(),
        };
        let result = self.tools.tools.invoke(caller, &name, input).await;
        permit.conclude(result, |out| Some(format!("returned {} bytes", out.len())))
    }
}
