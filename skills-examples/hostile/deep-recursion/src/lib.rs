//! Recurses without bound on the wasm call stack.

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this skill
fn descend(depth: u64) -> u64 {
    // `black_box` keeps the call from becoming a loop.
    1 + descend(std::hint::black_box(depth + 1))
}

struct Recurse;

impl Guest for Recurse {
    fn run(_input: String) -> Result<String, String> {
        Ok(descend(0).to_string())
    }
}

export!(Recurse);
