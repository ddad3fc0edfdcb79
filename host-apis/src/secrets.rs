//! `airlock:skill/secrets`: short-lived tokens minted for this instance
//! (`secret.mint` on a `Secret`). Stored secrets are never handed to a guest.

use std::fmt;
use std::sync::Arc;

use crate::bindings::airlock::skill::secrets::Host;
use crate::broker::{Action, CapabilityRequest, Details, Resource, Subject};
use crate::{CallError, SkillCtx};

/// Mints credentials for an instance. Implemented by the runtime.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync + 'static {
    /// A token for credential `name`, bound to `audience`, owned by `subject`'s
    /// instance and revoked when it ends.
    async fn mint(
        &self,
        subject: &Subject,
        name: &str,
        audience: &str,
    ) -> Result<String, CallError>;
}

/// No credentials: every allowed mint fails as not found.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCredentials;

#[async_trait::async_trait]
impl Credentials for NoCredentials {
    async fn mint(&self, _: &Subject, name: &str, _: &str) -> Result<String, CallError> {
        Err(CallError::NotFound(format!(
            "no credential named `{}` is configured",
            crate::escape(name, 100)
        )))
    }
}

/// Per-instance state of `airlock:skill/secrets`.
pub struct SecretsCtx {
    credentials: Arc<dyn Credentials>,
}

impl fmt::Debug for SecretsCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsCtx").finish_non_exhaustive()
    }
}

impl SecretsCtx {
    pub fn new(credentials: Arc<dyn Credentials>) -> Self {
        SecretsCtx { credentials }
    }
}

impl Host for SkillCtx {
    async fn mint_token(&mut self, name: String, audience: String) -> Result<String, CallError> {
        let request = CapabilityRequest {
            action: Action::SecretMint,
            resource: Resource::Secret { name: name.clone() },
            details: Details::Token {
                audience: audience.clone(),
            },
        };
        let permit = self.broker.authorize(request).await?;
        let subject = self.broker.subject().clone();
        let result = self
            .secrets
            .credentials
            .mint(&subject, &name, &audience)
            .await;
        if result.is_ok() {
            self.broker.session().lock().secrets_used.insert(name);
        }
        permit.conclude(result, |_| Some(format!("minted for `{audience}`")))
    }
}
