//! What stops policies from loading, and why an evaluation error can never
//! let a call through.

// Test code: a broken fixture should fail loudly.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use airlock_policy::{
    Action, CallInput, Error, Policies, PrincipalInput, Query, ResourceInput, SessionInput,
    Severity, SourceFile, SubjectInput,
};

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        name: name.into(),
        text: text.into(),
    }
}

fn problems(text: &str) -> Vec<airlock_policy::Problem> {
    match Policies::from_files(&[file("ops/policy.cedar", text)]) {
        Err(Error::Invalid(problems)) => problems,
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("policy loaded:\n{text}"),
    }
}

#[test]
fn the_base_policies_and_the_examples_load() {
    let base = Policies::base().unwrap();
    assert!(
        base.ids()
            .contains(&"base/no-egress-after-confidential-read".to_string())
    );
    let examples = Policies::load(&[std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples"
    ))])
    .unwrap();
    assert!(
        examples
            .ids()
            .contains(&"examples/report-posts-summaries".to_string())
    );
}

#[test]
fn an_unknown_attribute_is_an_error_with_file_and_line() {
    let found = problems(
        "// a comment\n\n@id(\"ops/bad\")\npermit (principal, action == Airlock::Action::\"http.request\", resource)\nwhen { resource.owner == \"me\" };\n",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let p = &found[0];
    assert_eq!(
        (p.file.as_str(), p.line, p.severity),
        ("ops/policy.cedar", 5, Severity::Error)
    );
    assert!(
        p.message.contains("ops/bad") && p.message.contains("owner"),
        "{}",
        p.message
    );
    assert!(p.to_string().starts_with("ops/policy.cedar:5:"), "{p}");
}

#[test]
fn a_mistyped_attribute_is_an_error() {
    let found = problems(
        "permit (principal, action == Airlock::Action::\"http.request\", resource)\nwhen { context.port == \"443\" };\n",
    );
    assert_eq!(found[0].line, 2, "{found:?}");
    assert_eq!(found[0].severity, Severity::Error);
}

#[test]
fn a_warning_stops_loading_too() {
    // Storage actions never have a Host resource: the policy can never apply.
    let found = problems(
        "permit (principal, action == Airlock::Action::\"storage.read\", resource is Airlock::Host);\n",
    );
    assert!(
        found.iter().all(|p| p.severity == Severity::Warning),
        "{found:?}"
    );
    assert!(!found.is_empty());
}

#[test]
fn a_syntax_error_names_its_place() {
    let found = problems("permit (principal, action, resource)\nwhen { context.calls > };\n");
    assert_eq!(
        (found[0].line, found[0].severity),
        (2, Severity::Error),
        "{found:?}"
    );
}

#[test]
fn duplicate_ids_name_both_places() {
    let found = problems(
        "@id(\"x\")\npermit (principal, action, resource);\n@id(\"x\")\nforbid (principal, action, resource);\n",
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, 3);
    assert!(
        found[0].message.contains("ops/policy.cedar:1"),
        "{}",
        found[0].message
    );
}

#[test]
fn an_id_clashing_with_a_base_policy_is_refused() {
    let found = problems("@id(\"base/delegation-depth\")\npermit (principal, action, resource);\n");
    assert!(
        found[0].message.contains("base/guardrails.cedar"),
        "{}",
        found[0].message
    );
}

#[test]
fn templates_are_refused() {
    let found = problems("permit (principal == ?principal, action, resource);\n");
    assert!(found[0].message.contains("templates"), "{found:?}");
}

#[test]
fn policies_without_an_id_are_named_by_file_and_line() {
    let policies = Policies::from_files(&[file(
        "ops/p.cedar",
        "\n\npermit (principal, action, resource);\n",
    )])
    .unwrap();
    assert!(
        policies.ids().contains(&"ops/p.cedar:3".to_string()),
        "{:?}",
        policies.ids()
    );
}

fn subject() -> SubjectInput {
    SubjectInput {
        principal: PrincipalInput {
            digest: "d".repeat(64),
            name: "s".into(),
            approved: true,
            labels: BTreeSet::new(),
            agent: "a".into(),
            trust: "high".into(),
            trust_level: 3,
        },
        ..SubjectInput::default()
    }
}

const PERMIT_ALL: &str = "@id(\"ops/permit-all\")\npermit (principal, action, resource);\n";

/// A forbid whose condition overflows: it fails to evaluate for every request.
const ERRORING_FORBID: &str = "@id(\"ops/forbid-big-sessions\")\nforbid (principal, action, resource)\nwhen { context.session.bytes_out * 9223372036854775807 > 100 };\n";

#[test]
fn an_erroring_forbid_is_a_deny_though_cedar_alone_would_allow() {
    let policies = Policies::from_files(&[
        file("ops/permit.cedar", PERMIT_ALL),
        file("ops/forbid.cedar", ERRORING_FORBID),
    ])
    .unwrap();
    let resource = ResourceInput::Host {
        name: "api.example.com".into(),
        sinks: BTreeSet::new(),
    };
    let call = CallInput::Http {
        method: "GET".into(),
        scheme: "https".into(),
        port: 443,
        path: "/".into(),
    };
    let session = SessionInput {
        bytes_out: 10,
        ..SessionInput::default()
    };
    let query = Query {
        action: Action::HttpRequest,
        resource: &resource,
        call: &call,
        session,
    };
    let prepared = policies.prepare(&subject());
    for answer in [
        policies.decide(&prepared, &query),
        policies.decide_unindexed(&prepared, &query),
    ] {
        assert!(!answer.allowed, "{answer:?}");
        assert_eq!(answer.policies, ["ops/forbid-big-sessions"]);
        let reason = answer.reason.unwrap_or_default();
        assert!(reason.contains("an evaluation error is a deny"), "{reason}");
    }

    // The same policies in Cedar alone: the erroring forbid is skipped.
    use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request};
    let set: PolicySet = format!("{PERMIT_ALL}{ERRORING_FORBID}").parse().unwrap();
    let uid = |s: &str| s.parse::<EntityUid>().unwrap();
    let context =
        Context::from_json_value(serde_json::json!({"session": {"bytes_out": 10}}), None).unwrap();
    let request = Request::new(
        uid("Airlock::Skill::\"s\""),
        uid("Airlock::Action::\"http.request\""),
        uid("Airlock::Host::\"api.example.com\""),
        context,
        None,
    )
    .unwrap();
    let response = Authorizer::new().is_authorized(&request, &set, &Entities::empty());
    assert_eq!(
        response.decision(),
        Decision::Allow,
        "Cedar skips the erroring forbid"
    );
    assert_eq!(response.diagnostics().errors().count(), 1);
}

#[test]
fn a_request_missing_context_attributes_is_a_deny_even_under_permit_all() {
    let policies = Policies::from_files(&[file("ops/permit.cedar", PERMIT_ALL)]).unwrap();
    let resource = ResourceInput::Host {
        name: "api.example.com".into(),
        sinks: BTreeSet::new(),
    };
    // Storage details for an HTTP action: `method`, `scheme`, `port`, `path` are
    // missing and `key` is not expected.
    let call = CallInput::Storage { key: "k".into() };
    let session = SessionInput::default();
    let query = Query {
        action: Action::HttpRequest,
        resource: &resource,
        call: &call,
        session,
    };
    let answer = policies.decide(&policies.prepare(&subject()), &query);
    assert!(!answer.allowed);
    assert!(
        answer
            .reason
            .unwrap_or_default()
            .contains("could not be built")
    );
}

#[test]
fn a_resource_of_the_wrong_type_is_a_deny_even_under_permit_all() {
    let policies = Policies::from_files(&[file("ops/permit.cedar", PERMIT_ALL)]).unwrap();
    // An Object where http.request takes a Host.
    let resource = ResourceInput::Object {
        namespace: "n".into(),
        key: "k".into(),
        classification: "none".into(),
    };
    let call = CallInput::Http {
        method: "GET".into(),
        scheme: "https".into(),
        port: 443,
        path: "/".into(),
    };
    let session = SessionInput::default();
    let query = Query {
        action: Action::HttpRequest,
        resource: &resource,
        call: &call,
        session,
    };
    let answer = policies.decide(&policies.prepare(&subject()), &query);
    assert!(!answer.allowed, "{answer:?}");
}
