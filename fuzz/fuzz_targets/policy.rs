//! See `airlock_runtime::fuzzing::policy` for the invariant this target checks.
#![no_main]

use std::sync::OnceLock;

use airlock_runtime::fuzzing::policy::Target;
use libfuzzer_sys::fuzz_target;

static TARGET: OnceLock<Target> = OnceLock::new();

fuzz_target!(|bytes: &[u8]| {
    let target = TARGET.get_or_init(|| Target::new().unwrap_or_else(|v| panic!("{v}")));
    if let Err(v) = target.check(bytes) {
        panic!("{v}");
    }
});
