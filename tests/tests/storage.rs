//! Storage against hostile keys and a hostile file tree. The backend is
//! tested directly (no guest), then through a guest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_host_apis::CallError;
use airlock_host_apis::Trust;
use airlock_host_apis::storage::Storage;
use airlock_runtime::Config;
use airlock_runtime::storage::{DirStorage, StorageHandle};
use airlock_tests::{TestNode, results, skills};
use serde_json::json;

/// Every file under `dir` with its contents (symlinks as their target).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    path.clone(),
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(path.clone(), "<dir>".into());
                pending.push(path);
            } else {
                out.insert(
                    path.clone(),
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into(),
                );
            }
        }
    }
    out
}

/// The backend with unlabelled writes and values without their labels.
struct Plain(StorageHandle);

impl Plain {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, CallError> {
        Ok(self.0.get(ns, key).await?.map(|s| s.value))
    }
    async fn put(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), CallError> {
        self.0.put(ns, key, value, Vec::new()).await
    }
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, CallError> {
        self.0.delete(ns, key).await
    }
    async fn list(&self, ns: &str, prefix: &str) -> Result<Vec<String>, CallError> {
        Ok(self.0.list(ns, prefix).await?.keys)
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    storage: Plain,
}

impl Fixture {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Something outside the storage root that must never change.
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret.txt"), "top secret").unwrap();
        std::fs::write(dir.path().join("passwd"), "root:x:0:0").unwrap();
        let config: Config = toml::from_str(config).unwrap();
        let storage = StorageHandle(Arc::new(
            DirStorage::open(&dir.path().join("storage"), Arc::new(config)).unwrap(),
        ));
        Fixture {
            dir,
            storage: Plain(storage),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Everything outside `storage/<namespace>`.
    fn outside(&self, namespace: &str) -> BTreeMap<PathBuf, String> {
        let inside = self.root().join(namespace);
        tree(self.dir.path())
            .into_iter()
            .filter(|(p, _)| !p.starts_with(&inside))
            .collect()
    }
}

const HOSTILE_KEYS: &[&str] = &[
    "../escape",
    "../../passwd",
    "/etc/passwd",
    "/absolute",
    "..",
    ".",
    "a/../../b",
    "..\\..\\windows",
    "back\\slash",
    "%2e%2e%2fencoded",
    "..%2f..%2fencoded",
    "%00nul-encoded",
    "./dot",
    "~/home",
    "sub/dir/key",
    "ünïcødé/../key",
];

#[tokio::test]
async fn traversal_keys_stay_inside_the_namespace() {
    let fx = Fixture::new("");
    fx.storage.put("team", "seed", b"x".to_vec()).await.unwrap();
    let before = fx.outside("team");
    for key in HOSTILE_KEYS {
        fx.storage
            .put("team", key, key.as_bytes().to_vec())
            .await
            .unwrap();
    }
    for key in HOSTILE_KEYS {
        assert_eq!(
            fx.storage.get("team", key).await.unwrap(),
            Some(key.as_bytes().to_vec())
        );
    }
    let mut listed = fx.storage.list("team", "").await.unwrap();
    listed.retain(|k| k != "seed");
    let mut expected: Vec<String> = HOSTILE_KEYS.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // One flat file per key, directly in the namespace directory.
    let inside: Vec<PathBuf> = std::fs::read_dir(fx.root().join("team"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(inside.len(), HOSTILE_KEYS.len() + 1);
    assert!(inside.iter().all(|p| p.is_file()));
    assert_eq!(
        fx.outside("team"),
        before,
        "nothing outside the namespace changed"
    );
    for key in HOSTILE_KEYS {
        assert!(fx.storage.delete("team", key).await.unwrap());
    }
    assert_eq!(fx.outside("team"), before);
}

#[tokio::test]
async fn nul_and_control_characters_are_invalid() {
    let fx = Fixture::new("");
    for key in [
        "a\0b",
        "\0",
        "line\nbreak",
        "tab\there",
        "\x1b[31m",
        "del\x7f",
        "nel\u{85}",
    ] {
        for result in [
            fx.storage.put("team", key, b"v".to_vec()).await.map(|_| ()),
            fx.storage.get("team", key).await.map(|_| ()),
            fx.storage.delete("team", key).await.map(|_| ()),
        ] {
            match result {
                Err(CallError::Invalid(m)) => assert!(m.contains("control characters"), "{m}"),
                other => panic!("{key:?}: {other:?}"),
            }
        }
    }
    assert!(matches!(
        fx.storage.list("team", "a\0").await,
        Err(CallError::Invalid(_))
    ));
    assert!(matches!(
        fx.storage.put("team", "", b"v".to_vec()).await,
        Err(CallError::Invalid(_))
    ));
}

#[tokio::test]
async fn long_keys_are_invalid() {
    let fx = Fixture::new("");
    let longest = "k".repeat(180);
    fx.storage
        .put("team", &longest, b"v".to_vec())
        .await
        .unwrap();
    match fx
        .storage
        .put("team", &"k".repeat(181), b"v".to_vec())
        .await
    {
        Err(CallError::Invalid(m)) => assert!(m.contains("at most 180 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    match fx.storage.get("team", &"é".repeat(91)).await {
        Err(CallError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_planted_symlink_is_never_followed() {
    let fx = Fixture::new("");
    fx.storage
        .put("team", "key", b"original".to_vec())
        .await
        .unwrap();
    let file = std::fs::read_dir(fx.root().join("team"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&file).unwrap();
    let target = fx.dir.path().join("outside/secret.txt");
    std::os::unix::fs::symlink(&target, &file).unwrap();

    match fx.storage.get("team", "key").await {
        Err(CallError::Unavailable(m)) => assert!(!m.contains("top secret"), "{m}"),
        other => panic!("read through a symlink: {other:?}"),
    }
    // Writing replaces the link; it never writes through it.
    fx.storage
        .put("team", "key", b"new".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "top secret");
    assert_eq!(
        fx.storage.get("team", "key").await.unwrap(),
        Some(b"new".to_vec())
    );
}

#[tokio::test]
async fn labels_stay_with_the_value_until_a_clean_overwrite_or_delete() {
    let fx = Fixture::new("");
    let store = &fx.storage.0;
    let confidential = vec!["confidential".to_string()];
    store
        .put("team", "copy", b"120000".to_vec(), confidential.clone())
        .await
        .unwrap();
    store
        .put("team", "clean", b"weather".to_vec(), Vec::new())
        .await
        .unwrap();
    let got = store.get("team", "copy").await.unwrap().unwrap();
    assert_eq!(got.labels, confidential);
    assert_eq!(
        store.get("team", "clean").await.unwrap().unwrap().labels,
        Vec::<String>::new()
    );
    let listed = store.list("team", "").await.unwrap();
    assert_eq!(listed.keys, ["clean", "copy"]);
    assert_eq!(listed.labels, confidential);
    assert_eq!(store.list("team", "cl").await.unwrap().labels.len(), 0);
    // Labels are invisible as keys and outside the key quota's count.
    store
        .put("team", "copy", b"reset".to_vec(), Vec::new())
        .await
        .unwrap();
    assert!(
        store
            .get("team", "copy")
            .await
            .unwrap()
            .unwrap()
            .labels
            .is_empty()
    );
    store
        .put("team", "copy", b"again".to_vec(), confidential.clone())
        .await
        .unwrap();
    assert!(store.delete("team", "copy").await.unwrap());
    store
        .put("team", "copy", b"new".to_vec(), Vec::new())
        .await
        .unwrap();
    assert!(
        store
            .get("team", "copy")
            .await
            .unwrap()
            .unwrap()
            .labels
            .is_empty()
    );
    // A labels file replaced by a symlink is refused, not followed.
    store
        .put("team", "copy", b"x".to_vec(), confidential.clone())
        .await
        .unwrap();
    let labels = std::fs::read_dir(fx.root().join("team"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with('l'))
        .unwrap();
    std::fs::remove_file(&labels).unwrap();
    std::os::unix::fs::symlink(fx.dir.path().join("outside/secret.txt"), &labels).unwrap();
    assert!(matches!(
        store.get("team", "copy").await,
        Err(CallError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_symlinked_namespace_directory_is_refused() {
    let fx = Fixture::new("");
    std::fs::create_dir_all(fx.root()).unwrap();
    std::os::unix::fs::symlink(fx.dir.path().join("outside"), fx.root().join("team")).unwrap();
    let before = tree(&fx.dir.path().join("outside"));
    assert!(matches!(
        fx.storage.put("team", "k", b"v".to_vec()).await,
        Err(CallError::Unavailable(_))
    ));
    assert!(matches!(
        fx.storage.get("team", "secret.txt").await,
        Err(CallError::Unavailable(_))
    ));
    assert_eq!(tree(&fx.dir.path().join("outside")), before);
}

#[tokio::test]
async fn one_namespace_cannot_see_another() {
    let fx = Fixture::new("");
    fx.storage
        .put("alpha", "shared-name", b"alpha's".to_vec())
        .await
        .unwrap();
    assert_eq!(fx.storage.get("beta", "shared-name").await.unwrap(), None);
    assert_eq!(
        fx.storage.list("beta", "").await.unwrap(),
        Vec::<String>::new()
    );
    assert!(!fx.storage.delete("beta", "shared-name").await.unwrap());
    for key in ["../alpha/shared-name", "../alpha", "..%2falpha"] {
        assert_eq!(fx.storage.get("beta", key).await.unwrap(), None);
    }
    assert_eq!(
        fx.storage.get("alpha", "shared-name").await.unwrap(),
        Some(b"alpha's".to_vec())
    );
}

#[tokio::test]
async fn quotas_are_checked_before_writing() {
    let fx = Fixture::new("[storage]\nmax_keys = 3\nmax_bytes = 100\nmax_value_bytes = 60\n");
    for key in ["a", "b", "c"] {
        fx.storage.put("team", key, vec![b'x'; 20]).await.unwrap();
    }
    match fx.storage.put("team", "d", b"x".to_vec()).await {
        Err(CallError::Limit(m)) => assert!(m.contains("quota of 3 keys"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Replacing a value is not a new key, and counts its old size back.
    fx.storage.put("team", "a", vec![b'y'; 50]).await.unwrap();
    match fx.storage.put("team", "b", vec![b'y'; 60]).await {
        Err(CallError::Limit(m)) => assert!(m.contains("over its quota of 100"), "{m}"),
        other => panic!("{other:?}"),
    }
    match fx.storage.put("team", "a", vec![b'y'; 61]).await {
        Err(CallError::Limit(m)) => assert!(m.contains("at most 60 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A refused write changed nothing.
    assert_eq!(
        fx.storage.get("team", "a").await.unwrap(),
        Some(vec![b'y'; 50])
    );
    assert_eq!(fx.storage.get("team", "d").await.unwrap(), None);
    // Deleting frees quota.
    assert!(fx.storage.delete("team", "c").await.unwrap());
    fx.storage.put("team", "d", b"x".to_vec()).await.unwrap();
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(fx.root().join("team"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with('k')), "{names:?}");
}

#[tokio::test]
async fn quotas_count_what_was_already_on_disk() {
    let fx = Fixture::new("[storage]\nmax_keys = 2\n");
    fx.storage.put("team", "a", b"1".to_vec()).await.unwrap();
    fx.storage.put("team", "b", b"2".to_vec()).await.unwrap();
    // A new backend over the same directory (a restart) knows the usage.
    let config: Config = toml::from_str("[storage]\nmax_keys = 2\n").unwrap();
    let again = StorageHandle(Arc::new(
        DirStorage::open(&fx.root(), Arc::new(config)).unwrap(),
    ));
    assert!(matches!(
        again.put("team", "c", b"3".to_vec(), Vec::new()).await,
        Err(CallError::Limit(_))
    ));
}

const CONFIG: &str = r#"
[storage.namespaces]
capability_probe = "team"
"#;

const POLICY: &str = r#"
@id("test/data")
permit (principal, action in Airlock::Action::"data", resource);
"#;

#[tokio::test]
async fn through_a_guest_hostile_keys_stay_inside_its_namespace() {
    let node = TestNode::new(CONFIG, &[("p.cedar", POLICY)]);
    let root = node.dir.path().join("storage");
    std::fs::create_dir_all(root.join("other")).unwrap();
    std::fs::write(root.join("other/kZm9v"), "other namespace").unwrap();
    // The runtime's own state (audit log, keys) changes with every run.
    let own = node.dir.path().join("data");
    let before: BTreeMap<_, _> = tree(node.dir.path())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(root.join("team")) && !p.starts_with(&own))
        .collect();
    let mut calls = Vec::new();
    for key in HOSTILE_KEYS {
        calls.push(json!({"op": "storage.put", "key": key, "value": "pwned"}));
        calls.push(json!({"op": "storage.get", "key": key}));
    }
    calls.push(json!({"op": "storage.get", "key": "../other/foo"}));
    calls.push(json!({"op": "storage.list", "prefix": ""}));
    let report = node
        .run(
            skills::CAPABILITY_PROBE,
            &json!({ "calls": calls }).to_string(),
            Trust::Medium,
        )
        .await;
    let results = results(&report);
    for (i, key) in HOSTILE_KEYS.iter().enumerate() {
        assert_eq!(results[2 * i], json!({"ok": null}), "put {key}");
        assert_eq!(results[2 * i + 1], json!({"ok": "pwned"}), "get {key}");
    }
    assert_eq!(
        results[2 * HOSTILE_KEYS.len()],
        json!({"ok": null}),
        "no way into `other`"
    );
    assert_eq!(
        results[2 * HOSTILE_KEYS.len() + 1]["ok"]
            .as_array()
            .unwrap()
            .len(),
        HOSTILE_KEYS.len()
    );
    let after: BTreeMap<_, _> = tree(node.dir.path())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(root.join("team")) && !p.starts_with(&own))
        .collect();
    // Nothing outside the skill's namespace directory changed.
    assert_eq!(after, before);
    assert_eq!(
        std::fs::read_dir(root.join("team")).unwrap().count(),
        HOSTILE_KEYS.len()
    );
}
