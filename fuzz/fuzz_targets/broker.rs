//! See `airlock_runtime::fuzzing::broker` for the invariant this target checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(v) = airlock_runtime::fuzzing::broker::check(bytes) {
        panic!("{v}");
    }
});
