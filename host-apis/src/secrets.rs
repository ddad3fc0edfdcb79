//! `airlock:skill/secrets`, and credentials attached by the broker.
//!
//! A skill never holds a stored secret. It can name a credential on an
//! outbound request (`secret.use`): the broker checks policy and the
//! credential's binding to the destination, then attaches it host-side. Or,
//! where policy allows `secret.mint`, it can be handed a short-lived token
//! minted for this instance. Every live value of an instance is scanned for
//! wherever it could leak, and revoked when the instance ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::bindings::airlock::skill::secrets::Host;
use crate::broker::{Action, CapabilityRequest, Details, Resource, Subject};
use crate::http::OutboundRequest;
use crate::{CallError, SkillCtx};

/// A secret value: never printed, zeroized when dropped, compared in
/// constant time.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> Self {
        SecretValue(Zeroizing::new(value))
    }

    /// The value itself: for attaching it, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for SecretValue {}

/// A credential attached to a request: the header and its value.
#[derive(Clone, Debug)]
pub struct Attached {
    pub header: http::HeaderName,
    pub value: SecretValue,
}

/// Revoking what an ended instance held, at the credential issuers (for
/// example an RFC 7009 call). Locally, everything is already revoked.
pub type Revocation = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Credentials and what an instance holds of them. Implemented by the
/// runtime.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync + 'static {
    /// An instance starts: nothing it is given may outlive `deadline`.
    fn started(&self, subject: &Subject, deadline: SystemTime);

    /// A token for credential `name`, bound to `audience`, to hand to the
    /// skill (after policy allowed `secret.mint`). Revoked when the instance
    /// ends.
    async fn mint(
        &self,
        subject: &Subject,
        name: &str,
        audience: &str,
    ) -> Result<String, CallError>;

    /// Credential `name` for `request` (after policy allowed `secret.use`):
    /// checks its binding to the destination and its lease's expiry, now.
    async fn attach(
        &self,
        subject: &Subject,
        name: &str,
        request: &OutboundRequest,
    ) -> Result<Attached, CallError>;

    /// The name of a credential whose live value (raw, base64, hex or
    /// URL-encoded) `data` carries and may not carry. `host` is where `data`
    /// goes, if anywhere: a minted token may go to its audience.
    fn leak(&self, instance: &str, data: &[u8], host: Option<&str>) -> Option<String>;

    /// `data` with every live credential value of `instance` replaced, or
    /// `None` when it carries none.
    fn redact(&self, instance: &str, data: &[u8]) -> Option<Vec<u8>>;

    /// The instance ended, however it ended: everything it held is revoked
    /// before this returns. What is left is telling the issuers.
    fn ended(&self, instance: &str) -> Option<Revocation>;
}

/// `text` with `instance`'s live credential values replaced.
pub fn redact_text(credentials: &dyn Credentials, instance: &str, text: String) -> String {
    match credentials.redact(instance, text.as_bytes()) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => text,
    }
}

/// The text of a refusal to let a credential's value leave.
pub fn leak_refusal(name: &str, place: &str) -> CallError {
    CallError::guard(
        "credential-leak",
        format!(
            "{place} carries the value of credential `{}`, which may not leave this way",
            crate::escape(name, 100)
        ),
    )
}

/// No credentials: none can be minted or attached; nothing is live.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCredentials;

/// The error for a credential this instance cannot have, whatever the reason.
pub fn unknown_credential(name: &str) -> CallError {
    CallError::NotFound(format!(
        "no credential named `{}` is available",
        crate::escape(name, 100)
    ))
}

#[async_trait::async_trait]
impl Credentials for NoCredentials {
    fn started(&self, _: &Subject, _: SystemTime) {}
    async fn mint(&self, _: &Subject, name: &str, _: &str) -> Result<String, CallError> {
        Err(unknown_credential(name))
    }
    async fn attach(
        &self,
        _: &Subject,
        name: &str,
        _: &OutboundRequest,
    ) -> Result<Attached, CallError> {
        Err(unknown_credential(name))
    }
    fn leak(&self, _: &str, _: &[u8], _: Option<&str>) -> Option<String> {
        None
    }
    fn redact(&self, _: &str, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn ended(&self, _: &str) -> Option<Revocation> {
        None
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

    pub fn credentials(&self) -> &Arc<dyn Credentials> {
        &self.credentials
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
        permit.conclude(result, |_| {
            Some(format!("minted for `{}`", crate::escape(&audience, 200)))
        })
    }
}
