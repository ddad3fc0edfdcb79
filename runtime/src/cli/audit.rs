//! `airlock audit`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{Failure, exit, output_failed};
use crate::Config;
use crate::audit::{Filter, Record, field, verify};
use crate::identity::Issuer;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain, its signed checkpoints and its head
    /// file. Prints the number of records that verify, or the first bad
    /// record and what is wrong with it (exit 1).
    Verify {
        /// The log (default: `<data-dir>/audit/audit.jsonl`).
        #[arg(value_name = "PATH", conflicts_with = "cluster")]
        path: Option<PathBuf>,
        /// Verify every node's records in the cluster's audit stream, each
        /// chain with the keys its node published (needs `[cluster]`).
        #[arg(long)]
        cluster: bool,
    },
    /// Print the log as OCSF events (API Activity, class 6003), one JSON
    /// object per line, for a SIEM. Checkpoints are left out.
    Export {
        /// The log (default: `<data-dir>/audit/audit.jsonl`).
        #[arg(long, value_name = "PATH", conflicts_with = "cluster")]
        path: Option<PathBuf>,
        /// Export every node's records from the cluster's audit stream, each
        /// node's chain verified first (needs `[cluster]`).
        #[arg(long)]
        cluster: bool,
        /// The export format.
        #[arg(long, value_enum, default_value = "ocsf")]
        format: ExportFormat,
    },
    /// Print the log's records, one line each, escaped for a terminal.
    Show {
        /// The log (default: `<data-dir>/audit/audit.jsonl`).
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
        /// Only records of this skill (by name).
        #[arg(long)]
        skill: Option<String>,
        /// Only records of this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only records of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only call records with this verdict (`allow` or `deny`).
        #[arg(long)]
        decision: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Open Cybersecurity Schema Framework 1.3, JSON lines.
    Ocsf,
}

fn unreadable(path: &Path, e: &std::io::Error) -> Failure {
    Failure::usage(format!("cannot read `{}`: {e}", path.display()))
}

fn log_path(path: Option<PathBuf>, data_dir: Option<&PathBuf>) -> Result<PathBuf, Failure> {
    path.or_else(|| data_dir.map(|d| d.join("audit").join("audit.jsonl")))
        .ok_or_else(|| Failure::usage("no audit log: pass a path, --data-dir or set AIRLOCK_HOME"))
}

pub async fn run(
    command: AuditCommand,
    config: &Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    match command {
        AuditCommand::Verify { cluster: true, .. } => {
            let settings = config.cluster.as_ref().ok_or_else(|| {
                Failure::usage("--cluster needs a [cluster] section in the configuration")
            })?;
            let cluster = crate::cluster::Cluster::connect(settings).await?;
            let nodes = cluster.verify_audit().await?;
            if nodes.is_empty() {
                println!("no node has published its keys to the cluster yet");
            }
            let mut code = exit::OK;
            for node in nodes {
                let found = node.verification;
                match found.problem {
                    None => println!("node {}: {} records verify", node.node, found.records),
                    Some((line, why)) => {
                        println!(
                            "node {}: record {line}: {why} ({} records before it verify)",
                            node.node, found.records
                        );
                        code = exit::SKILL_ERROR;
                    }
                }
            }
            Ok(code)
        }
        AuditCommand::Verify { path, .. } => {
            let path = log_path(path, data_dir.as_ref())?;
            let data_dir = data_dir.ok_or_else(|| {
                Failure::usage("verifying needs the runtime's keys: pass --data-dir")
            })?;
            let issuer = Issuer::open(&data_dir, config.identity.clone())?;
            let found = verify(&path, issuer.keys())?;
            match found.problem {
                None => {
                    println!("{}: {} records verify", path.display(), found.records);
                    Ok(exit::OK)
                }
                Some((line, why)) => {
                    println!(
                        "{}: line {line}: {why} ({} records before it verify)",
                        path.display(),
                        found.records
                    );
                    Ok(exit::SKILL_ERROR)
                }
            }
        }
        AuditCommand::Export {
            cluster: true,
            format,
            ..
        } => {
            let ExportFormat::Ocsf = format;
            let settings = config.cluster.as_ref().ok_or_else(|| {
                Failure::usage("--cluster needs a [cluster] section in the configuration")
            })?;
            let cluster = crate::cluster::Cluster::connect(settings).await?;
            let nodes = cluster.verify_audit().await?;
            for node in &nodes {
                if let Some((line, why)) = &node.verification.problem {
                    return Err(Failure::usage(format!(
                        "node {}: record {line}: {why}; nothing exported (`airlock audit verify --cluster`)",
                        node.node
                    )));
                }
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for node in nodes {
                // The records verified, not any shipped since.
                let mut left = node.verification.records;
                let mut written = Ok(());
                cluster
                    .each_record(&node.node, |line| {
                        if left == 0 {
                            return false;
                        }
                        left -= 1;
                        if let Ok(record) = serde_json::from_slice::<Record>(line)
                            && let Some(mut event) = crate::audit::ocsf::event(&record)
                        {
                            // Which node's chain the record comes from.
                            if let Some(map) = event.as_object_mut() {
                                map.insert("airlock_node".into(), node.node.clone().into());
                            }
                            written = writeln!(out, "{event}");
                        }
                        written.is_ok()
                    })
                    .await?;
                if let Err(e) = written {
                    return output_failed(e);
                }
            }
            out.flush().map_or_else(output_failed, |()| Ok(exit::OK))
        }
        AuditCommand::Export { path, format, .. } => {
            let ExportFormat::Ocsf = format;
            let path = log_path(path, data_dir.as_ref())?;
            let mut lines = crate::audit::read_lines(&path)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some(raw) = lines.next_line().map_err(|e| unreadable(&path, &e))? {
                let Some(record) = raw.record() else {
                    return Err(Failure::usage(format!(
                        "line {} of `{}` is not a record; run `airlock audit verify`",
                        lines.number(),
                        path.display()
                    )));
                };
                if let Some(event) = crate::audit::ocsf::event(&record)
                    && let Err(e) = writeln!(out, "{event}")
                {
                    return output_failed(e);
                }
            }
            out.flush().map_or_else(output_failed, |()| Ok(exit::OK))
        }
        AuditCommand::Show {
            path,
            skill,
            instance,
            task,
            decision,
        } => {
            let filter = Filter {
                skill,
                instance,
                task,
                decision,
            };
            let path = log_path(path, data_dir.as_ref())?;
            let mut lines = crate::audit::read_lines(&path)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some(raw) = lines.next_line().map_err(|e| unreadable(&path, &e))? {
                let Some(record) = raw.record() else {
                    if let Err(e) = writeln!(out, "(a line that is not a record)") {
                        return output_failed(e);
                    }
                    continue;
                };
                let e = &record.event;
                let kind = field(e, &["kind"]);
                if !filter.matches(e) {
                    continue;
                }
                let detail = match kind {
                    "call" => format!(
                        "{} {} `{}` {} {}",
                        field(e, &["instance"]),
                        field(e, &["action"]),
                        field(e, &["resource", "name"]).to_string()
                            + field(e, &["resource", "namespace"])
                            + field(e, &["resource", "key"]),
                        field(e, &["decision", "verdict"]),
                        e.get("decision")
                            .and_then(|d| d.get("policies"))
                            .map(|p| p.to_string())
                            .unwrap_or_default()
                    ),
                    "run.start" => format!(
                        "{} skill `{}` agent `{}` task `{}`",
                        field(e, &["instance"]),
                        field(e, &["skill"]),
                        field(e, &["agent"]),
                        field(e, &["task_id"])
                    ),
                    "run.end" => format!("{} {}", field(e, &["instance"]), field(e, &["status"])),
                    "call.repeated" => format!(
                        "{} {} denied {} more times",
                        field(e, &["instance"]),
                        field(e, &["action"]),
                        e.get("suppressed")
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ),
                    k if k.starts_with("skill.") => format!(
                        "skill `{}` {} {} -> {} {}",
                        field(e, &["skill"]),
                        field(e, &["digest"]),
                        field(e, &["from"]),
                        field(e, &["to"]),
                        field(e, &["reason"])
                    ),
                    _ => String::new(),
                };
                // RFC 3339 ends at year 9999; a forged time past it is shown
                // as it is.
                let time = if record.time_ms < 253_402_300_800_000 {
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.time_ms),
                    )
                    .to_string()
                } else {
                    format!("{}ms", record.time_ms)
                };
                // Guest strings reach the terminal escaped.
                if let Err(e) = writeln!(
                    out,
                    "{time} #{} {} {}",
                    record.seq,
                    airlock_host_apis::escape(kind, 60),
                    airlock_host_apis::escape(&detail, 400)
                ) {
                    return output_failed(e);
                }
            }
            out.flush().map_or_else(output_failed, |()| Ok(exit::OK))
        }
    }
}
