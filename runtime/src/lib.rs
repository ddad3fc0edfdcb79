//! The Airlock runtime: runs agent-generated skills (WebAssembly components)
//! with no ambient authority, every capability call decided by the broker.
//!
//! - [`engine`]: the wasmtime engine, pooling, the compiled-artifact
//!   [`cache`], an `InstancePre` per skill digest.
//! - [`inspect`]: what a component is and imports, before it is compiled.
//! - [`run`]: one invocation under [`limits`], and its [`run::RunReport`].
//! - [`node`]: a [`Node`] puts the engine together with the broker
//!   ([`broker`], on [`airlock_policy`]), [`storage`], [`tools`] and the
//!   [`config`].
//! - [`identity`]: the runtime as an issuer of workload identity tokens,
//!   and [`credentials`]: leases on credentials, attached by the broker.
//! - [`admission`]: the content-addressed skill store and each skill's
//!   lifecycle; [`audit`]: the hash-chained log of every run and decision.
//! - [`cli`]: the `airlock` command.

pub mod admission;
pub mod api;
pub mod audit;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod digest;
pub mod egress;
pub mod engine;
mod error;
mod fsutil;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod identity;
pub mod inspect;
mod instance;
pub mod limits;
pub mod node;
pub mod run;
pub mod storage;
pub mod tools;

pub use config::Config;
pub use digest::SkillDigest;
pub use engine::{Engine, EngineConfig, LoadedSkill};
pub use error::Error;
pub use inspect::{Inspection, Rejection};
pub use limits::Limits;
pub use node::{Node, NodeOptions};
pub use run::{RunReport, RunRequest, RunStatus, Services};
