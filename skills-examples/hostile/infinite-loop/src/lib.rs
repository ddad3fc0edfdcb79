//! Never returns: only the wall-clock deadline stops it.

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

struct Spin;

impl Guest for Spin {
    fn run(_input: String) -> Result<String, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Spin);
