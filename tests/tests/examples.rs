//! The example skills users copy, run as users would run them.

use airlock_runtime::run::RunStatus;
use airlock_tests::{run, skills};
use serde_json::{Value, json};

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
airlock_tests::foreach_example!(assert_test_exists);

#[tokio::test]
async fn hello() {
    let report = run(skills::HELLO, r#"{"name": "Ada"}"#).await;
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!(
        report.output.as_deref(),
        Some(r#"{"greeting":"hello, Ada"}"#)
    );
    assert_eq!(report.usage.host_calls, 0);
    assert!(report.decisions.is_empty());
    assert!(report.usage.peak_memory_bytes > 0);

    let anonymous = run(skills::HELLO, "{}").await;
    assert_eq!(
        anonymous.output.as_deref(),
        Some(r#"{"greeting":"hello, world"}"#)
    );
}

#[tokio::test]
async fn word_count() {
    let input = json!({"text": "the quick brown fox jumps over the lazy dog", "top": 3});
    let report = run(skills::WORD_COUNT, &input.to_string()).await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let output: Value =
        serde_json::from_str(&report.output.unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        output,
        json!({"words": 9, "distinct": 8, "top": [["the", 2], ["brown", 1], ["dog", 1]]})
    );
}

#[tokio::test]
async fn word_count_bad_input_is_the_skills_own_error() {
    let report = run(skills::WORD_COUNT, r#"{"txt": "typo"}"#).await;
    assert_eq!(report.status, RunStatus::SkillError);
    let message = report.error.map(|e| e.message).unwrap_or_default();
    assert!(message.starts_with("input must be {\"text\""), "{message}");
}
