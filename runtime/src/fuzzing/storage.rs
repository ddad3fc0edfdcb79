//! Storage (target `storage`): a sequence of operations over two namespaces
//! against the real directory store and an in-memory model gives the same
//! results; quotas hold; a third namespace whose directory is a symlink out
//! of the root and a key planted as a symlink are never followed; nothing
//! outside the namespace roots changes; a value comes back with exactly the
//! labels its last writer gave it, and a listing with its keys' labels.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_host_apis::CallError;
use airlock_host_apis::storage::{Listing, Storage as _, Stored};
use arbitrary::{Arbitrary, Unstructured};

use super::{Violation, ensure};
use crate::config::{Config, StorageConfig};
use crate::storage::{DirStorage, StorageHandle};

const MAX_KEYS: u64 = 3;
const MAX_BYTES: u64 = 64;
const MAX_VALUE: u64 = 32;
const MAX_KEY: usize = 12;
const OUTSIDE: &[u8] = b"outside the storage root";

#[derive(Debug, Arbitrary)]
enum Op {
    Get {
        ns: u8,
        key: u8,
    },
    Put {
        ns: u8,
        key: u8,
        len: u8,
        fill: u8,
    },
    Delete {
        ns: u8,
        key: u8,
    },
    List {
        ns: u8,
        prefix: u8,
    },
    /// A key of the fuzzer's own choosing.
    PutRaw {
        ns: u8,
        key: String,
        len: u8,
    },
}

fn namespace(n: u8) -> &'static str {
    ["a", "b", "c"]
        .get(usize::from(n % 3))
        .copied()
        .unwrap_or("a")
}

fn key(n: u8) -> String {
    let keys = [
        "x",
        "y",
        "dir/z",
        "../up",
        "ln",
        "",
        "longer-than-12",
        "k\u{7}",
    ];
    keys.get(usize::from(n) % keys.len())
        .copied()
        .unwrap_or("x")
        .to_string()
}

/// The model: what the store should answer.
#[derive(Default)]
struct Model {
    namespaces: BTreeMap<&'static str, BTreeMap<String, Stored>>,
}

impl Model {
    fn valid(key: &str, empty_ok: bool) -> bool {
        (empty_ok || !key.is_empty()) && key.len() <= MAX_KEY && !key.chars().any(char::is_control)
    }

    fn put(
        &mut self,
        ns: &'static str,
        key: &str,
        value: &[u8],
        labels: &[String],
    ) -> Result<(), &'static str> {
        if !Self::valid(key, false) {
            return Err("invalid");
        }
        if value.len() as u64 > MAX_VALUE {
            return Err("limit");
        }
        if ns == "c" {
            return Err("unavailable");
        }
        let map = self.namespaces.entry(ns).or_default();
        let old = map.get(key).map_or(0, |s| s.value.len()) as u64;
        let keys = map.len() as u64 + u64::from(!map.contains_key(key));
        let bytes =
            map.values().map(|s| s.value.len() as u64).sum::<u64>() - old + value.len() as u64;
        if keys > MAX_KEYS || bytes > MAX_BYTES {
            return Err("limit");
        }
        let stored = Stored {
            value: value.to_vec(),
            labels: labels.to_vec(),
        };
        map.insert(key.to_string(), stored);
        Ok(())
    }
}

fn labels_for(fill: u8) -> Vec<String> {
    if fill % 2 == 1 {
        vec!["confidential".to_string()]
    } else {
        Vec::new()
    }
}

fn kind(result: &CallError) -> &'static str {
    match result {
        CallError::Invalid(_) => "invalid",
        CallError::Limit(_) => "limit",
        CallError::Unavailable(_) => "unavailable",
        _ => "other",
    }
}

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    let Ok(ops) = Vec::<Op>::arbitrary(&mut Unstructured::new(bytes)) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Violation(format!("no runtime: {e}")))?;
    runtime.block_on(run(ops))
}

async fn run(ops: Vec<Op>) -> Result<(), Violation> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Violation(format!("{what}: {e}"));
    let dir = tempfile::tempdir().map_err(|e| fail("no temporary directory", &e))?;
    let root = dir.path().join("storage");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("a")).map_err(|e| fail("setup", &e))?;
    std::fs::create_dir_all(&outside).map_err(|e| fail("setup", &e))?;
    std::fs::write(outside.join("secret"), OUTSIDE).map_err(|e| fail("setup", &e))?;
    // Planted by someone with host access: never followed.
    let planted = format!("k{}", {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("ln")
    });
    std::os::unix::fs::symlink(outside.join("secret"), root.join("a").join(planted))
        .map_err(|e| fail("setup", &e))?;
    std::os::unix::fs::symlink(&outside, root.join("c")).map_err(|e| fail("setup", &e))?;
    let config = Config {
        storage: StorageConfig {
            max_keys: MAX_KEYS,
            max_bytes: MAX_BYTES,
            max_value_bytes: MAX_VALUE,
            max_key_bytes: MAX_KEY,
            ..StorageConfig::default()
        },
        ..Config::default()
    };
    let store = StorageHandle(Arc::new(
        DirStorage::open(&root, Arc::new(config)).map_err(|e| fail("open", &e))?,
    ));
    let mut model = Model::default();
    for op in ops.into_iter().take(64) {
        match op {
            Op::Get { ns, key: k } => {
                let (ns, key) = (namespace(ns), key(k));
                let got = store.get(ns, &key).await;
                if key == "ln" || ns == "c" {
                    ensure!(
                        !matches!(&got, Ok(Some(s)) if s.value == OUTSIDE),
                        "get {ns}/{key} read a file outside the store"
                    );
                    continue;
                }
                let want = if Model::valid(&key, false) {
                    Ok(model.namespaces.get(ns).and_then(|m| m.get(&key)).cloned())
                } else {
                    Err("invalid")
                };
                ensure!(
                    got.as_ref().map_err(kind) == want.as_ref().map_err(|e| *e),
                    "get {ns}/{key:?}: store {got:?}, model {want:?}"
                );
            }
            Op::Put {
                ns,
                key: k,
                len,
                fill,
            } => {
                let (ns, key) = (namespace(ns), key(k));
                if key == "ln" {
                    continue;
                }
                let value = vec![fill; usize::from(len % 40)];
                // Odd fills are written by a session that read labelled data.
                let labels = labels_for(fill);
                let got = store.put(ns, &key, value.clone(), labels.clone()).await;
                let want = model.put(ns, &key, &value, &labels);
                ensure!(
                    got.as_ref().map_err(kind) == want.as_ref().map_err(|e| *e),
                    "put {ns}/{key:?} ({} bytes): store {got:?}, model {want:?}",
                    value.len()
                );
            }
            Op::PutRaw { ns, key, len } => {
                let ns = namespace(ns);
                if key == "ln" {
                    continue;
                }
                let value = vec![b'r'; usize::from(len % 40)];
                let got = store.put(ns, &key, value.clone(), Vec::new()).await;
                let want = model.put(ns, &key, &value, &[]);
                ensure!(
                    got.as_ref().map_err(kind) == want.as_ref().map_err(|e| *e),
                    "put {ns}/{key:?}: store {got:?}, model {want:?}"
                );
            }
            Op::Delete { ns, key: k } => {
                let (ns, key) = (namespace(ns), key(k));
                if key == "ln" {
                    continue;
                }
                let got = store.delete(ns, &key).await;
                let want = if !Model::valid(&key, false) {
                    Err("invalid")
                } else if ns == "c" {
                    Err("unavailable")
                } else {
                    Ok(model
                        .namespaces
                        .get_mut(ns)
                        .and_then(|m| m.remove(&key))
                        .is_some())
                };
                ensure!(
                    got.as_ref().map_err(kind) == want.as_ref().map_err(|e| *e),
                    "delete {ns}/{key:?}: store {got:?}, model {want:?}"
                );
            }
            Op::List { ns, prefix } => {
                let ns = namespace(ns);
                let prefix = ["", "x", "d", "l"]
                    .get(usize::from(prefix % 4))
                    .copied()
                    .unwrap_or("");
                let got = store.list(ns, prefix).await;
                let want: Result<Listing, &str> = if ns == "c" {
                    Err("unavailable")
                } else {
                    let listed: Vec<(&String, &Stored)> = model
                        .namespaces
                        .get(ns)
                        .map(|m| m.iter().filter(|(k, _)| k.starts_with(prefix)).collect())
                        .unwrap_or_default();
                    let mut keys: Vec<String> = listed.iter().map(|(k, _)| (*k).clone()).collect();
                    let mut labels: Vec<String> = listed
                        .iter()
                        .flat_map(|(_, s)| s.labels.iter().cloned())
                        .collect();
                    labels.sort();
                    labels.dedup();
                    // The planted link has a key's name; it lists, never reads.
                    if ns == "a" && "ln".starts_with(prefix) {
                        keys.push("ln".into());
                        keys.sort();
                    }
                    Ok(Listing { keys, labels })
                };
                ensure!(
                    got.as_ref().map_err(kind) == want.as_ref().map_err(|e| *e),
                    "list {ns} {prefix:?}: store {got:?}, model {want:?}"
                );
            }
        }
    }
    let names: Vec<_> = std::fs::read_dir(&outside)
        .map_err(|e| fail("reading outside", &e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    ensure!(
        names.len() == 1,
        "files appeared outside the store: {names:?}"
    );
    let secret = std::fs::read(outside.join("secret")).unwrap_or_default();
    ensure!(secret == OUTSIDE, "a file outside the store changed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace filled to its key and byte quotas, in the model too.
    #[test]
    fn quotas_and_refusals_agree_with_the_model() {
        let put = |ns, key, len| Op::Put {
            ns,
            key,
            len,
            fill: b'v',
        };
        let ops = vec![
            put(0, 0, 10),
            put(0, 1, 30),
            put(0, 2, 20),
            put(0, 3, 1),  // a fourth key: over the quota
            put(0, 1, 39), // over the value size
            put(0, 1, 35), // over the byte quota with the others
            Op::Delete { ns: 0, key: 2 },
            put(0, 3, 1), // room again
            put(1, 0, 5), // another namespace has its own quotas
            put(2, 0, 5), // the symlinked namespace
            put(0, 5, 1), // an empty key
            put(0, 6, 1), // a key over 12 bytes
            put(0, 7, 1), // a control character
            Op::Get { ns: 0, key: 4 },
            Op::Get { ns: 2, key: 0 },
            Op::List { ns: 0, prefix: 0 },
            Op::List { ns: 0, prefix: 3 },
            Op::List { ns: 2, prefix: 0 },
            Op::PutRaw {
                ns: 1,
                key: "../../outside/secret".into(),
                len: 3,
            },
            Op::Get { ns: 0, key: 3 },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(run(ops)).unwrap_or_else(|v| panic!("{v}"));
    }

    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("storage") {
            if let Err(v) = super::check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
