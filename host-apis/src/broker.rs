//! The broker seam: every capability call is described as one
//! [`CapabilityRequest`] and decided by a [`Broker`] before anything happens.
//!
//! The host builds everything the broker sees: who is calling ([`Subject`]),
//! what the run has touched so far ([`Session`]) and the call itself. Guest
//! arguments only ever fill in the request's resource and details.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;

use crate::stack::ThreadStack;
use crate::{CallError, Error, Limit};

/// What a call wants to do, named `<capability>.<verb>` as in policy and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Action {
    #[serde(rename = "http.request")]
    HttpRequest,
    #[serde(rename = "storage.read")]
    StorageRead,
    #[serde(rename = "storage.write")]
    StorageWrite,
    #[serde(rename = "storage.delete")]
    StorageDelete,
    #[serde(rename = "storage.list")]
    StorageList,
    #[serde(rename = "secret.use")]
    SecretUse,
    #[serde(rename = "secret.mint")]
    SecretMint,
    #[serde(rename = "tool.invoke")]
    ToolInvoke,
}

impl Action {
    /// Every action, in a fixed order.
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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call acts on. Ids are canonical: the same thing always has the same id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    /// A network host: a canonical host name or an IP literal.
    Host { name: String },
    /// A storage key in a namespace.
    Object { namespace: String, key: String },
    /// A credential, by its configured name.
    Secret { name: String },
    /// A skill registered as a named tool.
    Tool { name: String },
}

impl Resource {
    /// The entity type policies see.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Host { .. } => "Host",
            Resource::Object { .. } => "Object",
            Resource::Secret { .. } => "Secret",
            Resource::Tool { .. } => "Tool",
        }
    }

    /// The entity id policies see. An object's id is `namespace/key`; namespaces
    /// never contain `/`, so the split is unambiguous.
    pub fn id(&self) -> String {
        match self {
            Resource::Host { name } | Resource::Secret { name } | Resource::Tool { name } => {
                name.clone()
            }
            Resource::Object { namespace, key } => format!("{namespace}/{key}"),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind(), crate::escape(&self.id(), 200))
    }
}

/// The details of one call that policy may look at besides the resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Details {
    /// An outbound HTTP request (also the destination of a `secret.use`).
    Http {
        method: String,
        scheme: String,
        host: String,
        port: u16,
        path: String,
    },
    /// A storage operation on a key (or a key prefix, for `storage.list`).
    Storage { key: String },
    /// Minting a token for an audience.
    Token { audience: String },
    /// Invoking a tool.
    Tool { input_bytes: u64 },
}

/// One capability call, as the broker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapabilityRequest {
    pub action: Action,
    pub resource: Resource,
    pub details: Details,
}

/// The longest names (hosts, secrets, tools, methods, schemes) a call may
/// carry, in bytes.
pub const MAX_CALL_NAME: usize = 256;
/// The longest storage key (or namespace).
pub const MAX_CALL_KEY: usize = 1024;
/// The longest HTTP path with its query.
pub const MAX_CALL_PATH: usize = 8 << 10;
/// The longest token audience.
pub const MAX_CALL_AUDIENCE: usize = 1024;
/// What is kept of each string of a call refused for its size.
const KEPT_OF_OVERSIZED: usize = 128;

impl CapabilityRequest {
    /// Visit each string the call carries, with its name and the most it
    /// may be. No allocation: this runs on every call.
    fn each_text(&mut self, mut visit: impl FnMut(&'static str, usize, &mut String)) {
        match &mut self.resource {
            Resource::Host { name } => visit("host", MAX_CALL_NAME, name),
            Resource::Secret { name } => visit("secret name", MAX_CALL_NAME, name),
            Resource::Tool { name } => visit("tool name", MAX_CALL_NAME, name),
            Resource::Object { namespace, key } => {
                visit("namespace", MAX_CALL_KEY, namespace);
                visit("key", MAX_CALL_KEY, key);
            }
        }
        match &mut self.details {
            Details::Http {
                method,
                scheme,
                host,
                path,
                ..
            } => {
                visit("method", MAX_CALL_NAME, method);
                visit("scheme", MAX_CALL_NAME, scheme);
                visit("host", MAX_CALL_NAME, host);
                visit("path", MAX_CALL_PATH, path);
            }
            Details::Storage { key } => visit("key", MAX_CALL_KEY, key),
            Details::Token { audience } => visit("audience", MAX_CALL_AUDIENCE, audience),
            Details::Tool { .. } => {}
        }
    }

    /// Why the call is too big to decide or record, if it is: the host
    /// would otherwise hold whatever a guest passes, call after call.
    fn oversized(&mut self) -> Option<String> {
        let mut problem = None;
        self.each_text(|what, max, text| {
            if problem.is_none() && text.len() > max {
                problem = Some(format!(
                    "the {what} is {} bytes, over the limit of {max}",
                    text.len()
                ));
            }
        });
        problem
    }

    /// Cut every string to what a record of the refusal keeps.
    fn cut(&mut self) {
        self.each_text(|_, _, text| {
            if text.len() > KEPT_OF_OVERSIZED {
                let mut end = KEPT_OF_OVERSIZED;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
        });
    }
}

/// Whether policy lets a call through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Whether a deny stops the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denials stop calls. The default, always.
    #[default]
    Enforce,
    /// Decisions are computed and recorded, "would deny" is reported, and calls
    /// proceed. For writing policy against a real skill.
    Shadow,
}

/// A broker's answer for one call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Ids of the policies that decided: the satisfied `permit`s for an allow,
    /// the satisfied `forbid`s (or the erroring policies) for a deny.
    pub policies: Vec<String>,
    /// Why, in words, when the policy ids alone do not say it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub mode: Mode,
    /// Denied by a calling skill's policies, not the tool's own: the tool
    /// does not answer for it (automatic quarantine).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub by_caller: bool,
}

impl Decision {
    pub fn allow(policies: Vec<String>) -> Self {
        Decision {
            verdict: Verdict::Allow,
            policies,
            reason: None,
            mode: Mode::Enforce,
            by_caller: false,
        }
    }

    pub fn deny(policies: Vec<String>, reason: Option<String>) -> Self {
        Decision {
            verdict: Verdict::Deny,
            policies,
            reason,
            mode: Mode::Enforce,
            by_caller: false,
        }
    }

    /// Whether the call goes ahead: allowed, or denied in shadow mode.
    pub fn proceeds(&self) -> bool {
        self.verdict == Verdict::Allow || self.mode == Mode::Shadow
    }

    /// The text a guest and a user see for a denial: action, resource and the
    /// deciding policy ids.
    pub fn denial(&self, request: &CapabilityRequest) -> String {
        let mut text = format!("`{}` on {} denied", request.action, request.resource);
        match self.policies.as_slice() {
            [] => text.push_str(": no policy permits it"),
            [one] => text.push_str(&format!(" by policy `{one}`")),
            many => {
                let ids: Vec<String> = many.iter().map(|p| format!("`{p}`")).collect();
                text.push_str(&format!(" by policies {}", ids.join(", ")));
            }
        }
        if let Some(reason) = &self.reason {
            text.push_str(&format!(" ({reason})"));
        }
        text
    }
}

/// How much the operator trusts the agent that generated a skill.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Nothing is known about the agent. The default.
    #[default]
    Untrusted,
    Low,
    Medium,
    High,
}

impl Trust {
    pub const ALL: [Trust; 4] = [Trust::Untrusted, Trust::Low, Trust::Medium, Trust::High];

    pub const fn as_str(self) -> &'static str {
        match self {
            Trust::Untrusted => "untrusted",
            Trust::Low => "low",
            Trust::Medium => "medium",
            Trust::High => "high",
        }
    }

    /// Ordinal for policies that compare levels (`untrusted` is 0).
    pub const fn rank(self) -> i64 {
        self as i64
    }
}

impl std::str::FromStr for Trust {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Trust::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown trust level `{s}` (expected untrusted, low, medium or high)")
            })
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How sensitive the data a task handles is, as asserted by whoever started it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    Public,
    Internal,
    /// The default: unless told otherwise, assume the data matters.
    #[default]
    Confidential,
    Secret,
}

impl Sensitivity {
    pub const ALL: [Sensitivity; 4] = [
        Sensitivity::Public,
        Sensitivity::Internal,
        Sensitivity::Confidential,
        Sensitivity::Secret,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::Confidential => "confidential",
            Sensitivity::Secret => "secret",
        }
    }

    /// Ordinal for policies that compare levels (`public` is 0).
    pub const fn rank(self) -> i64 {
        self as i64
    }
}

impl std::str::FromStr for Sensitivity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Sensitivity::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown sensitivity `{s}` (expected public, internal, confidential or secret)"
                )
            })
    }
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The skill being run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SkillIdentity {
    /// blake3 digest of the component bytes, hex.
    pub digest: String,
    pub name: String,
    /// Whether a reviewer approved it (false for a developer-mode run of a file).
    pub approved: bool,
    pub labels: BTreeSet<String>,
}

/// The agent that generated the skill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentIdentity {
    pub id: String,
    pub trust: Trust,
}

/// The task a run serves, asserted by whoever started it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Task {
    pub id: String,
    pub intent: String,
    pub sensitivity: Sensitivity,
    pub environment: String,
    /// Who asked for the run: an API principal, an MCP client's principal,
    /// or the local user. Recorded, not asserted by the skill.
    pub requester: String,
}

/// How the instance was reached: directly (depth 0) or as a tool of another skill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delegation {
    pub depth: u32,
    /// Names of the calling skills, outermost first.
    pub chain: Vec<String>,
    /// The calling instances, outermost first (for identity tokens' `act`).
    pub callers: Vec<CallerInstance>,
}

/// One calling instance in a delegation chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallerInstance {
    pub digest: String,
    pub instance: String,
}

/// Who is making a call: everything here is built by the host, never by the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// This instance, unique per run of a skill.
    pub instance: String,
    pub skill: SkillIdentity,
    pub agent: AgentIdentity,
    pub task: Task,
    pub delegation: Delegation,
}

/// What a run has touched so far. Shared by every instance of the run (a tool's
/// reads flow back to its caller), and only ever grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionState {
    /// Classification labels of the data read.
    pub labels: BTreeSet<String>,
    /// Names of the credentials used.
    pub secrets_used: BTreeSet<String>,
    /// Hosts connected to.
    pub hosts_contacted: BTreeSet<String>,
    /// Capability calls made (allowed or not).
    pub calls: u64,
    /// Request bytes sent out (bodies and headers).
    pub bytes_out: u64,
}

/// A handle on the run's [`SessionState`].
#[derive(Clone, Debug, Default)]
pub struct Session(Arc<Mutex<SessionState>>);

impl Session {
    pub fn new(state: SessionState) -> Self {
        Session(Arc::new(Mutex::new(state)))
    }

    /// The state, locked. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic elsewhere must not wedge the run's policy state.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> SessionState {
        self.lock().clone()
    }
}

/// What happened to a call after the broker decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Stopped by the broker; nothing was done.
    Denied,
    /// Done. `access` says what was touched, for example the address connected to.
    Done {
        #[serde(skip_serializing_if = "Option::is_none")]
        access: Option<String>,
    },
    /// Allowed, but it failed (the guest got this error).
    Failed { error: String },
    /// The instance ended while the call was in progress.
    Cancelled,
}

impl Outcome {
    /// The outcome's name, as in a record's `outcome.status`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Done { .. } => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One capability call and its decision, for the run's report and the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct CallRecord {
    pub instance: String,
    pub skill: String,
    pub action: Action,
    pub resource: Resource,
    pub details: Details,
    pub decision: Decision,
    pub outcome: Outcome,
    pub duration_us: u64,
}

impl CallRecord {
    /// Pass every string the guest chose through `clean`: the resource, the
    /// details and a failure's text. Records are kept and shown; a live
    /// credential a guest wrote into a key or a path must not be.
    pub fn redact(&mut self, clean: impl Fn(String) -> String) {
        let take = |s: &mut String| *s = clean(std::mem::take(s));
        match &mut self.resource {
            Resource::Host { name } | Resource::Secret { name } | Resource::Tool { name } => {
                take(name)
            }
            Resource::Object { key, .. } => take(key),
        }
        match &mut self.details {
            Details::Http {
                method, host, path, ..
            } => {
                take(method);
                take(host);
                take(path);
            }
            Details::Storage { key } => take(key),
            Details::Token { audience } => take(audience),
            Details::Tool { .. } => {}
        }
        if let Outcome::Failed { error } = &mut self.outcome {
            take(error);
        }
    }
}

/// What a broker built for one instance in [`Broker::prepare`], handed back
/// to every [`Broker::decide`] for that instance.
#[derive(Clone, Default)]
pub struct Prepared(Option<Arc<dyn std::any::Any + Send + Sync>>);

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Prepared(..)"
        } else {
            "Prepared(none)"
        })
    }
}

impl Prepared {
    pub fn new<T: std::any::Any + Send + Sync>(value: T) -> Self {
        Prepared(Some(Arc::new(value)))
    }

    /// The prepared value, if this broker prepared one of type `T`.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|v| v.downcast_ref())
    }
}

/// Decides capability calls. The runtime's implementation evaluates policy;
/// [`DenyAll`] is the default when there is none.
pub trait Broker: Send + Sync + 'static {
    /// Build what every decision for this instance shares, once, when the
    /// instance starts.
    fn prepare(&self, subject: &Subject) -> Prepared {
        let _ = subject;
        Prepared::default()
    }

    /// Decide one call. Called on a real thread stack, never on a guest's
    /// fiber, so an implementation may recurse as deep as a thread allows.
    fn decide(
        &self,
        prepared: &Prepared,
        subject: &Subject,
        session: &SessionState,
        request: &CapabilityRequest,
    ) -> Decision;

    /// Keep a record of a decided call, once it is over. Not on the decision path.
    fn record(&self, record: &CallRecord) {
        let _ = record;
    }
}

/// The broker with no policy: every capability call is denied.
#[derive(Clone, Copy, Debug, Default)]
pub struct DenyAll;

impl Broker for DenyAll {
    fn decide(
        &self,
        _: &Prepared,
        _: &Subject,
        _: &SessionState,
        _: &CapabilityRequest,
    ) -> Decision {
        Decision::deny(Vec::new(), Some("no policy is loaded".to_string()))
    }
}

/// Every call record of a run, across all its instances, and the calls
/// each instance has open.
#[derive(Clone, Debug, Default)]
pub struct Ledger(Arc<LedgerState>);

#[derive(Debug, Default)]
struct LedgerState {
    books: Mutex<Books>,
    closed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Books {
    records: Vec<CallRecord>,
    open: HashMap<String, usize>,
}

impl Ledger {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.0.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self, instance: &str) {
        *self.books().open.entry(instance.to_string()).or_insert(0) += 1;
    }

    fn close(&self, record: CallRecord) {
        let mut books = self.books();
        if let Some(open) = books.open.get_mut(&record.instance) {
            *open -= 1;
            if *open == 0 {
                books.open.remove(&record.instance);
            }
        }
        books.records.push(record);
        drop(books);
        self.0.closed.notify_waiters();
    }

    /// The records so far, in the order the calls ended.
    pub fn records(&self) -> Vec<CallRecord> {
        self.books().records.clone()
    }

    /// Pass the strings of every record through `clean(maker, text)` where
    /// they are kept: an instance's callers read its records after it has
    /// ended, when its credentials, and so what would clean them, are gone.
    /// Under the lock, so an instance ending at the same time has either
    /// cleaned its records already or not ended yet.
    pub fn clean(&self, clean: impl Fn(&str, String) -> String) {
        let mut books = self.books();
        for record in &mut books.records {
            let maker = std::mem::take(&mut record.instance);
            record.redact(|text| clean(&maker, text));
            record.instance = maker;
        }
    }

    /// Wait up to `wait` until `instance` has no call open: a call made
    /// from a task of its own (a standard HTTP request) may still be ending
    /// after the instance is gone. False if some still are.
    pub async fn settled(&self, instance: &str, wait: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let closed = self.0.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if !self.books().open.contains_key(instance) {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return false;
            }
        }
    }
}

/// An instance's budget of host calls, shared by everything that makes calls
/// on its behalf (its host functions and its standard HTTP handler).
#[derive(Clone, Debug)]
pub struct CallBudget {
    made: Arc<AtomicU64>,
    max: u64,
}

impl CallBudget {
    pub fn new(max: u64) -> Self {
        CallBudget {
            made: Arc::new(AtomicU64::new(0)),
            max,
        }
    }

    /// Host calls made so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Count one call; past the budget the instance ends.
    pub fn spend(&self) -> Result<(), CallError> {
        let made = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        if made > self.max {
            return Err(CallError::Trap(
                Error::Limit {
                    limit: Limit::HostCalls,
                    detail: format!("more than {} host calls", self.max),
                }
                .into(),
            ));
        }
        Ok(())
    }
}

/// Per-instance broker state: who is calling, the run's session, and the
/// instance's host-call budget. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct BrokerCtx {
    broker: Arc<dyn Broker>,
    prepared: Prepared,
    subject: Arc<Subject>,
    session: Session,
    ledger: Ledger,
    stack: Arc<ThreadStack>,
    budget: CallBudget,
}

impl fmt::Debug for BrokerCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerCtx")
            .field("subject", &self.subject)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl BrokerCtx {
    pub fn new(
        broker: Arc<dyn Broker>,
        subject: Arc<Subject>,
        session: Session,
        ledger: Ledger,
        stack: Arc<ThreadStack>,
        budget: CallBudget,
    ) -> Self {
        let prepared = broker.prepare(&subject);
        BrokerCtx {
            broker,
            prepared,
            subject,
            session,
            ledger,
            stack,
            budget,
        }
    }

    pub fn subject(&self) -> &Arc<Subject> {
        &self.subject
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn stack(&self) -> &Arc<ThreadStack> {
        &self.stack
    }

    pub fn budget(&self) -> &CallBudget {
        &self.budget
    }

    /// Count one host call against the instance's budget.
    pub fn count_call(&self) -> Result<(), CallError> {
        self.budget.spend()
    }

    /// Count and record a call refused before policy because its arguments
    /// are malformed, and return `error`. Every call leaves a record.
    pub fn refuse<T>(
        &self,
        mut request: CapabilityRequest,
        error: CallError,
    ) -> Result<T, CallError> {
        self.count_call()?;
        if request.oversized().is_some() {
            request.cut();
        }
        let permit = Permit {
            span: call_span(&self.subject, &request),
            broker: self.broker.clone(),
            ledger: self.ledger.clone(),
            instance: self.subject.instance.clone(),
            skill: self.subject.skill.name.clone(),
            request,
            decision: Decision::deny(
                Vec::new(),
                Some("the call is malformed and was refused before policy".to_string()),
            ),
            started: Instant::now(),
            outcome: None,
        };
        permit.span.record("verdict", "deny");
        self.ledger.open(&self.subject.instance);
        permit.conclude(Err(error), |_: &T| None)
    }

    /// Count the call, decide it, and either hand back a [`Permit`] to act on
    /// or record the denial and return it as the guest's error.
    pub async fn authorize(&self, mut request: CapabilityRequest) -> Result<Permit, CallError> {
        if let Some(problem) = request.oversized() {
            return self.refuse(request, CallError::Invalid(problem));
        }
        self.count_call()?;
        let started = Instant::now();
        let span = call_span(&self.subject, &request);
        let broker = self.broker.clone();
        let prepared = self.prepared.clone();
        let subject = self.subject.clone();
        let session = self.session.clone();
        // Policy engines check their remaining stack against the thread's; a
        // guest's fiber is not the thread's stack, so decide off the fiber.
        let (request, decision) = self
            .stack
            .run(move || {
                let mut state = session.lock();
                state.calls += 1;
                let decision = broker.decide(&prepared, &subject, &state, &request);
                (request, decision)
            })
            .await;
        span.record("verdict", permit_verdict(&decision));
        span.record("policies", decision.policies.join(","));
        self.ledger.open(&self.subject.instance);
        let permit = Permit {
            span,
            broker: self.broker.clone(),
            ledger: self.ledger.clone(),
            instance: self.subject.instance.clone(),
            skill: self.subject.skill.name.clone(),
            request,
            decision,
            started,
            outcome: None,
        };
        if permit.decision.proceeds() {
            tracing::debug!(
                action = %permit.request.action,
                resource = %permit.request.resource,
                verdict = ?permit.decision.verdict,
                "capability call allowed"
            );
            Ok(permit)
        } else {
            let message = permit.decision.denial(&permit.request);
            tracing::info!(
                action = %permit.request.action,
                resource = %permit.request.resource,
                policies = ?permit.decision.policies,
                "capability call denied"
            );
            permit.finish(Outcome::Denied);
            Err(CallError::Denied(message))
        }
    }
}

fn permit_verdict(decision: &Decision) -> &'static str {
    match (decision.verdict, decision.mode) {
        (Verdict::Allow, _) => "allow",
        (Verdict::Deny, Mode::Enforce) => "deny",
        (Verdict::Deny, Mode::Shadow) => "deny (shadow)",
    }
}

/// The span of one capability call, named `airlock.<capability>.<verb>`
/// after its action, with the run's context as fields.
fn call_span(subject: &Subject, request: &CapabilityRequest) -> tracing::Span {
    macro_rules! span {
        ($name:literal) => {
            tracing::info_span!(
                $name,
                instance = %subject.instance,
                skill = %subject.skill.name,
                digest = %subject.skill.digest,
                agent = %subject.agent.id,
                task_id = %subject.task.id,
                resource = %request.resource,
                verdict = tracing::field::Empty,
                policies = tracing::field::Empty,
                outcome = tracing::field::Empty,
                duration_us = tracing::field::Empty,
            )
        };
    }
    match request.action {
        Action::HttpRequest => span!("airlock.http.request"),
        Action::StorageRead => span!("airlock.storage.read"),
        Action::StorageWrite => span!("airlock.storage.write"),
        Action::StorageDelete => span!("airlock.storage.delete"),
        Action::StorageList => span!("airlock.storage.list"),
        Action::SecretUse => span!("airlock.secret.use"),
        Action::SecretMint => span!("airlock.secret.mint"),
        Action::ToolInvoke => span!("airlock.tool.invoke"),
    }
}

/// An allowed call, in progress. Records itself when finished, or as
/// cancelled if the instance ends first.
pub struct Permit {
    /// `airlock.<capability>.<verb>`: open from the decision to the outcome.
    span: tracing::Span,
    broker: Arc<dyn Broker>,
    ledger: Ledger,
    instance: String,
    skill: String,
    request: CapabilityRequest,
    decision: Decision,
    started: Instant,
    outcome: Option<Outcome>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("request", &self.request)
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl Permit {
    pub fn request(&self) -> &CapabilityRequest {
        &self.request
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Record how the call ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Record the result of acting on the permit and pass it through. A
    /// host guard's refusal is recorded as a denial by `guard:<id>`, and
    /// reaches the guest as a denial naming action, resource and guard.
    pub fn conclude<T>(
        mut self,
        result: Result<T, CallError>,
        access: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T, CallError> {
        let result = match result {
            Err(CallError::Guarded { guard, reason }) => {
                let mut policies = vec![format!("guard:{guard}")];
                // A denial shadow mode let through keeps its policy ids.
                if self.decision.verdict == Verdict::Deny {
                    policies.append(&mut self.decision.policies);
                }
                self.decision = Decision {
                    verdict: Verdict::Deny,
                    policies,
                    reason: Some(reason),
                    mode: Mode::Enforce,
                    by_caller: false,
                };
                self.span.record("verdict", "deny");
                self.span
                    .record("policies", self.decision.policies.join(","));
                let message = self.decision.denial(&self.request);
                self.finish(Outcome::Denied);
                // Plain from here: a caller that passes it on records a
                // failure, not a second denial.
                return Err(CallError::Denied(message));
            }
            other => other,
        };
        let outcome = match &result {
            Ok(value) => Outcome::Done {
                access: access(value),
            },
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        };
        self.finish(outcome);
        result
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let record = CallRecord {
            instance: std::mem::take(&mut self.instance),
            skill: std::mem::take(&mut self.skill),
            action: self.request.action,
            resource: self.request.resource.clone(),
            details: self.request.details.clone(),
            decision: self.decision.clone(),
            outcome: self.outcome.take().unwrap_or(Outcome::Cancelled),
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        self.span.record("outcome", record.outcome.kind());
        self.span.record("duration_us", record.duration_us);
        self.broker.record(&record);
        self.ledger.close(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CapabilityRequest {
        CapabilityRequest {
            action: Action::StorageRead,
            resource: Resource::Object {
                namespace: "team".into(),
                key: "reports/q3".into(),
            },
            details: Details::Storage {
                key: "reports/q3".into(),
            },
        }
    }

    #[test]
    fn denial_names_action_resource_and_policies() {
        let one = Decision::deny(vec!["base/confidential-egress".into()], None);
        assert_eq!(
            one.denial(&request()),
            "`storage.read` on Object `team/reports/q3` denied by policy `base/confidential-egress`"
        );
        let none = Decision::deny(vec![], Some("no policy is loaded".into()));
        assert_eq!(
            none.denial(&request()),
            "`storage.read` on Object `team/reports/q3` denied: no policy permits it (no policy is loaded)"
        );
        let two = Decision::deny(vec!["a".into(), "b".into()], None);
        assert!(
            two.denial(&request())
                .ends_with("denied by policies `a`, `b`")
        );
    }

    #[test]
    fn action_names_match_serialized_names() {
        for action in Action::ALL {
            let json = serde_json::to_string(&action).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", action.as_str()));
        }
    }

    struct Fixed(Decision);

    impl Broker for Fixed {
        fn decide(
            &self,
            _: &Prepared,
            _: &Subject,
            _: &SessionState,
            _: &CapabilityRequest,
        ) -> Decision {
            self.0.clone()
        }
    }

    fn ctx(decision: Decision, max_calls: u64) -> BrokerCtx {
        BrokerCtx::new(
            Arc::new(Fixed(decision)),
            Arc::new(Subject {
                instance: "i-1".into(),
                ..Subject::default()
            }),
            Session::default(),
            Ledger::default(),
            ThreadStack::new(),
            CallBudget::new(max_calls),
        )
    }

    #[tokio::test]
    async fn a_denial_is_a_guest_error_and_is_recorded() {
        let ctx = ctx(Decision::deny(vec!["p1".into()], None), 10);
        match ctx.authorize(request()).await {
            Err(CallError::Denied(message)) => assert_eq!(
                message,
                "`storage.read` on Object `team/reports/q3` denied by policy `p1`"
            ),
            other => panic!("{other:?}"),
        }
        let records = ctx.ledger().records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Denied);
        assert_eq!(records[0].instance, "i-1");
        assert_eq!(ctx.session().snapshot().calls, 1);
    }

    /// Collects span names and the fields recorded on them.
    #[derive(Clone, Default)]
    struct Spans(Arc<std::sync::Mutex<Vec<String>>>);

    struct Fields<'a>(&'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push_str(&format!(" {}={}", field.name(), value));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = attrs.metadata().name().to_string();
            attrs.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = String::from("record");
            values.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    /// Global subscriber that keeps every callsite's interest at "sometimes".
    /// Callsite interest is cached process-wide: a sibling test that reaches the
    /// broker's span first on a thread without a subscriber would otherwise cache
    /// "never" and hide the span from the scoped subscriber below.
    struct KeepCallsitesOpen;

    impl tracing::Subscriber for KeepCallsitesOpen {
        fn register_callsite(
            &self,
            _: &'static tracing::Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn every_call_is_a_span_named_for_its_capability_and_verb() {
        use tracing_subscriber::layer::SubscriberExt;
        static KEEPER: std::sync::Once = std::sync::Once::new();
        KEEPER.call_once(|| {
            tracing::subscriber::set_global_default(KeepCallsitesOpen)
                .expect("no other global subscriber in these tests");
            tracing::callsite::rebuild_interest_cache();
        });
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            // Heals a callsite a sibling was registering before the keeper existed.
            tracing::callsite::rebuild_interest_cache();
            runtime.block_on(async {
                let ctx = ctx(Decision::deny(vec!["p1".into()], None), 10);
                assert!(ctx.authorize(request()).await.is_err());
            })
        });
        let seen = spans.0.lock().unwrap().join("\n");
        assert!(
            seen.starts_with("airlock.storage.read instance=i-1"),
            "{seen}"
        );
        assert!(seen.contains("resource=Object `team/reports/q3`"), "{seen}");
        assert!(seen.contains("verdict=deny"), "{seen}");
        assert!(seen.contains("policies=p1"), "{seen}");
        assert!(seen.contains("outcome=denied"), "{seen}");
    }

    #[tokio::test]
    async fn a_guards_refusal_is_one_denial_keeping_shadowed_policy_ids() {
        let shadowed = Decision {
            mode: Mode::Shadow,
            ..Decision::deny(vec!["p1".into()], None)
        };
        let ctx = ctx(shadowed, 10);
        let permit = ctx.authorize(request()).await.unwrap();
        let result: Result<(), CallError> =
            permit.conclude(Err(CallError::guard("egress-address", "inside")), |()| None);
        match result {
            Err(CallError::Denied(message)) => assert_eq!(
                message,
                "`storage.read` on Object `team/reports/q3` denied by policies \
                 `guard:egress-address`, `p1` (inside)"
            ),
            other => panic!("{other:?}"),
        }
        let records = ctx.ledger().records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Denied);
        assert_eq!(records[0].decision.mode, Mode::Enforce);
        assert_eq!(records[0].decision.policies, ["guard:egress-address", "p1"]);
    }

    #[tokio::test]
    async fn a_run_waits_for_its_calls_still_open_and_not_its_callers() {
        let ctx = ctx(Decision::allow(vec!["p".into()]), 10);
        let open = ctx.authorize(request()).await.unwrap();
        let ledger = ctx.ledger().clone();
        let short = std::time::Duration::from_millis(10);
        assert!(!ledger.settled("i-1", short).await);
        assert!(ledger.settled("another instance", short).await);
        let closing = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(open);
        });
        assert!(
            ledger
                .settled("i-1", std::time::Duration::from_secs(5))
                .await
        );
        assert_eq!(ledger.records().len(), 1);
        closing.await.unwrap();
    }

    #[tokio::test]
    async fn a_permit_records_its_outcome_or_its_cancellation() {
        let ctx = ctx(Decision::allow(vec!["p".into()]), 10);
        let permit = ctx.authorize(request()).await.unwrap();
        let _ = permit.conclude(Ok::<_, CallError>(3u8), |n| Some(format!("{n} things")));
        let abandoned = ctx.authorize(request()).await.unwrap();
        drop(abandoned);
        let records = ctx.ledger().records();
        assert_eq!(
            records[0].outcome,
            Outcome::Done {
                access: Some("3 things".into())
            }
        );
        assert_eq!(records[1].outcome, Outcome::Cancelled);
    }

    #[tokio::test]
    async fn shadow_mode_lets_a_denied_call_proceed_and_says_so() {
        let mut decision = Decision::deny(vec!["p".into()], None);
        decision.mode = Mode::Shadow;
        let ctx = ctx(decision, 10);
        let permit = ctx.authorize(request()).await.unwrap();
        assert_eq!(permit.decision().verdict, Verdict::Deny);
        permit.finish(Outcome::Done { access: None });
        assert_eq!(ctx.ledger().records()[0].decision.verdict, Verdict::Deny);
    }

    #[tokio::test]
    async fn past_the_budget_the_instance_ends_with_the_limit_named() {
        let ctx = ctx(Decision::deny(vec![], None), 2);
        for _ in 0..2 {
            assert!(matches!(
                ctx.authorize(request()).await,
                Err(CallError::Denied(_))
            ));
        }
        match ctx.authorize(request()).await {
            Err(CallError::Trap(e)) => match e.downcast_ref::<Error>() {
                Some(Error::Limit { limit, .. }) => assert_eq!(*limit, Limit::HostCalls),
                None => panic!("{e}"),
            },
            other => panic!("{other:?}"),
        }
        // The call past the budget was never decided.
        assert_eq!(ctx.ledger().records().len(), 2);
    }
}
