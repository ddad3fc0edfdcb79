//! Where admitted skills live: the embedded store on this machine
//! ([`Embedded`]), or the control plane shared by a cluster of nodes
//! ([`crate::cluster::Cluster`]). Both enforce the same rules (the
//! `check_*` functions); a node holds one or the other behind [`Registry`].

use std::sync::Arc;
use std::time::Duration;

use super::{AdmissionConfig, Changed, SkillRecord, SkillStore, State, Submission, Transition};
use crate::Error;
use crate::digest::SkillDigest;
use crate::inspect::Inspection;

/// How often the embedded store is checked for a hold by another process.
const WATCH_EVERY: Duration = Duration::from_millis(250);

#[async_trait::async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Store an inspected component as `pending`; the existing record (and
    /// `false`) when the same bytes were admitted before.
    async fn admit(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        submission: &Submission,
        signed_by: Option<String>,
    ) -> Result<(SkillRecord, bool), Error>;

    async fn get(&self, digest: &SkillDigest) -> Result<Option<SkillRecord>, Error>;

    /// Every skill, newest first.
    async fn list(&self) -> Result<Vec<SkillRecord>, Error>;

    /// A skill's changes of state, oldest first.
    async fn history(&self, digest: &SkillDigest) -> Result<Vec<Transition>, Error>;

    /// The digest that `text` (a whole digest, or a unique prefix of at
    /// least 8 hex digits) names.
    async fn resolve(&self, text: &str) -> Result<SkillDigest, Error>;

    async fn approve(
        &self,
        digest: &SkillDigest,
        reviewer: &str,
        ttl: Duration,
        config: &AdmissionConfig,
    ) -> Result<Changed, Error>;

    /// Quarantine (`to` = `Quarantined`) or revoke a skill.
    async fn hold(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
    ) -> Result<Changed, Error>;

    /// The component's bytes, hashed again; at most `max` bytes are read.
    async fn load(&self, digest: &SkillDigest, max: u64) -> Result<Vec<u8>, Error>;

    /// Resolves with the record once `digest` is quarantined or revoked, by
    /// this process or any other.
    async fn held(&self, digest: &SkillDigest) -> SkillRecord;

    /// Whether the registry is current now: a node that cannot see
    /// revocations must not start runs.
    fn available(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Count `denied` enforced denials of `digest` now, in one count shared
    /// by every node of this registry: true when the last `window` holds at
    /// least `threshold` of them (and the count starts again). `None` when
    /// the registry keeps no shared count and each node counts its own.
    async fn count_denials(
        &self,
        _digest: &SkillDigest,
        _denied: usize,
        _threshold: u32,
        _window: Duration,
    ) -> Result<Option<bool>, Error> {
        Ok(None)
    }
}

/// The embedded store: SQLite and component files in the data directory,
/// shared by every process on it, denials toward automatic quarantine
/// included.
#[derive(Debug, Clone)]
pub struct Embedded {
    store: Arc<SkillStore>,
}

impl Embedded {
    pub fn new(store: Arc<SkillStore>) -> Self {
        Embedded { store }
    }

    pub fn store(&self) -> &Arc<SkillStore> {
        &self.store
    }

    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&SkillStore) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || job(&store))
            .await
            .map_err(|e| Error::Engine(format!("a skill store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Registry for Embedded {
    async fn admit(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        submission: &Submission,
        signed_by: Option<String>,
    ) -> Result<(SkillRecord, bool), Error> {
        let (bytes, inspection, submission) =
            (bytes.to_vec(), inspection.clone(), submission.clone());
        self.blocking(move |store| store.admit(&bytes, &inspection, &submission, signed_by))
            .await
    }

    async fn get(&self, digest: &SkillDigest) -> Result<Option<SkillRecord>, Error> {
        let digest = *digest;
        self.blocking(move |store| store.get(&digest)).await
    }

    async fn list(&self) -> Result<Vec<SkillRecord>, Error> {
        self.blocking(|store| store.list()).await
    }

    async fn history(&self, digest: &SkillDigest) -> Result<Vec<Transition>, Error> {
        let digest = *digest;
        self.blocking(move |store| store.history(&digest)).await
    }

    async fn resolve(&self, text: &str) -> Result<SkillDigest, Error> {
        let text = text.to_string();
        self.blocking(move |store| store.resolve(&text)).await
    }

    async fn approve(
        &self,
        digest: &SkillDigest,
        reviewer: &str,
        ttl: Duration,
        config: &AdmissionConfig,
    ) -> Result<Changed, Error> {
        let (digest, reviewer, config) = (*digest, reviewer.to_string(), config.clone());
        self.blocking(move |store| store.approve(&digest, &reviewer, ttl, &config))
            .await
    }

    async fn hold(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
    ) -> Result<Changed, Error> {
        let (digest, actor, reason) = (*digest, actor.to_string(), reason.to_string());
        self.blocking(move |store| match to {
            State::Revoked => store.revoke(&digest, &actor, &reason),
            _ => store.quarantine(&digest, &actor, &reason),
        })
        .await
    }

    async fn count_denials(
        &self,
        digest: &SkillDigest,
        denied: usize,
        threshold: u32,
        window: Duration,
    ) -> Result<Option<bool>, Error> {
        let digest = *digest;
        self.blocking(move |store| store.count_denials(&digest, denied, threshold, window))
            .await
            .map(Some)
    }

    async fn load(&self, digest: &SkillDigest, _max: u64) -> Result<Vec<u8>, Error> {
        // Admission bounded the size; the file is the admitted one or refused.
        let digest = *digest;
        self.blocking(move |store| store.load(&digest)).await
    }

    async fn held(&self, digest: &SkillDigest) -> SkillRecord {
        // A cheap check for news (SQLite's data version) before reading.
        let digest = *digest;
        let mut seen = None;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let news = self
                .blocking(move |store| {
                    let version = store.data_version()?;
                    if seen == Some(version) {
                        return Ok((version, None));
                    }
                    Ok((version, store.get(&digest)?))
                })
                .await;
            let Ok((version, record)) = news else {
                continue;
            };
            seen = Some(version);
            if let Some(record) = record
                && matches!(record.state, State::Quarantined | State::Revoked)
            {
                return record;
            }
        }
    }
}
