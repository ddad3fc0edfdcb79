//! The issuer's Ed25519 keys, on disk with mode 0600.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Invalid, b64, now, unb64};
use crate::Error;

/// One signing key.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    signing: SigningKey,
    pub created: u64,
    /// When it stopped signing; it verifies until every token it signed has
    /// expired.
    pub retired: Option<u64>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn generate() -> Self {
        let secret = Zeroizing::new(rand::random::<[u8; 32]>());
        let signing = SigningKey::from_bytes(&secret);
        let public = signing.verifying_key();
        let kid = b64(blake3::hash(public.as_bytes())
            .as_bytes()
            .get(..12)
            .unwrap_or_default());
        Key {
            kid,
            signing,
            created: now(),
            retired: None,
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).to_bytes().to_vec()
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": b64(self.signing.verifying_key().as_bytes()),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    secret: String,
    created: u64,
    retired: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    keys: Vec<StoredKey>,
}

struct State {
    keys: Vec<Key>,
    modified: Option<SystemTime>,
}

/// The keys: the newest unretired one signs; retired ones still verify.
pub struct Keyring {
    path: Option<PathBuf>,
    retain: Duration,
    state: RwLock<State>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Vec<Key>, Error> {
    let bad = |why: String| Error::Config(format!("identity keys `{}`: {why}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading `{}`", path.display()), e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "the file is readable by others (mode {:o}); it must be 0600",
                mode & 0o777
            )));
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading `{}`", path.display()), e))?,
    );
    let stored: Stored = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    stored
        .keys
        .into_iter()
        .map(|k| {
            let secret = Zeroizing::new(
                unb64(&k.secret)
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
                    .ok_or_else(|| bad(format!("key `{}` is not 32 bytes of base64url", k.kid)))?,
            );
            Ok(Key {
                kid: k.kid,
                signing: SigningKey::from_bytes(&secret),
                created: k.created,
                retired: k.retired,
            })
        })
        .collect()
}

fn write(path: &Path, keys: &[Key]) -> Result<(), Error> {
    let stored = Stored {
        keys: keys
            .iter()
            .map(|k| StoredKey {
                kid: k.kid.clone(),
                secret: b64(k.signing.as_bytes()),
                created: k.created,
                retired: k.retired,
            })
            .collect(),
    };
    let text = Zeroizing::new(
        serde_json::to_string_pretty(&stored)
            .map_err(|e| Error::Engine(format!("encoding keys: {e}")))?,
    );
    crate::fsutil::write_private(path, text.as_bytes())
}

impl Keyring {
    /// Open the keys at `path`, creating the first on first start, dropping
    /// retired keys whose tokens have all expired.
    pub fn open(path: &Path, retain: Duration) -> Result<Self, Error> {
        let mut keys = if path.exists() {
            read(path)?
        } else {
            Vec::new()
        };
        let before = keys.len();
        let cutoff = now().saturating_sub(retain.as_secs());
        keys.retain(|k| k.retired.is_none_or(|r| r > cutoff));
        let mut changed = keys.len() != before;
        if !keys.iter().any(|k| k.retired.is_none()) {
            keys.push(Key::generate());
            changed = true;
        }
        if changed {
            write(path, &keys)?;
        }
        Ok(Keyring {
            path: Some(path.to_path_buf()),
            retain,
            state: RwLock::new(State {
                keys,
                modified: modified(path),
            }),
        })
    }

    /// Keys that live in memory only.
    pub fn ephemeral(retain: Duration) -> Self {
        Keyring {
            path: None,
            retain,
            state: RwLock::new(State {
                keys: vec![Key::generate()],
                modified: None,
            }),
        }
    }

    /// Pick up a rotation done by another process.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let on_disk = modified(path);
        let stale = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .modified
            != on_disk;
        if !stale {
            return;
        }
        match read(path) {
            Ok(keys) => {
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                state.keys = keys;
                state.modified = on_disk;
            }
            Err(e) => tracing::warn!(error = %e, "identity keys changed on disk but do not load"),
        }
    }

    /// The key that signs now.
    pub fn current(&self) -> Result<Key, Error> {
        self.refresh();
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .keys
            .iter()
            .rev()
            .find(|k| k.retired.is_none())
            .cloned()
            .ok_or_else(|| Error::Config("the identity keyring has no current key".into()))
    }

    /// Check `signature` over `message` with key `kid`.
    pub fn verify(&self, kid: &str, message: &[u8], signature: &[u8]) -> Result<bool, Invalid> {
        let find = || {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            let cutoff = now().saturating_sub(self.retain.as_secs());
            state
                .keys
                .iter()
                .find(|k| k.kid == kid && k.retired.is_none_or(|r| r > cutoff))
                .map(|k| k.signing.verifying_key())
        };
        let key = match find() {
            Some(key) => key,
            None => {
                self.refresh();
                find().ok_or(Invalid::UnknownKey)?
            }
        };
        let signature =
            ed25519_dalek::Signature::from_slice(signature).map_err(|_| Invalid::Malformed)?;
        Ok(key.verify(message, &signature).is_ok())
    }

    /// The public keys that may still have valid tokens, as JWKs.
    pub fn public_jwks(&self) -> Vec<serde_json::Value> {
        self.refresh();
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let cutoff = now().saturating_sub(self.retain.as_secs());
        state
            .keys
            .iter()
            .filter(|k| k.retired.is_none_or(|r| r > cutoff))
            .map(Key::jwk)
            .collect()
    }

    /// Retire the current key and add a new one.
    pub fn rotate(&self) -> Result<String, Error> {
        self.refresh();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let at = now();
        for key in &mut state.keys {
            key.retired.get_or_insert(at);
        }
        let key = Key::generate();
        let kid = key.kid.clone();
        state.keys.push(key);
        if let Some(path) = &self.path {
            write(path, &state.keys)?;
            state.modified = modified(path);
        }
        Ok(kid)
    }
}

/// Public keys another node published (its JWKS): enough to check its
/// signatures, nothing to make them.
#[derive(Clone, Debug, Default)]
pub struct PublicKeys {
    keys: std::collections::HashMap<String, ed25519_dalek::VerifyingKey>,
}

impl PublicKeys {
    /// From JWKs as `Keyring::public_jwks` writes them; others are skipped.
    pub fn from_jwks(jwks: &[serde_json::Value]) -> Self {
        let keys = jwks
            .iter()
            .filter_map(|jwk| {
                let text = |name: &str| jwk.get(name).and_then(|v| v.as_str());
                if text("kty") != Some("OKP") || text("crv") != Some("Ed25519") {
                    return None;
                }
                let kid = text("kid")?.to_string();
                let x = unb64(text("x")?)?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&<[u8; 32]>::try_from(x).ok()?).ok()?;
                Some((kid, key))
            })
            .collect();
        PublicKeys { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

impl crate::audit::Signatures for PublicKeys {
    fn check(&self, kid: &str, message: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.keys.get(kid) else {
            return false;
        };
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|signature| key.verify(message, &signature).is_ok())
    }
}
