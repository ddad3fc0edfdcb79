//! Running a skill once: a fresh instance under its limits, called once, torn
//! down; what happened comes back as a [`RunReport`].

use std::sync::Arc;
use std::time::Instant;

use airlock_host_apis::http::{Egress, HttpCtx, HttpRules, NoEgress, StandardHttp};
use airlock_host_apis::log::{LogBuffer, LogCtx, LogLine, Source};
use airlock_host_apis::secrets::{Credentials, NoCredentials, SecretsCtx, redact_text};
use airlock_host_apis::storage::{NoStorage, Storage, StorageCtx};
use airlock_host_apis::tools::{NoTools, Tools, ToolsCtx};
use airlock_host_apis::{
    Broker, BrokerCtx, CallBudget, CallRecord, DenyAll, Error as HostError, Ledger, Limit,
    OnThreadStack, Session, SessionState, SkillCtx, Subject, ThreadStack,
};
use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::engine::{CompileSource, Engine, LoadedSkill, micros};
use crate::instance::InstanceState;
use crate::limits::{InstanceLimiter, Limits};

/// What a skill's capability calls reach. Everything defaults to nothing.
#[derive(Clone)]
pub struct Services {
    pub broker: Arc<dyn Broker>,
    pub egress: Arc<dyn Egress>,
    pub storage: Arc<dyn Storage>,
    /// The storage namespace a skill's keys live in.
    pub namespace: Arc<dyn Fn(&Subject) -> String + Send + Sync>,
    pub credentials: Arc<dyn Credentials>,
    pub tools: Arc<dyn Tools>,
    /// What outbound requests may carry.
    pub http_rules: Arc<HttpRules>,
    /// Where every run and call is recorded, durably, before the run's
    /// report is returned.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Default for Services {
    fn default() -> Self {
        Services {
            broker: Arc::new(DenyAll),
            egress: Arc::new(NoEgress),
            storage: Arc::new(NoStorage),
            namespace: Arc::new(|subject: &Subject| subject.skill.name.clone()),
            credentials: Arc::new(NoCredentials),
            tools: Arc::new(NoTools),
            http_rules: Arc::new(HttpRules::default()),
            audit: None,
        }
    }
}

/// One run of a skill.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub input: String,
    /// Who is running and why. The instance id is assigned by the run.
    pub subject: Subject,
    pub limits: Limits,
    /// The run's session, when the run continues another (a tool call).
    pub session: Option<Session>,
    /// Where call records go, when the run is part of another.
    pub ledger: Option<Ledger>,
    /// Stops the instance from outside (its skill was revoked or
    /// quarantined).
    pub stop: Option<Stopper>,
}

/// Stops a running instance from outside, with a reason. Stopping twice
/// keeps the first reason.
#[derive(Clone, Debug)]
pub struct Stopper(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Stopper {
    fn default() -> Self {
        Stopper(Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl Stopper {
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// The reason, once stopped.
    pub async fn stopped(&self) -> String {
        let mut watch = self.0.subscribe();
        let reason = match watch.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The sender lives in `self`: never closed while awaited.
            None => std::future::pending().await,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The skill returned output.
    Ok,
    /// The skill returned its own error.
    SkillError,
    /// The instance hit a limit.
    Limit,
    /// The instance trapped.
    Trap,
    /// The instance was stopped from outside: its skill was revoked or
    /// quarantined while it ran.
    Stopped,
    /// The run could not be recorded in the audit log: it was refused
    /// before starting, or its result is withheld.
    AuditFailed,
    /// The run was dropped before it finished: its caller went away or the
    /// server shut down. Only ever seen in the audit log.
    Cancelled,
    /// No instance slot was free: the node was at capacity, and nothing of
    /// the skill ran. Worth retrying.
    Busy,
}

/// Why a run did not produce output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunError {
    /// The limit that was hit, when `status` is `limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub limit: Option<Limit>,
    pub message: String,
}

/// What a run cost.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub duration_us: u64,
    pub peak_memory_bytes: u64,
    pub host_calls: u64,
    /// Where the compiled code came from: `{"source": "memory"}`, `{"source": "cache", "load_us": N}` or `{"source": "compiled", "compile_us": N}`.
    #[schema(value_type = Object)]
    pub compile: CompileSource,
}

/// Everything about one run.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RunReport {
    pub instance: String,
    pub skill: String,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    pub usage: Usage,
    /// Every capability call: action, resource, decision (verdict, policies,
    /// reason) and outcome.
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<CallRecord>,
    /// What the run touched: labels read, hosts contacted, bytes sent.
    #[schema(value_type = Object)]
    pub session: SessionState,
    #[schema(value_type = Vec<Object>)]
    pub logs: Vec<LogLine>,
    pub logs_dropped: u64,
}

/// How long a run waits for its credentials to be revoked at their issuers.
const REVOCATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a run's end waits for calls still ending on tasks of their own.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Deadlines beyond this (a century) are as good as none, and clocks plus
/// them cannot overflow.
const LONGEST: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// The instance's hold on its credentials, released however the run ends.
struct Held {
    credentials: Arc<dyn Credentials>,
    instance: Option<String>,
    ledger: Ledger,
    subject: Arc<Subject>,
    /// The run's end cleaned the ledger already (`own_records`).
    cleaned: bool,
}

impl Held {
    fn end(&mut self) -> Option<airlock_host_apis::secrets::Revocation> {
        let instance = self.instance.take()?;
        // The records are cleaned where its callers will read them, however
        // it ends, while its credentials are still known: its own, and its
        // tools' (it may have passed a token on in a tool's input).
        if !self.cleaned {
            self.ledger
                .clean(|_, text| redact_chain(&*self.credentials, &self.subject, &instance, text));
        }
        self.credentials.ended(&instance)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(revocation) = self.end()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(revocation);
        }
    }
}

/// What a cancelled run's end record is made of.
struct Cancelled {
    audit: Arc<crate::audit::AuditLog>,
    subject: Arc<Subject>,
    ledger: Ledger,
    session: Session,
    credentials: Arc<dyn Credentials>,
    started: Instant,
    source: CompileSource,
}

/// `text` with the live credential values of `instance` and of every
/// instance that called it replaced: a tool's strings may carry what its
/// callers hold.
fn redact_chain(
    credentials: &dyn Credentials,
    subject: &Subject,
    instance: &str,
    text: String,
) -> String {
    let mut text = redact_text(credentials, instance, text);
    for caller in &subject.delegation.callers {
        text = redact_text(credentials, &caller.instance, text);
    }
    text
}

/// The run's records: the calls of this instance and of the tools it
/// called, not those of its callers, who share the ledger. Cleaned in place
/// first, of the chain's credentials and of each maker's own: a tool still
/// ending (its caller stopped) may not have cleaned its records yet, and
/// cleaning under the ledger's lock, not a copy, leaves it no moment to end
/// its credentials in between.
fn own_records(
    ledger: &Ledger,
    subject: &Subject,
    credentials: &dyn Credentials,
) -> Vec<airlock_host_apis::broker::CallRecord> {
    ledger.clean(|maker, text| {
        let text = redact_chain(credentials, subject, &subject.instance, text);
        if maker == subject.instance {
            text
        } else {
            redact_text(credentials, maker, text)
        }
    });
    let mut records = ledger.records();
    records.retain(|r| {
        !subject
            .delegation
            .callers
            .iter()
            .any(|c| c.instance == r.instance)
    });
    records
}

/// Armed until the run reaches its end; dropped armed, it records the run
/// as cancelled.
struct Unfinished(Option<Cancelled>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(c) = self.0.take() else { return };
        let instance = &c.subject.instance;
        let decisions = own_records(&c.ledger, &c.subject, &*c.credentials);
        let report = RunReport {
            instance: instance.clone(),
            skill: c.subject.skill.name.clone(),
            status: RunStatus::Cancelled,
            output: None,
            error: Some(RunError {
                limit: None,
                message: "the run was cancelled before it finished: its caller went away or the server shut down".into(),
            }),
            usage: Usage {
                duration_us: micros(c.started.elapsed()),
                peak_memory_bytes: 0,
                host_calls: u64::try_from(decisions.len()).unwrap_or(u64::MAX),
                compile: c.source,
            },
            decisions,
            session: c.session.snapshot(),
            logs: Vec::new(),
            logs_dropped: 0,
        };
        let events = crate::audit::end_events(
            &c.subject,
            &report,
            c.audit.settings().max_identical_denials,
        );
        // Not waited for: the writer makes it durable with its next batch.
        let _ = c.audit.enqueue_run_end(&events);
    }
}

/// The report of a run that did not start because it could not be recorded.
fn refused(instance: String, subject: &Subject, skill: &LoadedSkill, why: String) -> RunReport {
    RunReport {
        instance,
        skill: subject.skill.name.clone(),
        status: RunStatus::AuditFailed,
        output: None,
        error: Some(RunError {
            limit: None,
            message: format!("the run was refused: {why}"),
        }),
        usage: Usage {
            duration_us: 0,
            peak_memory_bytes: 0,
            host_calls: 0,
            compile: skill.source,
        },
        decisions: Vec::new(),
        session: SessionState::default(),
        logs: Vec::new(),
        logs_dropped: 0,
    }
}

/// A fresh instance id: 128 random bits, hex.
pub fn new_instance_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn limit_error(limit: Limit, detail: impl Into<String>) -> RunError {
    RunError {
        limit: Some(limit),
        message: format!("limit `{limit}` reached: {}", detail.into()),
    }
}

/// Name what ended an instance.
fn classify(error: &wasmtime::Error, limits: &Limits) -> (RunStatus, RunError) {
    // The pool's, not the skill's: every slot of some kind is taken.
    if let Some(full) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return (
            RunStatus::Busy,
            RunError {
                limit: None,
                message: format!(
                    "the node is at capacity ({full}; the engine's `max_instances`): nothing ran, retry shortly"
                ),
            },
        );
    }
    if let Some(HostError::Limit { limit, detail }) = error.downcast_ref::<HostError>() {
        return (RunStatus::Limit, limit_error(*limit, detail.clone()));
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        match trap {
            Trap::Interrupt => {
                return (
                    RunStatus::Limit,
                    limit_error(
                        Limit::Deadline,
                        format!(
                            "ran longer than {}",
                            humantime::format_duration(limits.deadline)
                        ),
                    ),
                );
            }
            Trap::StackOverflow => {
                return (
                    RunStatus::Limit,
                    limit_error(Limit::Stack, "the wasm call stack overflowed"),
                );
            }
            _ => {}
        }
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        error.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return (
            RunStatus::Limit,
            limit_error(
                Limit::ResourceTable,
                format!("more than {} handles alive at once", limits.resource_table),
            ),
        );
    }
    let text = format!("{error:#}");
    // The error type is private to wasmtime; its message is what we have.
    if text.contains("fuel allocated for hostcalls") {
        return (
            RunStatus::Limit,
            limit_error(
                Limit::HostcallFuel,
                format!(
                    "a host call passed more than {} bytes from the guest",
                    limits.hostcall_fuel
                ),
            ),
        );
    }
    if text.contains("count too high") {
        return (
            RunStatus::Limit,
            limit_error(
                Limit::Instances,
                format!(
                    "the component needs more than {} instances",
                    limits.instances
                ),
            ),
        );
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => format!("the skill trapped: {trap}"),
        None => format!("the skill trapped: {}", error.root_cause()),
    };
    (
        RunStatus::Trap,
        RunError {
            limit: None,
            message,
        },
    )
}

impl Engine {
    /// Run `skill` once. Never fails: every way a run can end is in the report.
    pub async fn run(
        &self,
        skill: &LoadedSkill,
        request: RunRequest,
        services: &Services,
    ) -> RunReport {
        let (mut report, ticket) = self.run_to_end(skill, request, services).await;
        // Everything else the run held is gone before it waits for its
        // records: a run woken on another thread frees its memory there, at
        // a cost to every allocation after.
        if let (Some(audit), Some(ticket)) = (&services.audit, ticket) {
            // On disk before anyone sees the result; a result that cannot be
            // recorded is withheld.
            let written = audit.durable(ticket).await.map_err(|e| e.to_string());
            if let Err(why) = written {
                tracing::error!(error = %why, instance = %report.instance, "the run's audit records were not written");
                report.status = RunStatus::AuditFailed;
                report.output = None;
                report.error = Some(RunError {
                    limit: None,
                    message: format!("the run's result is withheld: {why}"),
                });
            }
        }
        report
    }

    /// The run up to its report, and the ticket of its last audit records.
    async fn run_to_end(
        &self,
        skill: &LoadedSkill,
        request: RunRequest,
        services: &Services,
    ) -> (RunReport, Option<crate::audit::Ticket>) {
        let started = Instant::now();
        let limits = request.limits;
        let instance = new_instance_id();
        let mut subject = request.subject;
        subject.instance = instance.clone();
        subject.skill.digest = skill.digest().to_hex();
        let subject = Arc::new(subject);
        if let Some(audit) = &services.audit {
            // Rather not run at all than run unrecorded.
            if let Err(e) = audit.check_space() {
                return (refused(instance, &subject, skill, e.to_string()), None);
            }
        }
        let session = request.session.unwrap_or_default();
        let session_view = session.clone();
        let ledger = request.ledger.unwrap_or_default();
        let stack = ThreadStack::new();
        let logs = LogBuffer::new(&instance, usize::try_from(limits.log).unwrap_or(usize::MAX));
        let budget = CallBudget::new(limits.host_calls);
        let broker = BrokerCtx::new(
            services.broker.clone(),
            subject.clone(),
            session,
            ledger.clone(),
            stack.clone(),
            budget.clone(),
        );
        let namespace = (services.namespace)(&subject);
        // Whatever way the run ends (even dropped mid-call), the instance's
        // credentials end with it.
        services.credentials.started(
            &subject,
            std::time::SystemTime::now() + limits.deadline.min(LONGEST),
        );
        let mut held = Held {
            credentials: services.credentials.clone(),
            instance: Some(instance.clone()),
            ledger: ledger.clone(),
            subject: subject.clone(),
            cleaned: false,
        };
        // Dropped before the end (the caller went away): the log still gets
        // the run's end and the calls it made.
        let mut unfinished = Unfinished(services.audit.clone().map(|audit| Cancelled {
            audit,
            subject: subject.clone(),
            ledger: ledger.clone(),
            session: session_view.clone(),
            credentials: services.credentials.clone(),
            started,
            source: skill.source,
        }));
        if let Some(audit) = &services.audit {
            // Written by the audit writer with its next batch (within the
            // commit interval), without holding the run up: a host that
            // dies mid-run still shows what started. Queued only once
            // `unfinished` is armed, so every start queued gets its end.
            let _ = audit.enqueue_run_start(&crate::audit::start_event(&subject));
        }
        let http = Arc::new(HttpCtx::new(
            services.egress.clone(),
            services.credentials.clone(),
            services.http_rules.clone(),
        ));
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resource_table as usize);
        let state = InstanceState {
            // Sockets are linked for interpreters that import them; none
            // can be made, bound or connected, and no name resolves.
            wasi: WasiCtxBuilder::new()
                .stdout(logs.pipe(Source::Stdout))
                .stderr(logs.pipe(Source::Stderr))
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .socket_addr_check(|_, _| Box::pin(async { false }))
                .build(),
            http: WasiHttpCtx::new(),
            standard_http: StandardHttp::new(broker.clone(), http.clone()),
            table,
            skill: SkillCtx {
                broker,
                http,
                storage: StorageCtx::new(namespace, services.storage.clone()),
                secrets: SecretsCtx::new(services.credentials.clone()),
                tools: ToolsCtx::new(services.tools.clone()),
                log: LogCtx::new(logs.clone()),
            },
            limiter: InstanceLimiter::new(&limits),
        };
        let mut store = Store::new(self.wasmtime(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(usize::try_from(limits.hostcall_fuel).unwrap_or(usize::MAX));
        let allowed = limits.deadline;
        let deadline = started + allowed.min(LONGEST);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(HostError::Limit {
                    limit: Limit::Deadline,
                    detail: format!("ran longer than {}", humantime::format_duration(allowed)),
                }
                .into())
            } else {
                // Yield every tick so other instances on this thread progress.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let input = request.input;
        let call = async {
            let bindings = skill.pre.instantiate_async(&mut store).await?;
            bindings.call_run(&mut store, &input).await
        };
        let stop = request.stop;
        let stopped = async move {
            match stop {
                Some(stop) => stop.stopped().await,
                None => std::future::pending().await,
            }
        };
        let span = tracing::info_span!(
            "airlock.skill.run",
            instance = %subject.instance,
            skill = %subject.skill.name,
            digest = %subject.skill.digest,
            agent = %subject.agent.id,
            task_id = %subject.task.id,
            dev = !subject.skill.approved,
            status = tracing::field::Empty,
        );
        let call = tracing::Instrument::instrument(call, span.clone());
        let outcome = tokio::select! {
            biased;
            reason = stopped => Err(reason),
            outcome = tokio::time::timeout(limits.deadline, OnThreadStack::new(stack, call)) => Ok(outcome),
        };

        let (status, output, error) = match outcome {
            Err(reason) => (
                RunStatus::Stopped,
                None,
                Some(RunError {
                    limit: None,
                    message: format!("the instance was stopped: {reason}"),
                }),
            ),
            Ok(Err(_elapsed)) => (
                RunStatus::Limit,
                None,
                Some(limit_error(
                    Limit::Deadline,
                    format!(
                        "ran longer than {}",
                        humantime::format_duration(limits.deadline)
                    ),
                )),
            ),
            Ok(Ok(Err(e))) => {
                let (status, error) = classify(&e, &limits);
                (status, None, Some(error))
            }
            Ok(Ok(Ok(Err(message)))) => (
                RunStatus::SkillError,
                None,
                Some(RunError {
                    limit: None,
                    message,
                }),
            ),
            Ok(Ok(Ok(Ok(output)))) if output.len() as u64 > limits.output => (
                RunStatus::Limit,
                None,
                Some(limit_error(
                    Limit::Output,
                    format!(
                        "the skill returned {} bytes, over the limit of {}",
                        output.len(),
                        limits.output
                    ),
                )),
            ),
            Ok(Ok(Ok(Ok(output)))) => (RunStatus::Ok, Some(output), None),
        };
        span.record("status", tracing::field::debug(status));
        let peak_memory_bytes = store.data().limiter.peak_memory();
        // Dropping the store cancels the standard HTTP requests still in
        // flight, each on a task of its own; their records come as those
        // tasks end, and the run's records wait for them.
        drop(store);
        if !ledger.settled(&instance, SETTLE_WAIT).await {
            tracing::warn!(instance = %instance, "calls still open after the instance ended; their records are not in its end");
        }
        let (mut logs, logs_dropped) = logs.drain();
        // Nothing the skill shows may carry a live credential value.
        let credentials = &*services.credentials;
        let clean = |text: String| redact_chain(credentials, &subject, &instance, text);
        let output = output.map(clean);
        let error = error.map(|mut e| {
            e.message = clean(e.message);
            e
        });
        for line in &mut logs {
            line.message = clean(std::mem::take(&mut line.message));
        }
        // Cleaned where its callers will read them, while its credentials
        // are still known; not again when they end.
        let decisions = own_records(&ledger, &subject, credentials);
        held.cleaned = true;
        if let Some(revocation) = held.end()
            && tokio::time::timeout(REVOCATION_WAIT, revocation)
                .await
                .is_err()
        {
            tracing::warn!(instance = %instance, "revoking credentials at their issuers took too long");
        }
        let report = RunReport {
            instance,
            skill: subject.skill.name.clone(),
            status,
            output,
            error,
            usage: Usage {
                duration_us: micros(started.elapsed()),
                peak_memory_bytes,
                host_calls: budget.made(),
                compile: skill.source,
            },
            decisions,
            session: session_view.snapshot(),
            logs,
            logs_dropped,
        };
        let ticket = services.audit.as_ref().map(|audit| {
            let events =
                crate::audit::end_events(&subject, &report, audit.settings().max_identical_denials);
            audit.enqueue_run_end(&events)
        });
        // Queued: dropping the run from here on loses no record.
        unfinished.0 = None;
        (report, ticket)
    }
}
