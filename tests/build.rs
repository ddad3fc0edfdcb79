//! Builds every guest in `skills-examples/` for `wasm32-wasip2` and generates
//! `skills.rs`: a path constant per guest, and `foreach_example!` /
//! `foreach_hostile!` macros so a new guest does not compile until a test of
//! the same name exists.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("tests/ has a parent")?;
    let guests = root.join("skills-examples");
    let target_dir = root.join("target").join("skills");
    for entry in std::fs::read_dir(&guests)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n != "target") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("host-apis/wit").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(&cargo);
    build
        .current_dir(&guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    // The outer build's flags are for the host, not for guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .context("running cargo to build the guest skills")?;
    if !status.success() {
        bail!(
            "building the guest skills failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
    }

    let metadata = Command::new(&cargo)
        .current_dir(&guests)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata on the guests")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&metadata.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    let mut examples = Vec::new();
    let mut hostile = Vec::new();
    let mut consts = String::new();
    let packages = metadata.get("packages").and_then(|p| p.as_array());
    for package in packages.context("cargo metadata lists no packages")? {
        let field = |key: &str| package.get(key).and_then(|v| v.as_str());
        let name = field("name").context("package name")?;
        let manifest = Path::new(field("manifest_path").context("manifest path")?);
        let ident = name.replace('-', "_");
        let wasm = wasm_dir.join(format!("{ident}.wasm"));
        if !wasm.exists() {
            bail!("expected `{}` after building the guests", wasm.display());
        }
        writeln!(
            consts,
            "pub const {}: &str = {:?};",
            ident.to_uppercase(),
            wasm.display().to_string()
        )?;
        if manifest.components().any(|c| c.as_os_str() == "hostile") {
            hostile.push(ident);
        } else {
            examples.push(ident);
        }
    }
    let foreach = |name: &str, idents: &[String]| {
        format!(
            "#[macro_export]\nmacro_rules! {name} {{\n    ($mac:ident) => {{\n{}    }};\n}}\n",
            idents
                .iter()
                .map(|i| format!("        $mac!({i});\n"))
                .collect::<String>()
        )
    };
    let out = PathBuf::from(env::var("OUT_DIR")?).join("skills.rs");
    std::fs::write(
        &out,
        format!(
            "{consts}\n{}\n{}",
            foreach("foreach_example", &examples),
            foreach("foreach_hostile", &hostile)
        ),
    )?;
    Ok(())
}
