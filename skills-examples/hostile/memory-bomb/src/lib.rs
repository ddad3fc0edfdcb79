//! Allocates and touches memory until something stops it.

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

struct Bomb;

impl Guest for Bomb {
    fn run(_input: String) -> Result<String, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(Bomb);
