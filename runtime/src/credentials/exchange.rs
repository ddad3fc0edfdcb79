//! RFC 8693 token exchange and RFC 7009 revocation, against the operator's
//! endpoints. Tokens to revoke are written down first (mode 0600), so a
//! revocation cut short by a stop of the runtime is retried when it starts
//! again, for as long as the token could still be valid.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use airlock_host_apis::CallError;
use airlock_host_apis::http::{Egress, HttpRules, OutboundRequest};
use airlock_host_apis::secrets::{Revocation, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;
use crate::identity::{now, unix};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A configured token endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub token: String,
    pub revocation: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
}

/// A token to revoke at `endpoint`, until it would have expired anyway.
#[derive(Clone, Serialize, Deserialize)]
pub struct Pending {
    endpoint: String,
    token: String,
    client_id: Option<String>,
    until: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("endpoint", &self.endpoint)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Exchanged {
    access_token: String,
    expires_in: Option<u64>,
}

/// Talks to token endpoints; remembers what is still to be revoked.
pub struct Exchanger {
    client: Arc<dyn Egress>,
    file: Option<PathBuf>,
    pending: Mutex<Vec<Pending>>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

fn post(url: &str, body: Vec<u8>) -> Result<OutboundRequest, CallError> {
    let headers = [
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
    ];
    OutboundRequest::parse("POST", url, &headers, body, None, &HttpRules::default())
}

impl Exchanger {
    pub fn open(client: Arc<dyn Egress>, data_dir: Option<&Path>) -> Result<Self, Error> {
        let file = data_dir.map(|d| d.join("credentials").join("pending-revocations.json"));
        let mut pending: Vec<Pending> = Vec::new();
        if let Some(file) = &file {
            if let Some(dir) = file.parent() {
                crate::fsutil::create_private_dir(dir)?;
            }
            if file.exists() {
                let text = Zeroizing::new(
                    std::fs::read_to_string(file)
                        .map_err(|e| Error::io(format!("reading `{}`", file.display()), e))?,
                );
                pending = serde_json::from_str(&text).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "pending revocations do not parse; dropped");
                    Vec::new()
                });
            }
        }
        let now = now();
        pending.retain(|p| p.until > now);
        Ok(Exchanger {
            client,
            file,
            pending: Mutex::new(pending),
        })
    }

    fn save(&self, pending: &[Pending]) {
        let Some(file) = &self.file else { return };
        let text = Zeroizing::new(serde_json::to_string(pending).unwrap_or_default());
        if let Err(e) = crate::fsutil::write_private(file, text.as_bytes()) {
            tracing::error!(error = %e, "cannot record tokens to revoke");
        }
    }

    fn remember(&self, pending: &Pending) {
        let mut all = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        all.push(pending.clone());
        self.save(&all);
    }

    fn forget(&self, token: &str) {
        let mut all = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|p| p.token != token);
        self.save(&all);
    }

    /// Exchange the instance's identity token for a downstream token.
    pub async fn exchange(
        &self,
        name: &str,
        endpoint: &Endpoint,
        identity: &str,
        audience: &str,
        until: SystemTime,
    ) -> Result<(SecretValue, Option<Duration>, Option<Pending>), CallError> {
        let failed = |why: String| {
            CallError::Unavailable(format!(
                "the token exchange for credential `{name}` failed: {why}"
            ))
        };
        let mut pairs = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", identity),
            ("subject_token_type", JWT),
            ("requested_token_type", ACCESS_TOKEN),
            ("audience", audience),
        ];
        if let Some(scope) = &endpoint.scope {
            pairs.push(("scope", scope));
        }
        if let Some(client) = &endpoint.client_id {
            pairs.push(("client_id", client));
        }
        let body = Zeroizing::new(form(&pairs));
        let request = post(&endpoint.token, body.to_vec()).map_err(|e| failed(e.to_string()))?;
        let response = self
            .client
            .send(&request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if response.status != 200 {
            return Err(failed(format!("the endpoint answered {}", response.status)));
        }
        let body = Zeroizing::new(response.body);
        let exchanged: Exchanged = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("the answer is not a token response: {e}")))?;
        let lifetime = exchanged.expires_in.map(Duration::from_secs);
        let pending = endpoint.revocation.as_ref().map(|revocation| Pending {
            endpoint: revocation.clone(),
            token: exchanged.access_token.clone(),
            client_id: endpoint.client_id.clone(),
            until: lifetime.map_or(unix(until), |l| unix(until).min(now() + l.as_secs())),
        });
        if let Some(pending) = &pending {
            self.remember(pending);
        }
        Ok((SecretValue::new(exchanged.access_token), lifetime, pending))
    }

    async fn revoke_one(client: &dyn Egress, pending: &Pending) -> bool {
        let mut pairs = vec![
            ("token", pending.token.as_str()),
            ("token_type_hint", "access_token"),
        ];
        if let Some(client) = &pending.client_id {
            pairs.push(("client_id", client));
        }
        let body = Zeroizing::new(form(&pairs));
        let Ok(request) = post(&pending.endpoint, body.to_vec()) else {
            return false;
        };
        match client.send(&request).await {
            // RFC 7009: 200 whether or not the token was still valid.
            Ok(response) if response.status == 200 => true,
            Ok(response) => {
                tracing::warn!(endpoint = %pending.endpoint, status = response.status, "token revocation refused");
                false
            }
            Err(e) => {
                tracing::warn!(endpoint = %pending.endpoint, error = %e, "token revocation failed");
                false
            }
        }
    }

    /// Revoke `tokens` at their endpoints; what fails stays recorded.
    pub fn revoke(self: &Arc<Self>, tokens: Vec<Pending>) -> Revocation {
        let this = self.clone();
        Box::pin(async move {
            for pending in tokens {
                if Self::revoke_one(&*this.client, &pending).await {
                    this.forget(&pending.token);
                }
            }
        })
    }

    /// Revoke in the background (no one is waiting).
    pub fn revoke_later(self: &Arc<Self>, tokens: Vec<Pending>) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(self.revoke(tokens));
        }
    }

    /// Retry revocations an earlier run of the runtime left.
    pub fn retry_pending(self: &Arc<Self>) {
        let left = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !left.is_empty() {
            tracing::info!(
                tokens = left.len(),
                "retrying token revocations left by an earlier run"
            );
            self.revoke_later(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use airlock_host_apis::http::InboundResponse;

    use super::*;

    /// Records what it is sent; answers 200.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Egress for Recorder {
        async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError> {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{} {body}", request.url));
            Ok(InboundResponse {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
                peer: None,
            })
        }
    }

    fn pending(token: &str, until: u64) -> Pending {
        Pending {
            endpoint: "https://sts.example/revoke".into(),
            token: token.into(),
            client_id: None,
            until,
        }
    }

    #[tokio::test]
    async fn revocations_cut_short_are_retried_after_a_restart_while_they_matter() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("credentials/pending-revocations.json");
        let recorder = Arc::new(Recorder::default());
        {
            let before = Exchanger::open(recorder.clone(), Some(dir.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            // The runtime stops before these are revoked.
            before.remember(&pending("still-valid", now() + 600));
            before.remember(&pending("long-expired", now().saturating_sub(10)));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let after = Arc::new(
            Exchanger::open(recorder.clone(), Some(dir.path())).unwrap_or_else(|e| panic!("{e}")),
        );
        // Held apart: `revoke` takes the same lock as it forgets each token.
        let left = after
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        after.revoke(left).await;
        let sent = recorder
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(
            sent,
            ["https://sts.example/revoke token=still-valid&token_type_hint=access_token"]
        );
        // Revoked: nothing is left to retry.
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(text, "[]");
    }
}
