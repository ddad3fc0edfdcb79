//! See `airlock_runtime::fuzzing::api` for the invariant this target checks.
#![no_main]

use std::sync::OnceLock;

use airlock_runtime::fuzzing::api::Target;
use libfuzzer_sys::fuzz_target;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static TARGET: OnceLock<Target> = OnceLock::new();

fuzz_target!(|bytes: &[u8]| {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let target = TARGET.get_or_init(|| {
        let _entered = runtime.enter();
        Target::new().unwrap_or_else(|v| panic!("{v}"))
    });
    if let Err(v) = runtime.block_on(target.check(bytes)) {
        panic!("{v}");
    }
});
