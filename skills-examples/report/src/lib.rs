//! Reads a report from storage, has the `word-count` tool summarize it, and
//! posts the summary. Each step is a capability call the broker decides; a
//! denial is reported in the output, not hidden.
//!
//! Input: `{"key": "reports/q3", "to": "https://reports.example.com/summaries"}`.

use serde::Deserialize;
use serde_json::{Value, json};

wit_bindgen::generate!({ world: "skill", path: "../../host-apis/wit" });

use airlock::skill::types::Error;
use airlock::skill::{http, log, storage, tools};

#[derive(Deserialize)]
struct Input {
    key: String,
    to: String,
}

fn explain(e: Error) -> String {
    match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Limit(m) => format!("limit: {m}"),
        Error::NotFound(m) => format!("not found: {m}"),
        Error::Unavailable(m) => format!("unavailable: {m}"),
    }
}

struct Report;

impl Guest for Report {
    fn run(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input).map_err(|e| {
            format!("input must be {{\"key\": \"...\", \"to\": \"https://...\"}}: {e}")
        })?;
        let text = storage::get(&input.key)
            .map_err(explain)?
            .ok_or_else(|| format!("no report stored under `{}`", input.key))?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let counted = tools::invoke("word-count", &json!({ "text": text, "top": 3 }).to_string())
            .map_err(explain)?;
        let summary: Value = serde_json::from_str(&counted).unwrap_or(Value::String(counted));
        log::emit(log::Level::Info, &format!("summarized `{}`", input.key));
        let request = http::Request {
            method: "POST".into(),
            url: input.to.clone(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({ "report": input.key, "summary": summary })
                .to_string()
                .into_bytes(),
            credential: None,
        };
        let delivery = match http::fetch(&request) {
            Ok(response) => json!({ "delivered": true, "status": response.status }),
            Err(e) => json!({ "delivered": false, "error": explain(e) }),
        };
        Ok(json!({ "summary": summary, "delivery": delivery }).to_string())
    }
}

export!(Report);
