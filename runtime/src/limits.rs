//! Limits on every instance, and the resource limiter that enforces the
//! memory, table and instance limits while tracking peak memory.

use std::time::Duration;

use airlock_host_apis::{Error as HostError, Limit};
use serde::{Deserialize, Serialize};

/// The limits an instance runs under. Every field has a default and a flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time for the whole run, host calls included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Bytes of linear memory, per memory.
    pub memory: u64,
    /// Elements per table.
    pub table_elements: u64,
    /// Core instances in the component.
    pub instances: u32,
    /// Bytes a single host call may copy in from the guest.
    pub hostcall_fuel: u64,
    /// Handles (streams, pollables, requests) alive at once.
    pub resource_table: u32,
    /// Bytes of output the skill may return.
    pub output: u64,
    /// Capability calls the instance may make.
    pub host_calls: u64,
    /// Bytes of log lines (including stdout and stderr) kept; the rest is
    /// counted and dropped.
    pub log: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(10),
            memory: 64 << 20,
            table_elements: 100_000,
            instances: 32,
            hostcall_fuel: 16 << 20,
            resource_table: 4096,
            output: 1 << 20,
            host_calls: 10_000,
            log: 1 << 20,
        }
    }
}

impl Limits {
    /// Each limit at most `ceiling`'s.
    pub fn within(&self, ceiling: &Limits) -> Limits {
        Limits {
            deadline: self.deadline.min(ceiling.deadline),
            memory: self.memory.min(ceiling.memory),
            table_elements: self.table_elements.min(ceiling.table_elements),
            instances: self.instances.min(ceiling.instances),
            hostcall_fuel: self.hostcall_fuel.min(ceiling.hostcall_fuel),
            resource_table: self.resource_table.min(ceiling.resource_table),
            output: self.output.min(ceiling.output),
            host_calls: self.host_calls.min(ceiling.host_calls),
            log: self.log.min(ceiling.log),
        }
    }
}

/// `serde` for durations as humantime strings (`"10s"`, `"250ms"`).
pub(crate) mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// For optional durations.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// Enforces memory, table and instance limits for one store, and remembers
/// the peak memory in use.
#[derive(Debug)]
pub struct InstanceLimiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    in_use: usize,
    peak: usize,
}

impl InstanceLimiter {
    pub fn new(limits: &Limits) -> Self {
        InstanceLimiter {
            memory: usize::try_from(limits.memory).unwrap_or(usize::MAX),
            table_elements: usize::try_from(limits.table_elements).unwrap_or(usize::MAX),
            instances: limits.instances as usize,
            in_use: 0,
            peak: 0,
        }
    }

    /// The most linear memory in use at any point, in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.peak as u64
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(HostError::Limit {
                limit: Limit::Memory,
                detail: format!(
                    "linear memory would grow to {desired} bytes, over the limit of {} bytes",
                    self.memory
                ),
            }
            .into());
        }
        self.in_use = self.in_use.saturating_add(desired - current.min(desired));
        self.peak = self.peak.max(self.in_use);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(HostError::Limit {
                limit: Limit::TableElements,
                detail: format!(
                    "a table would grow to {desired} elements, over the limit of {}",
                    self.table_elements
                ),
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn memory_past_the_limit_is_an_error_naming_it() {
        let mut limiter = InstanceLimiter::new(&Limits {
            memory: 1 << 20,
            ..Limits::default()
        });
        assert!(matches!(limiter.memory_growing(0, 65536, None), Ok(true)));
        let err = limiter
            .memory_growing(65536, 2 << 20, None)
            .err()
            .and_then(|e| e.downcast::<HostError>().ok());
        assert!(matches!(
            err,
            Some(HostError::Limit {
                limit: Limit::Memory,
                ..
            })
        ));
        assert_eq!(limiter.peak_memory(), 65536);
    }

    #[test]
    fn limits_parse_from_toml_like_values() {
        let limits: Limits =
            serde_json::from_str(r#"{"deadline": "250ms", "memory": 1024}"#).unwrap_or_default();
        assert_eq!(limits.deadline, Duration::from_millis(250));
        assert_eq!(limits.memory, 1024);
        assert_eq!(limits.output, Limits::default().output);
        let unknown = serde_json::from_str::<Limits>(r#"{"memroy": 1}"#);
        assert!(unknown.is_err());
    }
}
