//! What the egress path adds to a request to a local server, compared in the
//! same run with the same request sent by a plain client (a new connection
//! per request for both, as Airlock opens one per request).
//!
//! Run with `cargo bench -p airlock-tests --bench egress` (and
//! `RUST_BACKTRACE` unset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_host_apis::Trust;
use airlock_host_apis::http::{Egress, HttpRules, OutboundRequest};
use airlock_runtime::config::EgressConfig;
use airlock_runtime::egress::{HttpEgress, StaticResolver};
use airlock_tests::server::TestServer;
use airlock_tests::{TestNode, results, skills};
use http_body_util::BodyExt;
use serde_json::json;

const SAMPLES: usize = 5_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn plain_get(addr: std::net::SocketAddr) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get("/")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    driver.abort();
}

async fn time<F, Fut>(mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..SAMPLES / 5 {
        f().await;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        eprintln!("note: RUST_BACKTRACE is set; error paths will cost more than they should");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = TestServer::start().await;
        let addr = server.addr;
        let url = server.url("/");

        let (plain50, plain99) = time(|| plain_get(addr)).await;

        let config = EgressConfig {
            allow_addresses: vec!["127.0.0.1".into()],
            ..EgressConfig::default()
        };
        let egress = HttpEgress::new(&config, Arc::new(StaticResolver::default())).unwrap();
        let rules = HttpRules::default();
        let (egress50, egress99) = time(|| async {
            let request = OutboundRequest::parse("GET", &url, &[], Vec::new(), None, &rules).unwrap();
            let response = egress.send(&request).await.unwrap();
            assert_eq!(response.status, 200);
        })
        .await;

        let node = TestNode::with_resolver(
            "[egress]\nallow_addresses = [\"127.0.0.1\"]\n",
            &[(
                "p.cedar",
                "@id(\"bench/local\")\npermit (principal, action == Airlock::Action::\"http.request\", resource == Airlock::Host::\"127.0.0.1\");\n",
            )],
            Arc::new(StaticResolver::default()),
        );
        let timed = |count: usize| {
            json!({"calls": [{"op": "timed", "count": count, "call": {"op": "http.fetch", "url": url}}]})
                .to_string()
        };
        let skill_input = timed(SAMPLES);
        let _ = node.run(skills::CAPABILITY_PROBE, &timed(SAMPLES / 5), Trust::Medium).await;
        let mut report = node.run(skills::CAPABILITY_PROBE, &skill_input, Trust::Medium).await;
        report.decisions.truncate(1);
        assert_eq!(report.decisions[0].decision.verdict, airlock_host_apis::Verdict::Allow);
        let ok = &results(&report)[0]["ok"];
        let mut clock: Vec<u64> = serde_json::from_value(ok["clock"].clone()).unwrap();
        clock.sort_unstable();
        let overhead = clock[clock.len() / 2];
        let mut guest: Vec<Duration> = serde_json::from_value::<Vec<u64>>(ok["nanos"].clone())
            .unwrap()
            .into_iter()
            .map(|n| Duration::from_nanos(n.saturating_sub(overhead)))
            .collect();
        guest.sort();
        let (guest50, guest99) = (percentile(&guest, 0.5), percentile(&guest, 0.99));

        println!("GET to a local server, a new connection each time, {SAMPLES} samples");
        println!("  plain hyper client                  p50 {:7.1} µs   p99 {:7.1} µs", us(plain50), us(plain99));
        println!("  Airlock egress alone                p50 {:7.1} µs   p99 {:7.1} µs", us(egress50), us(egress99));
        println!("  http.fetch from a guest (all of it) p50 {:7.1} µs   p99 {:7.1} µs", us(guest50), us(guest99));
        println!(
            "  added by the egress path at p50: {:.1} µs; by the whole path: {:.1} µs (target: under 50 µs)",
            us(egress50) - us(plain50),
            us(guest50) - us(plain50)
        );
        assert!(server.connections() as usize >= 3 * SAMPLES);
    });
}
