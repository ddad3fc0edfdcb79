//! Scale-out: Airlock nodes sharing one control plane on NATS JetStream.
//!
//! What is shared, under names an operator can find with the `nats` CLI:
//!
//! - [`COMPONENTS_BUCKET`], an object store: skill components, named by the
//!   hex blake3 digest of their bytes. Every fetch hashes the bytes again; a
//!   changed object is refused.
//! - [`SKILLS_BUCKET`], a key-value bucket: one key per skill (its digest),
//!   whose value is the record and the change that made it. Every change is
//!   written with the revision it was checked against, so two nodes cannot
//!   race a state change: the loser reads the record again and checks again
//!   (a revoke that lands first makes the approval fail). The bucket keeps
//!   [`SKILL_HISTORY`] revisions per key: the skill's recent history.
//!
//! The rules are the embedded store's (`admission::check_*`); only where
//! records live differs. Buckets are created on first connection with file
//! storage and the configured replica count.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::Error;
use crate::admission::registry::Registry;
use crate::admission::{
    AdmissionConfig, Changed, SkillRecord, State, Submission, Transition, check_approval,
    check_hold, check_submission, digest_or_prefix, now_ms, only_match,
};
use crate::digest::SkillDigest;
use crate::inspect::Inspection;

mod audit;
mod runs;
pub use audit::{
    AUDIT_STREAM, AUDIT_SUBJECT_PREFIX, KEYS_BUCKET, LIVE_TOKENS_BUCKET, NodeVerification,
    valid_node_name,
};
pub use runs::{
    BUSY_PAUSE, MAX_DELIVER, QueuedRun, RUN_CLAIMS_BUCKET, RUNNERS, RUNS_STREAM, RUNS_SUBJECT,
    RunOutcome,
};

/// The object store of skill components.
pub const COMPONENTS_BUCKET: &str = "airlock-components";
/// The key-value bucket of skill records.
pub const SKILLS_BUCKET: &str = "airlock-skills";
/// Each skill's recent enforced denials, counted across nodes.
pub const DENIALS_BUCKET: &str = "airlock-denials";
/// Revisions kept per skill record.
pub const SKILL_HISTORY: i64 = 64;
/// How many times a change is checked again after losing a race.
const RETRIES: usize = 16;

/// `[cluster]` in `airlock.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server, for example `nats://10.0.0.5:4222`.
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed), if the server needs one.
    pub credentials: Option<PathBuf>,
    /// Replicas of every bucket and stream (at most the servers in the
    /// NATS cluster).
    pub replicas: usize,
    #[serde(with = "crate::limits::humantime_serde")]
    pub connect_timeout: Duration,
    /// Queue `POST /v1/runs` for whichever node has room, instead of
    /// running them where they arrive.
    pub queue_runs: bool,
    /// How long a node may hold a queued run without a sign of life before
    /// it is given to another (renewed every quarter of it while running).
    #[serde(with = "crate::limits::humantime_serde")]
    pub run_ack_wait: Duration,
    /// This node's name in the cluster (its audit subject and its keys):
    /// letters, digits, `-` and `_`. Default: a name made once and kept in
    /// the data directory (`node-name`).
    pub node: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: "nats://127.0.0.1:4222".into(),
            credentials: None,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
            queue_runs: false,
            run_ack_wait: Duration::from_secs(30),
            node: None,
        }
    }
}

/// This node's name: the configured one, or the one kept in `data_dir`
/// (made on first use).
pub fn node_name(config: &ClusterConfig, data_dir: &std::path::Path) -> Result<String, Error> {
    if let Some(name) = &config.node {
        if !valid_node_name(name) {
            return Err(Error::Config(format!(
                "cluster.node `{}`: use 1 to 64 letters, digits, `-` and `_`",
                airlock_host_apis::escape(name, 80)
            )));
        }
        return Ok(name.clone());
    }
    let path = data_dir.join("node-name");
    match std::fs::read_to_string(&path) {
        Ok(name) if valid_node_name(name.trim()) => Ok(name.trim().to_string()),
        Ok(_) => Err(Error::Config(format!(
            "`{}` does not hold a node name",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = format!("node-{:016x}", rand::random::<u64>());
            crate::fsutil::write_private(&path, name.as_bytes())?;
            Ok(name)
        }
        Err(e) => Err(Error::io(format!("reading `{}`", path.display()), e)),
    }
}

/// The registry a node built from `config` uses: the cluster's, connected
/// now, when `[cluster]` is configured; `None` for the data directory's.
pub async fn registry(
    config: &crate::Config,
) -> Result<Option<std::sync::Arc<dyn Registry>>, Error> {
    match &config.cluster {
        Some(cluster) => Ok(Some(std::sync::Arc::new(Cluster::connect(cluster).await?))),
        None => Ok(None),
    }
}

/// One revision of a skill's record: the record as stored (an approval
/// never reads `expired` here) and the change that made it.
#[derive(Serialize, Deserialize)]
struct Revision {
    record: SkillRecord,
    transition: Transition,
}

/// A skill's record at a revision of the bucket.
struct Current {
    record: SkillRecord,
    revision: u64,
}

/// A node's connection to the shared control plane.
#[derive(Clone)]
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    components: object_store::ObjectStore,
    skills: kv::Store,
    keys: kv::Store,
    claims: kv::Store,
    live: kv::Store,
    denials: kv::Store,
    /// Holds seen by this node's one watch of the bucket, for every
    /// instance waiting on its skill.
    holds: tokio::sync::broadcast::Sender<(SkillDigest, State)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// The key-value bucket `config` names, created (on file storage) if it
/// does not exist yet.
async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(kv::Config {
        storage: jetstream::stream::StorageType::File,
        ..config
    })
    .await
    .map_err(|e| failed(&format!("creating the bucket {name}"), e))
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cluster(format!("{what}: {e}"))
}

/// The record as read now: an approval past its expiry reads `expired`.
fn as_of_now(mut record: SkillRecord) -> SkillRecord {
    if record.state == State::Approved && record.expires_ms.is_some_and(|e| e <= now_ms()) {
        record.state = State::Expired;
    }
    record
}

impl Cluster {
    /// Connect, and create the buckets that do not exist yet.
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name("airlock")
            .connection_timeout(config.connect_timeout);
        if let Some(path) = &config.credentials {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::Config(format!("cluster.credentials `{}`: {e}", path.display()))
            })?;
        }
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| failed(&format!("connecting to NATS at {}", config.url), e))?;
        let js = jetstream::new(client.clone());
        let skills = bucket(
            &js,
            kv::Config {
                bucket: SKILLS_BUCKET.into(),
                description: "Airlock skill records: one key per digest".into(),
                history: SKILL_HISTORY,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let components = match js.get_object_store(COMPONENTS_BUCKET).await {
            Ok(store) => store,
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: COMPONENTS_BUCKET.into(),
                    description: Some("Airlock skill components, named by digest".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&format!("creating the object store {COMPONENTS_BUCKET}"), e))?
            }
        };
        Cluster::audit_stream(&js, config.replicas).await?;
        let keys = Cluster::keys_bucket(&js, config.replicas).await?;
        let claims = Cluster::run_queue(&js, config.replicas).await?;
        let live = Cluster::live_tokens_bucket(&js, config.replicas).await?;
        let denials = bucket(
            &js,
            kv::Config {
                bucket: DENIALS_BUCKET.into(),
                description: "Airlock skills' recent enforced denials, on any node".into(),
                history: 1,
                // A window is minutes long; this only bounds what is left
                // of skills that stopped running.
                max_age: Duration::from_secs(24 * 3600),
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let (holds, _) = tokio::sync::broadcast::channel(1024);
        let cluster = Cluster {
            client,
            js,
            components,
            skills,
            keys,
            claims,
            live,
            denials,
            holds,
        };
        tokio::spawn(cluster.clone().relay_holds());
        Ok(cluster)
    }

    /// Watch the bucket for holds and pass them on to waiting instances,
    /// watching again if the watch ends.
    async fn relay_holds(self) {
        loop {
            match self.holds().await {
                Ok(holds) => {
                    let mut holds = Box::pin(holds);
                    while let Some(hold) = holds.next().await {
                        // No receivers is not an error: nothing is running.
                        let _ = self.holds.send(hold);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch skill records; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The digest that `text` names: a whole digest, or a unique prefix of
    /// at least 8 hex digits.
    pub async fn resolve(&self, text: &str) -> Result<SkillDigest, Error> {
        let prefix = match digest_or_prefix(text)? {
            Ok(digest) => return Ok(digest),
            Err(prefix) => prefix,
        };
        let mut keys = self
            .skills
            .keys()
            .await
            .map_err(|e| failed("listing skills", e))?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed("listing skills", e))?;
            if key.starts_with(&prefix) {
                found.push(key);
            }
        }
        only_match(&prefix, &found)
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Store an inspected component as `pending`, shared with every node.
    /// Admitting the same bytes again returns the existing record (and
    /// `false`), whichever node admitted them first.
    pub async fn admit(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        submission: &Submission,
        signed_by: Option<String>,
    ) -> Result<(SkillRecord, bool), Error> {
        let digest = check_submission(bytes, inspection, submission)?;
        if let Some(existing) = self.get(&digest).await? {
            return Ok((existing, false));
        }
        let mut reader = bytes;
        self.components
            .put(digest.to_hex().as_str(), &mut reader)
            .await
            .map_err(|e| failed(&format!("storing the component {}", digest.short()), e))?;
        let now = now_ms();
        let record = SkillRecord {
            digest,
            name: submission.name.clone(),
            description: submission.description.clone(),
            agent: submission.agent.clone(),
            trust: submission.trust,
            submitter: submission.submitter.clone(),
            admitted_ms: now,
            size: inspection.size,
            imports: inspection.imports.clone(),
            capabilities: inspection
                .capabilities
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            input_schema: submission.input_schema.clone(),
            signed_by,
            state: State::Pending,
            reason: None,
            reviewer: None,
            approved_ms: None,
            expires_ms: None,
            changed_ms: now,
            tenant: submission.tenant.clone(),
        };
        let revision = Revision {
            record: record.clone(),
            transition: Transition {
                at_ms: now,
                from: None,
                to: State::Pending.as_str().into(),
                actor: submission.submitter.clone(),
                reason: None,
            },
        };
        match self
            .skills
            .create(digest.to_hex(), encode(&revision)?)
            .await
        {
            Ok(_) => Ok((record, true)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Another node admitted the same bytes meanwhile.
                let existing = self.get(&digest).await?.ok_or_else(|| {
                    Error::Cluster(format!("skill {digest} was admitted and then removed"))
                })?;
                Ok((existing, false))
            }
            Err(e) => Err(failed(&format!("recording skill {}", digest.short()), e)),
        }
    }

    async fn current(&self, digest: &SkillDigest) -> Result<Option<Current>, Error> {
        let entry = self
            .skills
            .entry(digest.to_hex())
            .await
            .map_err(|e| failed(&format!("reading skill {}", digest.short()), e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let revision: Revision = serde_json::from_slice(&entry.value).map_err(|e| {
            Error::Cluster(format!(
                "the shared record of skill {} is not readable: {e}",
                digest.short()
            ))
        })?;
        Ok(Some(Current {
            record: revision.record,
            revision: entry.revision,
        }))
    }

    /// A skill's record as it is now, from any node.
    pub async fn get(&self, digest: &SkillDigest) -> Result<Option<SkillRecord>, Error> {
        Ok(self
            .current(digest)
            .await?
            .map(|current| as_of_now(current.record)))
    }

    /// Every skill, newest first.
    pub async fn list(&self) -> Result<Vec<SkillRecord>, Error> {
        let mut keys = self
            .skills
            .keys()
            .await
            .map_err(|e| failed("listing skills", e))?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed("listing skills", e))?;
            let Ok(digest) = key.parse::<SkillDigest>() else {
                continue;
            };
            if let Some(record) = self.get(&digest).await? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| {
            b.admitted_ms
                .cmp(&a.admitted_ms)
                .then_with(|| a.digest.to_hex().cmp(&b.digest.to_hex()))
        });
        Ok(records)
    }

    /// A skill's changes of state, oldest first (the last
    /// [`SKILL_HISTORY`]).
    pub async fn history(&self, digest: &SkillDigest) -> Result<Vec<Transition>, Error> {
        let mut entries = self
            .skills
            .history(digest.to_hex())
            .await
            .map_err(|e| failed(&format!("reading the history of {}", digest.short()), e))?;
        let mut transitions = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry
                .map_err(|e| failed(&format!("reading the history of {}", digest.short()), e))?;
            if let Ok(revision) = serde_json::from_slice::<Revision>(&entry.value) {
                transitions.push(revision.transition);
            }
        }
        Ok(transitions)
    }

    /// The component's bytes, hashed again: a changed object is refused.
    /// Objects larger than `max` bytes are not read.
    pub async fn load(&self, digest: &SkillDigest, max: u64) -> Result<Vec<u8>, Error> {
        let mut object = self
            .components
            .get(digest.to_hex())
            .await
            .map_err(|e| failed(&format!("fetching the component {}", digest.short()), e))?;
        if object.info().size as u64 > max {
            return Err(Error::Admission(format!(
                "the shared component for {digest} is larger than {max} bytes; refusing to load it"
            )));
        }
        let mut bytes = Vec::with_capacity(object.info().size);
        (&mut object)
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| failed(&format!("fetching the component {}", digest.short()), e))?;
        let actual = SkillDigest::of(&bytes);
        if actual != *digest {
            return Err(Error::Admission(format!(
                "the shared component for {digest} has changed (its bytes hash to {actual}); refusing to load it"
            )));
        }
        Ok(bytes)
    }

    /// [`Registry::count_denials`]: the skill's recent denial times,
    /// changed only if no other node changed them since they were read.
    async fn count_denials(
        &self,
        digest: &SkillDigest,
        denied: usize,
        threshold: u32,
        window: Duration,
    ) -> Result<bool, Error> {
        let key = digest.to_hex();
        let what = || format!("counting the denials of skill {}", digest.short());
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let cap = usize::try_from(threshold).unwrap_or(usize::MAX);
        for _ in 0..RETRIES {
            let entry = self
                .denials
                .entry(key.as_str())
                .await
                .map_err(|e| failed(&what(), e))?;
            let (mut times, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    // Unreadable times count as none, not as a failure.
                    serde_json::from_slice::<Vec<u64>>(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                Some(entry) => (Vec::new(), Some(entry.revision)),
                None => (Vec::new(), None),
            };
            let now = now_ms();
            times.retain(|t| now.saturating_sub(*t) <= window_ms);
            times.extend(std::iter::repeat_n(now, denied.min(cap)));
            times.sort_unstable();
            let surplus = times.len().saturating_sub(cap);
            times.drain(..surplus);
            let reached = times.len() >= cap;
            if reached {
                times.clear();
            }
            let body = bytes::Bytes::from(serde_json::to_vec(&times).unwrap_or_default());
            let written = match revision {
                Some(revision) => match self.denials.update(key.as_str(), body, revision).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => Err(failed(&what(), e)),
                },
                None => match self.denials.create(key.as_str(), body).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(e) => Err(failed(&what(), e)),
                },
            };
            return written.map(|()| reached);
        }
        Err(Error::Cluster(format!(
            "the denials of skill {digest} kept changing while they were counted"
        )))
    }

    /// Apply a change checked by `decide` against the record as it is;
    /// written only if nobody changed the record since it was read, else
    /// read and checked again.
    async fn change(
        &self,
        digest: &SkillDigest,
        decide: impl Fn(&SkillRecord, u64) -> Result<Revision, Error>,
    ) -> Result<Changed, Error> {
        for _ in 0..RETRIES {
            let current = self.current(digest).await?.ok_or_else(|| {
                Error::Admission(format!("no admitted skill has digest {digest}"))
            })?;
            let record = as_of_now(current.record);
            let from = record.state;
            let revision = decide(&record, now_ms())?;
            let changed = revision.record.clone();
            match self
                .skills
                .update(digest.to_hex(), encode(&revision)?, current.revision)
                .await
            {
                Ok(_) => {
                    return Ok(Changed {
                        record: as_of_now(changed),
                        from,
                    });
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(failed(&format!("changing skill {}", digest.short()), e)),
            }
        }
        Err(Error::Cluster(format!(
            "skill {digest} kept changing while this change was checked; nothing was changed: retry"
        )))
    }

    /// Approve a skill for `ttl`, under the embedded store's rules.
    pub async fn approve(
        &self,
        digest: &SkillDigest,
        reviewer: &str,
        ttl: Duration,
        config: &AdmissionConfig,
    ) -> Result<Changed, Error> {
        self.change(digest, |record, now| {
            check_approval(record, reviewer, ttl, config)?;
            let mut next = record.clone();
            next.state = State::Approved;
            next.reviewer = Some(reviewer.to_string());
            next.approved_ms = Some(now);
            next.expires_ms =
                Some(now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
            next.reason = None;
            next.changed_ms = now;
            Ok(Revision {
                record: next,
                transition: Transition {
                    at_ms: now,
                    from: Some(record.state.as_str().into()),
                    to: State::Approved.as_str().into(),
                    actor: reviewer.to_string(),
                    reason: None,
                },
            })
        })
        .await
    }

    /// Hold a skill for review, on every node.
    pub async fn quarantine(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<Changed, Error> {
        self.hold_as(digest, actor, reason, State::Quarantined)
            .await
    }

    /// End a skill for good, on every node.
    pub async fn revoke(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<Changed, Error> {
        self.hold_as(digest, actor, reason, State::Revoked).await
    }

    async fn hold_as(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
    ) -> Result<Changed, Error> {
        self.change(digest, |record, now| {
            let reason = check_hold(record, reason, to)?;
            let mut next = record.clone();
            next.state = to;
            next.reason = Some(reason.clone());
            next.changed_ms = now;
            Ok(Revision {
                record: next,
                transition: Transition {
                    at_ms: now,
                    from: Some(record.state.as_str().into()),
                    to: to.as_str().into(),
                    actor: actor.to_string(),
                    reason: Some(reason),
                },
            })
        })
        .await
    }

    /// Skills quarantined or revoked from now on, by any node, as the
    /// changes arrive.
    pub async fn holds(
        &self,
    ) -> Result<impl futures_util::Stream<Item = (SkillDigest, State)> + Send + 'static, Error>
    {
        let watch = self
            .skills
            .watch_all()
            .await
            .map_err(|e| failed("watching skill records", e))?;
        Ok(watch.filter_map(|entry| async move {
            let entry = entry.ok()?;
            let revision: Revision = serde_json::from_slice(&entry.value).ok()?;
            matches!(revision.record.state, State::Quarantined | State::Revoked)
                .then_some((revision.record.digest, revision.record.state))
        }))
    }
}

#[async_trait::async_trait]
impl Registry for Cluster {
    async fn admit(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        submission: &Submission,
        signed_by: Option<String>,
    ) -> Result<(SkillRecord, bool), Error> {
        Cluster::admit(self, bytes, inspection, submission, signed_by).await
    }

    async fn get(&self, digest: &SkillDigest) -> Result<Option<SkillRecord>, Error> {
        Cluster::get(self, digest).await
    }

    async fn list(&self) -> Result<Vec<SkillRecord>, Error> {
        Cluster::list(self).await
    }

    async fn history(&self, digest: &SkillDigest) -> Result<Vec<Transition>, Error> {
        Cluster::history(self, digest).await
    }

    async fn resolve(&self, text: &str) -> Result<SkillDigest, Error> {
        Cluster::resolve(self, text).await
    }

    async fn count_denials(
        &self,
        digest: &SkillDigest,
        denied: usize,
        threshold: u32,
        window: Duration,
    ) -> Result<Option<bool>, Error> {
        Cluster::count_denials(self, digest, denied, threshold, window)
            .await
            .map(Some)
    }

    async fn approve(
        &self,
        digest: &SkillDigest,
        reviewer: &str,
        ttl: Duration,
        config: &AdmissionConfig,
    ) -> Result<Changed, Error> {
        Cluster::approve(self, digest, reviewer, ttl, config).await
    }

    async fn hold(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
    ) -> Result<Changed, Error> {
        self.hold_as(digest, actor, reason, to).await
    }

    async fn load(&self, digest: &SkillDigest, max: u64) -> Result<Vec<u8>, Error> {
        Cluster::load(self, digest, max).await
    }

    async fn held(&self, digest: &SkillDigest) -> SkillRecord {
        // Subscribe before looking, so a hold between the two is not missed.
        let mut holds = self.holds.subscribe();
        loop {
            if let Ok(Some(record)) = Cluster::get(self, digest).await
                && matches!(record.state, State::Quarantined | State::Revoked)
            {
                return record;
            }
            loop {
                match holds.recv().await {
                    Ok((held, _)) if held == *digest => break,
                    Ok(_) => continue,
                    // Missed some: look again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        break;
                    }
                }
            }
        }
    }

    fn available(&self) -> Result<(), Error> {
        if self.connected() {
            Ok(())
        } else {
            Err(Error::Cluster(
                "the connection to NATS is lost; no run starts until it is back, \
                 so that none runs without seeing revocations"
                    .into(),
            ))
        }
    }
}

fn encode(revision: &Revision) -> Result<bytes::Bytes, Error> {
    serde_json::to_vec(revision)
        .map(bytes::Bytes::from)
        .map_err(|e| Error::Cluster(format!("encoding a skill record: {e}")))
}
