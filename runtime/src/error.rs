//! The runtime's errors.

use crate::inspect::Rejection;

/// What can go wrong outside a skill: bad configuration, a refused component,
/// the host's own I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The component was refused before compiling.
    #[error("skill rejected: {0}")]
    Rejected(#[from] Rejection),
    /// The component passed inspection but does not fit the skill world.
    #[error("skill rejected: {0}")]
    Incompatible(String),
    /// The policies do not load; every problem is listed with file and line.
    #[error("the policies in `{dir}` do not load:\n{source}")]
    Policy {
        dir: String,
        #[source]
        source: airlock_policy::Error,
    },
    /// A configuration value is wrong; the text says which and why.
    #[error("{0}")]
    Config(String),
    /// The host failed to read or write something it needs.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The engine failed in a way that is not the skill's fault.
    #[error("engine error: {0}")]
    Engine(String),
    /// The skill store refused: not admitted, not runnable now, a refused
    /// transition, a changed stored component. The text says which.
    #[error("{0}")]
    Admission(String),
    /// The shared control plane (NATS) failed or is unreachable. The text
    /// says what was being done.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The skill database failed: the host's fault, not a refusal.
    #[error("the skill database: {0}")]
    Store(String),
    /// A request too large for where it has to go (the cluster's messages);
    /// the text says how large and the bound.
    #[error("{0}")]
    TooLarge(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
