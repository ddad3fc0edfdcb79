//! The Airlock runtime.
