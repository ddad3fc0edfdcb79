//! The control plane's policies: who may do what through the API.
//!
//! A schema of its own (`control.cedarschema`): principals are API callers
//! with roles and a tenant, resources are admitted skills or the server.
//! The built-in policies (`control/default.cedar`) grant each role its
//! actions and forbid approving one's own submission and touching another
//! tenant's skills; an operator's files add to them. As in the data plane,
//! requests and entities are validated with the schema and an evaluation
//! error is a deny.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema,
};

use crate::load::{self, Error, SourceFile, read_dir};
use crate::{Answer, invalid};

/// The control plane's schema.
pub const SCHEMA: &str = include_str!("../control.cedarschema");

/// The built-in control-plane policies, always loaded.
pub const BASE: &[(&str, &str)] = &[(
    "control/default.cedar",
    include_str!("../control/default.cedar"),
)];

/// What a caller asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlAction {
    /// Submit a skill for admission (resource: the server).
    Submit,
    /// List skills (resource: the server; each listed skill is also `Read`).
    List,
    /// Read, export or verify the audit log (resource: the server).
    Audit,
    /// Read the server's metrics (resource: the server).
    Metrics,
    /// See one skill's record.
    Read,
    Approve,
    Quarantine,
    Revoke,
    /// Run a skill (through the API or as an MCP tool).
    Run,
}

impl ControlAction {
    pub const ALL: [ControlAction; 9] = [
        ControlAction::Submit,
        ControlAction::List,
        ControlAction::Audit,
        ControlAction::Metrics,
        ControlAction::Read,
        ControlAction::Approve,
        ControlAction::Quarantine,
        ControlAction::Revoke,
        ControlAction::Run,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ControlAction::Submit => "submit",
            ControlAction::List => "list",
            ControlAction::Audit => "audit",
            ControlAction::Metrics => "metrics",
            ControlAction::Read => "read",
            ControlAction::Approve => "approve",
            ControlAction::Quarantine => "quarantine",
            ControlAction::Revoke => "revoke",
            ControlAction::Run => "run",
        }
    }

    /// Whether the action's resource is a skill (else the server).
    pub const fn on_skill(self) -> bool {
        !matches!(
            self,
            ControlAction::Submit
                | ControlAction::List
                | ControlAction::Audit
                | ControlAction::Metrics
        )
    }
}

/// The caller, as its API key describes it.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub roles: &'a [&'a str],
    pub tenant: &'a str,
}

/// What a decision may know of a skill.
#[derive(Clone, Copy, Debug)]
pub struct SkillFacts<'a> {
    pub digest: &'a str,
    pub name: &'a str,
    pub submitter: &'a str,
    pub agent: &'a str,
    pub trust: &'a str,
    pub tenant: &'a str,
    pub state: &'a str,
}

/// The loaded, validated control-plane policies.
pub struct ControlPolicies {
    schema: Schema,
    set: PolicySet,
    principal: EntityTypeName,
    skill: EntityTypeName,
    server: EntityUid,
    action: EntityTypeName,
    ids: Vec<String>,
}

impl std::fmt::Debug for ControlPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPolicies")
            .field("policies", &self.ids.len())
            .finish_non_exhaustive()
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, Error> {
    EntityTypeName::from_str(name).map_err(|e| Error::Schema(format!("`{name}`: {e}")))
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

impl ControlPolicies {
    /// The built-in policies alone.
    pub fn base() -> Result<Self, Error> {
        Self::from_files(&[])
    }

    /// The built-in policies plus every `.cedar` file under `dir`.
    pub fn load(dir: &std::path::Path) -> Result<Self, Error> {
        Self::from_files(&read_dir(dir)?)
    }

    /// The built-in policies plus `files`, validated strictly.
    pub fn from_files(files: &[SourceFile]) -> Result<Self, Error> {
        let (schema, parsed) = load::strict(SCHEMA, BASE, files)?;
        let mut ids: Vec<String> = parsed.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        let server = type_name("AirlockControl::Server")?;
        Ok(ControlPolicies {
            schema,
            set: parsed.set,
            principal: type_name("AirlockControl::Principal")?,
            skill: type_name("AirlockControl::Skill")?,
            server: uid(&server, "airlock"),
            action: type_name("AirlockControl::Action")?,
            ids,
        })
    }

    /// Ids of every loaded policy, sorted.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// May `caller` do `action` (to `skill`, for actions on a skill)?
    pub fn decide(
        &self,
        caller: &Caller<'_>,
        action: ControlAction,
        skill: Option<&SkillFacts<'_>>,
    ) -> Answer {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let principal = uid(&self.principal, caller.name);
        let caller_entity = Entity::new(
            principal.clone(),
            HashMap::from([
                (
                    "roles".to_string(),
                    RestrictedExpression::new_set(caller.roles.iter().map(|r| s(r))),
                ),
                ("tenant".to_string(), s(caller.tenant)),
            ]),
            HashSet::new(),
        );
        let caller_entity = match caller_entity {
            Ok(entity) => entity,
            Err(e) => return invalid("principal", &e),
        };
        let mut entities = vec![caller_entity];
        let resource = match (action.on_skill(), skill) {
            (true, Some(facts)) => {
                let resource = uid(&self.skill, facts.digest);
                let entity = Entity::new(
                    resource.clone(),
                    HashMap::from([
                        ("name".to_string(), s(facts.name)),
                        (
                            "submitter".to_string(),
                            RestrictedExpression::new_entity_uid(uid(
                                &self.principal,
                                facts.submitter,
                            )),
                        ),
                        ("agent".to_string(), s(facts.agent)),
                        ("trust".to_string(), s(facts.trust)),
                        ("tenant".to_string(), s(facts.tenant)),
                        ("state".to_string(), s(facts.state)),
                    ]),
                    HashSet::new(),
                );
                match entity {
                    Ok(entity) => entities.push(entity),
                    Err(e) => return invalid("skill", &e),
                }
                resource
            }
            (false, _) => self.server.clone(),
            (true, None) => {
                return invalid("resource", &format!("`{}` needs a skill", action.as_str()));
            }
        };
        if !action.on_skill() {
            entities.push(Entity::with_uid(self.server.clone()));
        }
        let entities = match Entities::from_entities(entities, Some(&self.schema)) {
            Ok(entities) => entities,
            Err(e) => return invalid("entities", &e),
        };
        let request = match Request::new(
            principal,
            uid(&self.action, action.as_str()),
            resource,
            Context::empty(),
            Some(&self.schema),
        ) {
            Ok(request) => request,
            Err(e) => return invalid("validation", &e),
        };
        crate::combine(&self.set, &request, &entities, &[&self.set])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Caller<'static> = Caller {
        name: "alice",
        roles: &["submitter"],
        tenant: "blue",
    };

    fn skill<'a>(submitter: &'a str, tenant: &'a str) -> SkillFacts<'a> {
        SkillFacts {
            digest: "00ff",
            name: "fetch",
            submitter,
            agent: "planner",
            trust: "medium",
            tenant,
            state: "pending",
        }
    }

    #[test]
    fn each_role_gets_its_actions_and_no_others() {
        let policies = ControlPolicies::base().unwrap();
        let theirs = skill("carol", "blue");
        let cases: [(&str, &[ControlAction]); 4] = [
            ("submitter", &[ControlAction::Submit]),
            (
                "reviewer",
                &[
                    ControlAction::Approve,
                    ControlAction::Quarantine,
                    ControlAction::Revoke,
                ],
            ),
            ("runner", &[ControlAction::Run]),
            ("auditor", &[ControlAction::Audit, ControlAction::Metrics]),
        ];
        for (role, granted) in cases {
            let caller = Caller {
                name: "bob",
                roles: &[role],
                tenant: "blue",
            };
            for action in ControlAction::ALL {
                let everyone = matches!(action, ControlAction::List | ControlAction::Read);
                let answer = policies.decide(&caller, action, Some(&theirs));
                assert_eq!(
                    answer.allowed,
                    everyone || granted.contains(&action),
                    "{role} {action:?}: {answer:?}"
                );
            }
        }
    }

    #[test]
    fn a_reviewer_may_not_approve_their_own_submission() {
        let policies = ControlPolicies::base().unwrap();
        let both = Caller {
            name: "alice",
            roles: &["submitter", "reviewer"],
            tenant: "blue",
        };
        let own = policies.decide(&both, ControlAction::Approve, Some(&skill("alice", "blue")));
        assert!(!own.allowed);
        assert_eq!(own.policies, ["control/no-self-approval"]);
        assert!(own.reason.unwrap().contains("submitted"));
        let other = policies.decide(&both, ControlAction::Approve, Some(&skill("carol", "blue")));
        assert!(other.allowed, "{other:?}");
        assert_eq!(other.policies, ["control/reviewers-review"]);
        // Quarantining one's own skill is fine: holding a skill is never the
        // dangerous direction.
        assert!(
            policies
                .decide(
                    &both,
                    ControlAction::Quarantine,
                    Some(&skill("alice", "blue"))
                )
                .allowed
        );
    }

    #[test]
    fn another_tenants_skill_is_out_of_reach_except_for_admins() {
        let policies = ControlPolicies::base().unwrap();
        let runner = Caller {
            name: "bob",
            roles: &["runner"],
            tenant: "blue",
        };
        let red = skill("carol", "red");
        for action in [ControlAction::Run, ControlAction::Read] {
            let answer = policies.decide(&runner, action, Some(&red));
            assert!(!answer.allowed, "{action:?}");
            assert_eq!(answer.policies, ["control/own-tenant-only"]);
        }
        let admin = Caller {
            name: "root",
            roles: &["admin"],
            tenant: "blue",
        };
        assert!(
            policies
                .decide(&admin, ControlAction::Run, Some(&red))
                .allowed
        );
    }

    #[test]
    fn an_operator_policy_adds_a_restriction() {
        let policies = ControlPolicies::from_files(&[SourceFile {
            name: "ops.cedar".into(),
            text: r#"@id("ops/no-untrusted-runs")
@reason("skills from untrusted agents do not run here")
forbid (principal, action == AirlockControl::Action::"run", resource)
when { resource.trust == "untrusted" };"#
                .into(),
        }])
        .unwrap();
        let runner = Caller {
            name: "bob",
            roles: &["runner"],
            tenant: "blue",
        };
        let mut facts = skill("carol", "blue");
        assert!(
            policies
                .decide(&runner, ControlAction::Run, Some(&facts))
                .allowed
        );
        facts.trust = "untrusted";
        let answer = policies.decide(&runner, ControlAction::Run, Some(&facts));
        assert_eq!(answer.policies, ["ops/no-untrusted-runs"]);
    }

    #[test]
    fn an_operator_policy_that_does_not_fit_the_schema_is_refused() {
        let e = ControlPolicies::from_files(&[SourceFile {
            name: "ops.cedar".into(),
            text: r#"permit (principal, action == AirlockControl::Action::"run", resource)
when { resource.owner == principal };"#
                .into(),
        }])
        .unwrap_err();
        assert!(e.to_string().starts_with("ops.cedar:2:"), "{e}");
    }

    #[test]
    fn a_skill_action_without_a_skill_is_a_deny() {
        let policies = ControlPolicies::base().unwrap();
        let answer = policies.decide(&ALICE, ControlAction::Run, None);
        assert!(!answer.allowed);
        assert!(answer.reason.unwrap().contains("needs a skill"));
    }
}
