//! {name}: an Airlock skill.
//!
//! Input: JSON text, for example `{"key": "greeting"}`. Output: JSON text.
//! Every capability call (http, storage, secrets, tools) is decided by the
//! host's broker; a denial comes back as `Err(Error::Denied(..))` naming the
//! action, the resource and the deciding policies.

wit_bindgen::generate!({ world: "skill", path: "wit" });

use airlock::skill::types::Error;
use airlock::skill::{log, storage};

struct Skill;

impl Guest for Skill {
    fn run(input: String) -> Result<String, String> {
        let input: serde_json::Value =
            serde_json::from_str(&input).map_err(|e| format!("input is not JSON: {e}"))?;
        let key = input["key"].as_str().unwrap_or("greeting");
        log::emit(log::Level::Info, &format!("looking up {key}"));
        let value = match storage::get(key) {
            Ok(value) => value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            // A denial is an ordinary error: say what the broker said.
            Err(Error::Denied(why)) => return Err(format!("not allowed: {why}")),
            Err(e) => return Err(format!("storage failed: {e:?}")),
        };
        Ok(serde_json::json!({ "key": key, "value": value }).to_string())
    }
}

export!(Skill);
