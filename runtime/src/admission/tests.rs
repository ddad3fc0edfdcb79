use std::time::Duration;

use super::*;
use crate::inspect::Capability;

/// Stands for a component: the store keeps and checks bytes; the engine
/// (tested elsewhere) inspects them.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 stands for a component";

fn inspect(bytes: &[u8], _max: u64) -> Result<Inspection, Error> {
    Ok(Inspection {
        digest: SkillDigest::of(bytes),
        size: bytes.len() as u64,
        imports: vec!["airlock:skill/storage@0.1.0".into()],
        exports: vec!["run".into()],
        capabilities: [Capability::Storage].into_iter().collect(),
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: SkillStore,
    config: AdmissionConfig,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SkillStore::open(&dir.path().join("skills")).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            _dir: dir,
            store,
            config: AdmissionConfig::default(),
        }
    }

    fn admit(&self) -> SkillRecord {
        let inspection = inspect(EMPTY_COMPONENT, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let submission = Submission {
            name: "empty".into(),
            agent: "agent-7".into(),
            trust: Trust::Low,
            submitter: "alice".into(),
            ..Submission::default()
        };
        let (record, fresh) = self
            .store
            .admit(EMPTY_COMPONENT, &inspection, &submission, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(fresh);
        record
    }

    fn err(&self, result: Result<Changed, Error>) -> String {
        match result {
            Ok(changed) => panic!("allowed: {:?}", changed.record.state),
            Err(e) => e.to_string(),
        }
    }
}

fn week() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

#[test]
fn a_skill_is_pending_then_approved_then_quarantined_then_approved_then_revoked() {
    let f = Fixture::new();
    let record = f.admit();
    let d = record.digest;
    assert_eq!(record.state, State::Pending);
    assert!(
        record
            .refusal()
            .unwrap_or_default()
            .contains("pending review")
    );

    let approved = f
        .store
        .approve(&d, "bob", week(), &f.config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (approved.from, approved.record.state),
        (State::Pending, State::Approved)
    );
    assert_eq!(approved.record.reviewer.as_deref(), Some("bob"));
    assert_eq!(approved.record.refusal(), None);

    let held = f
        .store
        .quarantine(&d, "carol", "it probed the metadata service")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held.record.state, State::Quarantined);
    let why = held.record.refusal().unwrap_or_default();
    assert!(
        why.contains("quarantined: it probed the metadata service"),
        "{why}"
    );

    let again = f
        .store
        .approve(&d, "bob", week(), &f.config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (again.from, again.record.state),
        (State::Quarantined, State::Approved)
    );
    assert_eq!(again.record.reason, None);

    let revoked = f
        .store
        .revoke(&d, "carol", "superseded")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(revoked.record.state, State::Revoked);
    let err = f.err(f.store.approve(&d, "bob", week(), &f.config));
    assert!(err.contains("cannot be approved again"), "{err}");
    let err = f.err(f.store.quarantine(&d, "carol", "x"));
    assert!(err.contains("already revoked"), "{err}");

    let history: Vec<_> = f
        .store
        .history(&d)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|t| (t.from, t.to, t.actor))
        .collect();
    let step = |from: Option<&str>, to: &str, actor: &str| {
        (from.map(String::from), to.to_string(), actor.to_string())
    };
    assert_eq!(
        history,
        vec![
            step(None, "pending", "alice"),
            step(Some("pending"), "approved", "bob"),
            step(Some("approved"), "quarantined", "carol"),
            step(Some("quarantined"), "approved", "bob"),
            step(Some("approved"), "revoked", "carol"),
        ]
    );
}

#[test]
fn the_submitter_and_the_agent_cannot_approve() {
    let f = Fixture::new();
    let d = f.admit().digest;
    let err = f.err(f.store.approve(&d, "alice", week(), &f.config));
    assert!(
        err.contains("`alice` submitted skill `empty` and cannot approve it"),
        "{err}"
    );
    let err = f.err(f.store.approve(&d, "agent-7", week(), &f.config));
    assert!(err.contains("agent that generated"), "{err}");
    assert_eq!(
        f.store.get(&d).ok().flatten().map(|r| r.state),
        Some(State::Pending)
    );
}

#[test]
fn an_approval_expires_and_the_skill_is_refused() {
    let f = Fixture::new();
    let d = f.admit().digest;
    f.store
        .approve(&d, "bob", Duration::from_millis(30), &f.config)
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(60));
    let record = f
        .store
        .get(&d)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("gone"));
    assert_eq!(record.state, State::Expired);
    let why = record.refusal().unwrap_or_default();
    assert!(
        why.contains("expired") && why.contains("approve it again"),
        "{why}"
    );
    // Approved again, it runs again.
    let again = f
        .store
        .approve(&d, "bob", week(), &f.config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (again.from, again.record.state),
        (State::Expired, State::Approved)
    );
}

#[test]
fn an_approval_longer_than_the_operator_allows_is_refused() {
    let f = Fixture::new();
    let d = f.admit().digest;
    let err = f.err(
        f.store
            .approve(&d, "bob", Duration::from_secs(365 * 24 * 3600), &f.config),
    );
    assert!(err.contains("admission.max_expiry"), "{err}");
}

#[test]
fn a_reason_is_required_to_hold_a_skill() {
    let f = Fixture::new();
    let d = f.admit().digest;
    let err = f.err(f.store.quarantine(&d, "carol", "  "));
    assert!(err.contains("a reason is required"), "{err}");
}

#[test]
fn a_flipped_byte_in_a_stored_component_is_refused_at_load() {
    let f = Fixture::new();
    let d = f.admit().digest;
    assert_eq!(f.store.load(&d).unwrap_or_default(), EMPTY_COMPONENT);
    let path = f.store.blob_path(&d);
    let mut bytes = std::fs::read(&path).unwrap_or_default();
    bytes[5] ^= 1;
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let err = f
        .store
        .load(&d)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("has changed on disk"), "{err}");
}

#[test]
fn admitting_the_same_bytes_again_changes_nothing() {
    let f = Fixture::new();
    let d = f.admit().digest;
    f.store
        .approve(&d, "bob", week(), &f.config)
        .unwrap_or_else(|e| panic!("{e}"));
    let inspection = inspect(EMPTY_COMPONENT, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    let submission = Submission {
        name: "renamed".into(),
        agent: "other".into(),
        submitter: "mallory".into(),
        ..Submission::default()
    };
    let (record, fresh) = f
        .store
        .admit(EMPTY_COMPONENT, &inspection, &submission, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!fresh);
    assert_eq!(
        (record.name.as_str(), record.state),
        ("empty", State::Approved)
    );
}

#[test]
fn digests_resolve_from_a_unique_prefix() {
    let f = Fixture::new();
    let d = f.admit().digest;
    let hex = d.to_hex();
    assert_eq!(f.store.resolve(&hex[..10]).ok(), Some(d));
    assert!(f.store.resolve(&hex[..4]).is_err(), "too short");
    let other = if hex.starts_with('0') {
        "11111111"
    } else {
        "00000000"
    };
    let err = f
        .store
        .resolve(other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("no admitted skill"), "{err}");
}

#[test]
fn signatures_are_checked_against_the_trusted_keys() {
    use ed25519_dalek::Signer;
    let signer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut config = AdmissionConfig::default();
    config.trusted_keys.insert(
        "release".into(),
        base64::engine::general_purpose::STANDARD.encode(signer.verifying_key().to_bytes()),
    );
    let keys = config.keys().unwrap_or_else(|e| panic!("{e}"));
    let digest = SkillDigest::of(EMPTY_COMPONENT);
    let good = signer.sign(digest.as_bytes()).to_bytes();
    let bad = stranger.sign(digest.as_bytes()).to_bytes();
    assert_eq!(
        check_signature(&digest, Some(&good), &keys, true).ok(),
        Some(Some("release".to_string()))
    );
    let err = check_signature(&digest, Some(&bad), &keys, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("does not verify with any trusted key"),
        "{err}"
    );
    let other = SkillDigest::of(b"other bytes");
    assert!(
        check_signature(&other, Some(&good), &keys, false).is_err(),
        "bound to the digest"
    );
    let err = check_signature(&digest, None, &keys, true)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("only signed skills"), "{err}");
    assert_eq!(
        check_signature(&digest, None, &keys, false).ok(),
        Some(None)
    );
    let text = base64::engine::general_purpose::STANDARD.encode(good);
    assert_eq!(parse_signature(text.as_bytes()).ok(), Some(good.to_vec()));
    assert!(parse_signature(b"nonsense").is_err());
}

#[test]
fn a_store_is_shared_by_two_handles() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let one = SkillStore::open(&dir.path().join("skills")).unwrap_or_else(|e| panic!("{e}"));
    let two = SkillStore::open(&dir.path().join("skills")).unwrap_or_else(|e| panic!("{e}"));
    let before = two.data_version().unwrap_or_default();
    let inspection = inspect(EMPTY_COMPONENT, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    let submission = Submission {
        name: "empty".into(),
        agent: "a".into(),
        submitter: "s".into(),
        ..Submission::default()
    };
    let (record, _) = one
        .admit(EMPTY_COMPONENT, &inspection, &submission, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        two.data_version().unwrap_or_default(),
        before,
        "the other handle sees news"
    );
    assert_eq!(
        two.get(&record.digest).ok().flatten().map(|r| r.state),
        Some(State::Pending)
    );
}

#[test]
fn the_same_bytes_admitted_at_once_by_several_handles_are_one_skill() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let inspection = inspect(EMPTY_COMPONENT, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    let handles = 6;
    let start = std::sync::Barrier::new(handles);
    let results: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..handles)
            .map(|n| {
                let (dir, start, inspection) = (dir.path(), &start, &inspection);
                scope.spawn(move || {
                    // Opened at once too, and past the barrier whatever
                    // happens, so that one failure cannot strand the rest.
                    let store = SkillStore::open(&dir.join("skills"));
                    start.wait();
                    let submission = Submission {
                        name: format!("empty-{n}"),
                        agent: "a".into(),
                        submitter: format!("s{n}"),
                        ..Submission::default()
                    };
                    store?.admit(EMPTY_COMPONENT, inspection, &submission, None)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("an admission panicked")))
            .collect()
    });
    let mut fresh = 0;
    let mut names = std::collections::HashSet::new();
    for result in results {
        let (record, new) = result.unwrap_or_else(|e| panic!("an admission failed: {e}"));
        fresh += usize::from(new);
        names.insert(record.name);
    }
    assert_eq!(fresh, 1, "one admission is the new one");
    assert_eq!(
        names.len(),
        1,
        "every caller gets the one record: {names:?}"
    );
    let store = SkillStore::open(&dir.path().join("skills")).unwrap_or_else(|e| panic!("{e}"));
    let digest = SkillDigest::of(EMPTY_COMPONENT);
    let history = store.history(&digest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(history.len(), 1, "one admission on record");
}

#[test]
fn a_version_1_database_is_migrated_and_its_skills_belong_to_the_default_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let skills = dir.path().join("skills");
    std::fs::create_dir_all(&skills).unwrap();
    let tenant_column = "    changed_ms   INTEGER NOT NULL,      -- the last change of state\n    tenant       TEXT NOT NULL DEFAULT 'default' -- the submitter's tenant\n";
    assert!(SCHEMA.contains(tenant_column));
    let denials = SCHEMA.find("CREATE TABLE IF NOT EXISTS denials").unwrap();
    let v1 = format!(
        "{}PRAGMA user_version = 1;",
        &SCHEMA[..denials].replace(tenant_column, "    changed_ms   INTEGER NOT NULL\n")
    );
    {
        let db = Connection::open(skills.join("skills.db")).unwrap();
        db.execute_batch(&v1).unwrap();
        db.execute(
            "INSERT INTO skills (digest, name, agent, trust, submitter, admitted_ms, size, \
             imports, capabilities, state, changed_ms) \
             VALUES (?1, 'old', 'agent-7', 'low', 'alice', 1, 3, '[]', '[]', 'pending', 1)",
            [SkillDigest::of(b"old").to_hex()],
        )
        .unwrap();
    }
    let store = SkillStore::open(&skills).unwrap();
    let old = store.get(&SkillDigest::of(b"old")).unwrap().unwrap();
    assert_eq!(old.tenant, DEFAULT_TENANT);
    let version: i64 = store
        .db()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
    // And the later table is there.
    assert!(
        !store
            .count_denials(&old.digest, 1, 2, Duration::from_secs(60))
            .unwrap()
    );
    drop(store);
    // Opening again is a no-op, not a second ALTER.
    SkillStore::open(&skills).unwrap();
}

#[test]
fn denials_counted_by_two_processes_add_up_and_then_start_again() {
    let dir = tempfile::tempdir().unwrap();
    let one = SkillStore::open(&dir.path().join("skills")).unwrap();
    let two = SkillStore::open(&dir.path().join("skills")).unwrap();
    let skill = SkillDigest::of(b"skill");
    let other = SkillDigest::of(b"other");
    let minute = Duration::from_secs(60);
    assert!(!one.count_denials(&skill, 2, 4, minute).unwrap());
    assert!(
        !two.count_denials(&other, 3, 4, minute).unwrap(),
        "another skill's count is its own"
    );
    assert!(!two.count_denials(&skill, 1, 4, minute).unwrap());
    assert!(
        one.count_denials(&skill, 1, 4, minute).unwrap(),
        "2 + 1 + 1 reach 4"
    );
    // Reached: the count starts again.
    assert!(!two.count_denials(&skill, 3, 4, minute).unwrap());
    // One run's denials past the threshold are enough alone.
    let third = SkillDigest::of(b"third");
    assert!(one.count_denials(&third, 9, 4, minute).unwrap());
}

#[test]
fn a_database_from_before_denials_were_counted_gains_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let skills = dir.path().join("skills");
    std::fs::create_dir_all(&skills).unwrap();
    let denials = SCHEMA.find("CREATE TABLE IF NOT EXISTS denials").unwrap();
    {
        let db = Connection::open(skills.join("skills.db")).unwrap();
        db.execute_batch(&format!("{}PRAGMA user_version = 2;", &SCHEMA[..denials]))
            .unwrap();
    }
    let store = SkillStore::open(&skills).unwrap();
    let skill = SkillDigest::of(b"skill");
    assert!(
        !store
            .count_denials(&skill, 1, 2, Duration::from_secs(60))
            .unwrap()
    );
    assert!(
        store
            .count_denials(&skill, 1, 2, Duration::from_secs(60))
            .unwrap()
    );
}

#[test]
fn denials_older_than_the_window_no_longer_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = SkillStore::open(&dir.path().join("skills")).unwrap();
    let skill = SkillDigest::of(b"skill");
    let window = Duration::from_millis(50);
    assert!(!store.count_denials(&skill, 3, 4, window).unwrap());
    std::thread::sleep(Duration::from_millis(120));
    assert!(!store.count_denials(&skill, 3, 4, window).unwrap());
    assert!(
        store
            .count_denials(&skill, 1, 4, Duration::from_secs(60))
            .unwrap()
    );
}

/// An approval checked while the skill was pending, applied after another
/// handle revoked it, must not bring the revoked skill back.
#[test]
fn a_change_checked_against_a_stale_state_is_refused() {
    let f = Fixture::new();
    let record = f.admit();
    let other = SkillStore::open(&f.store.dir).unwrap_or_else(|e| panic!("{e}"));
    other
        .revoke(&record.digest, "security", "leaked a key")
        .unwrap_or_else(|e| panic!("{e}"));
    let stale = Step {
        from: State::Pending,
        to: State::Approved,
        actor: "bob",
        reason: None,
    };
    let message = f.err(f.store.change(&record.digest, stale, "", &[]));
    assert!(
        message.contains("was changed by someone else") && message.contains("now revoked"),
        "{message}"
    );
    let now = f.store.get(&record.digest).ok().flatten().map(|r| r.state);
    assert_eq!(now, Some(State::Revoked));
    let history = f.store.history(&record.digest).unwrap_or_default();
    assert_eq!(history.len(), 2, "admitted and revoked, nothing else");
}

/// A CLI and a server started together on a new data directory both open
/// the store at once.
#[test]
fn a_new_store_opened_by_several_processes_at_once_opens_for_each() {
    let mut failures = Vec::new();
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let start = std::sync::Barrier::new(6);
        let opened: Vec<Result<SkillStore, Error>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (dir, start) = (dir.path(), &start);
                    scope.spawn(move || {
                        start.wait();
                        SkillStore::open(&dir.join("skills"))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| panic!("an open panicked")))
                .collect()
        });
        failures.extend(
            opened
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string())),
        );
    }
    assert!(
        failures.is_empty(),
        "{} opens failed: {:?}",
        failures.len(),
        failures.first()
    );
}
