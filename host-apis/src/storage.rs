//! `airlock:skill/storage`: key-value storage in the namespace the operator
//! assigned to the skill. Each operation is its own action (`storage.read`,
//! `storage.write`, `storage.delete`, `storage.list`) on an `Object`.

use std::fmt;
use std::sync::Arc;

use crate::bindings::airlock::skill::storage::Host;
use crate::broker::{Action, CapabilityRequest, Details, Resource};
use crate::{CallError, SkillCtx};

/// A stored value, with the labels it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    /// The labels of the session that wrote it: data read from a labelled
    /// key and written elsewhere keeps its label, in this run and in later
    /// ones.
    pub labels: Vec<String>,
}

/// Keys under a prefix, with the labels their values carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// In lexicographic order.
    pub keys: Vec<String>,
    pub labels: Vec<String>,
}

/// A key-value store, addressed by namespace. Implemented by the runtime.
///
/// A backend must keep the labels given to `put` with the value and return
/// them (or more) with it: they are how a label follows data from one run
/// to the next. Returning fewer lets a skill launder labelled data.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Stored>, CallError>;
    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        labels: Vec<String>,
    ) -> Result<(), CallError>;
    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, CallError>;
    async fn list(&self, namespace: &str, prefix: &str) -> Result<Listing, CallError>;

    /// The classification label of a key, if the operator gave it one.
    /// Reading a labelled key adds the label to the run's session.
    fn classification(&self, namespace: &str, key: &str) -> Option<String>;
}

/// No storage: every allowed operation fails as unavailable.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStorage;

fn unconfigured<T>() -> Result<T, CallError> {
    Err(CallError::Unavailable(
        "no storage is configured for this runtime".to_string(),
    ))
}

#[async_trait::async_trait]
impl Storage for NoStorage {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Stored>, CallError> {
        unconfigured()
    }
    async fn put(&self, _: &str, _: &str, _: Vec<u8>, _: Vec<String>) -> Result<(), CallError> {
        unconfigured()
    }
    async fn delete(&self, _: &str, _: &str) -> Result<bool, CallError> {
        unconfigured()
    }
    async fn list(&self, _: &str, _: &str) -> Result<Listing, CallError> {
        unconfigured()
    }
    fn classification(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// Per-instance state of `airlock:skill/storage`.
pub struct StorageCtx {
    namespace: String,
    backend: Arc<dyn Storage>,
}

impl fmt::Debug for StorageCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageCtx")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl StorageCtx {
    pub fn new(namespace: String, backend: Arc<dyn Storage>) -> Self {
        StorageCtx { namespace, backend }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn request(&self, action: Action, key: &str) -> CapabilityRequest {
        CapabilityRequest {
            action,
            resource: Resource::Object {
                namespace: self.namespace.clone(),
                key: key.to_string(),
            },
            details: Details::Storage {
                key: key.to_string(),
            },
        }
    }
}

impl SkillCtx {
    /// Add to the session the labels of what was read: each key's
    /// classification and the labels its value carries.
    fn add_labels<'a>(&self, keys: impl IntoIterator<Item = &'a str>, carried: Vec<String>) {
        let backend = &self.storage.backend;
        let namespace = &self.storage.namespace;
        let mut labels: Vec<String> = keys
            .into_iter()
            .filter_map(|key| backend.classification(namespace, key))
            .collect();
        labels.extend(carried);
        if !labels.is_empty() {
            self.broker.session().lock().labels.extend(labels);
        }
    }
}

impl Host for SkillCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, CallError> {
        let request = self.storage.request(Action::StorageRead, &key);
        let permit = self.broker.authorize(request).await?;
        let result = self
            .storage
            .backend
            .get(&self.storage.namespace, &key)
            .await;
        let result = result.map(|stored| {
            stored.map(|stored| {
                self.add_labels([key.as_str()], stored.labels);
                stored.value
            })
        });
        permit.conclude(result, |v| {
            Some(match v {
                Some(bytes) => format!("read {} bytes", bytes.len()),
                None => "no such key".to_string(),
            })
        })
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), CallError> {
        let request = self.storage.request(Action::StorageWrite, &key);
        let permit = self.broker.authorize(request).await?;
        let credentials = self.secrets.credentials();
        let instance = &self.broker.subject().instance;
        let leak = credentials
            .leak(instance, key.as_bytes(), None)
            .map(|name| (name, "the storage key"))
            .or_else(|| {
                credentials
                    .leak(instance, &value, None)
                    .map(|name| (name, "the stored value"))
            });
        if let Some((name, place)) = leak {
            return permit.conclude(Err(crate::secrets::leak_refusal(&name, place)), |()| None);
        }
        let size = value.len();
        let labels: Vec<String> = self
            .broker
            .session()
            .lock()
            .labels
            .iter()
            .cloned()
            .collect();
        let result = self
            .storage
            .backend
            .put(&self.storage.namespace, &key, value, labels)
            .await;
        permit.conclude(result, |()| Some(format!("wrote {size} bytes")))
    }

    async fn delete(&mut self, key: String) -> Result<bool, CallError> {
        let request = self.storage.request(Action::StorageDelete, &key);
        let permit = self.broker.authorize(request).await?;
        let result = self
            .storage
            .backend
            .delete(&self.storage.namespace, &key)
            .await;
        permit.conclude(result, |existed| {
            Some(if *existed { "deleted" } else { "no such key" }.to_string())
        })
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, CallError> {
        let request = self.storage.request(Action::StorageList, &prefix);
        let permit = self.broker.authorize(request).await?;
        let result = self
            .storage
            .backend
            .list(&self.storage.namespace, &prefix)
            .await;
        // Key names are data of their keys' labels too.
        let result = result.map(|listing| {
            self.add_labels(listing.keys.iter().map(String::as_str), listing.labels);
            listing.keys
        });
        permit.conclude(result, |keys| Some(format!("listed {} keys", keys.len())))
    }
}
