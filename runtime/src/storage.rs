//! Key-value storage in a directory, one sub-directory per namespace.
//!
//! Every file operation goes through cap-std handles opened on the storage
//! root, so no path can leave it. A key becomes the file name `k` +
//! base64url(key): no guest byte is ever a path separator, and `.`/`..` cannot
//! be produced. Files that are not regular files (a planted symlink, a
//! directory) are never read or followed. Quotas are checked before writing;
//! writes go to a temporary file that is renamed into place.
//!
//! A value written by a session that had read labelled data carries those
//! labels, in a file `l` + base64url(key) beside it. Labels are written
//! before a labelled value and removed after an unlabelled one, and read
//! both before and after the value: a reader racing a writer may see more
//! labels than the value carries, never fewer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use airlock_host_apis::CallError;
use airlock_host_apis::storage::{Listing, Stored};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::Error;
use crate::config::{Config, StorageConfig, valid_namespace};

/// Where a namespace stands against its quotas.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    keys: u64,
    bytes: u64,
}

struct Namespace {
    dir: Dir,
    /// Also serializes writers, so quota checks and writes do not interleave.
    usage: Mutex<Usage>,
}

/// The storage backend: a directory of namespaces.
pub struct DirStorage {
    root: Dir,
    root_path: PathBuf,
    limits: StorageConfig,
    config: Arc<Config>,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
}

impl std::fmt::Debug for DirStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStorage")
            .field("root", &self.root_path)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> CallError {
    CallError::Unavailable(format!("storage {what} failed: {e}"))
}

fn encode(key: &str) -> String {
    format!("k{}", URL_SAFE_NO_PAD.encode(key.as_bytes()))
}

/// The file beside a key's value that holds the labels the value carries.
fn labels_name(key: &str) -> String {
    format!("l{}", URL_SAFE_NO_PAD.encode(key.as_bytes()))
}

/// At most this much of a labels file is read: labels are operator names.
const MAX_LABELS_BYTES: u64 = 4096;

fn decode(name: &str) -> Option<String> {
    let encoded = name.strip_prefix('k')?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

impl DirStorage {
    /// Open (creating if needed) the storage root.
    pub fn open(root: &Path, config: Arc<Config>) -> Result<Self, Error> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating `{}`", root.display()), e))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| Error::io(format!("opening `{}`", root.display()), e))?;
        Ok(DirStorage {
            root: dir,
            root_path: root.to_path_buf(),
            limits: config.storage.clone(),
            config,
            namespaces: Mutex::new(HashMap::new()),
        })
    }

    /// Check a key: not empty, and as for a prefix.
    fn check_key(&self, key: &str) -> Result<(), CallError> {
        if key.is_empty() {
            return Err(CallError::Invalid("a storage key cannot be empty".into()));
        }
        self.check_text(key, "key")
    }

    /// Check a key or prefix: not too long, no NUL or control characters.
    fn check_text(&self, key: &str, what: &str) -> Result<(), CallError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(CallError::Invalid(format!(
                "a storage {what} is at most {} bytes; this one is {}",
                self.limits.max_key_bytes,
                key.len()
            )));
        }
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(CallError::Invalid(format!(
                "a storage {what} cannot contain control characters (found {})",
                c.escape_default()
            )));
        }
        Ok(())
    }

    fn namespace(&self, name: &str) -> Result<Arc<Namespace>, CallError> {
        let mut namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = namespaces.get(name) {
            return Ok(ns.clone());
        }
        if !valid_namespace(name) {
            return Err(CallError::Unavailable(format!(
                "storage namespace `{}` is not a valid name",
                airlock_host_apis::escape(name, 80)
            )));
        }
        match self.root.create_dir(name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable("opening a namespace", e)),
        }
        let dir = self
            .root
            .open_dir_nofollow(name)
            .map_err(|e| unavailable("opening a namespace", e))?;
        let mut usage = Usage::default();
        for entry in dir.entries().map_err(|e| unavailable("listing", e))? {
            let entry = entry.map_err(|e| unavailable("listing", e))?;
            let is_key = entry.file_name().to_str().and_then(decode).is_some();
            let meta = entry.metadata().map_err(|e| unavailable("listing", e))?;
            if is_key && meta.is_file() {
                usage.keys += 1;
                usage.bytes += meta.len();
            }
        }
        let ns = Arc::new(Namespace {
            dir,
            usage: Mutex::new(usage),
        });
        namespaces.insert(name.to_string(), ns.clone());
        Ok(ns)
    }

    /// Open a key's file for reading, refusing anything but a regular file.
    fn open_file(dir: &Dir, name: &str) -> Result<Option<cap_std::fs::File>, CallError> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        match dir.open_with(name, &options) {
            Ok(file) => {
                let meta = file.metadata().map_err(|e| unavailable("reading", e))?;
                if !meta.is_file() {
                    return Err(CallError::Unavailable(
                        "the stored entry is not a regular file".into(),
                    ));
                }
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CallError::Unavailable(format!(
                "the stored entry cannot be read ({e})"
            ))),
        }
    }

    /// The labels stored beside a key's value; none if there is no file.
    fn read_labels(dir: &Dir, key: &str) -> Result<Vec<String>, CallError> {
        let Some(file) = Self::open_file(dir, &labels_name(key))? else {
            return Ok(Vec::new());
        };
        let mut text = String::new();
        file.take(MAX_LABELS_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| unavailable("reading labels", e))?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    fn get_blocking(&self, namespace: &str, key: &str) -> Result<Option<Stored>, CallError> {
        self.check_key(key)?;
        let ns = self.namespace(namespace)?;
        let mut labels = Self::read_labels(&ns.dir, key)?;
        let Some(mut file) = Self::open_file(&ns.dir, &encode(key))? else {
            return Ok(None);
        };
        let mut value = Vec::new();
        // Never read more than a value may hold, whatever is on disk.
        (&mut file)
            .take(self.limits.max_value_bytes + 1)
            .read_to_end(&mut value)
            .map_err(|e| unavailable("reading", e))?;
        if value.len() as u64 > self.limits.max_value_bytes {
            return Err(CallError::Unavailable(
                "the stored value is larger than a value may be".into(),
            ));
        }
        labels.extend(Self::read_labels(&ns.dir, key)?);
        labels.sort();
        labels.dedup();
        Ok(Some(Stored { value, labels }))
    }

    /// Write `bytes` to `name` through a temporary file renamed into place.
    fn replace(dir: &Dir, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = format!(".tmp-{:016x}", rand::random::<u64>());
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .follow(FollowSymlinks::No);
        let written = dir
            .open_with(&tmp, &options)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_data()
            })
            .and_then(|()| dir.rename(&tmp, dir, name));
        if written.is_err() {
            let _ = dir.remove_file(&tmp);
        }
        written
    }

    fn remove_labels(dir: &Dir, key: &str) -> Result<(), CallError> {
        match dir.remove_file(labels_name(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable("removing labels", e)),
        }
    }

    fn existing_size(dir: &Dir, name: &str) -> Result<Option<u64>, CallError> {
        match dir.symlink_metadata(name) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            // A non-file under a key's name is replaced, never followed.
            Ok(_) => Ok(Some(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("writing", e)),
        }
    }

    fn put_blocking(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        labels: &[String],
    ) -> Result<(), CallError> {
        self.check_key(key)?;
        let size = value.len() as u64;
        if size > self.limits.max_value_bytes {
            return Err(CallError::Limit(format!(
                "a value is at most {} bytes; this one is {size}",
                self.limits.max_value_bytes
            )));
        }
        let ns = self.namespace(namespace)?;
        let name = encode(key);
        let mut usage = ns.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let existing = Self::existing_size(&ns.dir, &name)?;
        let keys = usage.keys + u64::from(existing.is_none());
        let bytes = usage.bytes - existing.unwrap_or(0).min(usage.bytes) + size;
        if keys > self.limits.max_keys {
            return Err(CallError::Limit(format!(
                "namespace `{namespace}` is at its quota of {} keys",
                self.limits.max_keys
            )));
        }
        if bytes > self.limits.max_bytes {
            return Err(CallError::Limit(format!(
                "namespace `{namespace}` would hold {bytes} bytes, over its quota of {}",
                self.limits.max_bytes
            )));
        }
        // Labels go down before a labelled value and come off after an
        // unlabelled one, so no reader sees the value with fewer.
        if !labels.is_empty() {
            let mut text = labels.join("\n");
            text.push('\n');
            Self::replace(&ns.dir, &labels_name(key), text.as_bytes())
                .map_err(|e| unavailable("writing labels", e))?;
        }
        Self::replace(&ns.dir, &name, value).map_err(|e| unavailable("writing", e))?;
        *usage = Usage { keys, bytes };
        if labels.is_empty() {
            Self::remove_labels(&ns.dir, key)?;
        }
        Ok(())
    }

    fn delete_blocking(&self, namespace: &str, key: &str) -> Result<bool, CallError> {
        self.check_key(key)?;
        let ns = self.namespace(namespace)?;
        let name = encode(key);
        let mut usage = ns.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(size) = Self::existing_size(&ns.dir, &name)? else {
            return Ok(false);
        };
        ns.dir
            .remove_file(&name)
            .map_err(|e| unavailable("deleting", e))?;
        usage.keys = usage.keys.saturating_sub(1);
        usage.bytes = usage.bytes.saturating_sub(size);
        Self::remove_labels(&ns.dir, key)?;
        Ok(true)
    }

    fn list_blocking(&self, namespace: &str, prefix: &str) -> Result<Listing, CallError> {
        self.check_text(prefix, "prefix")?;
        let ns = self.namespace(namespace)?;
        let mut keys = Vec::new();
        for entry in ns.dir.entries().map_err(|e| unavailable("listing", e))? {
            let entry = entry.map_err(|e| unavailable("listing", e))?;
            let Some(key) = entry.file_name().to_str().and_then(decode) else {
                continue;
            };
            if key.starts_with(prefix) {
                keys.push(key);
            }
        }
        keys.sort();
        let mut labels = Vec::new();
        for key in &keys {
            labels.extend(Self::read_labels(&ns.dir, key)?);
        }
        labels.sort();
        labels.dedup();
        Ok(Listing { keys, labels })
    }
}

/// Run blocking file work off the async executor.
async fn blocking<T: Send + 'static>(
    storage: &Arc<DirStorage>,
    work: impl FnOnce(&DirStorage) -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    let storage = storage.clone();
    tokio::task::spawn_blocking(move || work(&storage))
        .await
        .map_err(|e| unavailable("a worker", e))?
}

/// The shared handle the host functions call.
#[derive(Clone, Debug)]
pub struct StorageHandle(pub Arc<DirStorage>);

#[async_trait::async_trait]
impl airlock_host_apis::storage::Storage for StorageHandle {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Stored>, CallError> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        blocking(&self.0, move |s| s.get_blocking(&ns, &key)).await
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        labels: Vec<String>,
    ) -> Result<(), CallError> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        blocking(&self.0, move |s| s.put_blocking(&ns, &key, &value, &labels)).await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, CallError> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        blocking(&self.0, move |s| s.delete_blocking(&ns, &key)).await
    }

    async fn list(&self, namespace: &str, prefix: &str) -> Result<Listing, CallError> {
        let (ns, prefix) = (namespace.to_string(), prefix.to_string());
        blocking(&self.0, move |s| s.list_blocking(&ns, &prefix)).await
    }

    fn classification(&self, namespace: &str, key: &str) -> Option<String> {
        self.0
            .config
            .classification(namespace, key)
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_file_names_without_separators() {
        for key in [
            "a",
            "../etc/passwd",
            "/abs",
            "back\\slash",
            "ünï/cødé",
            ".",
            "..",
        ] {
            let name = encode(key);
            assert!(!name.contains('/') && !name.contains('\\') && name != "." && name != "..");
            assert_eq!(decode(&name).as_deref(), Some(key));
        }
        assert_eq!(decode(".tmp-0123"), None);
    }
}
