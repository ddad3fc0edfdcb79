//! Compiled artifacts on disk, so a second run of a skill does not recompile.
//!
//! An entry is keyed by the skill digest and a fingerprint of the engine
//! configuration, and carries a keyed blake3 MAC (the key lives beside the
//! cache, readable only by its owner) over the fingerprint, the digest and the
//! artifact. An entry is checked before it is deserialized; one that fails the
//! check is deleted and rebuilt, never loaded. Components are never accepted
//! precompiled from a user: only this cache writes entries.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use crate::Error;
use crate::digest::SkillDigest;

const MAGIC: &[u8; 16] = b"airlock-cwasm-01";
const MAC_LEN: usize = 32;

/// The on-disk cache of compiled components.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    fingerprint: String,
}

/// Feeds `Hash` output into blake3.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.0.finalize().as_bytes().get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(out)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A fingerprint of everything that makes compiled code valid for an engine.
pub fn engine_fingerprint(engine: &wasmtime::Engine) -> String {
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    let mut hex = hasher.0.finalize().to_hex().to_string();
    hex.truncate(16);
    hex
}

impl ArtifactCache {
    /// Open (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<Self, Error> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating `{}`", dir.display()), e))?;
        let key = load_or_create_key(&dir.join("cache.key"))?;
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            key,
            fingerprint: engine_fingerprint(engine),
        })
    }

    fn path(&self, digest: &SkillDigest) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.fingerprint))
    }

    fn mac(&self, digest: &SkillDigest, body: &[u8]) -> [u8; 32] {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(self.fingerprint.as_bytes());
        mac.update(digest.as_bytes());
        mac.update(body);
        *mac.finalize().as_bytes()
    }

    /// The compiled component for `digest`, if a sound entry exists.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &SkillDigest) -> Option<Component> {
        let path = self.path(digest);
        let bytes = fs::read(&path).ok()?;
        match self.verify(digest, &bytes) {
            Some(body) => {
                // SAFETY: `body` was written by `store` below from
                // `Component::serialize` for an engine with this fingerprint,
                // and the MAC proves it is unchanged since: only this cache
                // holds the key.
                #[allow(unsafe_code)]
                let component = unsafe { Component::deserialize(engine, body) };
                match component {
                    Ok(component) => Some(component),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cached artifact rejected by the engine; rebuilding");
                        let _ = fs::remove_file(&path);
                        None
                    }
                }
            }
            None => {
                tracing::warn!(path = %path.display(), "cached artifact failed its integrity check; rebuilding");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn verify<'a>(&self, digest: &SkillDigest, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < MAC_LEN {
            return None;
        }
        let (mac, body) = rest.split_at(MAC_LEN);
        let expected = blake3::Hash::from_bytes(self.mac(digest, body));
        let found: [u8; 32] = mac.try_into().ok()?;
        // blake3::Hash compares in constant time.
        (expected == blake3::Hash::from_bytes(found)).then_some(body)
    }

    /// Store the compiled `component` for `digest`, atomically.
    pub fn store(&self, digest: &SkillDigest, component: &Component) -> Result<(), Error> {
        let body = component
            .serialize()
            .map_err(|e| Error::Engine(format!("serializing a compiled skill: {e}")))?;
        let mac = self.mac(digest, &body);
        let path = self.path(digest);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(|e| Error::io(format!("writing to `{}`", self.dir.display()), e))?;
        let written = tmp
            .write_all(MAGIC)
            .and_then(|()| tmp.write_all(&mac))
            .and_then(|()| tmp.write_all(&body))
            .and_then(|()| tmp.as_file().sync_data());
        written.map_err(|e| Error::io(format!("writing `{}`", path.display()), e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(format!("writing `{}`", path.display()), e.error))?;
        Ok(())
    }
}

fn load_or_create_key(path: &Path) -> Result<[u8; 32], Error> {
    if let Ok(bytes) = fs::read(path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        tracing::warn!(path = %path.display(), "cache key is malformed; starting a new cache");
    }
    let key: [u8; 32] = rand::random();
    crate::fsutil::write_private(path, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_fails_the_check() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let engine = wasmtime::Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).unwrap_or_else(|e| panic!("{e}"));
        let digest = SkillDigest::of(b"x");
        let body = b"compiled code";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&cache.mac(&digest, body));
        entry.extend_from_slice(body);
        assert_eq!(cache.verify(&digest, &entry), Some(body.as_slice()));
        let other = SkillDigest::of(b"y");
        assert_eq!(
            cache.verify(&other, &entry),
            None,
            "entry swapped between digests"
        );
        for i in 0..entry.len() {
            let mut bad = entry.clone();
            if let Some(b) = bad.get_mut(i) {
                *b ^= 1;
            }
            assert_eq!(cache.verify(&digest, &bad), None, "flipped byte {i}");
        }
        assert_eq!(cache.verify(&digest, &entry[..entry.len() - 1]), None);
    }
}
