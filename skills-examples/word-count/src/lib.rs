//! Counts words: parses its JSON input and returns JSON.
//!
//! Input: `{"text": "the quick brown fox jumps over the lazy dog", "top": 3}`.
//! Output: `{"words": 9, "distinct": 8, "top": [["the", 2], ["brown", 1], ["dog", 1]]}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    world: "skill",
    path: "../../host-apis/wit",
});

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    5
}

#[derive(Serialize)]
struct Output {
    words: usize,
    distinct: usize,
    top: Vec<(String, usize)>,
}

struct WordCount;

impl Guest for WordCount {
    fn run(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input)
            .map_err(|e| format!("input must be {{\"text\": \"...\", \"top\": N}}: {e}"))?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut words = 0;
        for word in input
            .text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
        {
            if word.is_empty() {
                continue;
            }
            words += 1;
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
        let distinct = counts.len();
        let mut top: Vec<(String, usize)> = counts.into_iter().collect();
        // Most frequent first; ties in alphabetical order.
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(input.top);
        serde_json::to_string(&Output {
            words,
            distinct,
            top,
        })
        .map_err(|e| e.to_string())
    }
}

export!(WordCount);
