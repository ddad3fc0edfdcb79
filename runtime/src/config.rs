//! `airlock.toml`: the operator's configuration. Unknown keys are errors.
//!
//! Relative paths in the file are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::limits::Limits;

/// The whole configuration file. Every section is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Airlock keeps its state; the `--data-dir` flag wins.
    pub data_dir: Option<PathBuf>,
    pub policy: PolicyConfig,
    /// Default limits for every instance; flags override them per run.
    pub limits: Limits,
    pub storage: StorageConfig,
    /// Attributes of network hosts, by canonical host name.
    pub hosts: BTreeMap<String, HostConfig>,
    /// Skills registered as named tools.
    pub tools: BTreeMap<String, ToolConfig>,
    /// Credentials the broker attaches or mints, by name.
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// The runtime as an issuer of workload identity.
    pub identity: IdentityConfig,
    pub delegation: DelegationConfig,
    pub egress: EgressConfig,
    /// Who and what may be admitted, for how long, and when a skill is
    /// quarantined on its own.
    pub admission: crate::admission::AdmissionConfig,
    pub audit: AuditConfig,
    /// `airlock serve`: keys, roles and limits of the HTTP API.
    pub api: crate::api::ApiConfig,
    /// Share admitted skills with other nodes on NATS JetStream; without
    /// it, skills live in the data directory.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// The longest `audit.commit_interval` accepted.
pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The audit log: `[audit]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Below this many free bytes on the audit log's file system, new runs
    /// are refused rather than records dropped.
    pub min_free_space: u64,
    /// After this many identical denials in one instance, one record counts
    /// the rest.
    pub max_identical_denials: u32,
    /// While other runs are going, a run's records wait up to this long
    /// after the last batch so that many runs share one fsync. The last
    /// open run's records are written at once. `0s`: every batch as soon
    /// as the one before is on disk.
    #[serde(with = "crate::limits::humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            min_free_space: 64 << 20,
            max_identical_denials: 10,
            commit_interval: Duration::from_millis(2),
        }
    }
}

/// Outbound HTTP: limits, redirects, and the only way to reach a special
/// address (`allow_addresses`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Special-purpose addresses (loopback, private, ...) that may be
    /// reached anyway, as addresses or CIDR ranges. Nothing else opens that
    /// door.
    pub allow_addresses: Vec<String>,
    /// Follow redirects; every hop is decided and checked again in full.
    pub follow_redirects: bool,
    pub max_redirects: u32,
    pub max_request_body: u64,
    pub max_response_body: u64,
    /// Request headers a skill may set.
    pub max_headers: usize,
    /// Bytes of request header names and values.
    pub max_header_bytes: usize,
    /// Response headers accepted.
    pub max_response_headers: usize,
    /// Bytes a whole run may send out.
    pub max_session_bytes_out: u64,
    #[serde(with = "crate::limits::humantime_serde")]
    pub connect_timeout: Duration,
    /// For the whole request: resolve, connect, send, read.
    #[serde(with = "crate::limits::humantime_serde")]
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust besides the public roots.
    pub extra_roots: Option<PathBuf>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow_addresses: Vec::new(),
            follow_redirects: false,
            max_redirects: 5,
            max_request_body: 1 << 20,
            max_response_body: 10 << 20,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            max_response_headers: 100,
            max_session_bytes_out: 10 << 20,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            extra_roots: None,
        }
    }
}

impl EgressConfig {
    /// The rules the host functions apply before anything is sent.
    pub fn rules(&self) -> airlock_host_apis::http::HttpRules {
        airlock_host_apis::http::HttpRules {
            follow_redirects: self.follow_redirects,
            max_redirects: self.max_redirects,
            max_request_body: self.max_request_body,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            max_session_bytes_out: self.max_session_bytes_out,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A directory of `.cedar` files, added to the built-in base policies.
    /// Without one, no capability call is allowed.
    pub dir: Option<PathBuf>,
    /// `enforce` (the default) or `shadow`.
    pub mode: PolicyMode,
}

/// Whether policy denials stop calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Denials stop calls.
    #[default]
    Enforce,
    /// Decisions are recorded and "would deny" is reported; calls proceed.
    Shadow,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory holding one sub-directory per namespace. Defaults to
    /// `<data_dir>/storage`.
    pub root: Option<PathBuf>,
    /// Keys per namespace.
    pub max_keys: u64,
    /// Bytes of values per namespace.
    pub max_bytes: u64,
    /// Bytes per value.
    pub max_value_bytes: u64,
    /// Bytes per key.
    pub max_key_bytes: usize,
    /// Namespace of a skill, by skill name. Unlisted skills use their name.
    pub namespaces: BTreeMap<String, String>,
    /// Classification labels by key prefix.
    pub labels: Vec<LabelRule>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root: None,
            max_keys: 10_000,
            max_bytes: 64 << 20,
            max_value_bytes: 1 << 20,
            max_key_bytes: 180,
            namespaces: BTreeMap::new(),
            labels: Vec::new(),
        }
    }
}

/// Keys starting with `prefix` (in `namespace`, or in every namespace) carry
/// `label`; reading one adds the label to the run's session.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    pub prefix: String,
    pub label: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Data labels this host may receive even after the session read them.
    pub sinks: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The skill's component file (a developer's tool, not admitted).
    #[serde(default)]
    pub skill: Option<PathBuf>,
    /// An admitted skill, by digest: it runs only while approved, checked at
    /// every invocation.
    #[serde(default)]
    pub digest: Option<crate::digest::SkillDigest>,
    /// `low`, `medium` or `high`.
    #[serde(default = "default_risk")]
    pub risk: Risk,
    /// Limits for the tool's instances; the caller's deadline still applies.
    #[serde(default)]
    pub limits: Option<Limits>,
}

fn default_risk() -> Risk {
    Risk::High
}

/// How much harm a tool can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }

    pub fn level(self) -> i64 {
        self as i64
    }
}

/// The runtime as an issuer of workload identity tokens.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The SPIFFE trust domain: `spiffe://<trust_domain>/skill/...`.
    pub trust_domain: String,
    /// The `iss` of every token: the URL `airlock serve` is reached at, where
    /// `/.well-known/openid-configuration` is served.
    pub issuer: String,
    /// No token lives longer than this; a retired key is kept this long.
    #[serde(with = "crate::limits::humantime_serde")]
    pub max_token_ttl: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            trust_domain: "airlock.local".into(),
            issuer: "http://127.0.0.1:8480".into(),
            max_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A stored secret, from an environment variable or a file.
    Static,
    /// A JWT the runtime signs for the instance.
    Minted,
    /// A downstream token from an RFC 8693 token exchange.
    Exchanged,
}

/// One credential, configured by the operator. A skill only ever names it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub kind: CredentialKind,
    /// Where it may be sent: `scheme://host[:port][/path-prefix]`.
    pub destination: String,
    /// The header it is sent in.
    #[serde(default = "default_header")]
    pub header: String,
    /// The header value, `{}` standing for the credential.
    #[serde(default = "default_format")]
    pub format: String,
    /// For `static`: the environment variable holding the value.
    pub env: Option<String>,
    /// For `static`: the file holding the value (trailing newline dropped).
    pub file: Option<PathBuf>,
    /// For `minted` and `exchanged`: the audience (default: the
    /// destination's origin).
    pub audience: Option<String>,
    /// For `exchanged`: the RFC 8693 token endpoint.
    pub token_endpoint: Option<String>,
    /// For `exchanged`: the RFC 7009 revocation endpoint, if it has one.
    pub revocation_endpoint: Option<String>,
    /// For `exchanged`: the scope to ask for.
    pub scope: Option<String>,
    /// For `exchanged`: the client id, sent with the exchange.
    pub client_id: Option<String>,
    /// How long a lease lasts (never past the instance's deadline). Default:
    /// the instance's deadline.
    #[serde(default, with = "crate::limits::humantime_serde::option")]
    pub ttl: Option<Duration>,
    /// Skills that may use it, by name. Default: any skill policy allows.
    pub skills: Option<Vec<String>>,
    /// Classification policies see on the `Secret`.
    #[serde(default = "default_classification")]
    pub classification: String,
}

fn default_header() -> String {
    "authorization".to_string()
}

fn default_format() -> String {
    "Bearer {}".to_string()
}

fn default_classification() -> String {
    "secret".to_string()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelegationConfig {
    /// Deepest chain of tool calls the runtime will run at all (policy may
    /// allow less).
    pub max_depth: u32,
}

impl Default for DelegationConfig {
    fn default() -> Self {
        DelegationConfig { max_depth: 8 }
    }
}

/// A storage namespace name: lowercase letters, digits, `-` and `_`.
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

impl Config {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read `{}`: {e}", path.display())))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("`{}`: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut self.data_dir {
            resolve(dir);
        }
        if let Some(dir) = &mut self.policy.dir {
            resolve(dir);
        }
        if let Some(dir) = &mut self.api.policies {
            resolve(dir);
        }
        if let Some(root) = &mut self.storage.root {
            resolve(root);
        }
        for tool in self.tools.values_mut() {
            if let Some(skill) = &mut tool.skill {
                resolve(skill);
            }
        }
        if let Some(roots) = &mut self.egress.extra_roots {
            resolve(roots);
        }
        for credential in self.credentials.values_mut() {
            if let Some(file) = &mut credential.file {
                resolve(file);
            }
        }
    }

    /// Everything a file can get wrong that its types do not catch.
    pub fn check(&self) -> Result<(), Error> {
        for (skill, namespace) in &self.storage.namespaces {
            if !valid_namespace(namespace) {
                return Err(Error::Config(format!(
                    "storage namespace `{namespace}` (for skill `{skill}`) must be 1 to 64 of a-z, 0-9, `-` and `_`"
                )));
            }
        }
        for rule in &self.storage.labels {
            if rule.label.is_empty() {
                return Err(Error::Config(format!(
                    "the storage label for prefix `{}` is empty",
                    rule.prefix
                )));
            }
        }
        for (name, tool) in &self.tools {
            if name.is_empty() {
                return Err(Error::Config("a tool name is empty".into()));
            }
            if tool.skill.is_some() == tool.digest.is_some() {
                return Err(Error::Config(format!(
                    "tools.{name}: give exactly one of `skill` (a component file) and `digest` (an admitted skill)"
                )));
            }
        }
        self.admission.keys()?;
        if self.audit.commit_interval > MAX_COMMIT_INTERVAL {
            return Err(Error::Config(format!(
                "audit.commit_interval is {}: at most {} (every result under load may wait that long)",
                humantime::format_duration(self.audit.commit_interval),
                humantime::format_duration(MAX_COMMIT_INTERVAL)
            )));
        }
        if self.admission.default_expiry.is_zero()
            || self.admission.default_expiry > self.admission.max_expiry
        {
            return Err(Error::Config(
                "admission.default_expiry must be more than 0 and at most admission.max_expiry"
                    .into(),
            ));
        }
        if let Some(cluster) = &self.cluster {
            if cluster.url.trim().is_empty() {
                return Err(Error::Config("cluster.url is empty".into()));
            }
            if cluster.run_ack_wait < std::time::Duration::from_secs(1) {
                return Err(Error::Config(
                    "cluster.run_ack_wait must be at least 1s".into(),
                ));
            }
            if cluster.replicas == 0 {
                return Err(Error::Config("cluster.replicas must be at least 1".into()));
            }
        }
        crate::egress::Allowed::parse(&self.egress.allow_addresses)
            .map_err(|e| Error::Config(format!("egress.allow_addresses: {e}")))?;
        for name in self.hosts.keys() {
            let canonical = airlock_host_apis::http::canonical_url(&format!("https://{name}/"))
                .map(|(_, _, destination, _)| destination.to_string());
            if canonical.as_deref().ok() != Some(name.as_str()) {
                return Err(Error::Config(format!(
                    "host `{name}` is not in canonical form (lowercase, IDNA ASCII, no trailing dot){}",
                    canonical
                        .map(|c| format!(": write `{c}`"))
                        .unwrap_or_default()
                )));
            }
        }
        for (name, credential) in &self.credentials {
            crate::credentials::check(name, credential)
                .map_err(|e| Error::Config(format!("credentials.{name}: {e}")))?;
        }
        if self.identity.trust_domain.is_empty()
            || !self
                .identity
                .trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(Error::Config(format!(
                "identity.trust_domain `{}` must be a lowercase DNS-like name",
                self.identity.trust_domain
            )));
        }
        if self.storage.max_key_bytes == 0 || self.storage.max_key_bytes > 180 {
            return Err(Error::Config(
                "storage.max_key_bytes must be between 1 and 180 (keys become file names)".into(),
            ));
        }
        Ok(())
    }

    /// The namespace a skill's storage lives in.
    pub fn namespace_for(&self, skill: &str) -> String {
        if let Some(ns) = self.storage.namespaces.get(skill) {
            return ns.clone();
        }
        let mut ns: String = skill
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if ns.is_empty() {
            ns.push('_');
        }
        ns
    }

    /// The classification label of a key, from the first matching rule.
    pub fn classification(&self, namespace: &str, key: &str) -> Option<&str> {
        self.storage
            .labels
            .iter()
            .find(|r| {
                key.starts_with(&r.prefix)
                    && r.namespace.as_deref().is_none_or(|ns| ns == namespace)
            })
            .map(|r| r.label.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[storage]\nmax_keyz = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `max_keyz`"), "{err}");
        let err = toml::from_str::<Config>("polcy = 1\n")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("unknown field `polcy`"));
    }

    #[test]
    fn the_audit_commit_interval_reads_as_a_duration() {
        let config: Result<Config, _> = toml::from_str("[audit]\ncommit_interval = \"0s\"\n");
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.audit.commit_interval, Duration::ZERO);
        let err = toml::from_str::<Config>("[audit]\ncommit_interval = 2\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("commit_interval"), "{err}");
        let config: Result<Config, _> = toml::from_str("[audit]\ncommit_interval = \"1h\"\n");
        let err = config
            .map_err(|e| e.to_string())
            .and_then(|c| c.check().map_err(|e| e.to_string()))
            .err()
            .unwrap_or_default();
        assert!(err.contains("at most 100ms"), "{err}");
    }

    #[test]
    fn namespaces_default_to_a_safe_form_of_the_skill_name() {
        let config = Config::default();
        assert_eq!(config.namespace_for("Word Count"), "word_count");
        assert_eq!(config.namespace_for("../etc"), "___etc");
        assert!(valid_namespace(&config.namespace_for("../etc")));
    }

    #[test]
    fn the_first_matching_label_rule_wins() {
        let config: Config = toml::from_str(
            "[[storage.labels]]\nprefix = \"hr/\"\nlabel = \"secret\"\nnamespace = \"people\"\n\
             [[storage.labels]]\nprefix = \"hr/\"\nlabel = \"confidential\"\n",
        )
        .unwrap_or_default();
        assert_eq!(config.classification("people", "hr/pay"), Some("secret"));
        assert_eq!(
            config.classification("team", "hr/pay"),
            Some("confidential")
        );
        assert_eq!(config.classification("team", "notes"), None);
    }
}
