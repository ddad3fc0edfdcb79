//! Runs queued for whichever node has capacity.
//!
//! A node that takes a run request publishes it on the work-queue stream
//! [`RUNS_STREAM`] with an inbox for the result, and waits there. Every node
//! serving runs pulls from one durable consumer, as many at a time as it has
//! room for.
//!
//! How a run is completed at most once, and never silently dropped:
//!
//! - Before running, a node claims the run in [`RUN_CLAIMS_BUCKET`] (create:
//!   only one node can). While it runs it renews the claim (compare-and-set
//!   on the revision it holds) and tells the stream it is still working, so
//!   the message is not redelivered.
//! - A run is complete when its claim becomes `done`, with the report, by
//!   the same compare-and-set. Only then is the report sent and the message
//!   acknowledged. A node that lost its claim (it looked dead and another
//!   took over) cannot complete: its compare-and-set fails, its instance is
//!   stopped and its report dropped.
//! - A node that dies mid-run stops renewing. The stream redelivers the
//!   message after the acknowledgement wait; the next node finds a claim
//!   that has not been renewed for half of it, takes it over (compare-and-set
//!   again) and runs the request from the start. A redelivered run whose
//!   claim is `done` is answered from the claim without running.
//! - A node with no free instance slot (the run's status is `busy`: nothing
//!   ran) frees its claim and puts the request back after a pause that
//!   grows with each delivery ([`BUSY_PAUSE`]), for whichever node has room
//!   by then; for as long, it asks for no more requests. The last delivery
//!   answers `busy` instead.
//! - After [`MAX_DELIVER`] deliveries the stream gives up; the waiting node
//!   answers that the run was not completed. It never answers success
//!   without a `done` claim.
//!
//! The skill itself may therefore start twice (a node died while running
//! it), but one report is the run's result, and only one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Cluster, failed};
use crate::Error;
use crate::admission::now_ms;
use crate::digest::SkillDigest;
use crate::limits::Limits;
use crate::node::Node;

/// The work queue of run requests.
pub const RUNS_STREAM: &str = "AIRLOCK_RUNS";
/// Run requests are published here.
pub const RUNS_SUBJECT: &str = "airlock.runs";
/// The durable consumer every node pulls from.
pub const RUNNERS: &str = "airlock-runners";
/// Who has each run, and the report once it is done (kept a day).
pub const RUN_CLAIMS_BUCKET: &str = "airlock-run-claims";
/// Deliveries of one request before the stream gives up on it.
pub const MAX_DELIVER: i64 = 5;
/// How long a request found busy waits before its next delivery, times the
/// deliveries so far.
pub const BUSY_PAUSE: Duration = Duration::from_millis(250);

/// Bytes kept free in a message for its headers and framing.
const HEADER_ROOM: usize = 4096;

/// A run request on the queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedRun {
    /// Unique per request: the claim's key.
    pub id: String,
    pub digest: SkillDigest,
    pub input: String,
    pub task: airlock_host_apis::Task,
    pub limits: Limits,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Claim {
    Running {
        node: String,
        renewed_ms: u64,
    },
    Done {
        node: String,
        report: serde_json::Value,
    },
    /// Ran, but its report cannot be carried: final, like `Done`.
    Failed {
        node: String,
        reason: String,
    },
}

/// What the node that queued a run gets back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunOutcome {
    /// The run's report (as `POST /v1/runs` returns it), and the node that
    /// ran it.
    Done {
        node: String,
        report: serde_json::Value,
    },
    /// The run could not be started or completed: why.
    Failed { reason: String },
}

impl Cluster {
    pub(super) async fn run_queue(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<kv::Store, Error> {
        js.get_or_create_stream(stream::Config {
            name: RUNS_STREAM.into(),
            description: Some("Airlock run requests, for any node with capacity".into()),
            subjects: vec![RUNS_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&format!("creating the stream {RUNS_STREAM}"), e))?;
        super::bucket(
            js,
            kv::Config {
                bucket: RUN_CLAIMS_BUCKET.into(),
                description: "Airlock queued runs: who runs each, and its report".into(),
                history: 1,
                max_age: Duration::from_secs(24 * 3600),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
    }

    /// Queue `run` for any node and wait up to `wait` for its outcome.
    pub async fn queue_run(&self, run: &QueuedRun, wait: Duration) -> Result<RunOutcome, Error> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed("waiting for a queued run", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", run.id.as_str());
        headers.insert("Airlock-Reply", inbox.as_str());
        let body = serde_json::to_vec(run)
            .map_err(|e| Error::Cluster(format!("encoding a queued run: {e}")))?;
        // NATS closes the connection on a message over its limit, and
        // JetStream's publish does not check: checked here.
        let limit = self.max_message();
        if body.len() > limit {
            return Err(Error::TooLarge(format!(
                "the queued run is {} bytes (input and task), over the {limit} bytes the cluster's \
                 messages carry (NATS max_payload, less room for headers)",
                body.len()
            )));
        }
        self.js
            .publish_with_headers(RUNS_SUBJECT, headers, body.into())
            .await
            .map_err(|e| failed("queueing a run", e))?
            .await
            .map_err(|e| failed("queueing a run (acknowledgement)", e))?;
        match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(reply)) => serde_json::from_slice(&reply.payload)
                .map_err(|e| Error::Cluster(format!("a queued run's answer does not parse: {e}"))),
            Ok(None) => Err(Error::Cluster("the connection to NATS closed".into())),
            // The answer may have been lost: the claim has the last word.
            Err(_) => match self.claim(&run.id).await? {
                Some((Claim::Done { node, report }, _)) => Ok(RunOutcome::Done { node, report }),
                Some((Claim::Failed { reason, .. }, _)) => Ok(RunOutcome::Failed { reason }),
                _ => Ok(RunOutcome::Failed {
                    reason: format!(
                        "the run was not completed within {}",
                        humantime::format_duration(wait)
                    ),
                }),
            },
        }
    }

    /// Bytes a message may carry: the server's `max_payload` less room for
    /// headers.
    pub fn max_message(&self) -> usize {
        self.client
            .server_info()
            .max_payload
            .saturating_sub(HEADER_ROOM)
    }

    async fn claim(&self, id: &str) -> Result<Option<(Claim, u64)>, Error> {
        let entry = self
            .claims
            .entry(id)
            .await
            .map_err(|e| failed(&format!("reading the claim of run {id}"), e))?;
        Ok(entry.and_then(|entry| {
            let claim = serde_json::from_slice(&entry.value).ok()?;
            Some((claim, entry.revision))
        }))
    }

    /// Serve queued runs on `node` (named `name`), at most `capacity` at a
    /// time, until the task is aborted; aborting it abandons the runs in
    /// hand, as a node that dies does.
    pub fn serve_runs(
        &self,
        node: Arc<Node>,
        name: String,
        capacity: usize,
        ack_wait: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cluster
                    .serve_runs_once(&node, &name, capacity, ack_wait)
                    .await
                {
                    tracing::warn!(node = %name, error = %e, "serving queued runs failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn serve_runs_once(
        &self,
        node: &Arc<Node>,
        name: &str,
        capacity: usize,
        ack_wait: Duration,
    ) -> Result<(), Error> {
        let stream = self
            .js
            .get_stream(RUNS_STREAM)
            .await
            .map_err(|e| failed(&format!("opening the stream {RUNS_STREAM}"), e))?;
        let runners = stream
            .get_or_create_consumer(
                RUNNERS,
                consumer::pull::Config {
                    durable_name: Some(RUNNERS.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: MAX_DELIVER,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(&format!("opening the consumer {RUNNERS}"), e))?;
        let room = Arc::new(tokio::sync::Semaphore::new(capacity.max(1)));
        // Unix ms until which this node, found full, asks for nothing.
        let full_until = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Owned here: aborting the server aborts every run in hand.
        let mut running = tokio::task::JoinSet::new();
        loop {
            // Wait for room, then ask for as many requests as there is room.
            let first = room
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Cluster("the run slots closed".into()))?;
            let mut permits = vec![first];
            while let Ok(permit) = room.clone().try_acquire_owned() {
                permits.push(permit);
            }
            while running.try_join_next().is_some() {}
            let full = full_until
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(now_ms());
            if full > 0 {
                tokio::time::sleep(Duration::from_millis(full)).await;
            }
            let mut batch = runners
                .fetch()
                .max_messages(permits.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| failed("taking a queued run", e))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| failed("taking a queued run", e))?;
                let Some(permit) = permits.pop() else {
                    break;
                };
                let cluster = self.clone();
                let node = node.clone();
                let name = name.to_string();
                let full_until = full_until.clone();
                running.spawn(async move {
                    cluster
                        .take(&node, &name, message, ack_wait, &full_until)
                        .await;
                    drop(permit);
                });
                if permits.is_empty() {
                    break;
                }
            }
        }
    }

    /// Claim, run, complete and answer one queued run.
    async fn take(
        &self,
        node: &Node,
        name: &str,
        message: jetstream::Message,
        ack_wait: Duration,
        full_until: &std::sync::atomic::AtomicU64,
    ) {
        let reply = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Airlock-Reply"))
            .map(|v| v.to_string());
        let answer = |outcome: RunOutcome| {
            let client = self.client.clone();
            let reply = reply.clone();
            async move {
                if let (Some(reply), Ok(body)) = (reply, serde_json::to_vec(&outcome)) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
        };
        let run: QueuedRun = match serde_json::from_slice(&message.payload) {
            Ok(run) => run,
            Err(e) => {
                // Nothing can ever run it: answer and remove it.
                answer(RunOutcome::Failed {
                    reason: format!("the queued request does not parse: {e}"),
                })
                .await;
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let Some(mut revision) = self.take_claim(&run.id, name, ack_wait).await else {
            // Done already (answer again), or live elsewhere (leave it).
            let outcome = match self.claim(&run.id).await {
                Ok(Some((Claim::Done { node, report }, _))) => RunOutcome::Done { node, report },
                Ok(Some((Claim::Failed { reason, .. }, _))) => RunOutcome::Failed { reason },
                _ => return,
            };
            answer(outcome).await;
            let _ = message.ack().await;
            return;
        };
        let stop = crate::run::Stopper::default();
        // The queued limits were the queueing node's; this node's own bound
        // them too.
        let limits = run.limits.within(&node.config().limits);
        let request = crate::run::RunRequest {
            input: run.input.clone(),
            subject: airlock_host_apis::Subject {
                instance: String::new(),
                skill: Default::default(),
                agent: Default::default(),
                task: run.task.clone(),
                delegation: Default::default(),
            },
            limits,
            session: None,
            ledger: None,
            stop: Some(stop.clone()),
        };
        let running = node.run_admitted(run.digest, request);
        tokio::pin!(running);
        let mut renew = tokio::time::interval(ack_wait / 4);
        renew.tick().await;
        let result = loop {
            tokio::select! {
                result = &mut running => break result,
                _ = renew.tick() => {
                    let claim = Claim::Running { node: name.to_string(), renewed_ms: now_ms() };
                    match self.set_claim(&run.id, &claim, revision).await {
                        Some(next) => revision = next,
                        None => {
                            // Taken over: this run cannot complete.
                            stop.stop(format!("run {} was taken over by another node", run.id));
                            let _ = (&mut running).await;
                            return;
                        }
                    }
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        };
        if matches!(&result, Ok(report) if report.status == crate::run::RunStatus::Busy) {
            let delivered = message.info().map_or(MAX_DELIVER, |info| info.delivered);
            if delivered < MAX_DELIVER {
                // Nothing ran. A claim renewed at 0 is stale at once: any
                // node may take the request when it comes back.
                let free = Claim::Running {
                    node: name.to_string(),
                    renewed_ms: 0,
                };
                let pause = BUSY_PAUSE * u32::try_from(delivered).unwrap_or(1);
                let pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
                full_until.fetch_max(
                    now_ms().saturating_add(pause_ms),
                    std::sync::atomic::Ordering::Relaxed,
                );
                if self.set_claim(&run.id, &free, revision).await.is_some() {
                    let _ = message.ack_with(AckKind::Nak(Some(pause))).await;
                }
                return;
            }
        }
        let outcome = match result {
            Ok(report) => match serde_json::to_value(&report) {
                Ok(report) => RunOutcome::Done {
                    node: name.to_string(),
                    report,
                },
                Err(e) => RunOutcome::Failed {
                    reason: format!("the report does not encode: {e}"),
                },
            },
            // Refused before running (not approved, revoked, unreachable):
            // an answer, not a completion.
            Err(e) => RunOutcome::Failed {
                reason: e.to_string(),
            },
        };
        let outcome = match outcome {
            RunOutcome::Done { node, report } => {
                let (done, outcome) = self.carried(node, report, &run.id);
                if self.set_claim(&run.id, &done, revision).await.is_none() {
                    return;
                }
                outcome
            }
            failed => failed,
        };
        answer(outcome).await;
        let _ = message.ack().await;
    }

    /// The claim that completes run `id` with `report`, and the answer: a
    /// report too large for a message becomes a final failure that fits, so
    /// that the run ends rather than running again on every delivery.
    fn carried(&self, node: String, report: serde_json::Value, id: &str) -> (Claim, RunOutcome) {
        // The claim's framing around the report is well under the header room.
        let size = serde_json::to_vec(&report).map_or(usize::MAX, |v| v.len() + node.len());
        let limit = self.max_message();
        if size <= limit {
            let outcome = RunOutcome::Done {
                node: node.clone(),
                report: report.clone(),
            };
            return (Claim::Done { node, report }, outcome);
        }
        let reason = format!(
            "run {id} ran as instance {} with status {}, but its report is {size} bytes, over the \
             {limit} bytes the cluster's messages carry (NATS max_payload); the audit log has its \
             record. Lower the run's output limit or raise max_payload",
            crate::audit::field(&report, &["instance"]),
            crate::audit::field(&report, &["status"]),
        );
        let outcome = RunOutcome::Failed {
            reason: reason.clone(),
        };
        (Claim::Failed { node, reason }, outcome)
    }

    /// Claim `id` for `name`: a new claim, or one not renewed for half the
    /// acknowledgement wait. The revision held, or `None`.
    async fn take_claim(&self, id: &str, name: &str, ack_wait: Duration) -> Option<u64> {
        let claim = Claim::Running {
            node: name.to_string(),
            renewed_ms: now_ms(),
        };
        let body = serde_json::to_vec(&claim).ok()?;
        match self.claims.create(id, body.into()).await {
            Ok(revision) => Some(revision),
            Err(_) => match self.claim(id).await.ok()?? {
                (Claim::Running { renewed_ms, .. }, revision)
                    if now_ms().saturating_sub(renewed_ms)
                        >= u64::try_from((ack_wait / 2).as_millis()).unwrap_or(u64::MAX) =>
                {
                    self.set_claim(id, &claim, revision).await
                }
                _ => None,
            },
        }
    }

    async fn set_claim(&self, id: &str, claim: &Claim, revision: u64) -> Option<u64> {
        let body = serde_json::to_vec(claim).ok()?;
        self.claims.update(id, body.into(), revision).await.ok()
    }
}
