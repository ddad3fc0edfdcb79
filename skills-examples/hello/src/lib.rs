//! The smallest Airlock skill: no capabilities, just input to output.
//!
//! Input: `{"name": "Ada"}` (or anything else, to greet the world).
//! Output: `{"greeting": "hello, Ada"}`.

wit_bindgen::generate!({
    world: "skill",
    path: "../../host-apis/wit",
});

struct Hello;

impl Guest for Hello {
    fn run(input: String) -> Result<String, String> {
        let input: serde_json::Value = serde_json::from_str(&input).unwrap_or_default();
        let name = input["name"].as_str().unwrap_or("world");
        Ok(serde_json::json!({ "greeting": format!("hello, {name}") }).to_string())
    }
}

export!(Hello);
