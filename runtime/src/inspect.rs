//! Looking at a component before anything else happens to it.
//!
//! The same bytes are hashed, inspected and compiled. Inspection refuses core
//! modules, malformed bytes, precompiled artifacts, components over the size
//! cap, wasm features the engine has turned off, and imports outside the
//! allowed set, each with a message that names the problem.

use std::collections::BTreeSet;

use serde::Serialize;
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

use crate::digest::SkillDigest;

/// Why a component was refused before compiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not WebAssembly (it does not start with the `\\0asm` header)")]
    NotWasm,
    #[error(
        "the file is a core WebAssembly module, not a component: build the skill for \
         `wasm32-wasip2`, which produces a component"
    )]
    CoreModule,
    #[error(
        "the file is a precompiled artifact: Airlock compiles skills itself and never \
         loads precompiled code"
    )]
    Precompiled,
    #[error("the component is {size} bytes, over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("the component is malformed: {detail}")]
    Malformed { detail: String },
    #[error("the component imports `{name}`, which Airlock does not provide: {hint}")]
    ForbiddenImport { name: String, hint: String },
    #[error(
        "the component does not export `run`: a skill must target the `airlock:skill/skill` world"
    )]
    MissingRun,
}

/// A capability a component can ask for, judged by its imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Http,
    Storage,
    Secrets,
    Tools,
    Log,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Http => "http",
            Capability::Storage => "storage",
            Capability::Secrets => "secrets",
            Capability::Tools => "tools",
            Capability::Log => "log",
        }
    }
}

/// What inspection found in an accepted component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub digest: SkillDigest,
    pub size: u64,
    /// Top-level imports, as named in the component.
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// What the component can request, from its imports.
    pub capabilities: BTreeSet<Capability>,
}

/// Interfaces a skill may import. WASI is linked with nothing behind it.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "airlock:skill",
        &["types", "http", "storage", "secrets", "tools", "log"],
    ),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    ("wasi:filesystem", &["types", "preopens"]),
    ("wasi:http", &["types", "outgoing-handler"]),
    // Imported by interpreters; linked with every network use off.
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "ip-name-lookup",
            "tcp",
            "tcp-create-socket",
            "udp",
            "udp-create-socket",
        ],
    ),
];

/// Supported package versions, by major.minor.
fn version_supported(package: &str, version: &str) -> bool {
    let wanted = if package == "airlock:skill" {
        "0.1."
    } else {
        "0.2."
    };
    version.starts_with(wanted)
}

fn hint(package: &str) -> String {
    match package {
        "wasi:sockets" => {
            "skills have no sockets; use `airlock:skill/http` (or `wasi:http`) for network \
             access, which the broker checks"
                .to_string()
        }
        "airlock:skill" | "wasi:cli" | "wasi:io" | "wasi:clocks" | "wasi:random"
        | "wasi:filesystem" | "wasi:http" => {
            "this interface or version is not part of the `airlock:skill@0.1.0` world \
             (WASI 0.2.x is supported)"
                .to_string()
        }
        _ => "a skill may import only `airlock:skill/*` and the WASI 0.2 interfaces its \
              language runtime needs"
            .to_string(),
    }
}

/// The first `wasi:sockets` import, for operators who refuse them outright
/// (`admission.refuse_socket_imports`).
pub fn socket_import(inspection: &Inspection) -> Option<Rejection> {
    inspection
        .imports
        .iter()
        .find(|name| name.starts_with("wasi:sockets/"))
        .map(|name| Rejection::ForbiddenImport {
            name: airlock_host_apis::escape(name, 200),
            hint: hint("wasi:sockets"),
        })
}

/// Check one import name against the allowed set.
pub(crate) fn check_import(name: &str) -> Result<Option<Capability>, Rejection> {
    let forbidden = |package: &str| Rejection::ForbiddenImport {
        name: airlock_host_apis::escape(name, 200),
        hint: hint(package),
    };
    // `namespace:package/interface@version`
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else {
        return Err(forbidden(path));
    };
    let allowed = ALLOWED
        .iter()
        .find(|(p, _)| *p == package)
        .is_some_and(|(_, interfaces)| interfaces.contains(&interface));
    if !allowed || !version_supported(package, version) {
        return Err(forbidden(package));
    }
    Ok(match (package, interface) {
        ("airlock:skill", "http") | ("wasi:http", "outgoing-handler") => Some(Capability::Http),
        ("airlock:skill", "storage") => Some(Capability::Storage),
        ("airlock:skill", "secrets") => Some(Capability::Secrets),
        ("airlock:skill", "tools") => Some(Capability::Tools),
        ("airlock:skill", "log") => Some(Capability::Log),
        _ => None,
    })
}

/// The wasm features skills may use. The engine is configured to match.
pub fn wasm_features() -> WasmFeatures {
    let mut features = WasmFeatures::WASM3 | WasmFeatures::COMPONENT_MODEL;
    for off in [
        WasmFeatures::THREADS,
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        WasmFeatures::GC,
        WasmFeatures::GC_TYPES,
        WasmFeatures::MEMORY64,
        WasmFeatures::EXCEPTIONS,
        WasmFeatures::LEGACY_EXCEPTIONS,
        WasmFeatures::STACK_SWITCHING,
        WasmFeatures::CM_ASYNC,
        WasmFeatures::CM_MORE_ASYNC_BUILTINS,
        WasmFeatures::CM_ASYNC_STACKFUL,
        WasmFeatures::CM_THREADING,
        WasmFeatures::CM_ERROR_CONTEXT,
        WasmFeatures::CM_GC,
    ] {
        features.remove(off);
    }
    features
}

/// Inspect `bytes`: refuse what the engine must not see, describe the rest.
pub fn inspect(bytes: &[u8], max_size: u64) -> Result<Inspection, Rejection> {
    let size = bytes.len() as u64;
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    if size > max_size {
        return Err(Rejection::TooLarge {
            size,
            max: max_size,
        });
    }
    if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        return Err(Rejection::Precompiled);
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(Rejection::NotWasm);
    }
    if Parser::is_core_wasm(bytes) {
        return Err(Rejection::CoreModule);
    }
    if !Parser::is_component(bytes) {
        return Err(Rejection::Malformed {
            detail: "unknown WebAssembly encoding or version".to_string(),
        });
    }
    Validator::new_with_features(wasm_features())
        .validate_all(bytes)
        .map_err(|e| Rejection::Malformed {
            detail: e.to_string(),
        })?;

    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut capabilities = BTreeSet::new();
    // Nested modules and components report their own sections; only the
    // outermost component's imports and exports matter.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Rejection::Malformed {
            detail: e.to_string(),
        })?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| Rejection::Malformed {
                        detail: e.to_string(),
                    })?;
                    let name = import.name.name;
                    if let Some(capability) = check_import(name)? {
                        capabilities.insert(capability);
                    }
                    imports.push(name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| Rejection::Malformed {
                        detail: e.to_string(),
                    })?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    if !exports.iter().any(|e| e == "run") {
        return Err(Rejection::MissingRun);
    }
    Ok(Inspection {
        digest: SkillDigest::of(bytes),
        size,
        imports,
        exports,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_imports_map_to_capabilities() {
        assert_eq!(
            check_import("airlock:skill/http@0.1.0"),
            Ok(Some(Capability::Http))
        );
        assert_eq!(
            check_import("wasi:http/outgoing-handler@0.2.6"),
            Ok(Some(Capability::Http))
        );
        assert_eq!(check_import("wasi:cli/environment@0.2.0"), Ok(None));
    }

    #[test]
    fn unknown_interfaces_are_refused_by_name() {
        // Sockets are linked with networking off (see `instance::linker`).
        assert_eq!(check_import("wasi:sockets/tcp@0.2.0"), Ok(None));
        for name in [
            "wasi:sockets/tcp@0.3.0",
            "wasi:sockets/raw-socket@0.2.0",
            "wasi:http/incoming-handler@0.2.0",
            "wasi:cli/run@0.2.0",
            "airlock:skill/http@0.2.0",
            "wasi:io/streams@0.3.0",
            "evil:host/escape",
            "bare-name",
        ] {
            match check_import(name) {
                Err(Rejection::ForbiddenImport { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_components_are_refused_with_the_reason() {
        assert_eq!(inspect(b"", 100), Err(Rejection::Empty));
        assert_eq!(inspect(b"hello", 100), Err(Rejection::NotWasm));
        let core = b"\0asm\x01\0\0\0";
        assert_eq!(inspect(core, 100), Err(Rejection::CoreModule));
        assert_eq!(
            inspect(core, 4),
            Err(Rejection::TooLarge { size: 8, max: 4 })
        );
        let truncated_component = b"\0asm\x0d\0\x01\0\x07";
        assert!(matches!(
            inspect(truncated_component, 100),
            Err(Rejection::Malformed { .. })
        ));
    }
}
