//! Admission on a node: admit, review, run by digest, stop running
//! instances of a skill that is held, and quarantine a skill that keeps
//! being denied.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_host_apis::{Mode, SkillIdentity, Verdict};
use serde_json::json;

use super::registry::Registry;
use super::{Changed, SkillRecord, State, Submission, check_signature};
use crate::Error;
use crate::digest::SkillDigest;
use crate::node::Node;
use crate::run::{RunReport, RunRequest, Stopper};

/// The instances running on this node, by skill, and recent denials.
#[derive(Debug, Default)]
pub struct Running {
    next: AtomicU64,
    instances: Mutex<HashMap<SkillDigest, HashMap<u64, Stopper>>>,
    denials: Mutex<HashMap<SkillDigest, VecDeque<Instant>>>,
}

impl Running {
    fn register(self: &Arc<Self>, digest: SkillDigest, stop: Stopper) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest)
            .or_default()
            .insert(id, stop);
        Registration {
            running: self.clone(),
            digest,
            id,
        }
    }

    /// Stop every running instance of `digest`; returns how many.
    pub fn stop(&self, digest: &SkillDigest, reason: &str) -> usize {
        let instances = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stoppers = instances
            .get(digest)
            .map(|m| m.values())
            .into_iter()
            .flatten();
        let mut count = 0;
        for stop in stoppers {
            stop.stop(reason);
            count += 1;
        }
        count
    }

    /// Count `denied` calls of `digest` now; true when the last `window`
    /// holds at least `threshold` of them.
    fn deny(&self, digest: SkillDigest, denied: usize, threshold: u32, window: Duration) -> bool {
        if threshold == 0 || denied == 0 {
            return false;
        }
        let now = Instant::now();
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = denials.entry(digest).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            recent.pop_front();
        }
        recent.extend(std::iter::repeat_n(now, denied));
        let cap = threshold as usize;
        while recent.len() > cap {
            recent.pop_front();
        }
        if recent.len() >= cap {
            recent.clear();
            return true;
        }
        false
    }
}

struct Registration {
    running: Arc<Running>,
    digest: SkillDigest,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut instances = self
            .running
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(map) = instances.get_mut(&self.digest) {
            map.remove(&self.id);
            if map.is_empty() {
                instances.remove(&self.digest);
            }
        }
    }
}

/// An instance's registration and its watcher, ended together when dropped.
pub(crate) struct Held {
    _registered: Registration,
    _watching: Abort,
}

/// Aborts a task when dropped.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| Error::Engine(format!("a skill store task failed: {e}")))?
}

/// The denials among `records` that count toward automatic quarantine: the
/// enforced ones.
pub(crate) fn denials<'a>(
    records: impl IntoIterator<Item = &'a airlock_host_apis::broker::CallRecord>,
) -> usize {
    records
        .into_iter()
        .filter(|r| r.decision.verdict == Verdict::Deny && r.decision.mode == Mode::Enforce)
        .count()
}

impl Node {
    /// Where admitted skills live, or why there is nowhere.
    pub fn skills(&self) -> Result<&Arc<dyn Registry>, Error> {
        self.store.as_ref().ok_or_else(|| {
            Error::Admission("admitted skills need a data directory (--data-dir)".into())
        })
    }

    /// Record lifecycle events in the audit log, durably.
    async fn record(&self, events: Vec<serde_json::Value>) -> Result<(), Error> {
        let Some(audit) = self.services().audit.clone() else {
            return Ok(());
        };
        let ticket = audit.enqueue(&events);
        audit.durable(ticket).await
    }

    /// Admit a component: refused with a reason if the engine would refuse
    /// it (inspection, compiling, linking) or its signature does not satisfy
    /// the operator. Returns the record and whether it is new.
    pub async fn admit(
        &self,
        bytes: Vec<u8>,
        submission: Submission,
    ) -> Result<(SkillRecord, bool), Error> {
        let store = self.skills()?.clone();
        let digest = SkillDigest::of(&bytes);
        let who = (
            submission.name.clone(),
            submission.agent.clone(),
            submission.submitter.clone(),
        );
        // Before the compile: metadata is cheap to refuse.
        let admitted = match super::check_metadata(&submission).and_then(|()| {
            check_signature(
                &digest,
                submission.signature.as_deref(),
                &self.trusted_keys,
                self.config().admission.require_signature,
            )
        }) {
            Ok(signed_by) => {
                let engine = self.engine().clone();
                let refuse_sockets = self.config().admission.refuse_socket_imports;
                let loaded = blocking(move || {
                    let loaded = engine.load(&bytes)?;
                    if refuse_sockets
                        && let Some(rejection) = crate::inspect::socket_import(&loaded.inspection)
                    {
                        return Err(Error::Rejected(rejection));
                    }
                    Ok((loaded.inspection.clone(), bytes))
                })
                .await;
                match loaded {
                    Ok((inspection, bytes)) => {
                        store
                            .admit(&bytes, &inspection, &submission, signed_by)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (record, fresh) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                // A refused submission is on the record too: who tried what.
                if matches!(
                    e,
                    Error::Rejected(_) | Error::Incompatible(_) | Error::Admission(_)
                ) {
                    self.record(vec![json!({
                        "kind": "skill.refuse",
                        "digest": digest,
                        "skill": who.0,
                        "agent": who.1,
                        "submitter": who.2,
                        "reason": e.to_string(),
                    })])
                    .await?;
                }
                return Err(e);
            }
        };
        if fresh {
            self.record(vec![json!({
                "kind": "skill.admit",
                "digest": record.digest,
                "skill": record.name,
                "agent": record.agent,
                "trust": record.trust,
                "submitter": record.submitter,
                "capabilities": record.capabilities,
                "imports": record.imports,
                "signed_by": record.signed_by,
            })])
            .await?;
        }
        Ok((record, fresh))
    }

    /// Approve a skill for `ttl` (the configured default when `None`).
    pub async fn approve(
        &self,
        digest: SkillDigest,
        reviewer: &str,
        ttl: Option<Duration>,
    ) -> Result<SkillRecord, Error> {
        let store = self.skills()?.clone();
        let config = self.config().admission.clone();
        let ttl = ttl.unwrap_or(config.default_expiry);
        let changed = store.approve(&digest, reviewer, ttl, &config).await?;
        self.record_change(&changed, false).await?;
        Ok(changed.record)
    }

    /// Quarantine a skill: its running instances stop now.
    pub async fn quarantine(
        &self,
        digest: SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<SkillRecord, Error> {
        self.hold(digest, actor, reason, State::Quarantined, false)
            .await
    }

    /// Revoke a skill for good: its running instances stop now.
    pub async fn revoke(
        &self,
        digest: SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<SkillRecord, Error> {
        self.hold(digest, actor, reason, State::Revoked, false)
            .await
    }

    async fn hold(
        &self,
        digest: SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
        automatic: bool,
    ) -> Result<SkillRecord, Error> {
        let store = self.skills()?.clone();
        let changed = store.hold(&digest, actor, reason, to).await?;
        let reason = changed.record.reason.clone().unwrap_or_default();
        self.running
            .stop(&digest, &format!("skill {digest} was {to}: {reason}"));
        self.record_change(&changed, automatic).await?;
        Ok(changed.record)
    }

    async fn record_change(&self, changed: &Changed, automatic: bool) -> Result<(), Error> {
        let record = &changed.record;
        let mut event = json!({
            "kind": format!("skill.{}", match record.state {
                State::Approved => "approve",
                State::Quarantined => "quarantine",
                State::Revoked => "revoke",
                State::Pending | State::Expired => "change",
            }),
            "digest": record.digest,
            "skill": record.name,
            "from": changed.from,
            "to": record.state,
            "reason": record.reason,
        });
        if let Some(map) = event.as_object_mut() {
            if record.state == State::Approved {
                map.insert("reviewer".into(), json!(record.reviewer));
                map.insert("expires_ms".into(), json!(record.expires_ms));
            }
            if automatic {
                map.insert("automatic".into(), json!(true));
            }
        }
        self.record(vec![event]).await
    }

    /// Run an admitted skill: only if it is approved and unexpired now, its
    /// stored bytes re-hashed, as the agent and trust it was admitted with.
    /// If the skill is quarantined or revoked while the run goes on (here or
    /// in another process), the instance is stopped.
    pub async fn run_admitted(
        &self,
        digest: SkillDigest,
        mut request: RunRequest,
    ) -> Result<RunReport, Error> {
        let store = self.skills()?.clone();
        store.available()?;
        let record = store
            .get(&digest)
            .await?
            .ok_or_else(|| Error::Admission(format!("no admitted skill has digest {digest}")))?;
        if let Some(refusal) = record.refusal() {
            return Err(Error::Admission(refusal));
        }
        // Compiled code already in memory was checked when it was read;
        // from storage, the bytes are hashed again.
        let engine = self.engine().clone();
        let skill = match engine.loaded(&digest) {
            Some(skill) => skill,
            None => {
                let bytes = store
                    .load(&digest, engine.config().max_component_size)
                    .await?;
                blocking(move || engine.load(&bytes)).await?
            }
        };
        request.subject.skill = SkillIdentity {
            digest: digest.to_hex(),
            name: record.name.clone(),
            approved: true,
            labels: request.subject.skill.labels,
        };
        request.subject.agent.id = record.agent.clone();
        request.subject.agent.trust = record.trust;
        let stop = request.stop.clone().unwrap_or_default();
        request.stop = Some(stop.clone());
        let _held = self.hold_on(store, digest, stop);
        let report = self.run(&skill, request).await;
        // A skill answers for every call made on its behalf, its tools' too.
        self.count_denials(digest, denials(&report.decisions)).await;
        Ok(report)
    }

    /// Until dropped, `stop` stops the instance if its skill is quarantined
    /// or revoked, by this process or another.
    pub(crate) fn hold_on(
        &self,
        store: Arc<dyn Registry>,
        digest: SkillDigest,
        stop: Stopper,
    ) -> Held {
        let registered = self.running.register(digest, stop.clone());
        let watching = Abort(tokio::spawn(watch(store, digest, stop)));
        Held {
            _registered: registered,
            _watching: watching,
        }
    }

    /// Count `denied` calls toward `digest`'s automatic quarantine.
    pub(crate) async fn count_denials(&self, digest: SkillDigest, denied: usize) {
        let config = &self.config().admission;
        if config.quarantine_after == 0 || denied == 0 {
            return;
        }
        // Shared by every node when the registry is: a skill spread over
        // many nodes gets one budget of denials, not one each.
        let shared = match &self.store {
            Some(store) => store
                .count_denials(
                    &digest,
                    denied,
                    config.quarantine_after,
                    config.quarantine_window,
                )
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(skill = %digest, error = %e, "the shared count of denials is out of reach; counting on this node");
                    None
                }),
            None => None,
        };
        let reached = shared.unwrap_or_else(|| {
            self.running.deny(
                digest,
                denied,
                config.quarantine_after,
                config.quarantine_window,
            )
        });
        if !reached {
            return;
        }
        // Already held (by another run, or by someone): nothing to add.
        let current = match &self.store {
            Some(store) => store.get(&digest).await,
            None => return,
        };
        if !matches!(current, Ok(Some(record)) if record.state == State::Approved) {
            return;
        }
        let reason = format!(
            "{} denied calls within {}",
            config.quarantine_after,
            humantime::format_duration(config.quarantine_window)
        );
        match self
            .hold(digest, "airlock", &reason, State::Quarantined, true)
            .await
        {
            Ok(_) => tracing::warn!(skill = %digest, %reason, "skill quarantined automatically"),
            Err(e) => tracing::error!(skill = %digest, error = %e, "could not quarantine a skill"),
        }
    }
}

/// Stop the instance if another process or node quarantines or revokes its
/// skill.
async fn watch(store: Arc<dyn Registry>, digest: SkillDigest, stop: Stopper) {
    let record = store.held(&digest).await;
    let reason = record.reason.unwrap_or_default();
    stop.stop(format!("skill {digest} was {}: {reason}", record.state));
}
