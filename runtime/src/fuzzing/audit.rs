//! The audit log (target `audit`): records of any content are written as
//! lines of valid JSON with no raw control characters, and the log
//! verifies; then one mutation of the file (a flipped bit, a line deleted,
//! swapped, duplicated or inserted, a truncation) is always detected.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use super::{Violation, ensure};
use crate::audit::{AuditLog, verify};
use crate::identity::Keyring;

#[derive(Debug, Arbitrary)]
struct Event {
    kind: String,
    text: String,
    n: i64,
}

#[derive(Debug, Arbitrary)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    DeleteLine(usize),
    SwapLines(usize, usize),
    DuplicateLine(usize),
    InsertLine { at: usize, text: String },
    Truncate(usize),
}

#[derive(Debug, Arbitrary)]
struct Case {
    batches: Vec<Vec<Event>>,
    mutation: Mutation,
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn mutate(original: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut lines = lines(original);
    let n = lines.len().max(1);
    match mutation {
        Mutation::Flip { at, bit } => {
            let mut bytes = original.to_vec();
            if let Some(b) = bytes.get_mut(at % original.len().max(1)) {
                *b ^= 1 << (bit % 8);
            }
            return bytes;
        }
        Mutation::DeleteLine(i) => {
            if i % n < lines.len() {
                lines.remove(i % n);
            }
        }
        Mutation::SwapLines(i, j) => {
            if lines.len() > 1 {
                lines.swap(i % n, j % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if let Some(line) = lines.get(i % n).cloned() {
                lines.insert(i % n, line);
            }
        }
        Mutation::InsertLine { at, text } => {
            let mut line = text.clone().into_bytes();
            line.push(b'\n');
            lines.insert(at % (lines.len() + 1), line);
        }
        Mutation::Truncate(at) => {
            let mut bytes = original.to_vec();
            bytes.truncate(at % original.len().max(1));
            return bytes;
        }
    }
    lines.concat()
}

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    let Ok(mut case) = Case::arbitrary(&mut Unstructured::new(bytes)) else {
        return Ok(());
    };
    case.batches.truncate(6);
    for batch in &mut case.batches {
        batch.truncate(6);
    }
    if case.batches.iter().all(Vec::is_empty) {
        return Ok(());
    }
    let dir = tempfile::tempdir().map_err(|e| Violation(format!("no temporary directory: {e}")))?;
    let path = dir.path().join("audit.jsonl");
    let keys = Arc::new(Keyring::ephemeral(Duration::from_secs(3600)));
    {
        let log = AuditLog::open(&path, keys.clone())
            .map_err(|e| Violation(format!("the log did not open: {e}")))?;
        for batch in &case.batches {
            let events: Vec<serde_json::Value> = batch
                .iter()
                // The host names kinds; only their fields carry guest text.
                .map(|e| serde_json::json!({"kind": format!("fuzz.{}", e.kind), "text": e.text, "n": e.n}))
                .collect();
            log.append(&events)
                .map_err(|e| Violation(format!("an append failed: {e}")))?;
        }
    }
    let written = std::fs::read(&path).map_err(|e| Violation(format!("unreadable log: {e}")))?;
    for (i, line) in lines(&written).iter().enumerate() {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        ensure!(
            !body.iter().any(|b| *b < 0x20),
            "line {} holds a raw control character",
            i + 1
        );
        ensure!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "line {} is not JSON",
            i + 1
        );
    }
    let clean = verify(&path, &keys).map_err(|e| Violation(format!("verify failed: {e}")))?;
    ensure!(
        clean.problem.is_none(),
        "an untouched log does not verify: {:?}",
        clean.problem
    );
    let mutated = mutate(&written, &case.mutation);
    if mutated == written {
        return Ok(());
    }
    std::fs::write(&path, &mutated).map_err(|e| Violation(format!("cannot write: {e}")))?;
    let found = verify(&path, &keys);
    ensure!(
        found.as_ref().map_or(true, |v| v.problem.is_some()),
        "{:?} went undetected",
        case.mutation
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("audit") {
            if let Err(v) = super::check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
