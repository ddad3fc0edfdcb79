//! Airlock's policy model and engine, on Cedar.
//!
//! The schema (`airlock.cedarschema`) and the base guard rails (`base/`) are
//! built in. [`Policies::load`] adds an operator's policy files, validates
//! everything strictly against the schema (a warning is as fatal as an
//! error), and indexes the policies by action, principal and resource so a
//! decision only evaluates policies that can apply.
//!
//! A decision is a [`Query`] against a [`Prepared`] principal. Requests and
//! entities are built and validated with the schema. **Any evaluation error
//! is a deny**: Cedar skips a policy that fails to evaluate, which for a
//! `forbid` would let a call through.
//!
//! This is the only crate that names `cedar_policy`, and it does no I/O but
//! reading policy files.

mod load;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression,
    Schema,
};

pub use load::{Error, Problem, Severity, SourceFile, read_dir};

/// The schema every request and policy is validated against.
pub const SCHEMA: &str = include_str!("../airlock.cedarschema");

/// The base guard rails, always loaded.
pub const BASE: &[(&str, &str)] = &[(
    "base/guardrails.cedar",
    include_str!("../base/guardrails.cedar"),
)];

/// The actions, named `<capability>.<verb>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    HttpRequest,
    StorageRead,
    StorageWrite,
    StorageDelete,
    StorageList,
    SecretUse,
    SecretMint,
    ToolInvoke,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::HttpRequest,
        Action::StorageRead,
        Action::StorageWrite,
        Action::StorageDelete,
        Action::StorageList,
        Action::SecretUse,
        Action::SecretMint,
        Action::ToolInvoke,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Action::HttpRequest => "http.request",
            Action::StorageRead => "storage.read",
            Action::StorageWrite => "storage.write",
            Action::StorageDelete => "storage.delete",
            Action::StorageList => "storage.list",
            Action::SecretUse => "secret.use",
            Action::SecretMint => "secret.mint",
            Action::ToolInvoke => "tool.invoke",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action `{s}`"))
    }
}

/// The skill a decision is for, and who generated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalInput {
    pub digest: String,
    pub name: String,
    pub approved: bool,
    pub labels: BTreeSet<String>,
    pub agent: String,
    pub trust: String,
    pub trust_level: i64,
}

/// What whoever started the run asserted about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskInput {
    pub id: String,
    pub intent: String,
    pub sensitivity: String,
    pub sensitivity_level: i64,
    pub environment: String,
}

/// Everything about an instance that does not change between its calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectInput {
    pub principal: PrincipalInput,
    pub task: TaskInput,
    pub delegation_depth: i64,
    pub delegation_chain: BTreeSet<String>,
}

/// What the run has touched so far, borrowed from the run's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInput<'a> {
    pub labels: &'a BTreeSet<String>,
    pub secrets_used: &'a BTreeSet<String>,
    pub hosts_contacted: &'a BTreeSet<String>,
    pub calls: i64,
    pub bytes_out: i64,
}

static NOTHING: BTreeSet<String> = BTreeSet::new();

impl Default for SessionInput<'_> {
    fn default() -> Self {
        SessionInput {
            labels: &NOTHING,
            secrets_used: &NOTHING,
            hosts_contacted: &NOTHING,
            calls: 0,
            bytes_out: 0,
        }
    }
}

/// The resource of a call, with its attributes (from operator configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceInput {
    Host {
        name: String,
        sinks: BTreeSet<String>,
    },
    Object {
        namespace: String,
        key: String,
        classification: String,
    },
    Secret {
        name: String,
        classification: String,
    },
    Tool {
        name: String,
        risk: String,
        risk_level: i64,
    },
}

impl ResourceInput {
    fn id(&self) -> String {
        match self {
            ResourceInput::Host { name, .. }
            | ResourceInput::Secret { name, .. }
            | ResourceInput::Tool { name, .. } => name.clone(),
            ResourceInput::Object { namespace, key, .. } => format!("{namespace}/{key}"),
        }
    }

    fn attrs(&self) -> HashMap<String, RestrictedExpression> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let set = |v: &BTreeSet<String>| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
        match self {
            ResourceInput::Host { sinks, .. } => HashMap::from([("sinks".into(), set(sinks))]),
            ResourceInput::Object {
                namespace,
                key,
                classification,
            } => HashMap::from([
                ("namespace".into(), s(namespace)),
                ("path".into(), s(key)),
                ("classification".into(), s(classification)),
            ]),
            ResourceInput::Secret { classification, .. } => {
                HashMap::from([("classification".into(), s(classification))])
            }
            ResourceInput::Tool {
                risk, risk_level, ..
            } => HashMap::from([
                ("risk".into(), s(risk)),
                (
                    "risk_level".into(),
                    RestrictedExpression::new_long(*risk_level),
                ),
            ]),
        }
    }
}

/// The details of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallInput {
    Http {
        method: String,
        scheme: String,
        port: i64,
        path: String,
    },
    Storage {
        key: String,
    },
    SecretUse {
        scheme: String,
        host: String,
        port: i64,
        path: String,
    },
    Mint {
        audience: String,
    },
    Tool {
        input_bytes: i64,
    },
}

impl CallInput {
    fn pairs(&self) -> Vec<(String, RestrictedExpression)> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let l = RestrictedExpression::new_long;
        match self {
            CallInput::Http {
                method,
                scheme,
                port,
                path,
            } => vec![
                ("method".into(), s(method)),
                ("scheme".into(), s(scheme)),
                ("port".into(), l(*port)),
                ("path".into(), s(path)),
            ],
            CallInput::Storage { key } => vec![("key".into(), s(key))],
            CallInput::SecretUse {
                scheme,
                host,
                port,
                path,
            } => {
                let destination = RestrictedExpression::new_record([
                    ("scheme".to_string(), s(scheme)),
                    ("host".to_string(), s(host)),
                    ("port".to_string(), l(*port)),
                    ("path".to_string(), s(path)),
                ]);
                match destination {
                    Ok(d) => vec![("destination".into(), d)],
                    // Distinct fixed keys: cannot fail; an empty context then
                    // fails schema validation, which is a deny.
                    Err(_) => Vec::new(),
                }
            }
            CallInput::Mint { audience } => vec![("audience".into(), s(audience))],
            CallInput::Tool { input_bytes } => vec![("input_bytes".into(), l(*input_bytes))],
        }
    }
}

/// One decision to make.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub action: Action,
    pub resource: &'a ResourceInput,
    pub call: &'a CallInput,
    pub session: SessionInput<'a>,
}

/// The answer: allowed or not, and which policies decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    /// Satisfied permits for an allow; satisfied forbids, or the policies that
    /// failed to evaluate, for a deny. Empty when no permit applied.
    pub policies: Vec<String>,
    /// The deciding forbids' `@reason`s, or what failed to evaluate.
    pub reason: Option<String>,
}

impl Answer {
    fn deny(policies: Vec<String>, reason: impl Into<String>) -> Self {
        Answer {
            allowed: false,
            policies,
            reason: Some(reason.into()),
        }
    }
}

/// Entity type names, parsed once at load.
#[derive(Clone, Debug)]
struct Types {
    skill: EntityTypeName,
    agent: EntityTypeName,
    action: EntityTypeName,
    host: EntityTypeName,
    object: EntityTypeName,
    secret: EntityTypeName,
    tool: EntityTypeName,
}

impl Types {
    fn new() -> Result<Self, Error> {
        let parse = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| Error::Schema(format!("`{name}`: {e}")))
        };
        Ok(Types {
            skill: parse("Airlock::Skill")?,
            agent: parse("Airlock::Agent")?,
            action: parse("Airlock::Action")?,
            host: parse("Airlock::Host")?,
            object: parse("Airlock::Object")?,
            secret: parse("Airlock::Secret")?,
            tool: parse("Airlock::Tool")?,
        })
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn resource(&self, resource: &ResourceInput) -> EntityUid {
        let ty = match resource {
            ResourceInput::Host { .. } => &self.host,
            ResourceInput::Object { .. } => &self.object,
            ResourceInput::Secret { .. } => &self.secret,
            ResourceInput::Tool { .. } => &self.tool,
        };
        Self::uid(ty, &resource.id())
    }
}

/// Where a policy can apply, by scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Any,
    Entity(EntityUid),
}

/// Policies indexed by action, then by principal and resource scope.
#[derive(Default)]
struct Index {
    actions: [HashMap<(Key, Key), PolicySet>; 8],
}

/// A loaded, validated and indexed set of policies.
pub struct Policies {
    schema: Schema,
    types: Types,
    all: PolicySet,
    index: Index,
    actions: [EntityUid; 8],
    ids: Vec<String>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("policies", &self.ids.len())
            .finish_non_exhaustive()
    }
}

fn schema() -> Result<Schema, Error> {
    let (schema, warnings) =
        Schema::from_cedarschema_str(SCHEMA).map_err(|e| Error::Schema(e.to_string()))?;
    let warnings: Vec<String> = warnings.map(|w| w.to_string()).collect();
    if !warnings.is_empty() {
        return Err(Error::Schema(warnings.join("; ")));
    }
    Ok(schema)
}

impl Policies {
    /// The base guard rails alone.
    pub fn base() -> Result<Self, Error> {
        Self::from_files(&[])
    }

    /// The base guard rails plus every `.cedar` file under each directory.
    pub fn load(dirs: &[&std::path::Path]) -> Result<Self, Error> {
        let mut files = Vec::new();
        for dir in dirs {
            files.extend(read_dir(dir)?);
        }
        Self::from_files(&files)
    }

    /// The base guard rails plus `files`.
    pub fn from_files(files: &[SourceFile]) -> Result<Self, Error> {
        let schema = schema()?;
        let mut all_files: Vec<SourceFile> = BASE
            .iter()
            .map(|(name, text)| SourceFile {
                name: (*name).to_string(),
                text: (*text).to_string(),
            })
            .collect();
        all_files.extend(files.iter().cloned());
        let parsed = load::parse(&all_files).map_err(Error::Invalid)?;
        let problems = load::validate(&schema, &parsed);
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        let types = Types::new()?;
        let actions = Action::ALL.map(|a| Types::uid(&types.action, a.as_str()));
        let index = build_index(&schema, &parsed.set, &actions)?;
        let mut ids: Vec<String> = parsed.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        Ok(Policies {
            schema,
            types,
            all: parsed.set,
            index,
            actions,
            ids,
        })
    }

    /// Ids of every loaded policy, sorted.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Build what every decision for one instance shares.
    pub fn prepare(&self, subject: &SubjectInput) -> Prepared {
        Prepared::new(&self.types, subject)
    }

    /// Decide `query` for `prepared`, evaluating only policies whose scope can
    /// apply.
    pub fn decide(&self, prepared: &Prepared, query: &Query<'_>) -> Answer {
        let (request, entities, resource) = match self.request(prepared, query) {
            Ok(built) => built,
            Err(answer) => return answer,
        };
        let resource = Key::Entity(resource);
        let bucket = self.index.actions.get(query.action.index());
        let principal_keys = [
            Key::Any,
            Key::Entity(prepared.skill.clone()),
            Key::Entity(prepared.agent.clone()),
        ];
        let mut sets = Vec::new();
        for principal in &principal_keys {
            for resource in [&Key::Any, &resource] {
                if let Some(set) =
                    bucket.and_then(|b| b.get(&(principal.clone(), resource.clone())))
                {
                    sets.push(set);
                }
            }
        }
        self.combine(&request, &entities, &sets)
    }

    /// Decide `query` by evaluating every loaded policy (no index). For
    /// comparison in benchmarks, and as a cross-check in tests.
    pub fn decide_unindexed(&self, prepared: &Prepared, query: &Query<'_>) -> Answer {
        match self.request(prepared, query) {
            Ok((request, entities, _)) => self.combine(&request, &entities, &[&self.all]),
            Err(answer) => answer,
        }
    }

    fn request(
        &self,
        prepared: &Prepared,
        query: &Query<'_>,
    ) -> Result<(Request, Arc<Entities>, EntityUid), Answer> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            Answer::deny(
                Vec::new(),
                format!("the request could not be built ({what}: {e}); treated as a deny"),
            )
        };
        let resource_uid = self.types.resource(query.resource);
        let entities = prepared
            .entities(&self.schema, &resource_uid, query.resource)
            .map_err(|e| invalid("entities", &e))?;
        let session = query.session;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let set = |v: &BTreeSet<String>| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
        let session = RestrictedExpression::new_record([
            ("labels".to_string(), set(session.labels)),
            ("secrets_used".to_string(), set(session.secrets_used)),
            ("hosts_contacted".to_string(), set(session.hosts_contacted)),
            (
                "calls".to_string(),
                RestrictedExpression::new_long(session.calls),
            ),
            (
                "bytes_out".to_string(),
                RestrictedExpression::new_long(session.bytes_out),
            ),
        ])
        .map_err(|e| invalid("session", &e))?;
        let mut pairs = prepared.context.clone();
        pairs.push(("session".to_string(), session));
        pairs.extend(query.call.pairs());
        let context = Context::from_pairs(pairs).map_err(|e| invalid("context", &e))?;
        let action = self
            .actions
            .get(query.action.index())
            .cloned()
            .ok_or_else(|| invalid("action", &"unknown"))?;
        let request = Request::new(
            prepared.skill.clone(),
            action,
            resource_uid.clone(),
            context,
            Some(&self.schema),
        )
        .map_err(|e| invalid("validation", &e))?;
        Ok((request, entities, resource_uid))
    }

    fn combine(&self, request: &Request, entities: &Entities, sets: &[&PolicySet]) -> Answer {
        let authorizer = Authorizer::new();
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for set in sets {
            let response = authorizer.is_authorized(request, set, entities);
            let diagnostics = response.diagnostics();
            for error in diagnostics.errors() {
                errors.push(error.to_string());
            }
            let ids = diagnostics.reason().cloned();
            match response.decision() {
                cedar_policy::Decision::Allow => permits.extend(ids),
                cedar_policy::Decision::Deny => forbids.extend(ids),
            }
        }
        if !errors.is_empty() {
            let ids = errors
                .iter()
                .filter_map(|e| {
                    e.strip_prefix("error while evaluating policy `")
                        .and_then(|rest| rest.split_once('`'))
                        .map(|(id, _)| id.to_string())
                })
                .collect();
            return Answer::deny(
                ids,
                format!("{}; an evaluation error is a deny", errors.join("; ")),
            );
        }
        if !forbids.is_empty() {
            let reasons: Vec<&str> = forbids
                .iter()
                .filter_map(|id| self.all.annotation(id, "reason"))
                .collect();
            return Answer {
                allowed: false,
                policies: sorted_ids(forbids),
                reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            };
        }
        Answer {
            allowed: !permits.is_empty(),
            policies: sorted_ids(permits),
            reason: None,
        }
    }
}

fn sorted_ids(ids: Vec<PolicyId>) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn build_index(schema: &Schema, set: &PolicySet, actions: &[EntityUid; 8]) -> Result<Index, Error> {
    let action_entities = schema
        .action_entities()
        .map_err(|e| Error::Schema(e.to_string()))?;
    // Each action and the groups it is in.
    let memberships: Vec<HashSet<EntityUid>> = actions
        .iter()
        .map(|a| {
            let mut groups: HashSet<EntityUid> = action_entities
                .ancestors(a)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            groups.insert(a.clone());
            groups
        })
        .collect();
    let mut index = Index::default();
    for policy in set.policies() {
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::In(uid)
            | PrincipalConstraint::IsIn(_, uid) => Key::Entity(uid),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => Key::Any,
        };
        let resource = match policy.resource_constraint() {
            ResourceConstraint::Eq(uid) => Key::Entity(uid),
            // Resources have no parents: `in X` can only match X itself, but
            // keep such policies where every request sees them.
            _ => Key::Any,
        };
        let constraint = policy.action_constraint();
        for (i, groups) in memberships.iter().enumerate() {
            let applies = match &constraint {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => actions.get(i) == Some(uid),
                ActionConstraint::In(uids) => uids.iter().any(|u| groups.contains(u)),
            };
            if !applies {
                continue;
            }
            let Some(bucket) = index.actions.get_mut(i) else {
                continue;
            };
            bucket
                .entry((principal.clone(), resource.clone()))
                .or_default()
                .add(policy.clone())
                .map_err(|e| Error::Schema(e.to_string()))?;
        }
    }
    Ok(index)
}

/// Bound on cached entity sets per instance.
const ENTITY_CACHE: usize = 256;

/// Everything decisions for one instance share: principal and agent
/// entities, the context parts that do not change, and entity sets already
/// built for the resources it has touched.
pub struct Prepared {
    skill: EntityUid,
    agent: EntityUid,
    principal: Result<(Entity, Entity), String>,
    context: Vec<(String, RestrictedExpression)>,
    cache: Mutex<HashMap<EntityUid, Arc<Entities>>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("skill", &self.skill)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    fn new(types: &Types, subject: &SubjectInput) -> Self {
        let p = &subject.principal;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let set = |v: &BTreeSet<String>| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
        let skill = Types::uid(&types.skill, &p.digest);
        let agent = Types::uid(&types.agent, &p.agent);
        let principal = (|| {
            let agent_entity = Entity::new(
                agent.clone(),
                HashMap::from([
                    ("trust".to_string(), s(&p.trust)),
                    (
                        "trust_level".to_string(),
                        RestrictedExpression::new_long(p.trust_level),
                    ),
                ]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?;
            let skill_entity = Entity::new(
                skill.clone(),
                HashMap::from([
                    ("digest".to_string(), s(&p.digest)),
                    ("name".to_string(), s(&p.name)),
                    (
                        "approved".to_string(),
                        RestrictedExpression::new_bool(p.approved),
                    ),
                    ("labels".to_string(), set(&p.labels)),
                ]),
                HashSet::from([agent.clone()]),
            )
            .map_err(|e| e.to_string())?;
            Ok((skill_entity, agent_entity))
        })();
        let t = &subject.task;
        let task = RestrictedExpression::new_record([
            ("id".to_string(), s(&t.id)),
            ("intent".to_string(), s(&t.intent)),
            ("sensitivity".to_string(), s(&t.sensitivity)),
            (
                "sensitivity_level".to_string(),
                RestrictedExpression::new_long(t.sensitivity_level),
            ),
            ("environment".to_string(), s(&t.environment)),
        ]);
        let delegation = RestrictedExpression::new_record([
            (
                "depth".to_string(),
                RestrictedExpression::new_long(subject.delegation_depth),
            ),
            ("chain".to_string(), set(&subject.delegation_chain)),
        ]);
        let mut context = vec![
            ("agent_trust".to_string(), s(&p.trust)),
            (
                "agent_trust_level".to_string(),
                RestrictedExpression::new_long(p.trust_level),
            ),
        ];
        // A record that failed to build is left out: the context then fails
        // schema validation and every decision is a deny.
        if let Ok(task) = task {
            context.push(("task".to_string(), task));
        }
        if let Ok(delegation) = delegation {
            context.push(("delegation".to_string(), delegation));
        }
        Prepared {
            skill,
            agent,
            principal,
            context,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn entities(
        &self,
        schema: &Schema,
        resource_uid: &EntityUid,
        resource: &ResourceInput,
    ) -> Result<Arc<Entities>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entities) = cache.get(resource_uid) {
            return Ok(entities.clone());
        }
        let (skill, agent) = self.principal.clone()?;
        let resource = Entity::new(resource_uid.clone(), resource.attrs(), HashSet::new())
            .map_err(|e| e.to_string())?;
        let entities = Arc::new(
            Entities::from_entities([skill, agent, resource], Some(schema))
                .map_err(|e| e.to_string())?,
        );
        if cache.len() >= ENTITY_CACHE {
            cache.clear();
        }
        cache.insert(resource_uid.clone(), entities.clone());
        Ok(entities)
    }
}
