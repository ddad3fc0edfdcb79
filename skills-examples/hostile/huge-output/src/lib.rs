//! Returns 8 MiB of output, and prints as much to stdout.

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

struct Flood;

impl Guest for Flood {
    fn run(input: String) -> Result<String, String> {
        let line = "x".repeat(1023);
        if input.contains("stdout") {
            for _ in 0..8192 {
                println!("{line}");
            }
            return Ok("\"printed\"".into());
        }
        Ok(format!("\"{}\"", "y".repeat(8 << 20)))
    }
}

export!(Flood);
