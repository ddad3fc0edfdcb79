//! `airlock run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use airlock_host_apis::{
    AgentIdentity, Mode, Sensitivity, SkillIdentity, Subject, Task, Trust, Verdict, escape,
};
use clap::Args;
use serde::Serialize;

use super::{Failure, exit, parse_bytes};
use crate::config::{Config, PolicyMode};
use crate::engine::EngineConfig;
use crate::limits::Limits;
use crate::node::{Node, NodeOptions};
use crate::run::{RunReport, RunRequest, RunStatus};

const EXIT_CODES: &str = "\
Exit codes:
  0  the skill returned output (printed on stdout)
  1  the skill returned an error
  2  usage or configuration error
  3  skill rejected (not a component, malformed, forbidden import)
  4  a limit was hit (the message names it)
  5  the skill trapped
  6  the instance was stopped (its skill was revoked or quarantined)
  7  the run could not be recorded in the audit log (refused, or its result withheld)
  8  no instance slot was free (the node is at capacity): nothing ran";

/// Run a skill once and print its output.
///
/// The skill starts with no ambient authority: no files, environment,
/// sockets or inherited stdio. Every capability call it makes is decided by
/// the broker with the run's context; with no policy loaded, every one is
/// denied. The context flags default to the least trusted values.
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct RunArgs {
    /// The skill: the digest of an admitted, approved skill (or a unique
    /// prefix of it), or with `--dev` a component file
    /// (`cargo build --target wasm32-wasip2`).
    #[arg(value_name = "DIGEST|SKILL.wasm")]
    skill: String,

    /// Developer mode: run a component file that has not been admitted. The
    /// run is marked as such in the audit log, and policies see the skill as
    /// not approved.
    #[arg(long)]
    dev: bool,

    /// Input for the skill, as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    input: Option<String>,

    /// Read the skill's input (JSON) from a file.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,

    /// Print a JSON envelope: status, output or error, usage, decisions, logs.
    #[arg(long)]
    json: bool,

    /// A directory of Cedar policies, added to the built-in base policies.
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,

    /// `shadow` computes and records decisions and reports what would be
    /// denied, but lets every call proceed. For writing policy; never the
    /// default.
    #[arg(long, value_enum, value_name = "MODE")]
    policy_mode: Option<PolicyMode>,

    /// The task this run serves.
    #[arg(long, value_name = "ID", default_value = "cli")]
    task_id: String,

    /// What the run is for, as declared by whoever starts it.
    #[arg(long, value_name = "TEXT", default_value = "unspecified")]
    intent: String,

    /// How sensitive the task's data is: public, internal, confidential, secret.
    #[arg(long, value_name = "LEVEL", default_value = "secret")]
    sensitivity: Sensitivity,

    /// Where the task runs (for example dev, staging, prod).
    #[arg(long, value_name = "NAME", default_value = "local")]
    environment: String,

    /// The agent that generated the skill (`--dev` only: an admitted skill
    /// runs as the agent it was admitted with).
    #[arg(long, value_name = "ID", default_value = "unknown")]
    agent: String,

    /// How far that agent is trusted: untrusted, low, medium, high (`--dev`
    /// only, like `--agent`).
    #[arg(long, value_name = "LEVEL", default_value = "untrusted")]
    trust: Trust,

    /// Wall-clock deadline, host calls included [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Linear memory limit [default: 64MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory: Option<u64>,

    /// Table elements limit [default: 100000].
    #[arg(long, value_name = "N")]
    table_elements: Option<u64>,

    /// Core instances limit [default: 32].
    #[arg(long, value_name = "N")]
    instances: Option<u32>,

    /// Bytes a single host call may copy in from the skill [default: 16MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    hostcall_fuel: Option<u64>,

    /// Handles alive at once [default: 4096].
    #[arg(long, value_name = "N")]
    resource_table: Option<u32>,

    /// Output size limit [default: 1MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_output: Option<u64>,

    /// Capability calls limit [default: 10000].
    #[arg(long, value_name = "N")]
    max_host_calls: Option<u64>,

    /// Bytes of log lines kept [default: 1MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_log: Option<u64>,

    /// Allocate instances on demand instead of from a pre-allocated pool.
    #[arg(long)]
    no_pooling: bool,

    /// Compile every time instead of using the compiled-artifact cache.
    #[arg(long)]
    no_cache: bool,
}

impl RunArgs {
    fn limits(&self, defaults: &Limits) -> Limits {
        let mut limits = defaults.clone();
        if let Some(v) = self.timeout {
            limits.deadline = v;
        }
        if let Some(v) = self.memory {
            limits.memory = v;
        }
        if let Some(v) = self.table_elements {
            limits.table_elements = v;
        }
        if let Some(v) = self.instances {
            limits.instances = v;
        }
        if let Some(v) = self.hostcall_fuel {
            limits.hostcall_fuel = v;
        }
        if let Some(v) = self.resource_table {
            limits.resource_table = v;
        }
        if let Some(v) = self.max_output {
            limits.output = v;
        }
        if let Some(v) = self.max_host_calls {
            limits.host_calls = v;
        }
        if let Some(v) = self.max_log {
            limits.log = v;
        }
        limits
    }

    fn input(&self) -> Result<String, Failure> {
        let (input, origin) = match (&self.input, &self.input_file) {
            (Some(text), _) => (text.clone(), "--input".to_string()),
            (None, Some(path)) => (
                std::fs::read_to_string(path).map_err(|e| {
                    Failure::usage(format!("cannot read `{}`: {e}", path.display()))
                })?,
                format!("`{}`", path.display()),
            ),
            (None, None) => ("{}".to_string(), String::new()),
        };
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&input) {
            return Err(Failure::usage(format!(
                "the input from {origin} is not JSON: {e}. Skill input is JSON text, for example --input '{{\"name\": \"Ada\"}}'"
            )));
        }
        Ok(input)
    }
}

#[derive(Serialize)]
struct Rejected<'a> {
    status: &'static str,
    error: RejectedError<'a>,
}

#[derive(Serialize)]
struct RejectedError<'a> {
    message: &'a str,
}

pub async fn run(args: RunArgs, config: Config, data_dir: Option<PathBuf>) -> Result<u8, Failure> {
    let limits = args.limits(&config.limits);
    let input = args.input()?;
    let path = PathBuf::from(&args.skill);
    if !args.dev && path.is_file() {
        return Err(Failure::usage(format!(
            "`{}` is a file: running a file that has not been admitted is developer mode (add --dev), or admit it (`airlock admit`) and run it by digest once approved",
            path.display()
        )));
    }
    let options = NodeOptions {
        engine: EngineConfig {
            pooling: !args.no_pooling,
            max_instances: 16,
            cache_dir: if args.no_cache {
                None
            } else {
                data_dir.as_ref().map(|d| d.join("cache"))
            },
            max_memory: EngineConfig::default().max_memory.max(limits.memory),
            ..EngineConfig::default()
        },
        shared_engine: None,
        data_dir,
        policy_dir: args.policy.clone(),
        policy_mode: args.policy_mode,
        resolver: None,
        // Admitted skills by digest come from the cluster when there is one.
        registry: if args.dev {
            None
        } else {
            crate::cluster::registry(&config).await?
        },
    };
    let node = Node::new(config, options)?;
    let rejected = |e: crate::Error| {
        let failure = Failure::from(e);
        if args.json {
            print_json(&Rejected {
                status: "rejected",
                error: RejectedError {
                    message: &failure.message,
                },
            });
            return Ok(failure.code);
        }
        Err(failure)
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let subject = Subject {
        instance: String::new(),
        skill: SkillIdentity {
            digest: String::new(),
            name,
            // A file run directly has not been through admission.
            approved: false,
            labels: Default::default(),
        },
        agent: AgentIdentity {
            id: args.agent.clone(),
            trust: args.trust,
        },
        task: Task {
            id: args.task_id.clone(),
            intent: args.intent.clone(),
            sensitivity: args.sensitivity,
            environment: args.environment.clone(),
            requester: super::admit::local_user().unwrap_or_default(),
        },
        delegation: Default::default(),
    };
    let request = RunRequest {
        input,
        subject,
        limits,
        session: None,
        ledger: None,
        stop: None,
    };
    let report = if args.dev {
        let bytes = std::fs::read(&path)
            .map_err(|e| Failure::usage(format!("cannot read `{}`: {e}", path.display())))?;
        match node.load(bytes).await {
            Ok(skill) => node.run(&skill, request).await,
            Err(e) => return rejected(e),
        }
    } else {
        let looks_like_digest = args.skill.bytes().all(|b| b.is_ascii_hexdigit());
        let resolved = match node.skills() {
            Ok(store) => store.resolve(&args.skill).await,
            Err(e) => Err(e),
        };
        let digest = match resolved {
            Ok(digest) => digest,
            Err(_) if !looks_like_digest => {
                return Err(Failure::usage(format!(
                    "`{}` is neither a file nor the digest of an admitted skill",
                    escape(&args.skill, 200)
                )));
            }
            Err(e) => return rejected(e),
        };
        match node.run_admitted(digest, request).await {
            Ok(report) => report,
            Err(e) => return rejected(e),
        }
    };
    let code = match report.status {
        RunStatus::Ok => exit::OK,
        RunStatus::SkillError => exit::SKILL_ERROR,
        RunStatus::Limit => exit::LIMIT,
        RunStatus::Trap => exit::TRAP,
        RunStatus::Stopped => exit::STOPPED,
        RunStatus::AuditFailed | RunStatus::Cancelled => exit::AUDIT,
        RunStatus::Busy => exit::BUSY,
    };
    if args.json {
        print_json(&report);
    } else {
        print_human(&report);
    }
    Ok(code)
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("airlock: could not render the report: {e}"),
    }
}

fn print_human(report: &RunReport) {
    for line in &report.logs {
        eprintln!(
            "[{} {}] {}",
            escape(&report.skill, 200),
            line.level.as_str(),
            escape(&line.message, 4096)
        );
    }
    if report.logs_dropped > 0 {
        eprintln!(
            "airlock: {} more log lines were dropped (over the log limit)",
            report.logs_dropped
        );
    }
    for record in &report.decisions {
        if record.decision.verdict == Verdict::Deny {
            let request = airlock_host_apis::CapabilityRequest {
                action: record.action,
                resource: record.resource.clone(),
                details: record.details.clone(),
            };
            let shadow = if record.decision.mode == Mode::Shadow {
                "would deny (shadow mode, the call went ahead): "
            } else {
                ""
            };
            eprintln!(
                "airlock: {shadow}{}",
                super::escape_lines(&record.decision.denial(&request))
            );
        }
    }
    match (&report.output, &report.error) {
        // Raw into a pipe or file; escaped on a terminal.
        (Some(output), _) if std::io::stdout().is_terminal() => {
            println!("{}", super::escape_lines(output));
        }
        (Some(output), _) => println!("{output}"),
        (None, Some(error)) => match report.status {
            RunStatus::SkillError => eprintln!(
                "airlock: the skill returned an error: {}",
                escape(&error.message, 4096)
            ),
            _ => eprintln!("airlock: {}", escape(&error.message, 4096)),
        },
        (None, None) => {}
    }
}
