//! Admission (target `admission`): arbitrary and mutated bytes never panic
//! inspection; bytes are accepted only as a valid component exporting `run`
//! whose every import is allowed; the answer and the digest are the same
//! every time.

use super::{Violation, ensure};
use crate::SkillDigest;
use crate::inspect::inspect;

/// The largest component the target admits.
pub const MAX_SIZE: u64 = 16 << 20;

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    let first = inspect(bytes, MAX_SIZE);
    let again = inspect(bytes, MAX_SIZE);
    ensure!(
        format!("{first:?}") == format!("{again:?}"),
        "inspection is not deterministic"
    );
    let Ok(found) = first else {
        return Ok(());
    };
    ensure!(
        found.digest == SkillDigest::of(bytes),
        "the digest is not the blake3 of the bytes"
    );
    ensure!(
        wasmparser::Parser::is_component(bytes),
        "accepted something that is not a component"
    );
    ensure!(
        found.exports.iter().any(|e| e == "run"),
        "accepted a component without `run`"
    );
    for import in &found.imports {
        ensure!(
            crate::inspect::check_import(import).is_ok(),
            "accepted a forbidden import `{import}`"
        );
    }
    ensure!(
        found.size == bytes.len() as u64,
        "the size is not the length"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("admission") {
            if let Err(v) = super::check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
