//! The Airlock runtime: runs agent-generated skills (WebAssembly components)
//! with no ambient authority, every capability call decided by the broker.
//!
//! - [`engine`]: the wasmtime engine, pooling, the compiled-artifact
//!   [`cache`], an `InstancePre` per skill digest.
//! - [`inspect`]: what a component is and imports, before it is compiled.
//! - [`run`]: one invocation under [`limits`], and its [`run::RunReport`].
//! - [`cli`]: the `airlock` command.

pub mod cache;
pub mod cli;
pub mod digest;
pub mod engine;
mod error;
mod fsutil;
pub mod inspect;
mod instance;
pub mod limits;
pub mod run;

pub use digest::SkillDigest;
pub use engine::{Engine, EngineConfig, LoadedSkill};
pub use error::Error;
pub use inspect::{Inspection, Rejection};
pub use limits::Limits;
pub use run::{RunReport, RunRequest, RunStatus, Services};
