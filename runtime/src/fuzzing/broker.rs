//! Broker call sequences (target `broker`): host calls made straight on an
//! instance's capability state, no wasm, with the credential clock moved
//! forward and the instance ended part way. Checked after every call:
//!
//! - each capability call leaves exactly one record of its action (a fetch
//!   that names a credential, at most one `secret.use` besides); a log line
//!   leaves none;
//! - a static credential's sentinel value reaches the outside only as its
//!   bound header, at its bound destination, while its lease is live;
//! - it never shows in what the guest gets back, in a record or a log line;
//! - a minted token goes only to its audience's host, is active when minted
//!   and inactive once the instance has ended;
//! - nothing is attached or minted past the deadline, after a lease expired
//!   or after the instance ended.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use airlock_host_apis::bindings::airlock::skill::{http as wit_http, log as wit_log};
use airlock_host_apis::bindings::airlock::skill::{secrets as wit_secrets, storage as wit_storage};
use airlock_host_apis::broker::{Broker, CallBudget, Ledger, Prepared, Session};
use airlock_host_apis::http::{Egress, HttpCtx, HttpRules, InboundResponse, OutboundRequest};
use airlock_host_apis::log::{LogBuffer, LogCtx};
use airlock_host_apis::secrets::{Credentials, SecretsCtx, redact_text};
use airlock_host_apis::storage::{Listing, Storage, StorageCtx, Stored};
use airlock_host_apis::tools::{NoTools, ToolsCtx};
use airlock_host_apis::{
    Action, BrokerCtx, CallError, CapabilityRequest, Decision, Resource, SessionState, SkillCtx,
    Subject, ThreadStack,
};
use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;

use super::{Violation, ensure};
use crate::config::Config;
use crate::config::IdentityConfig;
use crate::credentials::Vault;
use crate::identity::Issuer;

/// The static credential's value: it may only ever be its bound header.
pub const SENTINEL: &str = "sk-FUZZ-SENTINEL-3b9e17c04d2a";
const BOUND: &str = "https://bound.test/bound/echo";
/// Milliseconds from the start to the instance's deadline.
const DEADLINE: u64 = 10_000;
/// Milliseconds a static lease lives.
const STATIC_TTL: u64 = 3_000;
const INSTANCE: &str = "i-fuzz";

#[derive(Debug, Arbitrary)]
enum Op {
    /// `to`: where; `credential`: which name; `leak`: what the guest smuggles.
    Fetch {
        to: u8,
        credential: u8,
        leak: u8,
    },
    Mint {
        name: u8,
        audience: u8,
    },
    Put {
        key: u8,
        leak: u8,
    },
    Get {
        key: u8,
    },
    List,
    Delete {
        key: u8,
    },
    Log {
        leak: u8,
    },
    /// Move the credential clock forward by `secs % 8` seconds.
    Advance {
        secs: u8,
    },
    /// The instance ends (returned, trapped, stopped, revoked).
    End,
}

fn pick<'a>(options: &[&'a str], n: u8) -> &'a str {
    options
        .get(usize::from(n) % options.len())
        .copied()
        .unwrap_or_default()
}

/// The sentinel in every form the scanner knows.
fn forms() -> [String; 4] {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    [
        SENTINEL.to_string(),
        STANDARD.encode(SENTINEL),
        URL_SAFE_NO_PAD.encode(SENTINEL),
        SENTINEL.bytes().map(|b| format!("{b:02x}")).collect(),
    ]
}

fn carries_sentinel(text: &str) -> bool {
    forms().iter().any(|f| text.contains(f.as_str()))
}

/// Allows everything but the `deny` keys and `denied.test`.
pub(super) struct Rules;

impl Broker for Rules {
    fn decide(
        &self,
        _: &Prepared,
        _: &Subject,
        _: &SessionState,
        request: &CapabilityRequest,
    ) -> Decision {
        let denied = match &request.resource {
            Resource::Object { key, .. } => key.starts_with("deny"),
            Resource::Host { name } => name == "denied.test",
            _ => false,
        };
        if denied {
            Decision::deny(vec!["fuzz/deny".into()], None)
        } else {
            Decision::allow(vec!["fuzz/allow".into()])
        }
    }
}

/// What left the host.
#[derive(Debug, Clone)]
struct Sent {
    url: url::Url,
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Sends nothing: keeps each request and echoes its headers back.
#[derive(Default)]
struct Capture(Mutex<Vec<Sent>>);

#[async_trait::async_trait]
impl Egress for Capture {
    async fn send(&self, request: &OutboundRequest) -> Result<InboundResponse, CallError> {
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sent {
                url: request.url.clone(),
                method: request.method.to_string(),
                headers: headers.clone(),
                body: request.body.clone(),
            });
        let body = serde_json::to_vec(&headers).unwrap_or_default();
        Ok(InboundResponse {
            status: 200,
            headers,
            body,
            peer: None,
        })
    }
}

#[derive(Default)]
pub(super) struct Memory(Mutex<BTreeMap<String, Stored>>);

#[async_trait::async_trait]
impl Storage for Memory {
    async fn get(&self, _: &str, key: &str) -> Result<Option<Stored>, CallError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned())
    }
    async fn put(
        &self,
        _: &str,
        key: &str,
        value: Vec<u8>,
        labels: Vec<String>,
    ) -> Result<(), CallError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string(), Stored { value, labels });
        Ok(())
    }
    async fn delete(&self, _: &str, key: &str) -> Result<bool, CallError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some())
    }
    async fn list(&self, _: &str, prefix: &str) -> Result<Listing, CallError> {
        let keys = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        Ok(Listing {
            keys,
            labels: Vec::new(),
        })
    }
    fn classification(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// The credentials' configuration, with the sentinel in a file.
fn config() -> Result<&'static Config, Violation> {
    static CONFIG: OnceLock<Result<(tempfile::TempDir, Config), String>> = OnceLock::new();
    let made = CONFIG.get_or_init(|| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = dir.path().join("api-key");
        std::fs::write(&file, SENTINEL).map_err(|e| e.to_string())?;
        let text = format!(
            r#"
[credentials.api]
kind = "static"
file = {file:?}
destination = "https://bound.test/bound"
ttl = "{STATIC_TTL}ms"

[credentials.id]
kind = "minted"
destination = "https://bound.test/bound"
ttl = "2s"

[credentials.elsewhere]
kind = "static"
file = {file:?}
destination = "https://bound.test/bound"
skills = ["another-skill"]
"#
        );
        let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        Ok((dir, config))
    });
    match made {
        Ok((_, config)) => Ok(config),
        Err(e) => Err(Violation(format!("setup: {e}"))),
    }
}

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    let Ok(ops) = Vec::<Op>::arbitrary(&mut Unstructured::new(bytes)) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Violation(format!("no runtime: {e}")))?;
    runtime.block_on(run(ops)).map(|_| ())
}

/// What a sequence did, for tests to see that it went somewhere.
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
struct Summary {
    sent: usize,
    attached: bool,
    minted: usize,
}

/// The state of one sequence, and what the oracle knows of it.
struct Case {
    ctx: SkillCtx,
    ledger: Ledger,
    logs: LogBuffer,
    vault: Arc<Vault>,
    capture: Arc<Capture>,
    /// Seconds the credential clock is ahead of the real one.
    clock: Arc<AtomicU64>,
    started: std::time::Instant,
    ended: bool,
    /// When the first attachment of the static credential was over: its
    /// lease began no later.
    leased_at: Option<u64>,
    /// Minted tokens and the host each may go to.
    tokens: Vec<(String, String)>,
    /// Requests already checked.
    seen: usize,
}

async fn run(ops: Vec<Op>) -> Result<Summary, Violation> {
    let config = config()?;
    let start = SystemTime::now();
    let clock = Arc::new(AtomicU64::new(0));
    let capture = Arc::new(Capture::default());
    let issuer = Issuer::ephemeral(IdentityConfig::default());
    let vault = {
        let clock = clock.clone();
        Vault::new(config, issuer, capture.clone(), None)
            .map_err(|e| Violation(format!("vault: {e}")))?
            .with_clock(Arc::new(move || {
                SystemTime::now() + Duration::from_secs(clock.load(Ordering::Relaxed))
            }))
    };
    let vault = Arc::new(vault);
    let mut subject = Subject {
        instance: INSTANCE.into(),
        ..Subject::default()
    };
    subject.skill.name = "probe".into();
    let subject = Arc::new(subject);
    vault.started(&subject, start + Duration::from_millis(DEADLINE));
    let ledger = Ledger::default();
    let logs = LogBuffer::new(INSTANCE, 1 << 20);
    let credentials: Arc<dyn Credentials> = vault.clone();
    let ctx = SkillCtx {
        broker: BrokerCtx::new(
            Arc::new(Rules),
            subject,
            Session::default(),
            ledger.clone(),
            ThreadStack::new(),
            CallBudget::new(10_000),
        ),
        http: Arc::new(HttpCtx::new(
            capture.clone(),
            credentials.clone(),
            Arc::new(HttpRules::default()),
        )),
        storage: StorageCtx::new("probe".into(), Arc::new(Memory::default())),
        secrets: SecretsCtx::new(credentials),
        tools: ToolsCtx::new(Arc::new(NoTools)),
        log: LogCtx::new(logs.clone()),
    };
    let mut case = Case {
        ctx,
        ledger,
        logs,
        vault,
        capture,
        clock,
        started: std::time::Instant::now(),
        ended: false,
        leased_at: None,
        tokens: Vec::new(),
        seen: 0,
    };
    for op in ops.into_iter().take(48) {
        case.step(op).await?;
    }
    case.finish()
}

impl Case {
    /// Milliseconds since the start on the credential clock: real time
    /// and every advance.
    fn now(&self) -> u64 {
        let real = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        real.saturating_add(self.clock.load(Ordering::Relaxed).saturating_mul(1000))
    }

    fn token(&self) -> String {
        self.tokens
            .last()
            .map(|(t, _)| t.clone())
            .unwrap_or_default()
    }

    /// Text the guest smuggles in, and whether it carries the sentinel.
    fn smuggled(&self, leak: u8) -> (String, bool) {
        use base64::engine::general_purpose::STANDARD;
        match leak % 6 {
            1 => (SENTINEL.to_string(), true),
            2 => (STANDARD.encode(format!("x{SENTINEL}")), true),
            3 => (SENTINEL.bytes().map(|b| format!("{b:02x}")).collect(), true),
            4 => (self.token(), false),
            _ => (String::new(), false),
        }
    }

    async fn step(&mut self, op: Op) -> Result<(), Violation> {
        let before = self.ledger.records().len();
        // The vault decides between these two instants.
        let t0 = self.now();
        // The guest's view of each call, unless it put the sentinel there.
        let mut shown: Option<String> = None;
        let expected: Option<Action>;
        let mut credential_named = false;
        match op {
            Op::Fetch {
                to,
                credential,
                leak,
            } => {
                let (text, knows) = self.smuggled(leak);
                if self.ended && !text.is_empty() {
                    return Ok(());
                }
                let url = pick(
                    &[
                        BOUND,
                        "https://bound.test/other",
                        "https://other.test/bound/echo",
                        "http://bound.test/bound/echo",
                        "https://denied.test/bound/echo",
                        "https://bound.test:8443/bound/echo",
                    ],
                    to,
                );
                let name = pick(&["", "api", "id", "nope", "elsewhere"], credential);
                credential_named = !name.is_empty();
                let (mut method, mut headers, mut body) = ("GET".to_string(), vec![], vec![]);
                let mut url = url.to_string();
                match leak / 6 % 4 {
                    0 if !text.is_empty() => url.push_str(&format!("?q={text}")),
                    1 => headers.push(("x-k".to_string(), text)),
                    2 => body = text.into_bytes(),
                    _ if knows => method = SENTINEL.to_string(),
                    _ => {}
                }
                let request = wit_http::Request {
                    method: std::mem::take(&mut method),
                    url,
                    headers,
                    body,
                    credential: credential_named.then(|| name.to_string()),
                };
                let result = wit_http::Host::fetch(&mut self.ctx, request).await;
                if !knows {
                    shown = Some(match result {
                        Ok(r) => format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body)),
                        Err(e) => e.to_string(),
                    });
                }
                expected = Some(Action::HttpRequest);
            }
            Op::Mint { name, audience } => {
                let name = pick(&["id", "api", "nope"], name);
                let audience = pick(
                    &[
                        "https://bound.test/bound",
                        "https://other.test/",
                        "bound.test",
                    ],
                    audience,
                );
                let result = wit_secrets::Host::mint_token(
                    &mut self.ctx,
                    name.to_string(),
                    audience.to_string(),
                )
                .await;
                match result {
                    Ok(token) => {
                        ensure!(
                            !self.ended && t0 < DEADLINE,
                            "`{name}` minted at {t0} ms (deadline {DEADLINE} ms, ended {})",
                            self.ended
                        );
                        ensure!(
                            name == "id",
                            "`{name}` minted, but it is not a minted credential"
                        );
                        let active = self.vault.issuer().introspect(&token);
                        ensure!(
                            active.get("active") == Some(&serde_json::Value::Bool(true)),
                            "a token just minted is not active: {active}"
                        );
                        let host = url::Url::parse(audience)
                            .ok()
                            .and_then(|u| u.host_str().map(str::to_string))
                            .unwrap_or_else(|| audience.to_string());
                        self.tokens.push((token, host));
                    }
                    Err(e) => shown = Some(e.to_string()),
                }
                expected = Some(Action::SecretMint);
            }
            Op::Put { key, leak } => {
                let (text, knows) = self.smuggled(leak);
                if self.ended && !text.is_empty() {
                    return Ok(());
                }
                let key = pick(&["a", "b", "deny-me"], key);
                let (key, value) = if leak >= 6 {
                    (format!("{key}{text}"), Vec::new())
                } else {
                    (key.to_string(), text.into_bytes())
                };
                let result = wit_storage::Host::put(&mut self.ctx, key, value).await;
                if !knows {
                    shown = result.err().map(|e| e.to_string());
                }
                expected = Some(Action::StorageWrite);
            }
            Op::Get { key } => {
                let key = pick(&["a", "b", "deny-me"], key).to_string();
                let result = wit_storage::Host::get(&mut self.ctx, key).await;
                // A value is what the guest itself stored: it may be anything
                // it knew. Only errors are the host's words.
                shown = result.err().map(|e| e.to_string());
                expected = Some(Action::StorageRead);
            }
            Op::List => {
                let result = wit_storage::Host::list_keys(&mut self.ctx, String::new()).await;
                shown = result.err().map(|e| e.to_string());
                expected = Some(Action::StorageList);
            }
            Op::Delete { key } => {
                let key = pick(&["a", "b", "deny-me"], key).to_string();
                let result = wit_storage::Host::delete(&mut self.ctx, key).await;
                shown = Some(format!("{result:?}"));
                expected = Some(Action::StorageDelete);
            }
            Op::Log { leak } => {
                let (text, _) = self.smuggled(leak);
                if self.ended && !text.is_empty() {
                    return Ok(());
                }
                let _ = wit_log::Host::emit(
                    &mut self.ctx,
                    wit_log::Level::Info,
                    format!("line {text}"),
                );
                expected = None;
            }
            Op::Advance { secs } => {
                self.clock.fetch_add(u64::from(secs % 8), Ordering::Relaxed);
                expected = None;
            }
            Op::End => {
                if !self.ended {
                    self.ended = true;
                    drop(self.vault.ended(INSTANCE));
                    for (token, _) in &self.tokens {
                        let answer = self.vault.issuer().introspect(token);
                        ensure!(
                            answer.get("active") == Some(&serde_json::Value::Bool(false)),
                            "a token is still active after its instance ended: {answer}"
                        );
                    }
                }
                expected = None;
            }
        }
        if let Some(text) = &shown {
            ensure!(
                !carries_sentinel(text),
                "the guest was shown the sentinel: {text}"
            );
        }
        self.check_records(before, expected, credential_named)?;
        self.check_sent(t0)
    }

    fn check_records(
        &self,
        before: usize,
        expected: Option<Action>,
        credential_named: bool,
    ) -> Result<(), Violation> {
        let records = self.ledger.records();
        let new: Vec<_> = records.get(before..).unwrap_or_default().to_vec();
        let Some(action) = expected else {
            ensure!(
                new.is_empty(),
                "a call that is not a capability left records: {new:?}"
            );
            return Ok(());
        };
        let main = new.iter().filter(|r| r.action == action).count();
        let uses = new.iter().filter(|r| r.action == Action::SecretUse).count();
        ensure!(
            main == 1 && main + uses == new.len(),
            "a `{action}` call left {} records: {new:?}",
            new.len()
        );
        ensure!(
            uses <= usize::from(credential_named),
            "{uses} `secret.use` records for one fetch (credential named: {credential_named})"
        );
        Ok(())
    }

    /// Every request sent since the last look.
    fn check_sent(&mut self, t0: u64) -> Result<(), Violation> {
        let sent: Vec<Sent> = self
            .capture
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let t1 = self.now();
        for request in sent.get(self.seen..).unwrap_or_default() {
            judge(
                request,
                (t0, t1),
                self.ended,
                &mut self.leased_at,
                &self.tokens,
            )?;
        }
        self.seen = sent.len();
        Ok(())
    }

    /// What is kept once the instance is over: records and log lines, as
    /// the run cleans them.
    fn finish(self) -> Result<Summary, Violation> {
        let credentials: &dyn Credentials = &*self.vault;
        for mut record in self.ledger.records() {
            record.redact(|text| redact_text(credentials, INSTANCE, text));
            let text = serde_json::to_string(&record).unwrap_or_default();
            ensure!(
                !carries_sentinel(&text),
                "a record carries the sentinel: {text}"
            );
        }
        let (lines, _) = self.logs.drain();
        for line in lines {
            let text = redact_text(credentials, INSTANCE, line.message);
            ensure!(
                !carries_sentinel(&text),
                "a log line carries the sentinel: {text}"
            );
        }
        Ok(Summary {
            sent: self.seen,
            attached: self.leased_at.is_some(),
            minted: self.tokens.len(),
        })
    }
}

/// One request that left: the sentinel only as the bound header at the
/// bound destination while the lease is live; tokens only to their hosts.
/// `(t0, t1)`: the credential clock before and after the call, in ms.
fn judge(
    request: &Sent,
    (t0, t1): (u64, u64),
    ended: bool,
    leased_at: &mut Option<u64>,
    tokens: &[(String, String)],
) -> Result<(), Violation> {
    let bound = request.url.scheme() == "https"
        && request.url.host_str() == Some("bound.test")
        && request.url.port_or_known_default() == Some(443)
        && request.url.path().starts_with("/bound");
    let mut attached = false;
    for (name, value) in &request.headers {
        if name == "authorization" && value == &format!("Bearer {SENTINEL}") && bound {
            attached = true;
            continue;
        }
        ensure!(
            !carries_sentinel(name) && !carries_sentinel(value),
            "the sentinel went out in header `{name}` to {}",
            request.url
        );
    }
    ensure!(
        !carries_sentinel(request.url.as_str())
            && !carries_sentinel(&request.method)
            && !carries_sentinel(&String::from_utf8_lossy(&request.body)),
        "the sentinel went out in the URL, method or body of a request to {}",
        request.url
    );
    if attached {
        // Sound on both sides: the vault looked at its clock after t0, and
        // the lease began before t1 of the first attachment.
        let lease_end = leased_at.map_or(u64::MAX, |at| at + STATIC_TTL);
        ensure!(
            !ended && t0 < DEADLINE && t0 < lease_end,
            "the static credential was attached at {t0} ms: lease until {lease_end} ms, \
             deadline {DEADLINE} ms, ended {ended}"
        );
        leased_at.get_or_insert(t1);
    }
    let text = format!(
        "{} {:?} {}",
        request.url,
        request.headers,
        String::from_utf8_lossy(&request.body)
    );
    for (token, host) in tokens {
        if text.contains(token.as_str()) {
            ensure!(
                request.url.host_str() == Some(host.as_str()),
                "a token for `{host}` went to {}",
                request.url
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(to: u8, credential: u8, leak: u8) -> Op {
        Op::Fetch {
            to,
            credential,
            leak,
        }
    }

    fn run_ops(ops: Vec<Op>) -> Result<Summary, Violation> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Violation(e.to_string()))?;
        runtime.block_on(run(ops))
    }

    /// Every kind of call, each leak channel, the lease's expiry, the
    /// deadline and the end of the instance, in one sequence.
    #[test]
    fn a_sequence_through_every_guard_holds() {
        let mut ops = vec![
            fetch(0, 1, 0), // the bound use
            fetch(2, 1, 0), // unbound host
            fetch(1, 1, 0), // another path
            fetch(3, 1, 0), // plain http
            fetch(5, 1, 0), // another port
            fetch(0, 4, 0), // another skill's credential
            fetch(0, 3, 0), // a name guessed
            Op::Mint {
                name: 0,
                audience: 0,
            },
            fetch(0, 0, 4),  // the token to its audience
            fetch(2, 0, 4),  // the token elsewhere
            fetch(2, 0, 10), // the token in a header elsewhere
            Op::Put { key: 0, leak: 4 },
            Op::Log { leak: 4 },
        ];
        for leak in [1, 2, 3, 7, 8, 9, 13, 14, 15, 19] {
            ops.push(fetch(0, 0, leak));
            ops.push(fetch(2, 0, leak));
        }
        ops.extend([
            Op::Put { key: 0, leak: 1 },
            Op::Put { key: 1, leak: 7 },
            Op::Log { leak: 1 },
            Op::Get { key: 0 },
            Op::List,
            Op::Delete { key: 2 },
            Op::Advance { secs: 3 }, // past the static lease
            fetch(0, 1, 0),
            Op::Advance { secs: 7 }, // past the deadline
            Op::Mint {
                name: 0,
                audience: 0,
            },
            fetch(0, 2, 0),
            Op::End,
            fetch(0, 1, 0),
            Op::Mint {
                name: 0,
                audience: 0,
            },
        ]);
        let summary = run_ops(ops).unwrap_or_else(|v| panic!("{v}"));
        assert!(summary.attached && summary.minted == 1, "{summary:?}");
        assert!(summary.sent >= 2, "{summary:?}");
    }

    #[test]
    fn a_first_use_after_the_deadline_gets_no_lease() {
        let ops = vec![
            Op::Advance { secs: 7 },
            Op::Advance { secs: 7 },
            fetch(0, 1, 0),
            Op::Mint {
                name: 0,
                audience: 0,
            },
        ];
        let summary = run_ops(ops).unwrap_or_else(|v| panic!("{v}"));
        assert!(!summary.attached && summary.minted == 0, "{summary:?}");
    }

    /// The oracle itself: each way out it must catch, caught.
    #[test]
    fn the_oracle_refuses_each_way_out() {
        let request = |url: &str, headers: &[(&str, &str)], body: &str| Sent {
            url: url::Url::parse(url).unwrap(),
            method: "GET".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        };
        let bearer = format!("Bearer {SENTINEL}");
        let bound = request(BOUND, &[("authorization", &bearer)], "");
        let tokens = vec![("tok-123".to_string(), "bound.test".to_string())];
        let mut leased = None;
        assert!(judge(&bound, (0, 5), false, &mut leased, &tokens).is_ok());
        assert_eq!(leased, Some(5));
        assert!(judge(&bound, (2000, 2001), false, &mut leased, &tokens).is_ok());
        // Past the lease, past the deadline, after the end.
        let late = (STATIC_TTL + 5, STATIC_TTL + 6);
        assert!(judge(&bound, late, false, &mut Some(5), &tokens).is_err());
        let after = (DEADLINE, DEADLINE + 1);
        assert!(judge(&bound, after, false, &mut None, &tokens).is_err());
        assert!(judge(&bound, (0, 1), true, &mut None, &tokens).is_err());
        let elsewhere = [
            request(
                "https://other.test/bound/echo",
                &[("authorization", &bearer)],
                "",
            ),
            request(
                "https://bound.test/other",
                &[("authorization", &bearer)],
                "",
            ),
            request(
                "http://bound.test/bound/echo",
                &[("authorization", &bearer)],
                "",
            ),
            request(BOUND, &[("x-k", &bearer)], ""),
            request(BOUND, &[], &hex(SENTINEL)),
            request(&format!("{BOUND}?q={SENTINEL}"), &[], ""),
            request("https://other.test/", &[("x-t", "tok-123")], ""),
        ];
        for out in elsewhere {
            assert!(
                judge(&out, (0, 1), false, &mut None, &tokens).is_err(),
                "{out:?}"
            );
        }
    }

    fn hex(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("broker") {
            if let Err(v) = super::check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
