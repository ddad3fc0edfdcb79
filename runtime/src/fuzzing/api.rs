//! API bodies (target `api`): any body, content type, path segment and
//! query string sent to any endpoint gets a success or a 4xx, and every 4xx
//! from the API is the JSON error shape; never a 5xx, never a panic, never
//! a server path in the answer.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::http::{Request, header};
use tower::ServiceExt as _;

use super::{Violation, ensure};
use crate::api::{Api, ApiConfig, KeyConfig, Role, new_key};
use crate::node::{Node, NodeOptions};

#[derive(Debug, Arbitrary)]
struct Case {
    endpoint: u8,
    content_type: u8,
    segment: String,
    query: String,
    body: Vec<u8>,
}

/// A server with one admin key and no skills, in a temporary directory.
pub struct Target {
    router: axum::Router,
    key: String,
    data_dir: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").finish_non_exhaustive()
    }
}

impl Target {
    /// Build the server. Call inside a tokio runtime.
    pub fn new() -> Result<Self, Violation> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Violation(format!("{what}: {e}"));
        let dir = tempfile::tempdir().map_err(|e| fail("no temporary directory", &e))?;
        let (key, hash) = new_key();
        let config = crate::Config {
            data_dir: Some(dir.path().join("data")),
            ..crate::Config::default()
        };
        let node = Node::new(
            config,
            NodeOptions {
                data_dir: Some(dir.path().join("data")),
                ..NodeOptions::default()
            },
        )
        .map_err(|e| fail("the node did not start", &e))?;
        let api = Api::new(
            node,
            ApiConfig {
                keys: vec![KeyConfig {
                    principal: "fuzzer".into(),
                    roles: Role::ALL.into_iter().collect(),
                    tenant: crate::admission::DEFAULT_TENANT.into(),
                    hash,
                }],
                ..ApiConfig::default()
            },
        )
        .map_err(|e| fail("the API did not start", &e))?;
        Ok(Target {
            router: crate::api::router(Arc::clone(&api)),
            key,
            data_dir: dir.path().display().to_string(),
            _dir: dir,
        })
    }

    pub async fn check(&self, bytes: &[u8]) -> Result<(), Violation> {
        let Ok(case) = Case::arbitrary(&mut Unstructured::new(bytes)) else {
            return Ok(());
        };
        let segment: String =
            url::form_urlencoded::byte_serialize(case.segment.as_bytes()).collect();
        let digest = if case.content_type & 0x80 == 0 {
            "0".repeat(64)
        } else {
            segment
        };
        let query: String = url::form_urlencoded::byte_serialize(case.query.as_bytes()).collect();
        let (method, path) = match case.endpoint % 9 {
            0 => ("POST", "/v1/skills".to_string()),
            1 => ("POST", format!("/v1/skills/{digest}/approve")),
            2 => ("POST", format!("/v1/skills/{digest}/quarantine")),
            3 => ("POST", format!("/v1/skills/{digest}/revoke")),
            4 => ("POST", "/v1/runs".to_string()),
            5 => ("GET", format!("/v1/audit?{query}")),
            6 => ("GET", format!("/v1/audit/export?format={query}")),
            7 => ("GET", format!("/v1/skills/{digest}")),
            _ => ("POST", "/mcp".to_string()),
        };
        let content_type = match case.content_type % 4 {
            0 => Some("application/json"),
            1 => Some("multipart/form-data; boundary=x"),
            2 => Some("text/plain"),
            _ => None,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&path)
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let Ok(request) = request.body(Body::from(case.body.clone())) else {
            return Ok(());
        };
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Violation(format!("the router failed: {e}")))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        ensure!(
            !status.is_server_error(),
            "{method} {path}: {status}: {text}"
        );
        // Unless the caller sent the path itself (it may be echoed back).
        let sent = case.segment.contains(&self.data_dir)
            || case.query.contains(&self.data_dir)
            || String::from_utf8_lossy(&case.body).contains(&self.data_dir);
        ensure!(
            sent || !text.contains(&self.data_dir),
            "{method} {path}: the answer names a server path: {text}"
        );
        if status.is_client_error() && !path.starts_with("/mcp") {
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            ensure!(
                parsed.pointer("/error/code").is_some_and(|c| c.is_string())
                    && parsed
                        .pointer("/error/message")
                        .is_some_and(|m| m.is_string()),
                "{method} {path}: {status} without the error shape: {text}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_seed_corpus_holds() {
        let target = super::Target::new().unwrap_or_else(|v| panic!("{v}"));
        for (name, bytes) in super::super::corpus::seeds("api") {
            if let Err(v) = target.check(&bytes).await {
                panic!("{name}: {v}");
            }
        }
    }
}
