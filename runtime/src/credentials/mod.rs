//! The credential vault: what the broker attaches to requests or mints for
//! skills, held as leases owned by instances.
//!
//! A skill names a credential; it never holds a stored secret. When policy
//! allows `secret.use` for a request, the vault checks the credential's
//! binding to the request's destination and the lease's expiry, and hands
//! back the header to attach. `static` values come from the operator's
//! environment or files; `minted` ones are identity tokens signed for the
//! instance; `exchanged` ones come from an RFC 8693 token endpoint. A lease
//! ends no later than its instance, and everything an instance held is
//! dropped (zeroized) and revoked when it ends.
//!
//! Every live value (every static value, and the tokens of each instance) is
//! searched for, raw and encoded, wherever a skill's data could leave: see
//! [`scan`].

mod exchange;
pub mod scan;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use airlock_host_apis::http::{Egress, OutboundRequest, Scheme, canonical_url};
use airlock_host_apis::secrets::{
    Attached, Credentials, Revocation, SecretValue, unknown_credential,
};
use airlock_host_apis::{CallError, Subject};

use crate::Error;
use crate::config::{Config, CredentialConfig, CredentialKind};
use crate::identity::{Issuer, unix};
use exchange::{Exchanger, Pending};
use scan::{Live, Scanner};

/// Where a credential may go: scheme, host, port and a path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Empty, or a prefix ending at a segment boundary.
    pub path: String,
}

impl Binding {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (url, scheme, destination, port) =
            canonical_url(text).map_err(|e| format!("destination `{text}`: {e}"))?;
        if url.query().is_some() {
            return Err(format!("destination `{text}` has a query"));
        }
        let path = url.path().trim_end_matches('/').to_string();
        Ok(Binding {
            scheme,
            host: destination.to_string(),
            port,
            path,
        })
    }

    pub fn matches(&self, request: &OutboundRequest) -> bool {
        let path = request.url.path();
        let under = path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/') && (self.path.is_empty() || plain(rest)));
        self.scheme == request.scheme
            && self.port == request.port
            && self.host == request.host()
            && under
    }

    /// `scheme://host[:port]`, the default audience.
    pub fn origin(&self) -> String {
        let default = match self.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            format!("{}://{host}", self.scheme.as_str())
        } else {
            format!("{}://{host}:{}", self.scheme.as_str(), self.port)
        }
    }
}

/// Whether a path below a binding's prefix stays below it for any server.
/// The URL parser resolves `.` and `..` segments, but servers also decode
/// `%2F` and `%5C` into separators, drop `;` parameters from a segment
/// (`..;`), and some decode twice; a segment that could climb out after
/// any of these is refused. So is one whose bytes are not UTF-8 once
/// decoded (overlong forms such as `%c0%ae` read as `.` on some servers) or
/// that holds IIS's `%u` escapes.
fn plain(rest: &str) -> bool {
    rest.split('/').all(|segment| {
        let mut text = std::borrow::Cow::Borrowed(segment);
        // Each round can only shorten the text; four cover any real server.
        for _ in 0..4 {
            if !text.contains('%') {
                break;
            }
            if text.contains("%u") || text.contains("%U") {
                return false;
            }
            let Ok(decoded) = percent_encoding::percent_decode_str(&text).decode_utf8() else {
                return false;
            };
            let decoded = decoded.into_owned();
            if decoded == text {
                break;
            }
            text = std::borrow::Cow::Owned(decoded);
        }
        text.split(['/', '\\']).all(|piece| {
            let name = piece.split(';').next().unwrap_or_default();
            name != "." && name != ".."
        })
    })
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.origin(), self.path)
    }
}

/// Check one credential's configuration.
pub fn check(name: &str, config: &CredentialConfig) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("a credential name is 1 to 100 characters".into());
    }
    Binding::parse(&config.destination)?;
    http::HeaderName::from_bytes(config.header.as_bytes())
        .map_err(|_| format!("`{}` is not a header name", config.header))?;
    if config.format.matches("{}").count() != 1 {
        return Err(format!(
            "format `{}` must contain `{{}}` exactly once",
            config.format
        ));
    }
    let source = usize::from(config.env.is_some()) + usize::from(config.file.is_some());
    let exchange_only = [
        ("token_endpoint", config.token_endpoint.is_some()),
        ("revocation_endpoint", config.revocation_endpoint.is_some()),
        ("scope", config.scope.is_some()),
        ("client_id", config.client_id.is_some()),
    ];
    match config.kind {
        CredentialKind::Static if source != 1 => {
            return Err("a static credential takes exactly one of `env` and `file`".into());
        }
        CredentialKind::Minted | CredentialKind::Exchanged if source != 0 => {
            return Err("only a static credential reads `env` or `file`".into());
        }
        CredentialKind::Exchanged if config.token_endpoint.is_none() => {
            return Err("an exchanged credential needs `token_endpoint`".into());
        }
        _ => {}
    }
    if config.kind == CredentialKind::Static && config.audience.is_some() {
        return Err("a static credential has no `audience`".into());
    }
    if config.kind != CredentialKind::Exchanged
        && let Some((key, _)) = exchange_only.iter().find(|(_, set)| *set)
    {
        return Err(format!("`{key}` is only for an exchanged credential"));
    }
    for endpoint in [&config.token_endpoint, &config.revocation_endpoint]
        .into_iter()
        .flatten()
    {
        canonical_url(endpoint).map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
    }
    Ok(())
}

/// A checked credential configuration.
#[derive(Debug)]
struct Spec {
    kind: CredentialKind,
    binding: Binding,
    header: http::HeaderName,
    format: String,
    audience: String,
    ttl: Option<Duration>,
    skills: Option<Vec<String>>,
    exchange: Option<exchange::Endpoint>,
}

impl Spec {
    fn value(&self, credential: &str) -> SecretValue {
        SecretValue::new(self.format.replacen("{}", credential, 1))
    }
}

/// A credential an instance is using: the value to attach and until when.
struct Lease {
    attached: Attached,
    expires: SystemTime,
}

/// Tokens an instance may hold at once: each mint rebuilds the instance's
/// leak scanner over all of them.
pub const MAX_LIVE_TOKENS: usize = 16;

/// What one running instance holds.
struct Held {
    skill: String,
    deadline: SystemTime,
    leases: HashMap<String, Lease>,
    tokens: Vec<Live>,
    scanner: Option<Scanner>,
    revoke: Vec<Pending>,
}

impl Held {
    fn add(&mut self, live: Live) {
        self.tokens.push(live);
        self.scanner = Scanner::build(&self.tokens);
    }
}

/// The runtime's [`Credentials`].
pub struct Vault {
    specs: BTreeMap<String, Spec>,
    statics: HashMap<String, SecretValue>,
    /// Every static value: they may never appear in anything a skill sends.
    statics_scanner: Option<Scanner>,
    issuer: Arc<Issuer>,
    exchanger: Arc<Exchanger>,
    held: Mutex<HashMap<String, Held>>,
    /// The time leases and tokens are measured against.
    clock: Clock,
}

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("credentials", &self.specs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn read_static(name: &str, config: &CredentialConfig) -> Option<SecretValue> {
    let value = if let Some(var) = &config.env {
        std::env::var(var).ok()
    } else if let Some(file) = &config.file {
        std::fs::read_to_string(file)
            .ok()
            .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
    } else {
        None
    };
    match value {
        Some(v) if !v.is_empty() => Some(SecretValue::new(v)),
        _ => {
            tracing::warn!(
                credential = name,
                "static credential has no value; it is unavailable"
            );
            None
        }
    }
}

fn earliest(a: SystemTime, b: Option<SystemTime>) -> SystemTime {
    b.map_or(a, |b| a.min(b))
}

impl Vault {
    /// Measure leases and tokens against `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Build the vault from the configuration. Static values are read now.
    /// `client` reaches the operator's token endpoints; pending revocations
    /// left by an earlier run of the runtime are retried in the background.
    pub fn new(
        config: &Config,
        issuer: Arc<Issuer>,
        client: Arc<dyn Egress>,
        data_dir: Option<&Path>,
    ) -> Result<Self, Error> {
        let mut specs = BTreeMap::new();
        let mut statics = HashMap::new();
        for (name, c) in &config.credentials {
            check(name, c).map_err(|e| Error::Config(format!("credentials.{name}: {e}")))?;
            let binding =
                Binding::parse(&c.destination).map_err(|e| Error::Config(e.to_string()))?;
            let header = http::HeaderName::from_bytes(c.header.as_bytes())
                .map_err(|e| Error::Config(format!("credentials.{name}: {e}")))?;
            if c.kind == CredentialKind::Static
                && let Some(value) = read_static(name, c)
            {
                statics.insert(name.clone(), value);
            }
            let exchange = c.token_endpoint.as_ref().map(|token| exchange::Endpoint {
                token: token.clone(),
                revocation: c.revocation_endpoint.clone(),
                scope: c.scope.clone(),
                client_id: c.client_id.clone(),
            });
            specs.insert(
                name.clone(),
                Spec {
                    kind: c.kind,
                    audience: c.audience.clone().unwrap_or_else(|| binding.origin()),
                    binding,
                    header,
                    format: c.format.clone(),
                    ttl: c.ttl,
                    skills: c.skills.clone(),
                    exchange,
                },
            );
        }
        let lives: Vec<Live> = statics
            .iter()
            .map(|(name, value)| Live {
                name: name.clone(),
                value: value.clone(),
                audience_host: None,
            })
            .collect();
        let exchanger = Arc::new(Exchanger::open(client, data_dir)?);
        exchanger.retry_pending();
        Ok(Vault {
            specs,
            statics_scanner: Scanner::build(&lives),
            statics,
            issuer,
            exchanger,
            held: Mutex::default(),
            clock: Arc::new(SystemTime::now),
        })
    }

    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The credential `name` if this skill may have it at all. Anything
    /// else is the same error as an unknown name.
    fn spec(&self, subject: &Subject, name: &str) -> Result<&Spec, CallError> {
        self.specs
            .get(name)
            .filter(|spec| {
                spec.skills
                    .as_ref()
                    .is_none_or(|skills| skills.contains(&subject.skill.name))
            })
            .ok_or_else(|| unknown_credential(name))
    }

    fn deadline(&self, instance: &str) -> Option<SystemTime> {
        self.held().get(instance).map(|h| h.deadline)
    }

    /// Leases and tokens `instance` holds now (for tests and reports).
    pub fn leases(&self, instance: &str) -> Vec<String> {
        self.held()
            .get(instance)
            .map(|h| h.leases.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn lease(
        &self,
        subject: &Subject,
        name: &str,
        spec: &Spec,
        deadline: SystemTime,
    ) -> Result<(Lease, Option<Live>, Option<Pending>), CallError> {
        let now = self.now();
        let until = earliest(deadline, spec.ttl.map(|ttl| now + ttl));
        let unavailable = |why: &str| {
            CallError::Unavailable(format!("credential `{name}` is unavailable: {why}"))
        };
        let (credential, expires, pending) = match spec.kind {
            CredentialKind::Static => {
                let value = self
                    .statics
                    .get(name)
                    .ok_or_else(|| unavailable("it has no value configured"))?;
                (value.clone(), until, None)
            }
            CredentialKind::Minted => {
                let token = self
                    .issuer
                    .issue(subject, &spec.audience, unix(until))
                    .map_err(|e| unavailable(&e.to_string()))?;
                self.share_started(subject, until)
                    .await
                    .map_err(|e| unavailable(&e.to_string()))?;
                (SecretValue::new(token), until, None)
            }
            CredentialKind::Exchanged => {
                let endpoint = spec
                    .exchange
                    .as_ref()
                    .ok_or_else(|| unavailable("no token endpoint"))?;
                let audience = endpoint.token.clone();
                let identity = self
                    .issuer
                    .issue(subject, &audience, unix(until))
                    .map_err(|e| unavailable(&e.to_string()))?;
                self.share_started(subject, until)
                    .await
                    .map_err(|e| unavailable(&e.to_string()))?;
                let (token, lifetime, pending) = self
                    .exchanger
                    .exchange(name, endpoint, &identity, &spec.audience, until)
                    .await?;
                let expires = earliest(until, lifetime.map(|l| now + l));
                (token, expires, pending)
            }
        };
        let live = match spec.kind {
            CredentialKind::Static => None,
            CredentialKind::Minted | CredentialKind::Exchanged => Some(Live {
                name: name.to_string(),
                value: credential.clone(),
                audience_host: None,
            }),
        };
        let lease = Lease {
            attached: Attached {
                header: spec.header.clone(),
                value: spec.value(credential.expose()),
            },
            expires,
        };
        Ok((lease, live, pending))
    }
}

impl Vault {
    /// Tell the cluster, if any, that the instance holds tokens until `until`.
    async fn share_started(&self, subject: &Subject, until: SystemTime) -> Result<(), Error> {
        match self.issuer.shared() {
            Some(shared) => shared.started(&subject.instance, unix(until)).await,
            None => Ok(()),
        }
    }
}

fn audience_host(audience: &str) -> Option<String> {
    match canonical_url(audience) {
        Ok((_, _, destination, _)) => Some(destination.to_string()),
        Err(_) => Some(audience.to_ascii_lowercase()),
    }
}

fn too_many_tokens(holding: usize) -> CallError {
    CallError::Limit(format!(
        "this instance holds {holding} live tokens, the most it may; no more are minted or leased"
    ))
}

fn expired(name: &str, at: SystemTime) -> CallError {
    CallError::guard(
        "credential-lease",
        format!(
            "the lease on credential `{name}` expired at {}; it is not renewed for this instance",
            humantime::format_rfc3339_seconds(at)
        ),
    )
}

#[async_trait::async_trait]
impl Credentials for Vault {
    fn started(&self, subject: &Subject, deadline: SystemTime) {
        if self.specs.is_empty() {
            return;
        }
        self.held().insert(
            subject.instance.clone(),
            Held {
                skill: subject.skill.name.clone(),
                deadline,
                leases: HashMap::new(),
                tokens: Vec::new(),
                scanner: None,
                revoke: Vec::new(),
            },
        );
    }

    async fn mint(
        &self,
        subject: &Subject,
        name: &str,
        audience: &str,
    ) -> Result<String, CallError> {
        let spec = self.spec(subject, name)?;
        if spec.kind != CredentialKind::Minted {
            return Err(CallError::Invalid(format!(
                "credential `{name}` is not minted; it can only be attached to a request"
            )));
        }
        let deadline = self
            .deadline(&subject.instance)
            .ok_or_else(|| unknown_credential(name))?;
        let holding = self
            .held()
            .get(&subject.instance)
            .map_or(0, |state| state.tokens.len());
        if holding >= MAX_LIVE_TOKENS {
            return Err(too_many_tokens(holding));
        }
        let now = self.now();
        let until = earliest(deadline, spec.ttl.map(|ttl| now + ttl));
        // An instance past its deadline gets nothing new, not a token born
        // dead (a token's expiry is in whole seconds).
        if until <= now || unix(until) <= unix(now) {
            return Err(expired(name, until));
        }
        let token = self
            .issuer
            .issue(subject, audience, unix(until))
            .map_err(|e| CallError::Unavailable(format!("minting `{name}`: {e}")))?;
        // Registered before the skill has it: introspection anywhere agrees.
        self.share_started(subject, until)
            .await
            .map_err(|e| CallError::Unavailable(format!("minting `{name}`: {e}")))?;
        let mut held = self.held();
        let Some(state) = held.get_mut(&subject.instance) else {
            return Err(unknown_credential(name));
        };
        state.add(Live {
            name: name.to_string(),
            value: SecretValue::new(token.clone()),
            audience_host: audience_host(audience),
        });
        Ok(token)
    }

    async fn attach(
        &self,
        subject: &Subject,
        name: &str,
        request: &OutboundRequest,
    ) -> Result<Attached, CallError> {
        let spec = self.spec(subject, name)?;
        if !spec.binding.matches(request) {
            return Err(CallError::guard(
                "credential-binding",
                format!(
                    "credential `{name}` is bound to {} and is not sent to {}://{}:{}{}",
                    spec.binding,
                    request.scheme.as_str(),
                    request.host(),
                    request.port,
                    airlock_host_apis::escape(request.url.path(), 200)
                ),
            ));
        }
        let deadline = {
            let held = self.held();
            let state = held
                .get(&subject.instance)
                .ok_or_else(|| unknown_credential(name))?;
            if let Some(lease) = state.leases.get(name) {
                // Checked now, at injection: a lease is never used late.
                return if self.now() < lease.expires {
                    Ok(lease.attached.clone())
                } else {
                    Err(expired(name, lease.expires))
                };
            }
            if state.tokens.len() >= MAX_LIVE_TOKENS {
                return Err(too_many_tokens(state.tokens.len()));
            }
            state.deadline
        };
        let (lease, live, pending) = self.lease(subject, name, spec, deadline).await?;
        if self.now() >= lease.expires {
            if let Some(pending) = pending {
                self.exchanger.revoke_later(vec![pending]);
            }
            return Err(expired(name, lease.expires));
        }
        let mut held = self.held();
        let Some(state) = held.get_mut(&subject.instance) else {
            // The instance ended while the lease was being made.
            drop(held);
            if let Some(pending) = pending {
                self.exchanger.revoke_later(vec![pending]);
            }
            return Err(unknown_credential(name));
        };
        let attached = lease.attached.clone();
        if let Some(mut live) = live {
            live.audience_host = Some(spec.binding.host.clone());
            state.add(live);
        }
        state.revoke.extend(pending);
        state.leases.insert(name.to_string(), lease);
        Ok(attached)
    }

    fn leak(&self, instance: &str, data: &[u8], host: Option<&str>) -> Option<String> {
        let found = self
            .statics_scanner
            .as_ref()
            .and_then(|s| s.leak(data, None));
        let held = self.held();
        let state = held.get(instance);
        if let Some(name) = found {
            // Never name a credential this skill cannot have.
            let visible = self.specs.get(&name).is_some_and(|spec| {
                spec.skills
                    .as_ref()
                    .is_none_or(|skills| state.is_some_and(|h| skills.contains(&h.skill)))
            });
            return Some(if visible { name } else { "[withheld]".into() });
        }
        state?.scanner.as_ref()?.leak(data, host)
    }

    fn redact(&self, instance: &str, data: &[u8]) -> Option<Vec<u8>> {
        let first = self.statics_scanner.as_ref().and_then(|s| s.redact(data));
        let held = self.held();
        let second = held
            .get(instance)
            .and_then(|h| h.scanner.as_ref())
            .and_then(|s| s.redact(first.as_deref().unwrap_or(data)));
        second.or(first)
    }

    fn ended(&self, instance: &str) -> Option<Revocation> {
        let had_tokens = self.issuer.is_running(instance);
        self.issuer.ended(instance);
        // Dropping the leases and tokens zeroizes them.
        let held = self.held().remove(instance);
        let shared = self
            .issuer
            .shared()
            .filter(|_| had_tokens)
            .cloned()
            .map(|shared| {
                let instance = instance.to_string();
                async move { shared.ended(&instance).await }
            });
        let exchanged = held
            .filter(|held| !held.revoke.is_empty())
            .map(|held| self.exchanger.revoke(held.revoke));
        match (shared, exchanged) {
            (None, None) => None,
            (shared, exchanged) => Some(Box::pin(async move {
                if let Some(shared) = shared {
                    shared.await;
                }
                if let Some(exchanged) = exchanged {
                    exchanged.await;
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<(), String> {
        let config: CredentialConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        check("c", &config)
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_with_the_reason() {
        let cases = [
            (
                "kind = \"static\"\ndestination = \"https://a.example\"",
                "exactly one of `env` and `file`",
            ),
            (
                "kind = \"static\"\nenv = \"X\"\nfile = \"f\"\ndestination = \"https://a.example\"",
                "exactly one",
            ),
            (
                "kind = \"minted\"\nenv = \"X\"\ndestination = \"https://a.example\"",
                "only a static credential",
            ),
            (
                "kind = \"exchanged\"\ndestination = \"https://a.example\"",
                "needs `token_endpoint`",
            ),
            (
                "kind = \"minted\"\ndestination = \"https://a.example\"\nscope = \"x\"",
                "`scope` is only for",
            ),
            (
                "kind = \"minted\"\ndestination = \"ftp://a.example\"",
                "scheme `ftp`",
            ),
            (
                "kind = \"minted\"\ndestination = \"https://a.example/?q=1\"",
                "has a query",
            ),
            (
                "kind = \"minted\"\ndestination = \"https://a.example\"\nformat = \"Bearer\"",
                "exactly once",
            ),
            (
                "kind = \"minted\"\ndestination = \"https://a.example\"\nheader = \"bad header\"",
                "not a header name",
            ),
        ];
        for (text, expected) in cases {
            let err = config(text).err().unwrap_or_default();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert_eq!(
            config("kind = \"minted\"\ndestination = \"https://a.example\""),
            Ok(())
        );
    }

    fn request(url: &str) -> OutboundRequest {
        OutboundRequest::parse("GET", url, &[], Vec::new(), None, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_binding_matches_its_origin_and_path_prefix_only() {
        let binding =
            Binding::parse("https://API.example.com/v1/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(binding.to_string(), "https://api.example.com/v1");
        for url in [
            "https://api.example.com/v1",
            "https://api.example.com/v1/",
            "https://api.example.com/v1/repos?x=1",
            "https://api.example.com:443/v1/x",
            // An encoded separator inside a name is common (GitLab's
            // `group%2Fproject`) and cannot climb out.
            "https://api.example.com/v1/projects/group%2Fproject",
            "https://api.example.com/v1/a..b/.well-known/x;y",
        ] {
            assert!(binding.matches(&request(url)), "{url}");
        }
        for url in [
            "https://api.example.com/v10",
            "https://api.example.com/",
            "https://api.example.com:8443/v1",
            "https://api.example.com.evil.example/v1",
            "https://evil.example/v1",
            "http://api.example.com/v1",
            "https://api.example.com/v1/../admin",
            "https://api.example.com/v1/..;/admin",
            "https://api.example.com/v1/..%2Fadmin",
            "https://api.example.com/v1/x/..%2f..%2fadmin",
            "https://api.example.com/v1/%2e%2e%5cadmin",
            "https://api.example.com/v1/%252e%252e%252fadmin",
            "https://api.example.com/v1/.;x/..;y/admin",
            "https://api.example.com/v1/%u002e%u002e/admin",
            "https://api.example.com/v1/%c0%ae%c0%ae/admin",
        ] {
            let matches = binding.matches(&request(url));
            // `..` is resolved by the parser: `/admin` is outside the prefix.
            assert!(!matches, "{url}");
        }
    }
}
