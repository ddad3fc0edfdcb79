//! Workload identity: the runtime as an issuer.
//!
//! Every instance has a SPIFFE id,
//! `spiffe://<trust-domain>/skill/<digest>/run/<instance>`. The runtime signs
//! JWTs in the JWT-SVID shape for it (Ed25519, `EdDSA`), with the task, the
//! intent, the generating agent and the delegation chain (`act`, RFC 8693)
//! as claims. Downstream services verify them with the JWKS and ask the
//! introspection endpoint (RFC 7662) whether the instance is still running:
//! a token is `active` only while it is.
//!
//! Keys live in `<data-dir>/identity/keys.json` (mode 0600). Rotation adds a
//! key and retires the current one; a retired key stays in the JWKS until
//! every token it signed has expired.
//!
//! Only instances running in this process are active. A restart ends every
//! instance, so no token issued before it is active after it.

mod keys;
pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_host_apis::Subject;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use keys::{Keyring, PublicKeys};

use crate::Error;
use crate::config::IdentityConfig;

/// Seconds since the Unix epoch.
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn now() -> u64 {
    unix(SystemTime::now())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// One hop of a delegation chain, as in RFC 8693 `act`: who acted before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// The claims of an identity token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub task_id: String,
    pub intent: String,
    pub agent: String,
    /// The calling skills, nearest first, when the instance runs as a tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

impl Claims {
    /// The instance the token was issued to, from its `sub`.
    pub fn instance(&self) -> Option<&str> {
        let (_, instance) = self.sub.rsplit_once("/run/")?;
        Some(instance)
    }
}

/// Why a token does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a JWT")]
    Malformed,
    #[error("signed with an unknown key or algorithm")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("issued by someone else")]
    Issuer,
    #[error("expired")]
    Expired,
}

/// What the nodes of a cluster share about tokens: which instances holding
/// tokens are running (on any node), and every node's public keys, so that
/// introspection on any node answers for tokens minted by any node.
#[async_trait::async_trait]
pub trait SharedTokens: Send + Sync + 'static {
    /// `instance` holds tokens until `exp` (Unix seconds) or its end.
    async fn started(&self, instance: &str, exp: u64) -> Result<(), Error>;
    /// `instance` ended: its tokens are inactive everywhere.
    async fn ended(&self, instance: &str);
    /// Whether `instance` is running, on any node, with tokens.
    async fn live(&self, instance: &str) -> bool;
    /// Every node's public keys, as JWKs.
    async fn public_keys(&self) -> Vec<serde_json::Value>;
}

/// The issuer: keys, the running instances that hold tokens, and signing.
pub struct Issuer {
    config: IdentityConfig,
    keys: Arc<Keyring>,
    /// Instances with tokens, running now.
    running: Mutex<HashMap<String, u64>>,
    /// The cluster's view, when the node is in one.
    shared: std::sync::OnceLock<Arc<dyn SharedTokens>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .field("trust_domain", &self.config.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Open the issuer in `data_dir`, creating its key on first start.
    pub fn open(data_dir: &Path, config: IdentityConfig) -> Result<Arc<Self>, Error> {
        let dir = identity_dir(data_dir);
        crate::fsutil::create_private_dir(&dir)?;
        let retain = config.max_token_ttl;
        let keys = Arc::new(Keyring::open(&dir.join("keys.json"), retain)?);
        Ok(Arc::new(Issuer {
            config,
            keys,
            running: Mutex::default(),
            shared: std::sync::OnceLock::new(),
        }))
    }

    /// An issuer that keeps nothing on disk: for runs without a data
    /// directory. Its tokens cannot be verified once the process ends.
    pub fn ephemeral(config: IdentityConfig) -> Arc<Self> {
        Arc::new(Issuer {
            keys: Arc::new(Keyring::ephemeral(config.max_token_ttl)),
            running: Mutex::default(),
            shared: std::sync::OnceLock::new(),
            config,
        })
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// Share token state with the other nodes of a cluster (set once).
    pub fn share(&self, shared: Arc<dyn SharedTokens>) {
        let _ = self.shared.set(shared);
    }

    pub fn shared(&self) -> Option<&Arc<dyn SharedTokens>> {
        self.shared.get()
    }

    /// The SPIFFE id of an instance.
    pub fn spiffe_id(&self, digest: &str, instance: &str) -> String {
        format!(
            "spiffe://{}/skill/{digest}/run/{instance}",
            self.config.trust_domain
        )
    }

    /// Sign a token for `subject`, for `audience`, expiring at `exp` (capped
    /// by the configured maximum TTL).
    pub fn issue(&self, subject: &Subject, audience: &str, exp: u64) -> Result<String, Error> {
        let iat = now();
        let exp = exp.min(iat + self.config.max_token_ttl.as_secs());
        let act = subject
            .delegation
            .callers
            .iter()
            .fold(None, |inner: Option<Actor>, caller| {
                Some(Actor {
                    sub: self.spiffe_id(&caller.digest, &caller.instance),
                    act: inner.map(Box::new),
                })
            });
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: self.spiffe_id(&subject.skill.digest, &subject.instance),
            aud: audience.to_string(),
            iat,
            exp,
            jti: format!("{:032x}", rand::random::<u128>()),
            task_id: subject.task.id.clone(),
            intent: subject.task.intent.clone(),
            agent: subject.agent.id.clone(),
            act,
        };
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(subject.instance.clone())
            .or_insert(exp);
        self.sign(&claims)
    }

    /// A compact JWS of `claims`, signed with the current key.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let key = self.keys.current()?;
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": key.kid });
        let body = serde_json::to_vec(claims)
            .map_err(|e| Error::Engine(format!("encoding token claims: {e}")))?;
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&body));
        let signature = key.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }

    /// Verify a token's signature, issuer and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, Invalid> {
        self.verify_with(token, |kid, input, signature| {
            self.keys.verify(kid, input, signature)
        })
    }

    /// Verify a token whose key may be another node's.
    async fn verify_anywhere(&self, token: &str) -> Result<Claims, Invalid> {
        match (self.verify(token), self.shared.get()) {
            (Err(Invalid::UnknownKey), Some(shared)) => {
                let keys = PublicKeys::from_jwks(&shared.public_keys().await);
                self.verify_with(token, |kid, input, signature| {
                    use crate::audit::Signatures as _;
                    if keys.knows(kid) {
                        Ok(keys.check(kid, input, signature))
                    } else {
                        Err(Invalid::UnknownKey)
                    }
                })
            }
            (result, _) => result,
        }
    }

    fn verify_with(
        &self,
        token: &str,
        check: impl Fn(&str, &[u8], &[u8]) -> Result<bool, Invalid>,
    ) -> Result<Claims, Invalid> {
        let (input, signature) = token.rsplit_once('.').ok_or(Invalid::Malformed)?;
        let (header, body) = input.split_once('.').ok_or(Invalid::Malformed)?;
        if body.contains('.') {
            return Err(Invalid::Malformed);
        }
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: String,
        }
        let header: Header = unb64(header)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(Invalid::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(Invalid::UnknownKey);
        }
        let signature = unb64(signature).ok_or(Invalid::Malformed)?;
        if !check(&header.kid, input.as_bytes(), &signature)? {
            return Err(Invalid::Signature);
        }
        let claims: Claims = unb64(body)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Invalid::Malformed)?;
        if claims.iss != self.config.issuer {
            return Err(Invalid::Issuer);
        }
        if claims.exp <= now() {
            return Err(Invalid::Expired);
        }
        Ok(claims)
    }

    /// RFC 7662: whether `token` is active now, with its claims if so.
    /// Active means: it verifies, it has not expired, and the instance it
    /// was issued to is running.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        let inactive = serde_json::json!({ "active": false });
        let Ok(claims) = self.verify(token) else {
            return inactive;
        };
        let live = claims
            .instance()
            .is_some_and(|instance| self.is_running(instance));
        if !live {
            return inactive;
        }
        let mut answer = serde_json::to_value(&claims).unwrap_or_default();
        if let Some(map) = answer.as_object_mut() {
            map.insert("active".into(), true.into());
            map.insert("token_type".into(), "Bearer".into());
        }
        answer
    }

    /// The JWKS: every key that may still have valid tokens.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.public_jwks() })
    }

    /// The JWKS, with every other node's keys when in a cluster.
    pub async fn jwks_anywhere(&self) -> serde_json::Value {
        let mut keys = self.keys.public_jwks();
        if let Some(shared) = self.shared.get() {
            for key in shared.public_keys().await {
                if !keys.iter().any(|k| k.get("kid") == key.get("kid")) {
                    keys.push(key);
                }
            }
        }
        serde_json::json!({ "keys": keys })
    }

    /// RFC 7662 for a token minted on any node of the cluster: active if it
    /// verifies with that node's keys and its instance runs anywhere.
    pub async fn introspect_anywhere(&self, token: &str) -> serde_json::Value {
        let Some(shared) = self.shared.get() else {
            return self.introspect(token);
        };
        let inactive = serde_json::json!({ "active": false });
        let Ok(claims) = self.verify_anywhere(token).await else {
            return inactive;
        };
        let live = match claims.instance() {
            Some(instance) => self.is_running(instance) || shared.live(instance).await,
            None => false,
        };
        if !live {
            return inactive;
        }
        let mut answer = serde_json::to_value(&claims).unwrap_or_default();
        if let Some(map) = answer.as_object_mut() {
            map.insert("active".into(), true.into());
            map.insert("token_type".into(), "Bearer".into());
        }
        answer
    }

    /// OIDC discovery metadata.
    pub fn discovery(&self) -> serde_json::Value {
        let issuer = self.config.issuer.trim_end_matches('/');
        serde_json::json!({
            "issuer": self.config.issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "jti", "task_id", "intent", "agent", "act"],
        })
    }

    /// Whether `instance` is running here and has been issued tokens.
    pub fn is_running(&self, instance: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(instance)
    }

    /// An instance ended: its tokens are inactive from now on.
    pub fn ended(&self, instance: &str) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(instance);
    }
}

/// Where the issuer keeps its files.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// Retire the current key and start signing with a new one. Returns the new
/// key's id.
pub fn rotate(data_dir: &Path, config: &IdentityConfig) -> Result<String, Error> {
    let dir = identity_dir(data_dir);
    crate::fsutil::create_private_dir(&dir)?;
    Keyring::open(&dir.join("keys.json"), config.max_token_ttl)?.rotate()
}

/// The default lifetime bound, for configuration.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests;
