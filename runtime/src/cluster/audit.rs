//! Every node's audit log, shipped to one durable stream.
//!
//! A node writes its log locally first (a run's records are on its disk
//! before the run's result is returned); a shipper then publishes every line
//! as it is, up to the last checkpoint, on `airlock.audit.<node>` of the
//! stream [`AUDIT_STREAM`]. Each node's subject is therefore its own hash
//! chain with its own signed checkpoints, and the public keys that sign them
//! are in [`KEYS_BUCKET`] under the node's name. [`Cluster::verify_audit`]
//! reads every node's subject back and verifies its chain as
//! `airlock audit verify` verifies a file. Lines carry their sequence as the
//! message id (`<node>:<seq>`), so a line published twice (a shipper
//! restarted before its acknowledgement arrived) is stored once.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Cluster, failed};
use crate::Error;
use crate::audit::{RawLine, Record, Verification};
use crate::identity::PublicKeys;

/// The stream of every node's audit records.
pub const AUDIT_STREAM: &str = "AIRLOCK_AUDIT";
/// A node's records are on `airlock.audit.<node>`.
pub const AUDIT_SUBJECT_PREFIX: &str = "airlock.audit.";
/// Each node's public signing keys (its JWKS), by node name.
pub const KEYS_BUCKET: &str = "airlock-keys";
/// How often the shipper looks for new lines.
const SHIP_EVERY: Duration = Duration::from_millis(100);

/// Whether `name` can be a node's name: a subject token and a key.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What verifying the cluster's audit found, node by node.
#[derive(Debug)]
pub struct NodeVerification {
    pub node: String,
    pub verification: Verification,
}

impl Cluster {
    pub(super) async fn audit_stream(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<(), Error> {
        js.get_or_create_stream(stream::Config {
            name: AUDIT_STREAM.into(),
            description: Some("Airlock audit records, one subject per node".into()),
            subjects: vec![format!("{AUDIT_SUBJECT_PREFIX}*")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&format!("creating the stream {AUDIT_STREAM}"), e))?;
        Ok(())
    }

    pub(super) async fn keys_bucket(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<kv::Store, Error> {
        super::bucket(
            js,
            kv::Config {
                bucket: KEYS_BUCKET.into(),
                description: "Airlock nodes' public signing keys (JWKS), by node".into(),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
    }

    /// Publish `node`'s public signing keys, for verifying its checkpoints
    /// (and its tokens) anywhere.
    pub async fn publish_keys(&self, node: &str, jwks: &[serde_json::Value]) -> Result<(), Error> {
        let body = serde_json::to_vec(jwks)
            .map_err(|e| Error::Cluster(format!("encoding the keys of node {node}: {e}")))?;
        self.keys
            .put(node, body.into())
            .await
            .map_err(|e| failed(&format!("publishing the keys of node {node}"), e))?;
        Ok(())
    }

    /// The sequence of `node`'s last shipped record (0 for none).
    async fn shipped(&self, node: &str) -> Result<u64, Error> {
        let stream = self
            .js
            .get_stream(AUDIT_STREAM)
            .await
            .map_err(|e| failed(&format!("opening the stream {AUDIT_STREAM}"), e))?;
        match stream
            .get_last_raw_message_by_subject(&format!("{AUDIT_SUBJECT_PREFIX}{node}"))
            .await
        {
            Ok(message) => {
                let record: Record = serde_json::from_slice(&message.payload).map_err(|e| {
                    Error::Cluster(format!(
                        "the last shipped record of node {node} is not a record: {e}"
                    ))
                })?;
                Ok(record.seq)
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(failed(&format!("reading what node {node} shipped"), e)),
        }
    }

    /// Ship `node`'s log at `path` to the stream, from where it was left,
    /// until the task is dropped; each round sends the complete lines up to
    /// the last checkpoint.
    pub fn ship_audit(&self, node: String, path: PathBuf) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut shipper = Shipper {
                node,
                path,
                offset: None,
                shipped: 0,
            };
            loop {
                match shipper.round(&cluster).await {
                    // More of the log waits behind a full window.
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = %shipper.node, error = %e, "shipping audit records failed; retrying");
                        shipper.offset = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                tokio::time::sleep(SHIP_EVERY).await;
            }
        })
    }

    /// Read every node's records back from the stream and verify each
    /// chain with the keys the node published.
    pub async fn verify_audit(&self) -> Result<Vec<NodeVerification>, Error> {
        let mut names = self
            .keys
            .keys()
            .await
            .map_err(|e| failed("listing nodes", e))?;
        let mut nodes = Vec::new();
        while let Some(name) = names.next().await {
            nodes.push(name.map_err(|e| failed("listing nodes", e))?);
        }
        nodes.sort();
        let mut results = Vec::new();
        for node in nodes {
            let jwks: Vec<serde_json::Value> = match self.keys.get(&node).await {
                Ok(Some(body)) => serde_json::from_slice(&body).unwrap_or_default(),
                Ok(None) => Vec::new(),
                Err(e) => return Err(failed(&format!("reading the keys of node {node}"), e)),
            };
            let keys = PublicKeys::from_jwks(&jwks);
            let verification = if keys.is_empty() {
                Verification {
                    records: 0,
                    problem: Some((0, format!("node {node} published no usable keys"))),
                }
            } else {
                // Each message is one line: one with a line end inside is
                // not a record.
                let mut verifier = crate::audit::Verifier::new(&keys);
                self.each_record(&node, |line| verifier.push(RawLine::Whole(line)))
                    .await?;
                verifier.finish()
            };
            results.push(NodeVerification { node, verification });
        }
        Ok(results)
    }

    /// `node`'s shipped lines, in order, as one log.
    pub async fn records_of(&self, node: &str) -> Result<Vec<u8>, Error> {
        let mut lines = Vec::new();
        self.each_record(node, |line| {
            lines.extend_from_slice(line);
            lines.push(b'\n');
            true
        })
        .await?;
        Ok(lines)
    }

    /// Hand `node`'s shipped lines, in order, to `each` until it returns
    /// false, holding one at a time.
    pub async fn each_record(
        &self,
        node: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), Error> {
        let subject = format!("{AUDIT_SUBJECT_PREFIX}{node}");
        if self.shipped(node).await? == 0 {
            return Ok(());
        }
        let stream = self
            .js
            .get_stream(AUDIT_STREAM)
            .await
            .map_err(|e| failed(&format!("opening the stream {AUDIT_STREAM}"), e))?;
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&format!("reading {subject}"), e))?;
        let mut messages = reader
            .messages()
            .await
            .map_err(|e| failed(&format!("reading {subject}"), e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| failed(&format!("reading {subject}"), e))?;
            if !each(&message.payload) {
                break;
            }
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            if pending == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// How much of the log one shipping round reads (at least).
const SHIP_WINDOW: u64 = 8 << 20;

struct Shipper {
    node: String,
    path: PathBuf,
    /// Where the next unshipped line starts in the file, once found.
    offset: Option<u64>,
    shipped: u64,
}

impl Shipper {
    /// Where the complete lines up to and including the last checkpoint in
    /// `bytes` end: what is shipped always ends signed.
    fn signed_end(&self, bytes: &[u8]) -> Result<usize, Error> {
        let mut end = 0;
        let mut position = 0;
        for raw in bytes.split_inclusive(|b| *b == b'\n') {
            position += raw.len();
            let Some(line) = raw.strip_suffix(b"\n") else {
                break;
            };
            let Ok(record) = serde_json::from_slice::<Record>(line) else {
                return Err(Error::Cluster(format!(
                    "`{}` has a line that is not a record; verify it with `airlock audit verify`",
                    self.path.display()
                )));
            };
            if crate::audit::field(&record.event, &["kind"]) == "checkpoint" {
                end = position;
            }
        }
        Ok(end)
    }

    /// Ship what the log holds past the last round; true if a full window
    /// was read and more may follow.
    async fn round(&mut self, cluster: &Cluster) -> Result<bool, Error> {
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("reading `{}`", self.path.display()), e)),
        };
        let offset = match self.offset {
            Some(offset) => offset,
            None => {
                self.shipped = cluster.shipped(&self.node).await?;
                0
            }
        };
        // A window of the log at a time, so a long log (a node joining a
        // cluster late) is shipped in bounded memory; it grows only if one
        // batch does not fit.
        let mut window = SHIP_WINDOW;
        let (bytes, end) = loop {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::io(format!("reading `{}`", self.path.display()), e))?;
            let mut bytes = Vec::new();
            (&mut file)
                .take(window)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Error::io(format!("reading `{}`", self.path.display()), e))?;
            let end = self.signed_end(&bytes)?;
            if end == 0 && bytes.len() as u64 == window {
                window = window.saturating_mul(2);
                continue;
            }
            break (bytes, end);
        };
        let subject = format!("{AUDIT_SUBJECT_PREFIX}{}", self.node);
        let mut acks = Vec::new();
        let mut last = self.shipped;
        let mut scanned = 0;
        for raw in bytes
            .get(..end)
            .unwrap_or_default()
            .split_inclusive(|b| *b == b'\n')
        {
            scanned += raw.len();
            let line = raw.strip_suffix(b"\n").unwrap_or(raw);
            let Ok(record) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            if record.seq <= self.shipped {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("{}:{}", self.node, record.seq).as_str(),
            );
            let ack = cluster
                .js
                .publish_with_headers(subject.clone(), headers, line.to_vec().into())
                .await
                .map_err(|e| failed("shipping audit records", e))?;
            acks.push(ack);
            last = record.seq;
        }
        for ack in acks {
            ack.await
                .map_err(|e| failed("shipping audit records (acknowledgement)", e))?;
        }
        self.shipped = last;
        self.offset = Some(offset + scanned as u64);
        Ok(end > 0 && bytes.len() as u64 == window)
    }
}

/// Instances running with tokens, on any node: their key is the instance
/// id, their value the tokens' latest expiry; removed when the instance
/// ends.
pub const LIVE_TOKENS_BUCKET: &str = "airlock-live-tokens";

impl Cluster {
    pub(super) async fn live_tokens_bucket(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<kv::Store, Error> {
        super::bucket(
            js,
            kv::Config {
                bucket: LIVE_TOKENS_BUCKET.into(),
                description: "Airlock instances holding tokens, on any node".into(),
                history: 1,
                // No instance outlives its deadline; this only bounds what
                // a node that died leaves behind.
                max_age: Duration::from_secs(24 * 3600),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
    }
}

#[async_trait::async_trait]
impl crate::identity::SharedTokens for Cluster {
    async fn started(&self, instance: &str, exp: u64) -> Result<(), Error> {
        self.live
            .put(
                instance,
                serde_json::json!({ "exp": exp }).to_string().into(),
            )
            .await
            .map_err(|e| failed("recording an instance's tokens", e))?;
        Ok(())
    }

    async fn ended(&self, instance: &str) {
        if let Err(e) = self.live.delete(instance).await {
            // Its tokens still expire with the instance's deadline.
            tracing::warn!(%instance, error = %e, "could not end an instance's tokens in the cluster");
        }
    }

    async fn live(&self, instance: &str) -> bool {
        let Ok(Some(entry)) = self.live.entry(instance).await else {
            return false;
        };
        if entry.operation != kv::Operation::Put {
            return false;
        }
        let exp = serde_json::from_slice::<serde_json::Value>(&entry.value)
            .ok()
            .and_then(|v| v.get("exp").and_then(|e| e.as_u64()))
            .unwrap_or(0);
        exp.saturating_mul(1000) > crate::admission::now_ms()
    }

    async fn public_keys(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let Ok(mut names) = self.keys.keys().await else {
            return all;
        };
        while let Some(Ok(name)) = names.next().await {
            if let Ok(Some(body)) = self.keys.get(&name).await
                && let Ok(keys) = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
            {
                all.extend(keys);
            }
        }
        all
    }
}
