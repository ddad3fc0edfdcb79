//! Skill admission: the content-addressed skill store and each skill's
//! lifecycle.
//!
//! Components live under `<data-dir>/skills/blobs/<digest>.wasm`, named by
//! the blake3 digest of their bytes, and are hashed again every time they are
//! read: a flipped byte is refused at load. What is known about each skill
//! (who generated and submitted it, what it can request, its state) lives in
//! an SQLite database, `<data-dir>/skills/skills.db`, shared safely by every
//! Airlock process on the data directory (WAL, a busy timeout). Its schema is
//! `SCHEMA` below; `transitions` keeps every change of state, with who made
//! it and why.
//!
//! States: `pending` (admitted, not yet reviewed) -> `approved` (by a
//! reviewer who is neither the submitter nor the generating agent, until an
//! expiry) -> `expired` (an approval whose expiry has passed, computed at
//! each check). `quarantined` (held for review; may be approved again) and
//! `revoked` (final) can be reached from any state, with a reason.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use airlock_host_apis::Trust;
use base64::Engine as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::digest::SkillDigest;
use crate::inspect::Inspection;

pub mod node;
pub mod registry;
#[cfg(test)]
mod tests;

/// The database schema, version 2 (1 had no `tenant`; [`SkillStore::open`]
/// migrates it). `denials` came later without a new version: older
/// versions neither need nor touch it, and [`SkillStore::open`] creates it.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS skills (
    digest       TEXT PRIMARY KEY,      -- blake3 of the component, hex
    name         TEXT NOT NULL,
    description  TEXT,
    agent        TEXT NOT NULL,         -- the agent that generated it
    trust        TEXT NOT NULL,         -- untrusted, low, medium, high
    submitter    TEXT NOT NULL,         -- who asked for admission
    admitted_ms  INTEGER NOT NULL,      -- Unix milliseconds
    size         INTEGER NOT NULL,      -- bytes
    imports      TEXT NOT NULL,         -- JSON array of import names
    capabilities TEXT NOT NULL,         -- JSON array: http, storage, ...
    input_schema TEXT,                  -- JSON Schema of the input, if given
    signed_by    TEXT,                  -- the trusted key that signed it
    state        TEXT NOT NULL CHECK (state IN
                   ('pending', 'approved', 'quarantined', 'revoked')),
    reason       TEXT,                  -- why quarantined or revoked
    reviewer     TEXT,                  -- who approved it
    approved_ms  INTEGER,
    expires_ms   INTEGER,               -- when the approval ends
    changed_ms   INTEGER NOT NULL,      -- the last change of state
    tenant       TEXT NOT NULL DEFAULT 'default' -- the submitter's tenant
);
CREATE TABLE IF NOT EXISTS transitions (
    id      INTEGER PRIMARY KEY,
    digest  TEXT NOT NULL REFERENCES skills (digest),
    at_ms   INTEGER NOT NULL,
    from_state TEXT,                    -- NULL for the admission itself
    to_state   TEXT NOT NULL,
    actor   TEXT NOT NULL,
    reason  TEXT
);
CREATE INDEX IF NOT EXISTS transitions_by_digest ON transitions (digest, id);
CREATE TABLE IF NOT EXISTS denials (     -- toward automatic quarantine
    digest  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    count   INTEGER NOT NULL            -- enforced denials in one run
);
CREATE INDEX IF NOT EXISTS denials_by_digest ON denials (digest, at_ms);
CREATE INDEX IF NOT EXISTS denials_by_time ON denials (at_ms);
PRAGMA user_version = 2;
";

/// Where a skill is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Expired,
    Quarantined,
    Revoked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Expired => "expired",
            State::Quarantined => "quarantined",
            State::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Option<State> {
        Some(match text {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "quarantined" => State::Quarantined,
            "revoked" => State::Revoked,
            _ => return None,
        })
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store knows about one skill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkillRecord {
    /// The blake3 hash of the component, hex.
    #[schema(value_type = String)]
    pub digest: SkillDigest,
    pub name: String,
    pub description: Option<String>,
    pub agent: String,
    /// untrusted, low, medium or high.
    #[schema(value_type = String)]
    pub trust: Trust,
    pub submitter: String,
    pub admitted_ms: u64,
    pub size: u64,
    pub imports: Vec<String>,
    pub capabilities: Vec<String>,
    pub input_schema: Option<serde_json::Value>,
    pub signed_by: Option<String>,
    /// The state now (an approval past its expiry reads `expired`).
    pub state: State,
    pub reason: Option<String>,
    pub reviewer: Option<String>,
    pub approved_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub changed_ms: u64,
    /// The submitter's tenant: who the skill belongs to.
    pub tenant: String,
}

impl SkillRecord {
    /// Why this skill may not run now, if it may not.
    pub fn refusal(&self) -> Option<String> {
        let because = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let what = format!("skill `{}` ({})", self.name, self.digest.short());
        match self.state {
            State::Approved => None,
            State::Pending => Some(format!(
                "{what} is pending review; it runs once a reviewer approves it (`airlock approve`)"
            )),
            State::Expired => Some(format!(
                "{what} expired {} ago; a reviewer must approve it again",
                humantime::format_duration(Duration::from_secs(
                    now_ms().saturating_sub(self.expires_ms.unwrap_or(0)) / 1000
                ))
            )),
            State::Quarantined => Some(format!("{what} is quarantined{because}")),
            State::Revoked => Some(format!("{what} is revoked{because}")),
        }
    }
}

/// One change of state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub reason: Option<String>,
}

/// The tenant of a single-tenant deployment, and of skills admitted before
/// tenants existed.
pub const DEFAULT_TENANT: &str = "default";

/// A request to admit a skill.
#[derive(Clone, Debug)]
pub struct Submission {
    pub name: String,
    pub description: Option<String>,
    pub agent: String,
    pub trust: Trust,
    pub submitter: String,
    /// The submitter's tenant (`default` when there is one tenant).
    pub tenant: String,
    pub input_schema: Option<serde_json::Value>,
    /// A detached Ed25519 signature over the 32 digest bytes.
    pub signature: Option<Vec<u8>>,
}

impl Default for Submission {
    fn default() -> Self {
        Submission {
            name: String::new(),
            description: None,
            agent: String::new(),
            trust: Trust::default(),
            submitter: String::new(),
            tenant: DEFAULT_TENANT.to_string(),
            input_schema: None,
            signature: None,
        }
    }
}

/// The operator's admission settings: `[admission]` in `airlock.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Trusted signing keys: name -> Ed25519 public key (32 bytes, base64).
    pub trusted_keys: std::collections::BTreeMap<String, String>,
    /// Refuse skills without a valid signature from a trusted key.
    pub require_signature: bool,
    /// How long an approval lasts when the reviewer does not say.
    #[serde(with = "crate::limits::humantime_serde")]
    pub default_expiry: Duration,
    /// The longest approval a reviewer may give.
    #[serde(with = "crate::limits::humantime_serde")]
    pub max_expiry: Duration,
    /// Quarantine a skill after this many denied calls within
    /// `quarantine_window` (0 turns it off).
    pub quarantine_after: u32,
    #[serde(with = "crate::limits::humantime_serde")]
    pub quarantine_window: Duration,
    /// Refuse components that import `wasi:sockets` at all. Off by default:
    /// interpreters import it whatever the skill does, and it is linked with
    /// every network use turned off.
    pub refuse_socket_imports: bool,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            trusted_keys: Default::default(),
            require_signature: false,
            default_expiry: Duration::from_secs(7 * 24 * 3600),
            max_expiry: Duration::from_secs(90 * 24 * 3600),
            quarantine_after: 20,
            quarantine_window: Duration::from_secs(60),
            refuse_socket_imports: false,
        }
    }
}

/// A trusted key, parsed.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl AdmissionConfig {
    /// Parse the trusted keys; a key that does not parse is a configuration
    /// error naming it.
    pub fn keys(&self) -> Result<Vec<TrustedKey>, Error> {
        self.trusted_keys
            .iter()
            .map(|(name, text)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "admission.trusted_keys.{name}: not an Ed25519 public key (32 bytes, base64)"
                        ))
                    })?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| {
                    Error::Config(format!("admission.trusted_keys.{name}: {e}"))
                })?;
                Ok(TrustedKey {
                    name: name.clone(),
                    key,
                })
            })
            .collect()
    }
}

/// Read a detached signature: 64 raw bytes, or their base64.
pub fn parse_signature(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    if bytes.len() == 64 {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).unwrap_or_default().trim();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or_else(|| {
            Error::Admission(
                "the signature is not an Ed25519 signature (64 bytes, raw or base64)".into(),
            )
        })
}

/// Which trusted key signed `digest`, checking the signature the submitter
/// gave (if any) against the operator's rules.
pub fn check_signature(
    digest: &SkillDigest,
    signature: Option<&[u8]>,
    keys: &[TrustedKey],
    required: bool,
) -> Result<Option<String>, Error> {
    let Some(signature) = signature else {
        if required {
            return Err(Error::Admission(
                "this runtime admits only signed skills (admission.require_signature); give --signature".into(),
            ));
        }
        return Ok(None);
    };
    let signature = ed25519_dalek::Signature::from_slice(signature)
        .map_err(|e| Error::Admission(format!("the signature does not parse: {e}")))?;
    keys.iter()
        .find(|k| k.key.verify_strict(digest.as_bytes(), &signature).is_ok())
        .map(|k| Some(k.name.clone()))
        .ok_or_else(|| {
            Error::Admission(format!(
                "the signature over {} does not verify with any trusted key ({} configured)",
                digest.short(),
                keys.len()
            ))
        })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The skill store of one data directory.
pub struct SkillStore {
    dir: PathBuf,
    db: Mutex<Connection>,
    denials: Mutex<Connection>,
}

impl std::fmt::Debug for SkillStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

const COLUMNS: &str = "digest, name, description, agent, trust, submitter, admitted_ms, size, \
     imports, capabilities, input_schema, signed_by, state, reason, reviewer, approved_ms, \
     expires_ms, changed_ms, tenant";

fn ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn sql_ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn record_from_row(row: &rusqlite::Row<'_>, now: u64) -> rusqlite::Result<SkillRecord> {
    let bad = |column: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("not {what}").into(),
        )
    };
    let digest: String = row.get(0)?;
    let trust: String = row.get(4)?;
    let imports: String = row.get(8)?;
    let capabilities: String = row.get(9)?;
    let input_schema: Option<String> = row.get(10)?;
    let state: String = row.get(12)?;
    let expires_ms: Option<i64> = row.get(16)?;
    let expires_ms = expires_ms.map(ms);
    let mut state = State::parse(&state).ok_or_else(|| bad(12, "a state"))?;
    if state == State::Approved && expires_ms.is_none_or(|e| now >= e) {
        state = State::Expired;
    }
    Ok(SkillRecord {
        digest: digest.parse().map_err(|_| bad(0, "a digest"))?,
        name: row.get(1)?,
        description: row.get(2)?,
        agent: row.get(3)?,
        trust: trust.parse().map_err(|_| bad(4, "a trust level"))?,
        submitter: row.get(5)?,
        admitted_ms: ms(row.get(6)?),
        size: ms(row.get(7)?),
        imports: serde_json::from_str(&imports).map_err(|_| bad(8, "a list"))?,
        capabilities: serde_json::from_str(&capabilities).map_err(|_| bad(9, "a list"))?,
        input_schema: input_schema
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|_| bad(10, "JSON"))?,
        signed_by: row.get(11)?,
        state,
        reason: row.get(13)?,
        reviewer: row.get(14)?,
        approved_ms: row.get::<_, Option<i64>>(15)?.map(ms),
        expires_ms,
        changed_ms: ms(row.get(17)?),
        tenant: row.get(18)?,
    })
}

/// Version 1 to 2: skills gain a tenant; existing ones are `default`'s.
/// Another process may be migrating at the same moment: the version is
/// checked again under the write lock.
fn migrate_v1(db: &mut Connection) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == 1 {
        tx.execute_batch(
            "ALTER TABLE skills ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
             PRAGMA user_version = 2;",
        )?;
    }
    tx.commit()
}

/// A whole digest, or else the lower-case prefix (at least 8 hex digits)
/// that `text` gives of one.
pub(crate) fn digest_or_prefix(text: &str) -> Result<Result<SkillDigest, String>, Error> {
    if let Ok(digest) = text.parse::<SkillDigest>() {
        return Ok(Ok(digest));
    }
    let prefix = text.to_ascii_lowercase();
    if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Admission(format!(
            "`{}` is not a skill digest or a prefix of one (at least 8 hex characters)",
            airlock_host_apis::escape(text, 80)
        )));
    }
    Ok(Err(prefix))
}

/// The one digest among those `found` to start with `prefix`.
pub(crate) fn only_match(prefix: &str, found: &[String]) -> Result<SkillDigest, Error> {
    match found {
        [one] => one
            .parse()
            .map_err(|_| Error::Admission(format!("`{one}` in the skill store is not a digest"))),
        [] => Err(Error::Admission(format!(
            "no admitted skill has digest `{prefix}…`"
        ))),
        _ => Err(Error::Admission(format!(
            "more than one skill has a digest starting `{prefix}`; give more of it"
        ))),
    }
}

/// What every backend checks before admitting: the bytes are the ones
/// inspected, and who and what the skill is are named. Returns the digest.
pub(crate) fn check_submission(
    bytes: &[u8],
    inspection: &Inspection,
    submission: &Submission,
) -> Result<SkillDigest, Error> {
    let digest = SkillDigest::of(bytes);
    if digest != inspection.digest {
        return Err(Error::Admission(
            "the bytes to store are not the bytes inspected".into(),
        ));
    }
    check_metadata(submission)?;
    Ok(digest)
}

/// Bytes a skill's name may take.
pub const MAX_NAME: usize = 128;
/// Bytes the agent, submitter and tenant may each take.
pub const MAX_PARTY: usize = 256;
/// Bytes a description may take.
pub const MAX_DESCRIPTION: usize = 4096;
/// Bytes an input schema may take, as compact JSON.
pub const MAX_INPUT_SCHEMA: usize = 64 << 10;

/// A submission's metadata is present and bounded: every backend keeps it
/// for as long as the skill, and the cluster's messages are small.
pub(crate) fn check_metadata(submission: &Submission) -> Result<(), Error> {
    for (what, value, bound) in [
        ("name", &submission.name, MAX_NAME),
        ("agent", &submission.agent, MAX_PARTY),
        ("submitter", &submission.submitter, MAX_PARTY),
        ("tenant", &submission.tenant, MAX_PARTY),
    ] {
        if value.trim().is_empty() {
            return Err(Error::Admission(format!("the skill's {what} is empty")));
        }
        if value.len() > bound {
            return Err(Error::Admission(format!(
                "the skill's {what} is {} bytes, over the bound of {bound}",
                value.len()
            )));
        }
    }
    if let Some(description) = &submission.description
        && description.len() > MAX_DESCRIPTION
    {
        return Err(Error::Admission(format!(
            "the skill's description is {} bytes, over the bound of {MAX_DESCRIPTION}",
            description.len()
        )));
    }
    if let Some(schema) = &submission.input_schema {
        let size = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
        if size > MAX_INPUT_SCHEMA {
            return Err(Error::Admission(format!(
                "the skill's input schema is {size} bytes as compact JSON, over the bound of {MAX_INPUT_SCHEMA}"
            )));
        }
    }
    Ok(())
}

/// What every backend checks before an approval, against the record as it
/// is now.
pub(crate) fn check_approval(
    record: &SkillRecord,
    reviewer: &str,
    ttl: Duration,
    config: &AdmissionConfig,
) -> Result<(), Error> {
    if reviewer.trim().is_empty() {
        return Err(Error::Admission("the reviewer is empty".into()));
    }
    if reviewer == record.submitter {
        return Err(Error::Admission(format!(
            "`{reviewer}` submitted skill `{}` and cannot approve it: another reviewer must",
            record.name
        )));
    }
    if reviewer == record.agent {
        return Err(Error::Admission(format!(
            "`{reviewer}` is the agent that generated skill `{}` and cannot approve it",
            record.name
        )));
    }
    if record.state == State::Revoked {
        return Err(Error::Admission(format!(
            "skill `{}` is revoked{}; a revoked skill cannot be approved again",
            record.name,
            record
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )));
    }
    if ttl.is_zero() || ttl > config.max_expiry {
        return Err(Error::Admission(format!(
            "an approval lasts more than 0 and at most {} (admission.max_expiry)",
            humantime::format_duration(config.max_expiry)
        )));
    }
    Ok(())
}

/// What every backend checks before a quarantine or a revocation; returns
/// the reason, cut to what the audit log keeps.
pub(crate) fn check_hold(record: &SkillRecord, reason: &str, to: State) -> Result<String, Error> {
    if reason.trim().is_empty() {
        return Err(Error::Admission(format!(
            "say why the skill is {to}: a reason is required"
        )));
    }
    if record.state == State::Revoked {
        return Err(Error::Admission(format!(
            "skill `{}` is already revoked",
            record.name
        )));
    }
    Ok(reason.chars().take(crate::audit::MAX_STRING).collect())
}

struct Step<'a> {
    from: State,
    to: State,
    actor: &'a str,
    reason: Option<&'a str>,
}

/// What a change of state was, for the caller to record.
#[derive(Clone, Debug)]
pub struct Changed {
    pub record: SkillRecord,
    pub from: State,
}

impl SkillStore {
    /// Open (or create) the store under `dir` (`<data-dir>/skills`).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        crate::fsutil::create_private_dir(&dir.join("blobs"))?;
        let path = dir.join("skills.db");
        let mut db = Connection::open(&path).map_err(|e| {
            Error::Admission(format!(
                "opening the skill database `{}`: {e}",
                path.display()
            ))
        })?;
        db.busy_timeout(Duration::from_secs(10)).map_err(db_error)?;
        // Switching a new database to WAL takes a lock that SQLite does not
        // wait for: another process opening the store at the same moment
        // makes it fail at once, so it is tried again for as long as the
        // busy timeout.
        let started = std::time::Instant::now();
        while let Err(e) = db.pragma_update(None, "journal_mode", "WAL") {
            let busy = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
            if !busy || started.elapsed() > Duration::from_secs(10) {
                return Err(db_error(e));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        db.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_error)?;
        let version: i64 = db
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db_error)?;
        if version > 2 {
            return Err(Error::Admission(format!(
                "the skill database `{}` has schema version {version}, newer than this Airlock knows (2)",
                path.display()
            )));
        }
        if version == 1 {
            migrate_v1(&mut db).map_err(db_error)?;
        }
        // In one transaction with its version: a crash leaves all or none.
        db.execute_batch(&format!("BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;"))
            .map_err(db_error)?;
        // Counting denials is on the path of every run that had one: its own
        // connection, so it never waits on the store's, and without an fsync
        // a commit (WAL's NORMAL), since a count lost in a crash only
        // delays a quarantine.
        let denials = Connection::open(&path).map_err(db_error)?;
        denials
            .busy_timeout(Duration::from_secs(10))
            .map_err(db_error)?;
        denials
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error)?;
        Ok(SkillStore {
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            denials: Mutex::new(denials),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn blob_path(&self, digest: &SkillDigest) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }

    /// Store an inspected component as `pending`. The bytes must be the ones
    /// inspected. Admitting the same bytes again returns the existing record
    /// unchanged (and `false`).
    pub fn admit(
        &self,
        bytes: &[u8],
        inspection: &Inspection,
        submission: &Submission,
        signed_by: Option<String>,
    ) -> Result<(SkillRecord, bool), Error> {
        let digest = check_submission(bytes, inspection, submission)?;
        if let Some(existing) = self.get(&digest)? {
            return Ok((existing, false));
        }
        let path = self.blob_path(&digest);
        crate::fsutil::write_private(&path, bytes)?;
        let now = now_ms();
        let capabilities: Vec<&str> = inspection.capabilities.iter().map(|c| c.as_str()).collect();
        let mut db = self.db();
        let tx = db.transaction().map_err(db_error)?;
        // Another handle may have admitted the same bytes since the read:
        // theirs stands, as if this had come second.
        let inserted = tx.execute(
            &format!(
                "INSERT INTO skills ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending', NULL, NULL, NULL, NULL, ?7, ?13) \
                 ON CONFLICT (digest) DO NOTHING"
            ),
            params![
                digest.to_hex(),
                submission.name,
                submission.description,
                submission.agent,
                submission.trust.to_string(),
                submission.submitter,
                sql_ms(now),
                sql_ms(inspection.size),
                serde_json::to_string(&inspection.imports).unwrap_or_default(),
                serde_json::to_string(&capabilities).unwrap_or_default(),
                submission.input_schema.as_ref().map(|s| s.to_string()),
                signed_by,
                submission.tenant,
            ],
        )
        .map_err(db_error)?;
        if inserted == 1 {
            tx.execute(
                "INSERT INTO transitions (digest, at_ms, from_state, to_state, actor, reason) \
                 VALUES (?1, ?2, NULL, 'pending', ?3, NULL)",
                params![digest.to_hex(), sql_ms(now), submission.submitter],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        drop(db);
        let record = self
            .get(&digest)?
            .ok_or_else(|| Error::Store("the admitted skill is not in the database".into()))?;
        Ok((record, inserted == 1))
    }

    pub fn get(&self, digest: &SkillDigest) -> Result<Option<SkillRecord>, Error> {
        let now = now_ms();
        self.db()
            .query_row(
                &format!("SELECT {COLUMNS} FROM skills WHERE digest = ?1"),
                [digest.to_hex()],
                |row| record_from_row(row, now),
            )
            .optional()
            .map_err(db_error)
    }

    /// Every skill, newest first.
    pub fn list(&self) -> Result<Vec<SkillRecord>, Error> {
        let now = now_ms();
        let db = self.db();
        let mut statement = db
            .prepare(&format!(
                "SELECT {COLUMNS} FROM skills ORDER BY admitted_ms DESC, digest"
            ))
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |row| record_from_row(row, now))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// A skill's changes of state, oldest first.
    pub fn history(&self, digest: &SkillDigest) -> Result<Vec<Transition>, Error> {
        let db = self.db();
        let mut statement = db
            .prepare(
                "SELECT at_ms, from_state, to_state, actor, reason FROM transitions \
                 WHERE digest = ?1 ORDER BY id",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([digest.to_hex()], |row| {
                Ok(Transition {
                    at_ms: ms(row.get(0)?),
                    from: row.get(1)?,
                    to: row.get(2)?,
                    actor: row.get(3)?,
                    reason: row.get(4)?,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }

    /// Find a skill by its digest or a unique prefix of it (at least 8 hex
    /// characters).
    pub fn resolve(&self, text: &str) -> Result<SkillDigest, Error> {
        let prefix = match digest_or_prefix(text)? {
            Ok(digest) => return Ok(digest),
            Err(prefix) => prefix,
        };
        let db = self.db();
        let mut statement = db
            .prepare("SELECT digest FROM skills WHERE substr(digest, 1, ?2) = ?1 LIMIT 2")
            .map_err(db_error)?;
        let found: Vec<String> = statement
            .query_map(params![prefix, prefix.len() as i64], |row| row.get(0))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        only_match(&prefix, &found)
    }

    fn require(&self, digest: &SkillDigest) -> Result<SkillRecord, Error> {
        self.get(digest)?
            .ok_or_else(|| Error::Admission(format!("no admitted skill has digest {digest}")))
    }

    fn change(
        &self,
        digest: &SkillDigest,
        step: Step<'_>,
        set: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<Changed, Error> {
        let Step {
            from,
            to,
            actor,
            reason,
        } = step;
        let now = now_ms();
        let mut db = self.db();
        // Immediate: the write lock is taken before the state is read again,
        // so a change checked against a state another writer has since
        // changed (a revoke racing an approval) is refused, not applied.
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let hex = digest.to_hex();
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM skills WHERE digest = ?1",
                [&hex],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error)?;
        let checked = if from == State::Expired {
            "approved"
        } else {
            from.as_str()
        };
        match current.as_deref() {
            None => {
                return Err(Error::Admission(format!(
                    "no admitted skill has digest {digest}"
                )));
            }
            Some(current) if current != checked => {
                return Err(Error::Admission(format!(
                    "skill {digest} was changed by someone else while this change was \
                     checked (it is now {current}); nothing was changed: look again and retry"
                )));
            }
            Some(_) => {}
        }
        let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(3 + values.len());
        let now_sql = sql_ms(now);
        let stored = if to == State::Expired {
            "approved"
        } else {
            to.as_str()
        };
        all.push(&hex);
        all.push(&stored);
        all.push(&now_sql);
        all.extend_from_slice(values);
        let changed = tx
            .execute(
                &format!("UPDATE skills SET state = ?2, changed_ms = ?3{set} WHERE digest = ?1"),
                all.as_slice(),
            )
            .map_err(db_error)?;
        if changed != 1 {
            return Err(Error::Admission(format!(
                "no admitted skill has digest {digest}"
            )));
        }
        tx.execute(
            "INSERT INTO transitions (digest, at_ms, from_state, to_state, actor, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![hex, now_sql, from.as_str(), to.as_str(), actor, reason],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        drop(db);
        Ok(Changed {
            record: self.require(digest)?,
            from,
        })
    }

    /// Approve a skill for `ttl`. The reviewer may be neither the submitter
    /// nor the agent that generated it; a revoked skill stays revoked.
    pub fn approve(
        &self,
        digest: &SkillDigest,
        reviewer: &str,
        ttl: Duration,
        config: &AdmissionConfig,
    ) -> Result<Changed, Error> {
        let record = self.require(digest)?;
        check_approval(&record, reviewer, ttl, config)?;
        let now = now_ms();
        let expires =
            sql_ms(now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
        let approved = sql_ms(now);
        let step = Step {
            from: record.state,
            to: State::Approved,
            actor: reviewer,
            reason: None,
        };
        self.change(
            digest,
            step,
            ", reviewer = ?4, approved_ms = ?5, expires_ms = ?6, reason = NULL",
            &[&reviewer, &approved, &expires],
        )
    }

    /// Hold a skill for review: it stops running and is not run again until
    /// a reviewer approves it.
    pub fn quarantine(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<Changed, Error> {
        self.hold(digest, actor, reason, State::Quarantined)
    }

    /// End a skill for good.
    pub fn revoke(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
    ) -> Result<Changed, Error> {
        self.hold(digest, actor, reason, State::Revoked)
    }

    fn hold(
        &self,
        digest: &SkillDigest,
        actor: &str,
        reason: &str,
        to: State,
    ) -> Result<Changed, Error> {
        let record = self.require(digest)?;
        let reason = check_hold(&record, reason, to)?;
        let step = Step {
            from: record.state,
            to,
            actor,
            reason: Some(&reason),
        };
        self.change(digest, step, ", reason = ?4", &[&reason])
    }

    /// The component's bytes, hashed again: a changed byte is refused.
    pub fn load(&self, digest: &SkillDigest) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading the stored skill {}", digest.short()), e))?;
        let actual = SkillDigest::of(&bytes);
        if actual != *digest {
            return Err(Error::Admission(format!(
                "the stored component for {digest} has changed on disk (its bytes hash to {actual}); refusing to load it"
            )));
        }
        Ok(bytes)
    }

    /// Count `denied` enforced denials of `digest` now, in the count every
    /// process on the data directory shares: true when the last `window`
    /// holds at least `threshold` of them, and the count starts again.
    pub fn count_denials(
        &self,
        digest: &SkillDigest,
        denied: usize,
        threshold: u32,
        window: Duration,
    ) -> Result<bool, Error> {
        if threshold == 0 || denied == 0 {
            return Ok(false);
        }
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let since = now.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        let added = i64::try_from(denied.min(threshold as usize)).unwrap_or(i64::MAX);
        // Other skills' rows older than a day (or the window, if longer) are
        // swept too: processes may be configured with different windows.
        let stale = since.min(now.saturating_sub(24 * 3600 * 1000));
        let key = digest.to_hex();
        let mut db = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        // Immediate: two processes cannot both read the count below the
        // threshold and each add to it unseen.
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error)?;
        tx.execute(
            "DELETE FROM denials WHERE at_ms < ?2 OR (digest = ?1 AND at_ms < ?3)",
            params![key, stale, since],
        )
        .map_err(db_error)?;
        tx.execute(
            "INSERT INTO denials (digest, at_ms, count) VALUES (?1, ?2, ?3)",
            params![key, now, added],
        )
        .map_err(db_error)?;
        let total: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(count), 0) FROM denials WHERE digest = ?1",
                params![key],
                |row| row.get(0),
            )
            .map_err(db_error)?;
        let reached = total >= i64::from(threshold);
        if reached {
            tx.execute("DELETE FROM denials WHERE digest = ?1", params![key])
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        Ok(reached)
    }

    /// Changes when any process commits to the database: a cheap check for
    /// news before reading states again.
    pub fn data_version(&self) -> Result<i64, Error> {
        self.db()
            .pragma_query_value(None, "data_version", |row| row.get(0))
            .map_err(db_error)
    }
}
