//! Outbound HTTP against SSRF: a hostile guest (the capability probe) takes a
//! list of requests and reports what happened to each; a local server counts
//! connections, so refused requests provably opened no socket; an injectable
//! resolver makes names resolve anywhere and counts lookups.

use std::net::IpAddr;
use std::sync::Arc;

use airlock_host_apis::{Trust, Verdict};
use airlock_runtime::egress::StaticResolver;
use airlock_runtime::run::{RunReport, RunStatus};
use airlock_tests::server::{GZIP_HELLO, TestCa, TestServer};
use airlock_tests::{TestNode, results, skills};
use serde_json::{Value, json};

const POLICIES: &str = r#"
@id("test/local-server")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"127.0.0.1");

@id("test/https-443")
permit (principal, action == Airlock::Action::"http.request", resource)
when { context.scheme == "https" && context.port == 443 };

@id("test/tls-server")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"localhost")
when { context.scheme == "https" };

@id("test/never-denied-test")
forbid (principal, action, resource == Airlock::Host::"denied.test");

@id("test/never-example-test")
forbid (principal, action, resource == Airlock::Host::"example.test");
"#;

fn config(extra: &str) -> String {
    format!(
        r#"
[egress]
allow_addresses = ["127.0.0.1"]
connect_timeout = "1s"
timeout = "3s"
{extra}
"#
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn resolver() -> Arc<StaticResolver> {
    Arc::new(StaticResolver::new([
        ("api.test".to_string(), vec![ip("127.0.0.1")]),
        ("localhost".to_string(), vec![ip("127.0.0.1")]),
        ("private.test".to_string(), vec![ip("10.0.0.5")]),
        ("metadata.test".to_string(), vec![ip("169.254.169.254")]),
        (
            "mixed.test".to_string(),
            vec![ip("127.0.0.1"), ip("10.0.0.1")],
        ),
        ("v6mapped.test".to_string(), vec![ip("::ffff:10.0.0.1")]),
        ("loopback6.test".to_string(), vec![ip("::1")]),
        ("denied.test".to_string(), vec![ip("127.0.0.1")]),
    ]))
}

async fn fetch_all(node: &TestNode, calls: Vec<Value>) -> (RunReport, Vec<Value>) {
    let input = json!({ "calls": calls }).to_string();
    let report = node
        .run(skills::CAPABILITY_PROBE, &input, Trust::Medium)
        .await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
    let results = results(&report);
    (report, results)
}

fn get(url: &str) -> Value {
    json!({"op": "http.fetch", "url": url})
}

/// What a result should be: the error kind (or `ok`) and a piece of text.
fn check(url: &str, result: &Value, kind: &str, text: &str) {
    let got_kind = result["error"].as_str().unwrap_or("ok");
    let got = result.to_string();
    assert_eq!(got_kind, kind, "{url}: {got}");
    assert!(got.contains(text), "{url}: expected `{text}` in {got}");
}

#[tokio::test]
async fn special_addresses_are_refused_in_every_notation_and_open_no_socket() {
    let server = TestServer::start().await;
    let resolver = resolver();
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver.clone());
    let refused: &[(&str, &str)] = &[
        // IPv4 literals in the notations URL parsers and resolvers accept.
        ("https://167772161/", "is 10.0.0.1, which is private"),
        ("https://0xa000001/", "is 10.0.0.1"),
        ("https://012.0.0.1/", "is 10.0.0.1"),
        ("https://10.1/", "is 10.0.0.1"),
        ("https://0x0a.0x00.0x00.0x01/", "is 10.0.0.1"),
        (
            "https://2852039166/",
            "is 169.254.169.254, which is link-local",
        ),
        ("https://0xA9FEA9FE/", "is 169.254.169.254"),
        ("https://0251.0376.0251.0376/", "is 169.254.169.254"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "is 169.254.169.254",
        ),
        ("https://127.0.0.2/", "is 127.0.0.2, which is loopback"),
        ("https://0/", "is 0.0.0.0"),
        ("https://0.0.0.0/", "is 0.0.0.0"),
        ("https://100.64.0.1/", "carrier-grade NAT"),
        ("https://224.0.0.1/", "multicast"),
        ("https://255.255.255.255/", "reserved"),
        // IPv6, and IPv6 forms of IPv4 addresses: the allowed 127.0.0.1 is
        // not allowed in any other form.
        ("https://[::1]/", "is ::1, which is loopback"),
        ("https://[::]/", "the unspecified address"),
        ("https://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("https://[::ffff:7f00:1]/", "IPv4-mapped"),
        ("https://[::ffff:a9fe:a9fe]/", "IPv4-mapped"),
        ("https://[64:ff9b::a9fe:a9fe]/", "translation"),
        ("https://[::127.0.0.1]/", "IPv4-compatible"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fd00:ec2::254]/", "unique local"),
        ("https://[2002:a9fe:a9fe::]/", "6to4"),
        // Names that resolve to special addresses.
        ("https://private.test/", "resolves to 10.0.0.5"),
        ("https://metadata.test/", "resolves to 169.254.169.254"),
        ("https://mixed.test/", "resolves to 10.0.0.1"),
        ("https://v6mapped.test/", "resolves to ::ffff:10.0.0.1"),
        ("https://loopback6.test/", "resolves to ::1"),
        // Parser confusion that lands on a special address.
        ("https://10.0.0.1#@api.test/", "is 10.0.0.1"),
        ("https://10.0.0.1\\@api.test/", "is 10.0.0.1"),
        (" https://10.0.0.1/ ", "is 10.0.0.1"),
        ("https:/\\10.0.0.1/", "is 10.0.0.1"),
        ("https://10.0.0.1\t/", "is 10.0.0.1"),
        ("https://EXAMPLE.test./", "base/"),
    ];
    let calls: Vec<Value> = refused.iter().map(|(url, _)| get(url)).collect();
    let (report, results) = fetch_all(&node, calls).await;
    for ((url, text), result) in refused.iter().zip(&results) {
        if text.starts_with("base/") {
            continue;
        }
        check(url, result, "denied", text);
        assert!(
            result["message"]
                .as_str()
                .unwrap()
                .contains("Airlock does not connect there")
        );
    }
    assert_eq!(
        server.connections(),
        0,
        "no refused request opened a socket"
    );
    // Every refusal above came after policy allowed the host: each is a
    // denial by the address guard, not by a policy.
    for call in report.decisions.iter().take(refused.len() - 1) {
        assert_eq!(call.decision.verdict, Verdict::Deny, "{call:?}");
        assert_eq!(call.decision.policies, ["guard:egress-address"], "{call:?}");
    }
}

#[tokio::test]
async fn urls_are_canonical_before_policy_sees_them() {
    let resolver = resolver();
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver.clone());
    let cases: &[(&str, &str, &str, &str)] = &[
        // (url, error kind, text, the Host policy saw)
        (
            "https://EXAMPLE.test./",
            "denied",
            "test/never-example-test",
            "example.test",
        ),
        (
            "https://ｅｘａｍｐｌｅ.test/",
            "denied",
            "test/never-example-test",
            "example.test",
        ),
        (
            "https://exаmple.test/",
            "unavailable",
            "did not resolve",
            "xn--exmple-4nf.test",
        ),
        (
            "https://0x7f.1/",
            "unavailable",
            "could not connect",
            "127.0.0.1",
        ),
        (
            "https://api.test:8443/",
            "denied",
            "no policy permits it",
            "api.test",
        ),
        (
            "https://api.test:443/",
            "unavailable",
            "could not connect",
            "api.test",
        ),
        (
            "http://api.test:443/",
            "denied",
            "no policy permits it",
            "api.test",
        ),
    ];
    let calls: Vec<Value> = cases.iter().map(|(url, ..)| get(url)).collect();
    let (report, results) = fetch_all(&node, calls).await;
    for (((url, kind, text, host), result), decision) in
        cases.iter().zip(&results).zip(&report.decisions)
    {
        check(url, result, kind, text);
        assert_eq!(
            decision.resource,
            airlock_host_apis::Resource::Host {
                name: host.to_string()
            },
            "{url}"
        );
    }
}

#[tokio::test]
async fn bad_schemes_userinfo_and_headers_are_invalid_before_anything_else() {
    let server = TestServer::start().await;
    let resolver = resolver();
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver.clone());
    let echo = server.url("/echo");
    let mut calls = Vec::new();
    let mut expected = Vec::new();
    for (url, text) in [
        ("ftp://api.test/", "scheme `ftp` is not allowed"),
        ("file:///etc/passwd", "scheme `file` is not allowed"),
        ("data:text/plain,hi", "scheme `data` is not allowed"),
        ("gopher://api.test/", "scheme `gopher`"),
        ("ws://api.test/", "scheme `ws`"),
        ("javascript:alert(1)", "scheme `javascript`"),
        ("https://user:pass@api.test/", "user name or password"),
        ("https://api.test@10.0.0.1/", "user name or password"),
        ("https://api.test%2523@10.0.0.1/", "user name or password"),
        ("https://10.0.0.1%2f@api.test/", "user name or password"),
        ("not a url", "is not a URL"),
        ("https://a..b/", "empty host name label"),
    ] {
        calls.push(get(url));
        expected.push((url.to_string(), text));
    }
    for (headers, text) in [
        (json!([["x-a", "b\r\nHost: evil"]]), "CR, LF or NUL"),
        (json!([["x-a", "b\nc"]]), "CR, LF or NUL"),
        (json!([["x-a", "b\u{0}c"]]), "CR, LF or NUL"),
        (json!([["bad name", "x"]]), "not a valid header name"),
        (
            json!([["Host", "evil.test"]]),
            "header `host` is set by the broker",
        ),
        (
            json!([["Authorization", "Bearer x"]]),
            "header `authorization`",
        ),
        (
            json!([["Proxy-Authorization", "x"]]),
            "header `proxy-authorization`",
        ),
        (json!([["Cookie", "a=b"]]), "header `cookie`"),
        (json!([["Forwarded", "for=1.2.3.4"]]), "header `forwarded`"),
        (
            json!([["X-Forwarded-For", "1.2.3.4"]]),
            "header `x-forwarded-for`",
        ),
        (
            json!([["Transfer-Encoding", "chunked"]]),
            "header `transfer-encoding`",
        ),
        (json!([["Content-Length", "0"]]), "header `content-length`"),
    ] {
        calls.push(json!({"op": "http.fetch", "url": echo, "headers": headers}));
        expected.push((format!("headers {headers}"), text));
    }
    calls.push(json!({"op": "http.fetch", "url": echo, "method": "CONNECT"}));
    expected.push(("CONNECT".into(), "method `CONNECT` is not allowed"));
    calls.push(json!({"op": "http.fetch", "url": echo, "method": "GE T"}));
    expected.push(("bad method".into(), "is not an HTTP method"));
    let (report, results) = fetch_all(&node, calls).await;
    for ((what, text), result) in expected.iter().zip(&results) {
        check(what, result, "invalid", text);
    }
    // Each was refused before policy, and each left its record.
    assert_eq!(report.decisions.len(), results.len());
    for record in &report.decisions {
        assert_eq!(record.decision.verdict, Verdict::Deny);
        assert!(record.decision.policies.is_empty(), "{record:?}");
        assert_eq!(
            record.decision.reason.as_deref(),
            Some("the call is malformed and was refused before policy")
        );
        assert!(
            matches!(record.outcome, airlock_host_apis::Outcome::Failed { .. }),
            "{record:?}"
        );
    }
    assert_eq!(server.connections(), 0);
    assert_eq!(resolver.lookups(), 0);
}

#[tokio::test]
async fn a_denied_name_never_reaches_dns() {
    let resolver = resolver();
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver.clone());
    let (report, results) = fetch_all(&node, vec![get("https://denied.test/")]).await;
    check(
        "denied.test",
        &results[0],
        "denied",
        "test/never-denied-test",
    );
    assert_eq!(report.decisions[0].decision.verdict, Verdict::Deny);
    assert_eq!(resolver.lookups(), 0);
    let _ = fetch_all(&node, vec![get("https://api.test/")]).await;
    assert_eq!(resolver.lookups(), 1, "an allowed name is resolved once");
}

#[tokio::test]
async fn plain_http_needs_a_policy_that_names_the_host() {
    let server = TestServer::start().await;
    let permissive = r#"
@id("test/any-http")
permit (principal, action == Airlock::Action::"http.request", resource);
"#;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", permissive)], resolver());
    let (report, results) = fetch_all(&node, vec![get(&server.url("/"))]).await;
    check(
        "unnamed",
        &results[0],
        "denied",
        "plain http is allowed only by a policy that names the host",
    );
    assert_eq!(report.decisions[0].decision.verdict, Verdict::Deny);
    assert_eq!(server.connections(), 0);

    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let (report, results) = fetch_all(&node, vec![get(&server.url("/"))]).await;
    assert_eq!(results[0]["ok"]["status"], 200, "{}", results[0]);
    assert_eq!(results[0]["ok"]["body"], "ok");
    assert_eq!(report.decisions[0].decision.policies, ["test/local-server"]);
    assert_eq!(server.connections(), 1);
    let access = match &report.decisions[0].outcome {
        airlock_host_apis::Outcome::Done { access } => access.clone().unwrap_or_default(),
        other => panic!("{other:?}"),
    };
    assert!(
        access.starts_with(&format!("connected to {}", server.addr)),
        "{access}"
    );
}

#[tokio::test]
async fn the_request_that_arrives_is_the_one_that_was_checked() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let (_, results) = fetch_all(
        &node,
        vec![json!({
            "op": "http.fetch",
            "method": "POST",
            "url": format!("{}?a=1&b=%20", server.url("/echo")),
            "headers": [["x-trace", "abc"], ["content-type", "text/plain"]],
            "body": "payload",
        })],
    )
    .await;
    let echoed: Value = serde_json::from_str(results[0]["ok"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["uri"], "/echo?a=1&b=%20");
    assert_eq!(echoed["body"], "payload");
    let headers: Vec<(String, String)> = serde_json::from_value(echoed["headers"].clone()).unwrap();
    assert!(headers.contains(&("host".into(), format!("127.0.0.1:{}", server.addr.port()))));
    assert!(headers.contains(&("x-trace".into(), "abc".into())));
    assert!(headers.contains(&("content-length".into(), "7".into())));
    assert!(
        !headers
            .iter()
            .any(|(n, _)| n == "accept-encoding" || n == "authorization")
    );
}

/// On the standard path a guest may declare `content-length` (the
/// JavaScript engine's `fetch` does), but only the body it wrote is sent,
/// framed by the runtime; a declaration that lies about the body sends
/// nothing.
#[tokio::test]
async fn a_declared_content_length_never_frames_what_is_sent() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let authority = format!("127.0.0.1:{}", server.addr.port());
    let post = |length: &str| {
        json!({"op": "wasi-http", "method": "POST", "scheme": "http", "authority": authority,
               "path": "/echo", "headers": [["content-length", length]], "body": "payload"})
    };
    let (_, results) = fetch_all(&node, vec![post("7"), post("3"), post("100")]).await;
    let echoed: Value = serde_json::from_str(results[0]["ok"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["body"], "payload");
    let headers: Vec<(String, String)> = serde_json::from_value(echoed["headers"].clone()).unwrap();
    let lengths: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .collect();
    assert_eq!(lengths, [&("content-length".to_string(), "7".to_string())]);
    for (lying, result) in ["3", "100"].iter().zip(&results[1..]) {
        assert!(result.get("error").is_some(), "length {lying}: {result}");
    }
    assert_eq!(server.seen().len(), 1, "a lying length sent something");
}

#[tokio::test]
async fn redirects_are_not_followed_by_default() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let to = "http://169.254.169.254/latest/meta-data/";
    let url = format!("{}?to={}", server.url("/redirect"), to);
    let (report, results) = fetch_all(&node, vec![get(&url)]).await;
    assert_eq!(results[0]["ok"]["status"], 302);
    assert_eq!(report.decisions.len(), 1);
}

#[tokio::test]
async fn followed_redirects_are_checked_again_at_every_hop() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(
        &config("follow_redirects = true\nmax_redirects = 3"),
        &[("p.cedar", POLICIES)],
        resolver(),
    );
    let redirect = |to: &str| format!("{}?to={}", server.url("/redirect"), to);
    let (report, results) = fetch_all(
        &node,
        vec![
            // To a special address (over https, which policy allows): refused
            // by the address check at the second hop.
            get(&redirect("https://169.254.169.254/latest/meta-data/")),
            // To a name policy denies: refused by policy at the second hop.
            get(&redirect("https://denied.test/")),
            // Back to the local server: followed, both hops decided.
            get(&redirect(&server.url("/echo"))),
            // Round and round: stopped.
            get(&server.url("/redirect-loop")),
        ],
    )
    .await;
    check(
        "to metadata",
        &results[0],
        "denied",
        "is 169.254.169.254, which is link-local",
    );
    check(
        "to denied.test",
        &results[1],
        "denied",
        "test/never-denied-test",
    );
    assert_eq!(results[2]["ok"]["status"], 200, "{}", results[2]);
    check("loop", &results[3], "limit", "more than 3 redirects");
    let hosts: Vec<String> = report
        .decisions
        .iter()
        .map(|d| match &d.resource {
            airlock_host_apis::Resource::Host { name } => name.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(
        &hosts[..6],
        [
            "127.0.0.1",
            "169.254.169.254",
            "127.0.0.1",
            "denied.test",
            "127.0.0.1",
            "127.0.0.1"
        ]
    );
}

#[tokio::test]
async fn https_never_downgrades_on_a_redirect() {
    let ca = TestCa::new();
    let server = TestServer::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, &ca.ca_pem).unwrap();
    let node = TestNode::with_resolver(
        &config(&format!(
            "follow_redirects = true\nextra_roots = {:?}",
            roots.display().to_string()
        )),
        &[("p.cedar", POLICIES)],
        resolver(),
    );
    let port = server.addr.port();
    let url = format!("https://localhost:{port}/redirect?to=http://127.0.0.1:{port}/");
    let (_, results) = fetch_all(&node, vec![get(&url)]).await;
    check(
        "downgrade",
        &results[0],
        "denied",
        "a redirect from https to http",
    );
    check(
        "downgrade",
        &results[0],
        "denied",
        "denied by policy `guard:https-downgrade`",
    );
}

#[tokio::test]
async fn https_verifies_the_host_name() {
    let ca = TestCa::new();
    let server = TestServer::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, &ca.ca_pem).unwrap();
    let resolver = Arc::new(StaticResolver::new([
        ("localhost".to_string(), vec![ip("127.0.0.1")]),
        ("api.test".to_string(), vec![ip("127.0.0.1")]),
    ]));
    let allow_api = r#"
@id("test/api")
permit (principal, action == Airlock::Action::"http.request", resource == Airlock::Host::"api.test");
"#;
    let node = TestNode::with_resolver(
        &config(&format!("extra_roots = {:?}", roots.display().to_string())),
        &[("p.cedar", POLICIES), ("api.cedar", allow_api)],
        resolver,
    );
    let port = server.addr.port();
    let (_, results) = fetch_all(
        &node,
        vec![
            get(&format!("https://localhost:{port}/echo")),
            // Same address, another name: the certificate does not cover it.
            get(&format!("https://api.test:{port}/echo")),
        ],
    )
    .await;
    assert_eq!(results[0]["ok"]["status"], 200, "{}", results[0]);
    check(
        "wrong name",
        &results[1],
        "unavailable",
        "TLS with `api.test` failed",
    );
}

#[tokio::test]
async fn limits_hold_and_the_session_counts_what_went_out() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(
        &config(
            "max_response_body = 1000\nmax_request_body = 100\nmax_session_bytes_out = 1000\nmax_headers = 2",
        ),
        &[("p.cedar", POLICIES)],
        resolver(),
    );
    let (report, results) = fetch_all(
        &node,
        vec![
            get(&format!("{}?n=1000", server.url("/big"))),
            get(&format!("{}?n=1001", server.url("/big"))),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(101)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "headers": [["a", "1"], ["b", "2"], ["c", "3"]]}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
            json!({"op": "http.fetch", "url": server.url("/echo"), "method": "POST", "body": "x".repeat(100)}),
        ],
    )
    .await;
    assert_eq!(results[0]["ok"]["status"], 200);
    check(
        "big response",
        &results[1],
        "limit",
        "larger than 1000 bytes",
    );
    check(
        "big request",
        &results[2],
        "limit",
        "a request body is at most 100 bytes",
    );
    check("headers", &results[3], "limit", "at most 2 headers");
    let budget = results
        .iter()
        .skip(4)
        .position(|r| r["error"] == "limit")
        .map(|i| i + 4);
    let budget = budget.expect("the bytes-out budget ran out");
    check(
        "budget",
        &results[budget],
        "limit",
        "may send at most 1000 bytes out",
    );
    assert!(
        report.session.bytes_out <= 1000,
        "{}",
        report.session.bytes_out
    );
    assert!(report.session.bytes_out > 500);
    assert_eq!(
        report.session.hosts_contacted.iter().collect::<Vec<_>>(),
        ["127.0.0.1"]
    );
}

/// A standard HTTP request runs on a task of its own. One still in flight
/// when the skill returns is cancelled with the instance, and its record is
/// in the run's report and the audit log all the same.
#[tokio::test]
async fn a_request_left_in_flight_at_the_end_is_recorded() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let port = server.addr.port();
    let (report, results) = fetch_all(
        &node,
        vec![
            json!({"op": "wasi-http-abandon", "count": 300, "scheme": "http",
                    "authority": format!("127.0.0.1:{port}"), "path": "/slow"}),
        ],
    )
    .await;
    assert_eq!(results[0]["ok"], "abandoned", "{}", results[0]);
    assert_eq!(server.connections(), 1, "the request went out");
    assert_eq!(report.decisions.len(), 1, "{:?}", report.decisions);
    assert_eq!(report.decisions[0].decision.verdict, Verdict::Allow);
    assert_eq!(report.decisions[0].outcome.kind(), "cancelled");
    let path = node.node.services().audit.as_ref().unwrap().path();
    let log = std::fs::read_to_string(path).unwrap();
    let calls = log
        .lines()
        .filter(|l| l.contains("\"kind\":\"call\""))
        .count();
    assert_eq!(calls, 1, "{log}");
}

#[tokio::test]
async fn a_slow_server_is_cut_off_at_the_timeout() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let (report, results) = fetch_all(&node, vec![get(&server.url("/slow"))]).await;
    check("slow", &results[0], "unavailable", "took longer than 3s");
    // The call itself, not compiling the probe: cut off before the server answers.
    assert!(report.decisions[0].duration_us < 5_000_000);
}

/// A skill with several wasi:http requests in flight at once: each is
/// decided and answered on its own, and the host does not fall over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_http_requests_in_flight_at_once_are_each_decided() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let port = server.addr.port();
    let (report, results) = fetch_all(
        &node,
        vec![json!({"op": "wasi-http-many", "count": 8, "scheme": "http",
                    "authority": format!("127.0.0.1:{port}"), "path": "/echo"})],
    )
    .await;
    assert_eq!(
        report.status,
        airlock_runtime::run::RunStatus::Ok,
        "{:?}",
        report.error
    );
    let answers = results[0]["ok"].as_array().cloned().unwrap_or_default();
    assert_eq!(answers.len(), 8, "{}", results[0]);
    for answer in &answers {
        assert_eq!(answer["ok"]["status"], 200, "{answer}");
    }
    assert_eq!(report.decisions.len(), 8);
    assert!(
        report
            .decisions
            .iter()
            .all(|d| d.decision.verdict == Verdict::Allow)
    );
}

#[tokio::test]
async fn response_bodies_are_not_decompressed() {
    let server = TestServer::start().await;
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver());
    let (_, results) = fetch_all(&node, vec![get(&server.url("/gzip"))]).await;
    let body = results[0]["ok"]["body"].as_str().unwrap();
    assert_eq!(body, String::from_utf8_lossy(GZIP_HELLO));
    let headers = results[0]["ok"]["headers"].to_string();
    assert!(headers.contains("gzip"), "{headers}");
}

#[tokio::test]
async fn the_standard_wasi_http_path_takes_the_same_checks() {
    let server = TestServer::start().await;
    let resolver = resolver();
    let node = TestNode::with_resolver(&config(""), &[("p.cedar", POLICIES)], resolver.clone());
    let port = server.addr.port();
    let (report, results) = fetch_all(
        &node,
        vec![
            json!({"op": "wasi-http", "scheme": "http", "authority": format!("127.0.0.1:{port}"), "path": "/echo"}),
            json!({"op": "wasi-http", "scheme": "https", "authority": "10.0.0.1", "path": "/"}),
            json!({"op": "wasi-http", "scheme": "https", "authority": "metadata.test", "path": "/"}),
            json!({"op": "wasi-http", "scheme": "https", "authority": "denied.test", "path": "/"}),
            json!({"op": "wasi-http", "scheme": "http", "authority": "api.test", "path": "/"}),
            json!({"op": "wasi-http", "scheme": "http", "authority": format!("127.0.0.1:{port}"), "path": "/", "headers": [["x-forwarded-for", "1.1.1.1"]]}),
        ],
    )
    .await;
    assert_eq!(results[0]["ok"]["status"], 200, "{}", results[0]);
    assert!(
        results[0]["ok"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"uri\":\"/echo\"")),
        "{}",
        results[0]
    );
    for refused in &results[1..5] {
        assert_eq!(
            refused["message"], "ErrorCode::HttpRequestDenied",
            "{refused}"
        );
    }
    // A forbidden header is refused as the request is built.
    assert_eq!(results[5]["error"], "header", "{}", results[5]);
    assert_eq!(server.connections(), 1);
    // Two allowed by policy and refused by the address guard, two by policy.
    let decided: Vec<(Verdict, String)> = report
        .decisions
        .iter()
        .map(|d| (d.decision.verdict, d.decision.policies.join(",")))
        .collect();
    assert_eq!(decided[0].0, Verdict::Allow);
    assert_eq!(
        decided[1..3],
        [
            (Verdict::Deny, "guard:egress-address".to_string()),
            (Verdict::Deny, "guard:egress-address".to_string()),
        ]
    );
    assert_eq!(decided.len(), 5);
    assert!(
        decided[3..]
            .iter()
            .all(|(v, p)| *v == Verdict::Deny && !p.starts_with("guard:"))
    );
    assert_eq!(
        resolver.lookups(),
        1,
        "only metadata.test, which policy allowed, was resolved"
    );
}
