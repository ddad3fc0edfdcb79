//! The `airlock` command: thin glue over the library.

mod admit;
mod audit;
mod author;
mod identity;
mod mcp;
mod policy;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run agent-generated skills in a WebAssembly sandbox, every capability call
/// checked by policy.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, max_term_width = 100)]
pub struct Cli {
    /// Where Airlock keeps its state (compiled-artifact cache). Defaults to
    /// `$XDG_DATA_HOME/airlock` or `~/.local/share/airlock`.
    #[arg(long, env = "AIRLOCK_HOME", global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// The configuration file (`airlock.toml`): policy, limits, storage,
    /// hosts, tools. Unknown keys are errors.
    #[arg(long, env = "AIRLOCK_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(Box<run::RunArgs>),
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The runtime's workload identity: its signing keys.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Serve the HTTP API for orchestrators (skills, runs, audit), health,
    /// and the identity verification endpoints.
    Serve(serve::ServeArgs),
    /// Make an API key for `airlock serve`: prints the key, and the
    /// `[[api.keys]]` stanza holding its hash.
    ApiKey(serve::ApiKeyArgs),
    /// Serve approved skills as MCP tools on stdin and stdout, for an agent
    /// that starts Airlock as its MCP server.
    Mcp(mcp::McpArgs),
    /// The audit log: verify it, show it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    #[command(flatten)]
    Admin(admit::AdminCommand),
    /// Create a skill project: Rust, Python or JavaScript, against the
    /// `airlock:skill` world, with a README and a test input.
    New(author::NewArgs),
    /// Build a skill project into a component with its language's own tool
    /// (cargo, componentize-py, componentize-js), and say what it asks for.
    Build(author::BuildArgs),
}

/// A failure of the command itself, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

/// Where writing a command's output failed: a reader that closed the pipe
/// early (`| head`) ends the command quietly; anything else is a failure.
pub fn output_failed(e: std::io::Error) -> Result<u8, Failure> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(exit::OK)
    } else {
        Err(Failure::usage(format!("writing the output: {e}")))
    }
}

/// Exit codes, as documented in `airlock run --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const SKILL_ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REJECTED: u8 = 3;
    pub const LIMIT: u8 = 4;
    pub const TRAP: u8 = 5;
    pub const STOPPED: u8 = 6;
    pub const AUDIT: u8 = 7;
    pub const BUSY: u8 = 8;
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        let code = match e {
            crate::Error::Rejected(_)
            | crate::Error::Incompatible(_)
            | crate::Error::Admission(_) => exit::REJECTED,
            _ => exit::USAGE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn data_dir(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
        Some(base.join("airlock"))
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Entry point of the `airlock` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("airlock: could not start the async runtime: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let result = runtime.block_on(async move {
        let config = match &cli.config {
            Some(path) => crate::Config::load(path).map_err(Failure::from),
            None => Ok(crate::Config::default()),
        };
        match cli.command {
            Command::Run(args) => {
                let args = *args;
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                run::run(args, config, data_dir).await
            }
            Command::Policy(command) => policy::run(command),
            Command::Identity(command) => {
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                identity::run(command, &config, data_dir)
            }
            Command::Audit(command) => {
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                audit::run(command, &config, data_dir).await
            }
            Command::Admin(command) => {
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                admit::run(command, config, data_dir).await
            }
            Command::Serve(args) => {
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                serve::serve(args, config, data_dir).await
            }
            Command::ApiKey(args) => serve::api_key(&args),
            Command::New(args) => author::new(&args),
            Command::Build(args) => author::build(&args),
            Command::Mcp(args) => {
                let config = config?;
                let data_dir = data_dir(cli.data_dir.or_else(|| config.data_dir.clone()));
                mcp::serve(args, config, data_dir).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            // Messages quote names and reasons others chose.
            eprintln!("airlock: {}", escape_lines(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// `text` made safe for a terminal, keeping its line breaks.
pub(crate) fn escape_lines(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|line| airlock_host_apis::escape(line, usize::MAX))
        .collect();
    lines.join("\n")
}

/// Parse a byte size: `65536`, `64KiB`, `64MiB`, `1GiB`, `10MB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (for example 65536, 64KiB, 64MiB, 1GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use B, KB, KiB, MB, MiB, GB or GiB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
    }
}
