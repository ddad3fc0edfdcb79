//! The verification endpoints, as an axum router: OIDC discovery, the JWKS
//! and RFC 7662 introspection. `airlock serve` serves it; embedders can
//! nest it in their own server.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::Issuer;

/// The routes, relative to the issuer URL.
pub fn router(issuer: Arc<Issuer>) -> Router {
    public(issuer.clone()).merge(introspection(issuer))
}

/// Discovery and the JWKS: what any relying party needs to verify a token.
pub fn public(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(issuer)
}

/// RFC 7662 introspection: whether a token is active now.
pub fn introspection(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route("/oauth2/introspect", post(introspect))
        .with_state(issuer)
}

fn json(value: serde_json::Value) -> Response {
    // Answers change (rotation, instances ending): never cache them long.
    ([(header::CACHE_CONTROL, "no-store")], Json(value)).into_response()
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Response {
    json(issuer.discovery())
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Response {
    json(issuer.jwks_anywhere().await)
}

async fn introspect(
    State(issuer): State<Arc<Issuer>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match form.get("token") {
        Some(token) => json(issuer.introspect_anywhere(token).await),
        None => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": "invalid_request",
                "error_description": "the form has no `token`",
            })),
        )
            .into_response(),
    }
}
