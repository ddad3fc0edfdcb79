//! Inspection of arbitrary bytes: never a panic or a hang; a component is
//! accepted only if it validates and imports only allowed interfaces; the
//! digest is deterministic.
#![no_main]

use airlock_runtime::SkillDigest;
use airlock_runtime::inspect::inspect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(found) = inspect(bytes, 16 << 20) {
        assert_eq!(found.digest, SkillDigest::of(bytes));
        assert!(wasmparser::Parser::is_component(bytes));
        assert!(found.exports.iter().any(|e| e == "run"));
    }
});
