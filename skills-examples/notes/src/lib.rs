//! Keeps notes in storage: `airlock:skill/storage`, one action per operation.
//!
//! Input: `{"op": "put", "key": "reports/q3", "text": "..."}`, or `get`,
//! `delete`, `list` (with `prefix`). Output: what happened, as JSON.

use serde::Deserialize;
use serde_json::json;

wit_bindgen::generate!({ world: "skill", path: "../../host-apis/wit" });

use airlock::skill::storage;
use airlock::skill::types::Error;

#[derive(Deserialize)]
struct Input {
    op: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    prefix: String,
}

/// A denial or failure, in words.
fn explain(e: Error) -> String {
    match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Limit(m) => format!("limit: {m}"),
        Error::NotFound(m) => format!("not found: {m}"),
        Error::Unavailable(m) => format!("unavailable: {m}"),
    }
}

struct Notes;

impl Guest for Notes {
    fn run(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input)
            .map_err(|e| format!("input must be {{\"op\": \"put|get|delete|list\", ...}}: {e}"))?;
        let out = match input.op.as_str() {
            "put" => {
                storage::put(&input.key, input.text.as_bytes()).map_err(explain)?;
                json!({ "stored": input.key })
            }
            "get" => {
                let value = storage::get(&input.key).map_err(explain)?;
                json!({ "key": input.key, "text": value.map(|v| String::from_utf8_lossy(&v).into_owned()) })
            }
            "delete" => json!({ "deleted": storage::delete(&input.key).map_err(explain)? }),
            "list" => json!({ "keys": storage::list_keys(&input.prefix).map_err(explain)? }),
            other => {
                return Err(format!(
                    "unknown op `{other}`: use put, get, delete or list"
                ));
            }
        };
        Ok(out.to_string())
    }
}

export!(Notes);
