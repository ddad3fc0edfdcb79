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

/// The examples' configuration (as in `skills-examples/airlock.toml`), with
/// the tool path pointing at the built guests.
fn examples_config(sinks: &str) -> String {
    format!(
        r#"
[storage.namespaces]
notes = "team"
report = "team"

[[storage.labels]]
prefix = "reports/"
label = "confidential"

[tools.word-count]
skill = "{{skills}}/word_count.wasm"
risk = "low"

[hosts."reports.example.com"]
sinks = [{sinks}]
"#
    )
}

fn example_policies() -> Vec<(&'static str, &'static str)> {
    vec![(
        "examples.cedar",
        include_str!("../../policies/examples/examples.cedar"),
    )]
}

#[tokio::test]
async fn notes() {
    let node = airlock_tests::TestNode::new(&examples_config(""), &example_policies());
    let trust = airlock_host_apis::Trust::Medium;
    let put = node
        .run(
            skills::NOTES,
            r#"{"op": "put", "key": "reports/q3", "text": "sales up"}"#,
            trust,
        )
        .await;
    assert_eq!(
        put.output.as_deref(),
        Some(r#"{"stored":"reports/q3"}"#),
        "{:?}",
        put.error
    );
    let get = node
        .run(
            skills::NOTES,
            r#"{"op": "get", "key": "reports/q3"}"#,
            trust,
        )
        .await;
    assert_eq!(
        get.output.as_deref(),
        Some(r#"{"key":"reports/q3","text":"sales up"}"#)
    );
    let list = node
        .run(
            skills::NOTES,
            r#"{"op": "list", "prefix": "reports/"}"#,
            trust,
        )
        .await;
    assert_eq!(list.output.as_deref(), Some(r#"{"keys":["reports/q3"]}"#));
    let delete = node
        .run(
            skills::NOTES,
            r#"{"op": "delete", "key": "reports/q3"}"#,
            trust,
        )
        .await;
    assert_eq!(delete.output.as_deref(), Some(r#"{"deleted":true}"#));
    for report in [&put, &get, &list, &delete] {
        assert_eq!(
            report.decisions[0].decision.policies,
            ["examples/notes-keeps-team-notes"]
        );
    }
    // The notes really are in the `team` namespace directory.
    assert!(node.dir.path().join("storage/team").is_dir());
}

#[tokio::test]
async fn report() {
    let node = airlock_tests::TestNode::new(&examples_config(""), &example_policies());
    let trust = airlock_host_apis::Trust::Medium;
    let text = "Revenue grew. Revenue grew again, and costs fell.";
    node.run(
        skills::NOTES,
        &json!({"op": "put", "key": "reports/q3", "text": text}).to_string(),
        trust,
    )
    .await;
    let input = r#"{"key": "reports/q3", "to": "https://reports.example.com/summaries"}"#;
    let run = node.run(skills::REPORT, input, trust).await;
    assert_eq!(run.status, RunStatus::Ok, "{:?}", run.error);
    let output: Value = serde_json::from_str(run.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["summary"]["words"], 8);
    assert_eq!(output["summary"]["top"][0], json!(["grew", 2]));
    assert_eq!(output["delivery"]["delivered"], false);
    assert_eq!(
        output["delivery"]["error"],
        "denied: `http.request` on Host `reports.example.com` denied by policy \
         `base/no-egress-after-confidential-read` (the session has read data labelled \
         confidential, and this host is not a sink for it)"
    );
    let actions: Vec<(String, String)> = airlock_tests::decisions(&run)
        .into_iter()
        .map(|(action, verdict, _)| (action, verdict))
        .collect();
    assert_eq!(
        actions,
        [
            ("storage.read".into(), "allow".into()),
            ("tool.invoke".into(), "allow".into()),
            ("http.request".into(), "deny".into()),
        ]
    );
    // The tool ran as its own instance; the log line came through.
    assert!(
        run.logs
            .iter()
            .any(|l| l.message == "summarized `reports/q3`")
    );

    // Marking the host as a sink for confidential data lets the post be decided
    // in the report's favour.
    let sink =
        airlock_tests::TestNode::new(&examples_config("\"confidential\""), &example_policies());
    sink.run(
        skills::NOTES,
        &json!({"op": "put", "key": "reports/q3", "text": text}).to_string(),
        trust,
    )
    .await;
    let run = sink.run(skills::REPORT, input, trust).await;
    let post = run.decisions.last().unwrap();
    assert_eq!(post.decision.policies, ["examples/report-posts-summaries"]);
}
