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

mod context;
pub mod control;
mod load;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cedar_policy_core::ast::Value;
use smol_str::SmolStr;

use context::Shape;

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
    /// The call's own context attributes.
    fn fields(&self, out: &mut BTreeMap<SmolStr, Value>) {
        use context::{long, record, string};
        let mut put = |k: &str, v: Value| {
            out.insert(SmolStr::new(k), v);
        };
        match self {
            CallInput::Http {
                method,
                scheme,
                port,
                path,
            } => {
                put("method", string(method));
                put("scheme", string(scheme));
                put("port", long(*port));
                put("path", string(path));
            }
            CallInput::Storage { key } => put("key", string(key)),
            CallInput::SecretUse {
                scheme,
                host,
                port,
                path,
            } => put(
                "destination",
                record([
                    ("scheme", string(scheme)),
                    ("host", string(host)),
                    ("port", long(*port)),
                    ("path", string(path)),
                ]),
            ),
            CallInput::Mint { audience } => put("audience", string(audience)),
            CallInput::Tool { input_bytes } => put("input_bytes", long(*input_bytes)),
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
    /// The context type of each action, from the schema.
    shapes: Vec<Shape>,
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
        let (schema, parsed) = load::strict(SCHEMA, BASE, files)?;
        let types = Types::new()?;
        let mut by_name = context::shapes(SCHEMA).map_err(Error::Schema)?;
        let mut shapes = Vec::with_capacity(Action::ALL.len());
        for action in Action::ALL {
            shapes.push(by_name.remove(action.as_str()).ok_or_else(|| {
                Error::Schema(format!("no context type for `{}`", action.as_str()))
            })?);
        }
        let actions = Action::ALL.map(|a| Types::uid(&types.action, a.as_str()));
        let index = build_index(&schema, &parsed.set, &actions)?;
        let mut ids: Vec<String> = parsed.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        Ok(Policies {
            schema,
            types,
            shapes,
            all: parsed.set,
            index,
            actions,
            ids,
        })
    }

    /// Whether one of the policies `ids` names `resource` in its scope
    /// (`resource == ...`), rather than allowing it among others.
    pub fn names_resource(&self, ids: &[String], resource: &ResourceInput) -> bool {
        let uid = self.types.resource(resource);
        ids.iter().any(|id| {
            self.all.policy(&PolicyId::new(id)).is_some_and(|p| {
                matches!(p.resource_constraint(), ResourceConstraint::Eq(named) if named == uid)
            })
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
        let resource = self.types.resource(query.resource);
        let cached = match prepared.cached(query.action, &resource, || {
            self.build(prepared, query.action, &resource, query.resource)
        }) {
            Ok(cached) => cached,
            Err(answer) => return answer,
        };
        match self.request(prepared, query, resource) {
            Ok(request) => self.combine(&request, &cached.entities, &[&cached.policies]),
            Err(answer) => answer,
        }
    }

    /// Decide `query` by evaluating every loaded policy (no index). For
    /// comparison in benchmarks, and as a cross-check in tests.
    pub fn decide_unindexed(&self, prepared: &Prepared, query: &Query<'_>) -> Answer {
        let resource = self.types.resource(query.resource);
        let entities = match prepared.entities(&self.schema, &resource, query.resource) {
            Ok(entities) => entities,
            Err(e) => return invalid("entities", &e),
        };
        match self.request(prepared, query, resource) {
            Ok(request) => self.combine(&request, &entities, &[&self.all]),
            Err(answer) => answer,
        }
    }

    /// The entities and the one policy set a decision on `resource` for
    /// `action` needs: every bucket whose scope can match, merged.
    fn build(
        &self,
        prepared: &Prepared,
        action: Action,
        resource: &EntityUid,
        input: &ResourceInput,
    ) -> Result<Cached, Answer> {
        let entities = prepared
            .entities(&self.schema, resource, input)
            .map_err(|e| invalid("entities", &e))?;
        let mut policies = PolicySet::new();
        if let Some(buckets) = self.index.actions.get(action.index()) {
            let principals = [
                Key::Any,
                Key::Entity(prepared.skill.clone()),
                Key::Entity(prepared.agent.clone()),
            ];
            let resources = [Key::Any, Key::Entity(resource.clone())];
            for principal in &principals {
                for resource in &resources {
                    let Some(set) = buckets.get(&(principal.clone(), resource.clone())) else {
                        continue;
                    };
                    for policy in set.policies() {
                        policies
                            .add(policy.clone())
                            .map_err(|e| invalid("policy set", &e))?;
                    }
                }
            }
        }
        Ok(Cached {
            entities,
            policies: Arc::new(policies),
        })
    }

    /// Build the request: context from typed values, checked against the
    /// action's context type in the schema on every call; Cedar validates
    /// the first request of each action in an instance in full as well.
    fn request(
        &self,
        prepared: &Prepared,
        query: &Query<'_>,
        resource: EntityUid,
    ) -> Result<Request, Answer> {
        use context::{long, record, strings};
        let session = query.session;
        let mut fields = prepared.fixed.clone();
        fields.insert(
            SmolStr::new_static("session"),
            record([
                ("labels", strings(session.labels)),
                ("secrets_used", strings(session.secrets_used)),
                ("hosts_contacted", strings(session.hosts_contacted)),
                ("calls", long(session.calls)),
                ("bytes_out", long(session.bytes_out)),
            ]),
        );
        query.call.fields(&mut fields);
        let i = query.action.index();
        let shape = self
            .shapes
            .get(i)
            .ok_or_else(|| invalid("action", &"unknown"))?;
        if let Shape::Record(attrs) = shape {
            context::check_record(attrs, &fields)
                .map_err(|e| invalid("the context does not match the schema", &e))?;
        }
        let context = Context::from(cedar_policy_core::ast::Context::Value(Arc::new(fields)));
        let action = self
            .actions
            .get(i)
            .cloned()
            .ok_or_else(|| invalid("action", &"unknown"))?;
        let first = prepared
            .validated
            .get(i)
            .is_some_and(|done| !done.swap(true, Ordering::Relaxed));
        Request::new(
            prepared.skill.clone(),
            action,
            resource,
            context,
            first.then_some(&self.schema),
        )
        .map_err(|e| invalid("validation", &e))
    }

    fn combine(&self, request: &Request, entities: &Entities, sets: &[&PolicySet]) -> Answer {
        combine(&self.all, request, entities, sets)
    }
}

/// One answer from the sets' decisions: an evaluation error is a deny, then
/// any satisfied forbid, then an allow only if a permit applied. Reasons are
/// the `@reason`s in `all` of the deciding forbids.
pub(crate) fn combine(
    all: &PolicySet,
    request: &Request,
    entities: &Entities,
    sets: &[&PolicySet],
) -> Answer {
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
            .filter_map(|id| all.annotation(id, "reason"))
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

fn invalid(what: &str, e: &dyn std::fmt::Display) -> Answer {
    Answer::deny(
        Vec::new(),
        format!("the request could not be built ({what}: {e}); treated as a deny"),
    )
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

/// Bound on the resources one instance keeps prepared decisions for.
const CACHE: usize = 256;

/// What decisions on one resource share.
struct Cached {
    entities: Arc<Entities>,
    policies: Arc<PolicySet>,
}

/// Everything decisions for one instance share: principal and agent
/// entities, the context attributes that do not change, and, per resource
/// it has touched, the entities and the merged policy set.
pub struct Prepared {
    skill: EntityUid,
    agent: EntityUid,
    principal: Result<(Entity, Entity), String>,
    fixed: BTreeMap<SmolStr, Value>,
    /// Whether Cedar has validated a request of each action in full.
    validated: [AtomicBool; 8],
    entities: Mutex<HashMap<EntityUid, Arc<Entities>>>,
    cache: Mutex<HashMap<(Action, EntityUid), Arc<Cached>>>,
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
        use context::{long, record, string, strings};
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
        let fixed = BTreeMap::from([
            (SmolStr::new_static("agent_trust"), string(&p.trust)),
            (
                SmolStr::new_static("agent_trust_level"),
                long(p.trust_level),
            ),
            (
                SmolStr::new_static("task"),
                record([
                    ("id", string(&t.id)),
                    ("intent", string(&t.intent)),
                    ("sensitivity", string(&t.sensitivity)),
                    ("sensitivity_level", long(t.sensitivity_level)),
                    ("environment", string(&t.environment)),
                ]),
            ),
            (
                SmolStr::new_static("delegation"),
                record([
                    ("depth", long(subject.delegation_depth)),
                    ("chain", strings(&subject.delegation_chain)),
                ]),
            ),
        ]);
        Prepared {
            skill,
            agent,
            principal,
            fixed,
            validated: Default::default(),
            entities: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(
        &self,
        action: Action,
        resource: &EntityUid,
        build: impl FnOnce() -> Result<Cached, Answer>,
    ) -> Result<Arc<Cached>, Answer> {
        let key = (action, resource.clone());
        if let Some(cached) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(cached.clone());
        }
        let cached = Arc::new(build()?);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(key, cached.clone());
        Ok(cached)
    }

    fn entities(
        &self,
        schema: &Schema,
        resource_uid: &EntityUid,
        resource: &ResourceInput,
    ) -> Result<Arc<Entities>, String> {
        let mut cache = self.entities.lock().unwrap_or_else(PoisonError::into_inner);
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
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(resource_uid.clone(), entities.clone());
        Ok(entities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_for(action: Action) -> CallInput {
        match action {
            Action::HttpRequest => CallInput::Http {
                method: "GET".into(),
                scheme: "https".into(),
                port: 443,
                path: "/".into(),
            },
            Action::SecretUse => CallInput::SecretUse {
                scheme: "https".into(),
                host: "h".into(),
                port: 443,
                path: "/".into(),
            },
            Action::SecretMint => CallInput::Mint {
                audience: "a".into(),
            },
            Action::ToolInvoke => CallInput::Tool { input_bytes: 2 },
            _ => CallInput::Storage { key: "k".into() },
        }
    }

    /// Every way to break a context: drop an attribute, add one, change a
    /// leaf's type, put a wrong element in a set, at every depth.
    fn mutations(fields: &BTreeMap<SmolStr, Value>) -> Vec<BTreeMap<SmolStr, Value>> {
        use cedar_policy_core::ast::ValueKind;
        let mut out = Vec::new();
        let mut extra = fields.clone();
        extra.insert("unexpected".into(), Value::from(1i64));
        out.push(extra);
        for (name, value) in fields {
            let mut dropped = fields.clone();
            dropped.remove(name);
            out.push(dropped);
            let replacements = match &value.value {
                ValueKind::Record(inner) => mutations(inner)
                    .into_iter()
                    .map(|m| Value::record_arc(Arc::new(m), None))
                    .chain([Value::from("not a record")])
                    .collect::<Vec<_>>(),
                ValueKind::Set(_) => vec![
                    Value::set([Value::from(7i64)], None),
                    Value::from("not a set"),
                ],
                ValueKind::Lit(cedar_policy_core::ast::Literal::String(_)) => {
                    vec![Value::from(1i64), Value::from(true)]
                }
                _ => vec![Value::from("not a long"), Value::empty_set(None)],
            };
            for replacement in replacements {
                let mut changed = fields.clone();
                changed.insert(name.clone(), replacement);
                out.push(changed);
            }
        }
        out
    }

    #[test]
    fn the_context_check_agrees_with_cedars_validator() {
        let policies = Policies::base().unwrap();
        let labels: BTreeSet<String> = ["a".to_string()].into();
        let subject = SubjectInput {
            delegation_chain: labels.clone(),
            ..SubjectInput::default()
        };
        let prepared = policies.prepare(&subject);
        let mut checked = 0;
        for action in Action::ALL {
            let mut fields = prepared.fixed.clone();
            fields.insert(
                "session".into(),
                context::record([
                    ("labels", context::strings(&labels)),
                    ("secrets_used", context::strings(&BTreeSet::new())),
                    ("hosts_contacted", context::strings(&labels)),
                    ("calls", context::long(1)),
                    ("bytes_out", context::long(0)),
                ]),
            );
            call_for(action).fields(&mut fields);
            let uid = policies.actions[action.index()].clone();
            let Shape::Record(attrs) = &policies.shapes[action.index()] else {
                panic!("context of {action:?} is not a record");
            };
            let mut cases = vec![fields.clone()];
            cases.extend(mutations(&fields));
            for case in cases {
                let ours = context::check_record(attrs, &case).is_ok();
                let cedar = Context::from(cedar_policy_core::ast::Context::Value(Arc::new(
                    case.clone(),
                )))
                .validate(&policies.schema, &uid)
                .is_ok();
                assert_eq!(ours, cedar, "{action:?}: {case:?}");
                checked += 1;
            }
            assert!(context::check_record(attrs, &fields).is_ok(), "{action:?}");
        }
        assert!(checked > 300, "{checked}");
    }
}
