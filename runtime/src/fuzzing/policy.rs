//! Policy context (target `policy`): for any subject, session and call, a
//! more sensitive task or a less trusted agent never turns a deny into an
//! allow, nor does a session that has touched more; and a call whose
//! policies fail to evaluate is denied, naming them.
//!
//! The policies are the base guard rails, the examples and a "fleet" set
//! that grants by trust and sensitivity thresholds, written the way an
//! operator would (monotone), plus one forbid that fails to evaluate
//! (integer overflow) once a session has sent too much.

use std::collections::BTreeSet;
use std::sync::Arc;

use airlock_host_apis::{
    Action, AgentIdentity, Broker as _, CapabilityRequest, Details, Resource, Sensitivity,
    SessionState, SkillIdentity, Subject, Task, Trust, Verdict,
};
use airlock_policy::{Policies, SourceFile};
use arbitrary::{Arbitrary, Unstructured};

use super::{Violation, ensure};
use crate::broker::PolicyBroker;
use crate::config::{Config, PolicyMode};

const FLEET: &str = r#"
@id("fleet/trusted-agents-fetch-low-sensitivity")
permit (principal, action == Airlock::Action::"http.request", resource)
when { context.agent_trust_level >= 2 && context.task.sensitivity_level <= 1 };

@id("fleet/some-trust-keeps-data")
permit (principal, action in Airlock::Action::"data", resource)
when { context.agent_trust_level >= 1 };

@id("fleet/high-trust-uses-secrets")
permit (principal, action == Airlock::Action::"secret.use", resource)
when { context.agent_trust_level >= 3 && context.task.sensitivity_level <= 2 };

@id("fleet/tools-below-trust")
permit (principal, action == Airlock::Action::"tool.invoke", resource)
when { context.agent_trust_level > resource.risk_level };

@id("fleet/no-tokens-for-secret-tasks")
forbid (principal, action == Airlock::Action::"secret.mint", resource)
when { context.task.sensitivity_level >= 3 };

@id("fleet/bytes-out-cap")
forbid (principal, action == Airlock::Action::"http.request", resource)
when { context.session.bytes_out + 1 > 1000000000000 };
"#;

const LABELS: [&str; 4] = ["public", "internal", "confidential", "secret"];

#[derive(Debug, Arbitrary)]
struct Case {
    skill: u8,
    trust: u8,
    sensitivity: u8,
    labels: u8,
    calls: u64,
    bytes_out: u64,
    action: u8,
    target: u8,
    /// How much more sensitive, less trusted and further along the second
    /// decision's run is.
    more_sensitive: u8,
    less_trusted: u8,
    more_labels: u8,
    more_bytes: u64,
}

/// The policy broker over the fixed policy set.
pub struct Target {
    broker: PolicyBroker,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").finish_non_exhaustive()
    }
}

fn labels(bits: u8) -> BTreeSet<String> {
    LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, l)| (*l).to_string())
        .collect()
}

fn at<T: Copy>(all: &[T], i: u8) -> Option<T> {
    all.get(usize::from(i) % all.len().max(1)).copied()
}

impl Target {
    pub fn new() -> Result<Self, Violation> {
        let examples = include_str!("../../../policies/examples/examples.cedar");
        let policies = Policies::from_files(&[
            SourceFile {
                name: "examples.cedar".into(),
                text: examples.into(),
            },
            SourceFile {
                name: "fleet.cedar".into(),
                text: FLEET.into(),
            },
        ])
        .map_err(|e| Violation(format!("the policies did not load: {e}")))?;
        let mut config = Config::default();
        config.hosts.insert(
            "reports.example.com".into(),
            toml::from_str("sinks = [\"confidential\"]")
                .map_err(|e| Violation(format!("host config: {e}")))?,
        );
        Ok(Target {
            broker: PolicyBroker::new(Arc::new(policies), Arc::new(config), PolicyMode::Enforce),
        })
    }

    fn decide(
        &self,
        subject: &Subject,
        session: &SessionState,
        request: &CapabilityRequest,
    ) -> airlock_host_apis::Decision {
        let prepared = self.broker.prepare(subject);
        self.broker.decide(&prepared, subject, session, request)
    }

    pub fn check(&self, bytes: &[u8]) -> Result<(), Violation> {
        match Case::arbitrary(&mut Unstructured::new(bytes)) {
            Ok(case) => self.check_case(&case),
            Err(_) => Ok(()),
        }
    }

    fn check_case(&self, case: &Case) -> Result<(), Violation> {
        let (Some(trust), Some(sensitivity), Some(action), Some(name)) = (
            at(&Trust::ALL, case.trust),
            at(&Sensitivity::ALL, case.sensitivity),
            at(&Action::ALL, case.action),
            at(&["notes", "report", "other"], case.skill),
        ) else {
            return Ok(());
        };
        let host = at(&["reports.example.com", "api.example.com"], case.target).unwrap_or_default();
        let (resource, details) = match action {
            Action::HttpRequest | Action::SecretUse => (
                if action == Action::HttpRequest {
                    Resource::Host { name: host.into() }
                } else {
                    Resource::Secret {
                        name: "api-key".into(),
                    }
                },
                Details::Http {
                    method: "POST".into(),
                    scheme: "https".into(),
                    host: host.into(),
                    port: 443,
                    path: "/".into(),
                },
            ),
            Action::SecretMint => (
                Resource::Secret {
                    name: "identity".into(),
                },
                Details::Token {
                    audience: format!("https://{host}"),
                },
            ),
            Action::ToolInvoke => (
                Resource::Tool {
                    name: "word-count".into(),
                },
                Details::Tool {
                    input_bytes: case.calls % 4096,
                },
            ),
            _ => {
                let key = at(&["reports/q3", "notes/a"], case.target).unwrap_or_default();
                (
                    Resource::Object {
                        namespace: "team".into(),
                        key: key.into(),
                    },
                    Details::Storage { key: key.into() },
                )
            }
        };
        let request = CapabilityRequest {
            action,
            resource,
            details,
        };
        let subject = |trust: Trust, sensitivity: Sensitivity| Subject {
            instance: "i-fuzz".into(),
            skill: SkillIdentity {
                digest: "00".repeat(32),
                name: name.into(),
                approved: true,
                labels: BTreeSet::new(),
            },
            agent: AgentIdentity {
                id: "agent".into(),
                trust,
            },
            task: Task {
                sensitivity,
                ..Task::default()
            },
            delegation: Default::default(),
        };
        let session = SessionState {
            labels: labels(case.labels),
            calls: case.calls,
            bytes_out: case.bytes_out,
            ..SessionState::default()
        };
        let first = self.decide(&subject(trust, sensitivity), &session, &request);
        if session.bytes_out >= i64::MAX as u64 && action == Action::HttpRequest {
            ensure!(
                first.verdict == Verdict::Deny
                    && first.policies.iter().any(|p| p == "fleet/bytes-out-cap"),
                "a forbid that failed to evaluate did not deny, or was not named: {first:?}"
            );
        }
        let rank = |i: i64| usize::try_from(i).unwrap_or(0);
        let worse_trust = Trust::ALL
            .get(rank(trust.rank()).saturating_sub(usize::from(case.less_trusted % 4)))
            .copied()
            .unwrap_or(trust);
        let worse_sensitivity = Sensitivity::ALL
            .get((rank(sensitivity.rank()) + usize::from(case.more_sensitive % 4)).min(3))
            .copied()
            .unwrap_or(sensitivity);
        let mut further = session.clone();
        further.labels.extend(labels(case.more_labels));
        further.calls = further.calls.saturating_add(1);
        further.bytes_out = further.bytes_out.saturating_add(case.more_bytes);
        let second = self.decide(&subject(worse_trust, worse_sensitivity), &further, &request);
        ensure!(
            !(first.verdict == Verdict::Deny && second.verdict == Verdict::Allow),
            "{action} on {:?} was denied for trust {trust:?}, sensitivity {sensitivity:?}, \
             labels {:?}, and allowed for trust {worse_trust:?}, sensitivity \
             {worse_sensitivity:?}, labels {:?}: {second:?}",
            request.resource,
            session.labels,
            further.labels
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every skill, trust, sensitivity and action, each made worse in a few
    /// ways, with and without labels and an overflowing session.
    #[test]
    fn every_level_and_action_holds() {
        let target = Target::new().unwrap_or_else(|v| panic!("{v}"));
        for skill in 0..3 {
            for trust in 0..4 {
                for sensitivity in 0..4 {
                    for action in 0..8 {
                        for (less_trusted, more_sensitive) in [(0, 0), (1, 0), (0, 1), (3, 3)] {
                            for (labels, bytes_out) in [(0, 0), (4, 0), (0, u64::MAX)] {
                                let case = Case {
                                    skill,
                                    trust,
                                    sensitivity,
                                    labels,
                                    calls: 1,
                                    bytes_out,
                                    action,
                                    target: skill,
                                    more_sensitive,
                                    less_trusted,
                                    more_labels: 4,
                                    more_bytes: 0,
                                };
                                target.check_case(&case).unwrap_or_else(|v| panic!("{v}"));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_seed_corpus_holds() {
        let target = super::Target::new().unwrap_or_else(|v| panic!("{v}"));
        for (name, bytes) in super::super::corpus::seeds("policy") {
            if let Err(v) = target.check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
