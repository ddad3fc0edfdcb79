//! `airlock:skill/types`: how a [`CallError`] reaches the guest.

use crate::bindings::airlock::skill::types::{Error as WitError, Host};
use crate::{CallError, SkillCtx};

impl Host for SkillCtx {
    fn convert_error(&mut self, err: CallError) -> wasmtime::Result<WitError> {
        Ok(match err {
            CallError::Denied(m) | CallError::Guarded { reason: m, .. } => WitError::Denied(m),
            CallError::Invalid(m) => WitError::Invalid(m),
            CallError::Limit(m) => WitError::Limit(m),
            CallError::NotFound(m) => WitError::NotFound(m),
            CallError::Unavailable(m) => WitError::Unavailable(m),
            CallError::Trap(e) => return Err(e),
        })
    }
}
