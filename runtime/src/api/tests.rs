use super::*;

#[test]
fn ports_are_stripped_from_host_headers() {
    assert_eq!(strip_port("localhost:8480"), "localhost");
    assert_eq!(strip_port("localhost"), "localhost");
    assert_eq!(strip_port("[::1]:8480"), "[::1]");
    assert_eq!(strip_port("[::1]"), "[::1]");
    assert_eq!(strip_port("evil.example:80"), "evil.example");
}

#[test]
fn new_keys_verify_against_their_hash_only() {
    let (key, hash) = new_key();
    let (other, _) = new_key();
    assert!(key.starts_with("airlock_"));
    assert_ne!(key, other);
    let hex = hash.strip_prefix("blake3:").unwrap_or_default();
    let stored = blake3::Hash::from_hex(hex).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored, blake3::hash(key.as_bytes()));
    assert_ne!(stored, blake3::hash(other.as_bytes()));
}
