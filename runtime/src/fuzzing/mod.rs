//! Generators and oracles for fuzzing the host boundary.
//!
//! Each `check` takes a fuzzer's bytes, builds a structured case from them
//! (with `arbitrary`), runs it against the real code and says which
//! invariant broke, if one did. The cargo-fuzz targets in `fuzz/` are thin
//! glue over these; the tests below replay the committed seed corpora
//! (`fuzz/corpus/<target>/`) in every test run, so a crash found once stays
//! fixed.

pub mod admission;
pub mod api;
pub mod audit;
pub mod broker;
pub mod egress;
pub mod guest;
pub mod policy;
pub mod storage;

/// An invariant that did not hold, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Err(Violation)` with a formatted message unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::fuzzing::Violation(format!($($message)+)));
        }
    };
}
pub(crate) use ensure;

#[cfg(test)]
pub(crate) mod corpus {
    use std::path::PathBuf;

    /// Every seed of `target`, with its file name.
    pub(crate) fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(entry.path()).unwrap_or_default())
            })
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        seeds
    }
}
