//! The broker that decides with Cedar policy, and the delegated broker that
//! keeps a tool's rights within its caller's.

use std::sync::Arc;

use airlock_host_apis::tools::Caller;
use airlock_host_apis::{
    Action, Broker, CapabilityRequest, Decision, Details, Mode, Prepared, Resource, SessionState,
    Subject, Verdict,
};
use airlock_policy::{
    CallInput, Policies, PrincipalInput, Query, ResourceInput, SessionInput, SubjectInput,
    TaskInput,
};

use crate::config::{Config, PolicyMode};

/// Decides every capability call with the loaded policies.
pub struct PolicyBroker {
    policies: Arc<Policies>,
    config: Arc<Config>,
    mode: Mode,
    indexed: bool,
}

impl std::fmt::Debug for PolicyBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBroker")
            .field("policies", &self.policies)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn policy_action(action: Action) -> airlock_policy::Action {
    match action {
        Action::HttpRequest => airlock_policy::Action::HttpRequest,
        Action::StorageRead => airlock_policy::Action::StorageRead,
        Action::StorageWrite => airlock_policy::Action::StorageWrite,
        Action::StorageDelete => airlock_policy::Action::StorageDelete,
        Action::StorageList => airlock_policy::Action::StorageList,
        Action::SecretUse => airlock_policy::Action::SecretUse,
        Action::SecretMint => airlock_policy::Action::SecretMint,
        Action::ToolInvoke => airlock_policy::Action::ToolInvoke,
    }
}

/// The policy model's view of a subject. Everything comes from the host.
pub fn subject_input(subject: &Subject) -> SubjectInput {
    SubjectInput {
        principal: PrincipalInput {
            digest: subject.skill.digest.clone(),
            name: subject.skill.name.clone(),
            approved: subject.skill.approved,
            labels: subject.skill.labels.clone(),
            agent: subject.agent.id.clone(),
            trust: subject.agent.trust.as_str().to_string(),
            trust_level: subject.agent.trust.rank(),
        },
        task: TaskInput {
            id: subject.task.id.clone(),
            intent: subject.task.intent.clone(),
            sensitivity: subject.task.sensitivity.as_str().to_string(),
            sensitivity_level: subject.task.sensitivity.rank(),
            environment: subject.task.environment.clone(),
        },
        delegation_depth: i64::from(subject.delegation.depth),
        delegation_chain: subject.delegation.chain.iter().cloned().collect(),
    }
}

fn long(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PolicyBroker {
    pub fn new(policies: Arc<Policies>, config: Arc<Config>, mode: PolicyMode) -> Self {
        PolicyBroker {
            policies,
            config,
            mode: match mode {
                PolicyMode::Enforce => Mode::Enforce,
                PolicyMode::Shadow => Mode::Shadow,
            },
            indexed: true,
        }
    }

    /// Evaluate the whole policy set on every call instead of the index: for
    /// benchmarks that compare the two.
    pub fn unindexed(mut self) -> Self {
        self.indexed = false;
        self
    }

    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    fn resource(&self, resource: &Resource) -> ResourceInput {
        match resource {
            Resource::Host { name } => ResourceInput::Host {
                name: name.clone(),
                sinks: self
                    .config
                    .hosts
                    .get(name)
                    .map(|h| h.sinks.iter().cloned().collect())
                    .unwrap_or_default(),
            },
            Resource::Object { namespace, key } => ResourceInput::Object {
                namespace: namespace.clone(),
                key: key.clone(),
                classification: self
                    .config
                    .classification(namespace, key)
                    .unwrap_or("none")
                    .to_string(),
            },
            Resource::Secret { name } => ResourceInput::Secret {
                name: name.clone(),
                classification: self
                    .config
                    .credentials
                    .get(name)
                    .map_or_else(|| "secret".to_string(), |s| s.classification.clone()),
            },
            Resource::Tool { name } => {
                // An unregistered tool is treated as the riskiest kind.
                let risk = self
                    .config
                    .tools
                    .get(name)
                    .map_or(crate::config::Risk::High, |t| t.risk);
                ResourceInput::Tool {
                    name: name.clone(),
                    risk: risk.as_str().to_string(),
                    risk_level: risk.level(),
                }
            }
        }
    }

    fn call(request: &CapabilityRequest) -> CallInput {
        match (&request.details, request.action) {
            // A credential's destination does not include the method.
            (
                Details::Http {
                    scheme,
                    host,
                    port,
                    path,
                    ..
                },
                Action::SecretUse,
            ) => CallInput::SecretUse {
                scheme: scheme.clone(),
                host: host.clone(),
                port: i64::from(*port),
                path: path.clone(),
            },
            (
                Details::Http {
                    method,
                    scheme,
                    port,
                    path,
                    ..
                },
                _,
            ) => CallInput::Http {
                method: method.clone(),
                scheme: scheme.clone(),
                port: i64::from(*port),
                path: path.clone(),
            },
            (Details::Storage { key }, _) => CallInput::Storage { key: key.clone() },
            (Details::Token { audience }, _) => CallInput::Mint {
                audience: audience.clone(),
            },
            (Details::Tool { input_bytes }, _) => CallInput::Tool {
                input_bytes: long(*input_bytes),
            },
        }
    }
}

impl Broker for PolicyBroker {
    fn prepare(&self, subject: &Subject) -> Prepared {
        Prepared::new(self.policies.prepare(&subject_input(subject)))
    }

    fn decide(
        &self,
        prepared: &Prepared,
        subject: &Subject,
        session: &SessionState,
        request: &CapabilityRequest,
    ) -> Decision {
        let fallback;
        let prepared = match prepared.get::<airlock_policy::Prepared>() {
            Some(prepared) => prepared,
            None => {
                fallback = self.policies.prepare(&subject_input(subject));
                &fallback
            }
        };
        let resource = self.resource(&request.resource);
        let call = Self::call(request);
        let query = Query {
            action: policy_action(request.action),
            resource: &resource,
            call: &call,
            session: SessionInput {
                labels: &session.labels,
                secrets_used: &session.secrets_used,
                hosts_contacted: &session.hosts_contacted,
                calls: long(session.calls),
                bytes_out: long(session.bytes_out),
            },
        };
        let mut answer = if self.indexed {
            self.policies.decide(prepared, &query)
        } else {
            self.policies.decide_unindexed(prepared, &query)
        };
        let plain_http = matches!(&call, CallInput::Http { scheme, .. } if scheme == "http");
        if answer.allowed
            && plain_http
            && !self.policies.names_resource(&answer.policies, &resource)
        {
            answer = airlock_policy::Answer {
                allowed: false,
                policies: Vec::new(),
                reason: Some(
                    "plain http is allowed only by a policy that names the host in its scope \
                     (`resource == Airlock::Host::\"...\"`)"
                        .to_string(),
                ),
            };
        }
        Decision {
            verdict: if answer.allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            policies: answer.policies,
            reason: answer.reason,
            mode: self.mode,
            by_caller: false,
        }
    }
}

/// A tool's broker: its calls are decided for the tool, and must also be
/// allowed for its caller (and so on up the chain), so a tool never has more
/// rights than whoever invoked it.
pub struct DelegatedBroker {
    own: Arc<dyn Broker>,
    caller: Caller,
}

impl std::fmt::Debug for DelegatedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedBroker")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl DelegatedBroker {
    pub fn new(own: Arc<dyn Broker>, caller: Caller) -> Self {
        DelegatedBroker { own, caller }
    }
}

impl Broker for DelegatedBroker {
    fn prepare(&self, subject: &Subject) -> Prepared {
        self.own.prepare(subject)
    }

    fn decide(
        &self,
        prepared: &Prepared,
        subject: &Subject,
        session: &SessionState,
        request: &CapabilityRequest,
    ) -> Decision {
        let own = self.own.decide(prepared, subject, session, request);
        if !own.proceeds() {
            return own;
        }
        let caller = self.caller.broker.decide(
            &self.caller.prepared,
            &self.caller.subject,
            session,
            request,
        );
        if caller.verdict == Verdict::Deny {
            let why = caller.reason.map(|r| format!(": {r}")).unwrap_or_default();
            return Decision {
                verdict: Verdict::Deny,
                policies: caller.policies,
                reason: Some(format!(
                    "not allowed for the calling skill `{}`{why}",
                    self.caller.subject.skill.name
                )),
                mode: if own.mode == Mode::Shadow || caller.mode == Mode::Shadow {
                    Mode::Shadow
                } else {
                    Mode::Enforce
                },
                by_caller: true,
            };
        }
        own
    }
}
