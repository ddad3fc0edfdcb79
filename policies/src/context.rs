//! Request contexts: built directly from typed values, and checked on every
//! call against the context type the schema declares for the action.
//!
//! Cedar's own way, `Context::from_pairs` then `Request::new` with the
//! schema, costs about 13 µs for an Airlock context (an expression
//! interpreter pass, then a type check that rebuilds the context as
//! expressions); the budget for a whole host call is 10 µs. The shapes here
//! are read from the loaded schema itself (its JSON form), so the check is
//! the schema's, and tests hold it to Cedar's validator on the same inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cedar_policy_core::ast::{Literal, Value, ValueKind};
use smol_str::SmolStr;

/// The type of a context value, as the schema declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    String,
    Long,
    Bool,
    Set(Box<Shape>),
    /// Attributes and whether each is required. Records are closed: an
    /// attribute the schema does not declare is an error.
    Record(BTreeMap<String, (Shape, bool)>),
}

/// Read the shape of a schema type from its JSON form.
fn shape(
    json: &serde_json::Value,
    common: &serde_json::Value,
    depth: usize,
) -> Result<Shape, String> {
    if depth > 32 {
        return Err("schema types nest too deep".into());
    }
    let kind = json
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    let named = |name: &str| -> Result<Shape, String> {
        match name {
            "String" | "__cedar::String" => Ok(Shape::String),
            "Long" | "__cedar::Long" => Ok(Shape::Long),
            "Bool" | "Boolean" | "__cedar::Bool" => Ok(Shape::Bool),
            other => match common.get(other) {
                Some(def) => shape(def, common, depth + 1),
                None => Err(format!("context type `{other}` is not supported")),
            },
        }
    };
    match kind {
        "String" => Ok(Shape::String),
        "Long" => Ok(Shape::Long),
        "Boolean" | "Bool" => Ok(Shape::Bool),
        "Set" => {
            let element = json.get("element").ok_or("a set type without element")?;
            Ok(Shape::Set(Box::new(shape(element, common, depth + 1)?)))
        }
        "Record" => {
            if json.get("additionalAttributes").and_then(|a| a.as_bool()) == Some(true) {
                return Err("open records are not supported in contexts".into());
            }
            let mut attrs = BTreeMap::new();
            if let Some(map) = json.get("attributes").and_then(|a| a.as_object()) {
                for (name, attr) in map {
                    let required = attr
                        .get("required")
                        .and_then(|r| r.as_bool())
                        .unwrap_or(true);
                    attrs.insert(name.clone(), (shape(attr, common, depth + 1)?, required));
                }
            }
            Ok(Shape::Record(attrs))
        }
        "EntityOrCommon" => named(
            json.get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default(),
        ),
        other => named(other),
    }
}

/// The context shape of every action of the `Airlock` namespace, by name.
pub(crate) fn shapes(schema_text: &str) -> Result<HashMap<String, Shape>, String> {
    let (fragment, _) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text)
        .map_err(|e| e.to_string())?;
    let json = fragment.to_json_value().map_err(|e| e.to_string())?;
    let namespace = json.get("Airlock").ok_or("no `Airlock` namespace")?;
    let common = namespace.get("commonTypes").cloned().unwrap_or_default();
    let mut out = HashMap::new();
    if let Some(actions) = namespace.get("actions").and_then(|a| a.as_object()) {
        for (name, action) in actions {
            if let Some(context) = action.get("appliesTo").and_then(|a| a.get("context")) {
                out.insert(name.clone(), shape(context, &common, 0)?);
            }
        }
    }
    Ok(out)
}

/// Where a value differs from its shape: the attribute path, innermost
/// last, and what was expected. Built only when a check fails.
#[derive(Debug)]
pub(crate) struct Mismatch {
    path: Vec<String>,
    problem: String,
}

impl Mismatch {
    fn new(problem: String) -> Self {
        Mismatch {
            path: Vec::new(),
            problem,
        }
    }

    fn at(mut self, name: &str) -> Self {
        self.path.push(name.to_string());
        self
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        write!(f, "`context.{}` {}", path.join("."), self.problem)
    }
}

impl Shape {
    /// Whether `value` has this shape.
    pub(crate) fn check(&self, value: &Value) -> Result<(), Mismatch> {
        match (self, &value.value) {
            (Shape::String, ValueKind::Lit(Literal::String(_)))
            | (Shape::Long, ValueKind::Lit(Literal::Long(_)))
            | (Shape::Bool, ValueKind::Lit(Literal::Bool(_))) => Ok(()),
            (Shape::Set(element), ValueKind::Set(set)) => {
                set.iter().try_for_each(|item| element.check(item))
            }
            (Shape::Record(attrs), ValueKind::Record(fields)) => check_record(attrs, fields),
            (expected, _) => Err(Mismatch::new(format!("should be {}", expected.name()))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Shape::String => "a string",
            Shape::Long => "a long",
            Shape::Bool => "a boolean",
            Shape::Set(_) => "a set",
            Shape::Record(_) => "a record",
        }
    }
}

pub(crate) fn check_record(
    attrs: &BTreeMap<String, (Shape, bool)>,
    fields: &BTreeMap<SmolStr, Value>,
) -> Result<(), Mismatch> {
    for (name, value) in fields {
        match attrs.get(name.as_str()) {
            Some((shape, _)) => shape.check(value).map_err(|m| m.at(name))?,
            None => return Err(Mismatch::new("is not in the schema".into()).at(name)),
        }
    }
    for (name, (_, required)) in attrs {
        if *required && !fields.contains_key(name.as_str()) {
            return Err(Mismatch::new("is missing".into()).at(name));
        }
    }
    Ok(())
}

pub(crate) fn string(s: &str) -> Value {
    Value::from(s)
}

pub(crate) fn long(n: i64) -> Value {
    Value::from(n)
}

pub(crate) fn strings(set: &BTreeSet<String>) -> Value {
    Value::set(set.iter().map(|s| Value::from(s.as_str())), None)
}

pub(crate) fn record<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let map: BTreeMap<SmolStr, Value> = fields
        .into_iter()
        .map(|(k, v)| (SmolStr::new(k), v))
        .collect();
    Value::record_arc(Arc::new(map), None)
}
