//! Recurses without bound on the wasm call stack.
//!
//! The frames hold only wasm locals, so this exhausts the engine's wasm stack
//! rather than Rust's shadow stack in linear memory (which would end as an
//! out-of-bounds memory access instead).

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this skill
fn descend(depth: u64) -> u64 {
    // Work after the call keeps it from becoming a loop.
    descend(depth.wrapping_add(1)).wrapping_mul(3) ^ depth
}

struct Recurse;

impl Guest for Recurse {
    fn run(input: String) -> Result<String, String> {
        Ok(descend(input.len() as u64).to_string())
    }
}

export!(Recurse);
