//! `airlock new` and `airlock build`: skill projects in Rust, Python and
//! JavaScript against the `airlock:skill` world, built with each language's
//! own tool into the same kind of component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Args, ValueEnum};

use super::{Failure, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// wit-bindgen, built with `cargo build --target wasm32-wasip2`.
    Rust,
    /// componentize-py (from PyPI).
    Python,
    /// componentize-js (from npm).
    Js,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Lang::Rust => "cargo",
            Lang::Python => "componentize-py",
            Lang::Js => "componentize-js",
        }
    }

    /// How to get the tool, for the message when it is missing.
    fn install(self) -> &'static str {
        match self {
            Lang::Rust => "rustup target add wasm32-wasip2",
            Lang::Python => "pip install componentize-py==0.25.1",
            Lang::Js => {
                "npm install (in the project: its package.json lists \
                 @bytecodealliance/componentize-js)"
            }
        }
    }
}

/// Create a skill project.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The skill's language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The project directory to create; its last part names the skill
    /// (letters, digits, `-` and `_`).
    name: PathBuf,
}

/// Build a skill project into a component.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project directory (default: the current one).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::usage(format!("{what} `{}`: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_failure("creating", parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| io_failure("writing", path, e))
}

fn skill_name(dir: &Path) -> Result<String, Failure> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(Failure::usage(format!(
            "`{name}` cannot name a skill: use lowercase letters, digits, `-` and `_`, \
             starting with a letter"
        )));
    }
    Ok(name)
}

pub fn new(args: &NewArgs) -> Result<u8, Failure> {
    let dir = &args.name;
    let name = skill_name(dir)?;
    if dir.exists() {
        return Err(Failure::usage(format!(
            "`{}` already exists; nothing was written",
            dir.display()
        )));
    }
    let fill = |text: &str| {
        text.replace("{name}", &name)
            .replace("{language}", args.lang.name())
            .replace("{tool}", args.lang.tool())
    };
    for (file, text) in airlock_host_apis::WIT {
        write(&dir.join("wit").join(file), text)?;
    }
    write(
        &dir.join("README.md"),
        &fill(include_str!("templates/README.md")),
    )?;
    write(
        &dir.join("input.json"),
        include_str!("templates/input.json"),
    )?;
    match args.lang {
        Lang::Rust => {
            write(
                &dir.join("Cargo.toml"),
                &fill(include_str!("templates/rust/Cargo.toml")),
            )?;
            write(
                &dir.join(".cargo/config.toml"),
                include_str!("templates/rust/config.toml"),
            )?;
            write(
                &dir.join("src/lib.rs"),
                &fill(include_str!("templates/rust/lib.rs")),
            )?;
        }
        Lang::Python => write(
            &dir.join("app.py"),
            &fill(include_str!("templates/python/app.py")),
        )?,
        Lang::Js => {
            write(
                &dir.join("skill.js"),
                &fill(include_str!("templates/js/skill.js")),
            )?;
            write(
                &dir.join("package.json"),
                &fill(include_str!("templates/js/package.json")),
            )?;
        }
    }
    println!(
        "created {} skill `{name}` in {}\n  cd {} && airlock build && airlock run --dev {name}.wasm --input-file input.json",
        args.lang.name(),
        dir.display(),
        dir.display()
    );
    Ok(exit::OK)
}

/// What language a project directory holds.
fn detect(dir: &Path) -> Result<Lang, Failure> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Lang::Rust)
    } else if dir.join("app.py").is_file() {
        Ok(Lang::Python)
    } else if dir.join("package.json").is_file() || dir.join("skill.js").is_file() {
        Ok(Lang::Js)
    } else {
        Err(Failure::usage(format!(
            "`{}` is not a skill project: it has no Cargo.toml, app.py or skill.js \
             (`airlock new --lang rust|python|js NAME` makes one)",
            dir.display()
        )))
    }
}

/// A tool that is not installed, said plainly.
fn missing(lang: Lang, tool: &str) -> Failure {
    Failure::usage(format!(
        "building a {} skill needs `{tool}`, which is not installed here; install it with: {}",
        lang.name(),
        lang.install()
    ))
}

/// Run a build tool, saying every few seconds that it is still at work
/// (componentize-py and componentize-js print nothing until they are done).
fn run_tool(lang: Lang, mut command: Command) -> Result<(), Failure> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let status = command.spawn().and_then(|mut child| {
        let mut said = 0;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            let seconds = started.elapsed().as_secs();
            if seconds >= said + 5 {
                said = seconds;
                eprintln!("  still building with {} ({seconds}s)", lang.tool());
            }
        }
    });
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Failure {
            code: exit::SKILL_ERROR,
            message: format!("`{tool}` failed ({status}); its output is above"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing(lang, &tool)),
        Err(e) => Err(Failure::usage(format!("running `{tool}`: {e}"))),
    }
}

/// Whether rustc has the standard library for `wasm32-wasip2`.
fn has_wasip2() -> bool {
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

pub fn build(args: &BuildArgs) -> Result<u8, Failure> {
    let dir = &args.dir;
    let lang = detect(dir)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| io_failure("opening", dir, e))?;
    let name = skill_name(&dir)?;
    let out = dir.join(format!("{name}.wasm"));
    if !dir.join("wit").exists() {
        // The world, from the runtime's own copy.
        for (file, text) in airlock_host_apis::WIT {
            write(&dir.join("wit").join(file), text)?;
        }
    }
    let started = Instant::now();
    eprintln!(
        "building {} skill `{name}` with {}",
        lang.name(),
        lang.tool()
    );
    match lang {
        Lang::Rust => {
            if !has_wasip2() {
                return Err(missing(lang, "the wasm32-wasip2 target"));
            }
            let mut cargo = Command::new("cargo");
            cargo
                .current_dir(&dir)
                .args(["build", "--release", "--target", "wasm32-wasip2"]);
            run_tool(lang, cargo)?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("target"));
            let built = target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_")));
            std::fs::copy(&built, &out).map_err(|e| io_failure("copying", &built, e))?;
        }
        Lang::Python => {
            let mut build = Command::new("componentize-py");
            build
                .current_dir(&dir)
                .args(["-d", "wit", "-w", "skill", "componentize", "app", "-o"]);
            build.arg(&out);
            run_tool(lang, build)?;
        }
        Lang::Js => {
            let local = dir.join("node_modules/.bin/componentize-js");
            let mut build = Command::new(if local.exists() {
                local.into_os_string()
            } else {
                "componentize-js".into()
            });
            // No incoming-request handler: a skill exports `run` only.
            build
                .current_dir(&dir)
                .args(["skill.js", "--wit", "wit", "--world-name", "skill"])
                .args(["--disable", "fetch-event", "-o"])
                .arg(&out);
            run_tool(lang, build)?;
        }
    }
    let bytes = std::fs::read(&out).map_err(|e| io_failure("reading", &out, e))?;
    // What admission would say, before anyone submits it.
    let inspection = crate::inspect::inspect(&bytes, u64::MAX).map_err(|e| Failure {
        code: exit::REJECTED,
        message: format!(
            "built `{}`, but Airlock would refuse it: {e}",
            out.display()
        ),
    })?;
    let capabilities: Vec<&str> = inspection.capabilities.iter().map(|c| c.as_str()).collect();
    println!(
        "built {} ({} bytes, {:.1}s): asks for {}",
        out.display(),
        bytes.len(),
        started.elapsed().as_secs_f64(),
        if capabilities.is_empty() {
            "nothing".to_string()
        } else {
            capabilities.join(", ")
        }
    );
    Ok(exit::OK)
}
