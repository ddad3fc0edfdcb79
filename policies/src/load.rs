//! Reading policy files: parsing, our own policy ids, strict validation, and
//! problems reported as `file:line:col: message`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

/// A policy file's name (as shown in problems and default ids) and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// How bad a problem is. Both stop policies from loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing wrong with a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why policies did not load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Problems in the policy files; nothing was loaded.
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
    /// A policy directory or file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The built-in schema did not load (a bug in Airlock, not in the input).
    #[error("the built-in schema is invalid: {0}")]
    Schema(String),
}

fn render(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn first_label(diagnostic: &dyn Diagnostic) -> Option<usize> {
    diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
}

fn with_help(message: String, diagnostic: &dyn Diagnostic) -> String {
    match diagnostic.help() {
        Some(help) => format!("{message} (help: {help})"),
        None => message,
    }
}

/// Policies parsed from files, with where each one came from.
pub(crate) struct Parsed {
    pub set: PolicySet,
    /// Policy id -> (file name, file text, byte offset of the policy).
    pub origins: HashMap<PolicyId, (String, Arc<str>, usize)>,
}

/// Parse every file; give each policy its `@id`, or `file:line`.
pub(crate) fn parse(files: &[SourceFile]) -> Result<Parsed, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut set = PolicySet::new();
    let mut origins: HashMap<PolicyId, (String, Arc<str>, usize)> = HashMap::new();
    for file in files {
        let text: Arc<str> = file.text.as_str().into();
        let parsed = match file.text.parse::<PolicySet>() {
            Ok(parsed) => parsed,
            Err(errors) => {
                for error in errors.iter() {
                    let (line, column) = line_col(&text, first_label(error).unwrap_or(0));
                    problems.push(Problem {
                        file: file.name.clone(),
                        line,
                        column,
                        severity: Severity::Error,
                        message: with_help(error.to_string(), error),
                    });
                }
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            problems.push(Problem {
                file: file.name.clone(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: "policy templates are not supported; write static policies".to_string(),
            });
            continue;
        }
        // The parser names policies `policy0`, `policy1`, ... in source order.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        // Policies come in source order: count lines as the cursor moves, so
        // a file of thousands of policies is not rescanned for each.
        let mut cursor = 0;
        let mut cursor_line = 1;
        for policy in policies {
            let source = policy.to_cedar().unwrap_or_default();
            let offset = text
                .get(cursor..)
                .and_then(|rest| rest.find(&source))
                .map_or(cursor, |found| cursor + found);
            let gap = text.get(cursor..offset).unwrap_or_default();
            let line = cursor_line + gap.matches('\n').count();
            let line_start = text
                .get(..offset)
                .and_then(|b| b.rfind('\n'))
                .map_or(0, |i| i + 1);
            let column = text
                .get(line_start..offset)
                .map_or(0, |l| l.chars().count())
                + 1;
            cursor = offset + source.len();
            cursor_line = line + source.matches('\n').count();
            let id = match policy.annotation("id") {
                Some(id) if !id.trim().is_empty() => id.to_string(),
                _ => format!("{}:{line}", file.name),
            };
            let id = PolicyId::new(&id);
            if let Some((other, other_text, other_offset)) = origins.get(&id) {
                let (other_line, _) = line_col(other_text, *other_offset);
                problems.push(Problem {
                    file: file.name.clone(),
                    line,
                    column,
                    severity: Severity::Error,
                    message: format!(
                        "policy id `{id}` is already used at {other}:{other_line}; ids must be unique"
                    ),
                });
                continue;
            }
            if let Err(e) = set.add(policy.new_id(id.clone())) {
                problems.push(Problem {
                    file: file.name.clone(),
                    line,
                    column,
                    severity: Severity::Error,
                    message: e.to_string(),
                });
                continue;
            }
            origins.insert(id, (file.name.clone(), text.clone(), offset));
        }
    }
    if problems.is_empty() {
        Ok(Parsed { set, origins })
    } else {
        Err(problems)
    }
}

/// A schema, then the built-in files and `files` parsed and validated
/// strictly against it: what both policy models load the same way.
pub(crate) fn strict(
    schema_text: &str,
    base: &[(&str, &str)],
    files: &[SourceFile],
) -> Result<(Schema, Parsed), Error> {
    let (schema, warnings) =
        Schema::from_cedarschema_str(schema_text).map_err(|e| Error::Schema(e.to_string()))?;
    let warnings: Vec<String> = warnings.map(|w| w.to_string()).collect();
    if !warnings.is_empty() {
        return Err(Error::Schema(warnings.join("; ")));
    }
    let mut all: Vec<SourceFile> = base
        .iter()
        .map(|(name, text)| SourceFile {
            name: (*name).to_string(),
            text: (*text).to_string(),
        })
        .collect();
    all.extend(files.iter().cloned());
    let parsed = parse(&all).map_err(Error::Invalid)?;
    let problems = validate(&schema, &parsed);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok((schema, parsed))
}

/// Validate strictly against the schema; warnings count as problems.
pub(crate) fn validate(schema: &Schema, parsed: &Parsed) -> Vec<Problem> {
    let result = Validator::new(schema.clone()).validate(&parsed.set, ValidationMode::Strict);
    let mut problems = Vec::new();
    let mut report = |id: &PolicyId, diagnostic: &dyn Diagnostic, message: String, severity| {
        let (file, text, start) = parsed
            .origins
            .get(id)
            .map(|(f, t, o)| (f.clone(), t.clone(), *o))
            .unwrap_or_else(|| (id.to_string(), Arc::from(""), 0));
        let (line, column) = line_col(&text, first_label(diagnostic).unwrap_or(start));
        problems.push(Problem {
            file,
            line,
            column,
            severity,
            // Cedar's messages name the policy already.
            message: with_help(message, diagnostic),
        });
    };
    for error in result.validation_errors() {
        report(error.policy_id(), error, error.to_string(), Severity::Error);
    }
    for warning in result.validation_warnings() {
        report(
            warning.policy_id(),
            warning,
            warning.to_string(),
            Severity::Warning,
        );
    }
    problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    problems
}

/// Every `.cedar` file under `dir`, named by its path relative to `dir`,
/// in a stable order.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, Error> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| Error::Read {
            path: current.display().to_string(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Read {
                    path: current.display().to_string(),
                    source,
                })?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "cedar") {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                files.push(SourceFile { name, text });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 100), (3, 2));
    }
}
