//! `airlock:skill/storage`: key-value storage in the namespace the operator
//! assigned to the skill. Each operation is its own action (`storage.read`,
//! `storage.write`, `storage.delete`, `storage.list`) on an `Object`.

use std::fmt;
use std::sync::Arc;

use crate::bindings::airlock::skill::storage::Host;
use crate::broker::{Action, CapabilityRequest, Details, Resource};
use crate::{CallError, SkillCtx};

/// A key-value store, addressed by namespace. Implemented by the runtime.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, CallError>;
    async fn put(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), CallError>;
    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, CallError>;
    async fn list(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, CallError>;

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
    async fn get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, CallError> {
        unconfigured()
    }
    async fn put(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), CallError> {
        unconfigured()
    }
    async fn delete(&self, _: &str, _: &str) -> Result<bool, CallError> {
        unconfigured()
    }
    async fn list(&self, _: &str, _: &str) -> Result<Vec<String>, CallError> {
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
    fn add_labels<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let backend = &self.storage.backend;
        let namespace = &self.storage.namespace;
        let labels: Vec<String> = keys
            .into_iter()
            .filter_map(|key| backend.classification(namespace, key))
            .collect();
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
        if let Ok(Some(_)) = &result {
            self.add_labels([key.as_str()]);
        }
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
        let result = self
            .storage
            .backend
            .put(&self.storage.namespace, &key, value)
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
        if let Ok(keys) = &result {
            // Key names under a labelled prefix are data of that label too.
            self.add_labels(keys.iter().map(String::as_str));
        }
        permit.conclude(result, |keys| Some(format!("listed {} keys", keys.len())))
    }
}
