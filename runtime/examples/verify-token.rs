//! How a downstream service verifies an Airlock identity token.
//!
//! The example plays both sides. As the runtime, it opens an issuer in a
//! temporary data directory, serves the verification endpoints on a local
//! port, and issues a token for a running instance. As the downstream
//! service, it knows only the issuer URL: it reads the OIDC discovery
//! document, fetches the JWKS, verifies the token's signature, issuer,
//! audience and expiry with an ordinary JWT library, then asks the
//! introspection endpoint whether the instance is still running. When the
//! instance ends, introspection says `active: false`.
//!
//! Run it with `cargo run -p airlock-runtime --example verify-token`.

// Indexing a JSON value yields `null` for a missing key; it cannot panic.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use airlock_host_apis::{AgentIdentity, SkillIdentity, Subject, Task};
use airlock_runtime::config::IdentityConfig;
use airlock_runtime::identity::{Issuer, now, server};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const AUDIENCE: &str = "https://reports.example.com";

/// One HTTP/1.1 request to the local issuer; the answer as JSON.
async fn call(
    addr: std::net::SocketAddr,
    request: http::Request<Full<bytes::Bytes>>,
) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

fn get(url: &str) -> anyhow::Result<http::Request<Full<bytes::Bytes>>> {
    let uri: http::Uri = url.parse()?;
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    Ok(http::Request::get(uri)
        .header("host", host)
        .body(Full::default())?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // --- The runtime side -------------------------------------------------
    let data_dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = IdentityConfig {
        issuer: format!("http://{addr}"),
        ..IdentityConfig::default()
    };
    let issuer: Arc<Issuer> = Issuer::open(data_dir.path(), config)?;
    tokio::spawn(axum::serve(listener, server::router(issuer.clone())).into_future());
    let subject = Subject {
        instance: "5f0c2a9e7d3b41c8a6e2f1d09b8c7a65".into(),
        skill: SkillIdentity {
            digest: "9d2f0e1d2c3b4a5968778695a4b3c2d1e0f1".into(),
            ..SkillIdentity::default()
        },
        agent: AgentIdentity {
            id: "planner-7".into(),
            ..AgentIdentity::default()
        },
        task: Task {
            id: "task-42".into(),
            intent: "summarise the quarterly report".into(),
            ..Task::default()
        },
        ..Subject::default()
    };
    let token = issuer.issue(&subject, AUDIENCE, now() + 120)?;
    println!("token issued to the instance:\n  {token}\n");

    // --- The downstream service side -------------------------------------
    let issuer_url = format!("http://{addr}");
    let discovery = call(
        addr,
        get(&format!("{issuer_url}/.well-known/openid-configuration"))?,
    )
    .await?;
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap_or_default();
    println!("discovery: jwks_uri = {jwks_uri}");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(call(addr, get(jwks_uri)?).await?)?;

    let kid = jsonwebtoken::decode_header(&token)?
        .kid
        .ok_or_else(|| anyhow::anyhow!("the token names no key"))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| anyhow::anyhow!("key `{kid}` is not in the JWKS"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[&issuer_url]);
    validation.set_audience(&[AUDIENCE]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk)?,
        &validation,
    )?
    .claims;
    println!("verified: sub = {}", claims["sub"]);
    println!(
        "          task = {}, intent = {}, agent = {}",
        claims["task_id"], claims["intent"], claims["agent"]
    );

    let introspect = |token: &str| -> anyhow::Result<http::Request<Full<bytes::Bytes>>> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        Ok(
            http::Request::post(format!("{issuer_url}/oauth2/introspect"))
                .header("host", addr.to_string())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::from(body))?,
        )
    };
    let answer = call(addr, introspect(&token)?).await?;
    println!(
        "introspection while the instance runs: active = {}",
        answer["active"]
    );

    // --- The instance ends -------------------------------------------------
    issuer.ended(&subject.instance);
    let answer = call(addr, introspect(&token)?).await?;
    println!(
        "introspection after it ended:         active = {}",
        answer["active"]
    );
    anyhow::ensure!(answer["active"] == false, "a token outlived its instance");
    Ok(())
}
