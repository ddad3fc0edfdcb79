//! The host side of the `airlock:skill` world.
//!
//! A skill is a WebAssembly component that imports `airlock:skill/{http,
//! storage, secrets, tools, log}` (and, if built from Rust std, WASI with
//! nothing behind it). This crate holds the WIT contract (`wit/`), the one
//! `bindgen!`, and one module per capability. Every capability call builds a
//! [`CapabilityRequest`] and asks the [`Broker`] before doing anything; the
//! world beyond the broker is reached only through traits ([`http::Egress`],
//! [`storage::Storage`], [`secrets::Credentials`], [`tools::Tools`]), so each
//! host function can be tested with fakes and no guest.
//!
//! A host function fails at two levels: the guest sees the WIT `error`
//! ([`CallError`] other than [`CallError::Trap`]); a trap ends the instance
//! (a hard limit, a host bug). A policy denial is never a trap.

pub mod broker;
pub mod http;
pub mod log;
pub mod secrets;
pub mod stack;
pub mod storage;
pub mod tools;
mod types;

use std::fmt;

pub use broker::{
    Action, AgentIdentity, Broker, BrokerCtx, CallBudget, CallRecord, CallerInstance,
    CapabilityRequest, Decision, Delegation, DenyAll, Details, Ledger, Mode, Outcome, Permit,
    Prepared, Resource, Sensitivity, Session, SessionState, SkillIdentity, Subject, Task, Trust,
    Verdict,
};
pub use stack::{OnThreadStack, ThreadStack};

/// The `airlock:skill` WIT, file by file: what skill projects are built
/// against and what the host's bindings are generated from.
pub const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../wit/world.wit")),
    ("types.wit", include_str!("../wit/types.wit")),
    ("http.wit", include_str!("../wit/http.wit")),
    ("storage.wit", include_str!("../wit/storage.wit")),
    ("secrets.wit", include_str!("../wit/secrets.wit")),
    ("tools.wit", include_str!("../wit/tools.wit")),
    ("log.wit", include_str!("../wit/log.wit")),
];

/// Generated bindings for the `airlock:skill/skill` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "airlock:skill/skill",
        path: "wit",
        imports: {
            "airlock:skill/log.emit": trappable,
            default: async | trappable,
        },
        exports: { default: async },
        trappable_error_type: {
            "airlock:skill/types.error" => crate::CallError,
        },
    });
}

pub use bindings::{Skill, SkillPre};

/// The `airlock:skill` package name and version skills are built against.
pub const PACKAGE: &str = "airlock:skill@0.1.0";

/// Why a host call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Refused by the broker; the text names action, resource and policies.
    #[error("denied: {0}")]
    Denied(String),
    /// Refused by one of the host's own guards after policy allowed the call
    /// (a special address, a credential's binding, a leak): recorded as a
    /// denial by `guard:<guard>`, and the guest gets [`CallError::Denied`].
    #[error("denied: {reason}")]
    Guarded { guard: &'static str, reason: String },
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("limit: {0}")]
    Limit(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Ends the instance.
    #[error("trap: {0}")]
    Trap(wasmtime::Error),
}

impl CallError {
    /// A refusal by the host guard `guard` (an id such as `egress-address`).
    pub fn guard(guard: &'static str, reason: impl Into<String>) -> Self {
        CallError::Guarded {
            guard,
            reason: reason.into(),
        }
    }
}

/// A limit on an instance. Hitting one ends the instance with an error naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// Wall-clock time, including time spent in host calls.
    Deadline,
    /// Linear memory.
    Memory,
    /// Table elements.
    TableElements,
    /// Core instances in the component.
    Instances,
    /// Data copied into the host by host calls.
    HostcallFuel,
    /// Handles (streams, pollables, requests) held in the resource table.
    ResourceTable,
    /// Size of the skill's output.
    Output,
    /// Number of host calls.
    HostCalls,
    /// Depth of the wasm call stack.
    Stack,
}

impl Limit {
    pub const fn as_str(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline",
            Limit::Memory => "memory",
            Limit::TableElements => "table-elements",
            Limit::Instances => "instances",
            Limit::HostcallFuel => "hostcall-fuel",
            Limit::ResourceTable => "resource-table",
            Limit::Output => "output",
            Limit::HostCalls => "host-calls",
            Limit::Stack => "stack",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors this crate raises as traps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An instance hit one of its limits.
    #[error("limit `{limit}` reached: {detail}")]
    Limit { limit: Limit, detail: String },
}

/// Per-instance state of every `airlock:skill` capability.
#[derive(Debug)]
pub struct SkillCtx {
    pub broker: BrokerCtx,
    pub http: std::sync::Arc<http::HttpCtx>,
    pub storage: storage::StorageCtx,
    pub secrets: secrets::SecretsCtx,
    pub tools: tools::ToolsCtx,
    pub log: log::LogCtx,
}

/// Reaches the [`SkillCtx`] in a store's data.
pub trait SkillView: Send {
    fn skill(&mut self) -> &mut SkillCtx;
}

struct HasSkill;

impl wasmtime::component::HasData for HasSkill {
    type Data<'a> = &'a mut SkillCtx;
}

/// Add every `airlock:skill` import to `linker`.
pub fn add_to_linker<T: SkillView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    Skill::add_to_linker::<T, HasSkill>(linker, T::skill)
}

/// Make a guest-supplied string safe to show: control and bidirectional
/// characters escaped, at most `max` characters kept.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        // Bidirectional controls, and the line and paragraph separators.
        let bidi = matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        );
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_neutralises_controls_and_truncates() {
        assert_eq!(escape("a\nb\x1b[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(escape("\u{202e}evil", 100), "\\u{202e}evil");
        assert_eq!(escape("\u{61c}a\u{2028}b", 100), "\\u{61c}a\\u{2028}b");
        assert_eq!(escape("abcdef", 3), "abc…");
    }
}
