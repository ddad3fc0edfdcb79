//! `airlock admit`, `approve`, `quarantine`, `revoke`, `skills`, `inspect`,
//! `sign` and `signing-key`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_host_apis::{Trust, escape};
use base64::Engine as _;
use clap::{Args, Subcommand};

use super::{Failure, exit, output_failed};
use crate::Config;
use crate::admission::{SkillRecord, State, Submission, now_ms, parse_signature};
use crate::digest::SkillDigest;
use crate::engine::EngineConfig;
use crate::node::{Node, NodeOptions};

/// Who is acting: `--by`, else `AIRLOCK_USER`, else the login name.
#[derive(Debug, Args)]
pub struct Actor {
    /// Who is acting (recorded; a reviewer may not approve what they
    /// submitted). Defaults to $AIRLOCK_USER, then $USER.
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
}

impl Actor {
    fn name(&self) -> Result<String, Failure> {
        self.by
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(local_user)
            .ok_or_else(|| Failure::usage("who is acting? pass --by NAME or set AIRLOCK_USER"))
    }
}

/// `AIRLOCK_USER`, else the login name.
pub(super) fn local_user() -> Option<String> {
    std::env::var("AIRLOCK_USER")
        .ok()
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty())
}

/// Inspect a component and admit it to the skill store as `pending`.
///
/// Prints the digest and what the skill can request. Refused, with the
/// reason, when the engine would refuse it (not a component, too large, a
/// forbidden import or wasm feature, exports that do not fit the skill
/// world) or its signature does not satisfy the operator.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    #[arg(value_name = "SKILL.wasm")]
    skill: PathBuf,
    /// The skill's name (what policies and storage namespaces see).
    #[arg(long)]
    name: String,
    /// The agent that generated the skill.
    #[arg(long, value_name = "ID")]
    agent: String,
    /// How far that agent is trusted: untrusted, low, medium, high.
    #[arg(long, value_name = "LEVEL")]
    trust: Trust,
    /// The tenant the skill belongs to (the API's keys name theirs).
    #[arg(long, value_name = "NAME", default_value = crate::admission::DEFAULT_TENANT)]
    tenant: String,
    /// What the skill is for.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// A JSON Schema for the skill's input.
    #[arg(long, value_name = "FILE")]
    input_schema: Option<PathBuf>,
    /// A detached Ed25519 signature over the skill's digest (64 bytes, raw
    /// or base64), from `airlock sign`.
    #[arg(long, value_name = "FILE")]
    signature: Option<PathBuf>,
    #[command(flatten)]
    actor: Actor,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a signing key (0600) and print its public key, for
    /// `admission.trusted_keys`.
    New {
        #[arg(value_name = "FILE")]
        path: PathBuf,
    },
    /// Print the public key of a signing key.
    Public {
        #[arg(value_name = "FILE")]
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    Admit(Box<AdmitArgs>),
    /// Approve a skill to run, until it expires. The reviewer may be neither
    /// its submitter nor the agent that generated it.
    Approve {
        /// The digest, or a unique prefix of at least 8 characters.
        #[arg(value_name = "DIGEST")]
        digest: String,
        /// How long the approval lasts [default: admission.default_expiry].
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        actor: Actor,
    },
    /// Hold a skill for review: its running instances stop, and it does not
    /// run again until approved.
    Quarantine {
        #[arg(value_name = "DIGEST")]
        digest: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        actor: Actor,
    },
    /// End a skill for good: its running instances stop.
    Revoke {
        #[arg(value_name = "DIGEST")]
        digest: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        actor: Actor,
    },
    /// List admitted skills: state, age, expiry, capabilities.
    Skills {
        /// Only skills in this state.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one skill, and its history.
    Inspect {
        #[arg(value_name = "DIGEST")]
        digest: String,
        #[arg(long)]
        json: bool,
    },
    /// Sign a skill's digest with a signing key; prints the signature
    /// (base64) for `airlock admit --signature`.
    Sign {
        #[arg(value_name = "SKILL.wasm")]
        skill: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Ed25519 keys for signing skills.
    #[command(subcommand)]
    SigningKey(KeyCommand),
}

async fn node(config: Config, data_dir: Option<PathBuf>) -> Result<Arc<Node>, Failure> {
    let data_dir = data_dir.ok_or_else(|| {
        Failure::usage(
            "the skill store needs a data directory: pass --data-dir or set AIRLOCK_HOME",
        )
    })?;
    let cache = Some(data_dir.join("cache"));
    let options = NodeOptions {
        engine: EngineConfig {
            max_instances: 4,
            cache_dir: cache,
            ..EngineConfig::default()
        },
        data_dir: Some(data_dir),
        registry: crate::cluster::registry(&config).await?,
        ..NodeOptions::default()
    };
    Ok(Node::new(config, options)?)
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read `{}`: {e}", path.display())))
}

fn ago(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs.max(1)))
    )
}

fn until(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms <= now_ms() => format!("ended {}", ago(ms)),
        Some(ms) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs((ms - now_ms()) / 1000))
        ),
    }
}

fn print_record(record: &SkillRecord) {
    let field = |k: &str, v: &str| println!("{k:<13} {}", escape(v, 4096));
    field("digest", &record.digest.to_hex());
    field("name", &record.name);
    if let Some(d) = &record.description {
        field("description", d);
    }
    field("state", record.state.as_str());
    if let Some(r) = &record.reason {
        field("reason", r);
    }
    field(
        "agent",
        &format!("{} (trust {})", record.agent, record.trust),
    );
    field(
        "submitted",
        &format!("by {}, {}", record.submitter, ago(record.admitted_ms)),
    );
    if let Some(reviewer) = &record.reviewer {
        field(
            "approved",
            &format!(
                "by {reviewer}, {}",
                ago(record.approved_ms.unwrap_or_default())
            ),
        );
        field("expires", &until(record.expires_ms));
    }
    field("size", &format!("{} bytes", record.size));
    field("capabilities", &capabilities(record));
    field("signed by", record.signed_by.as_deref().unwrap_or("-"));
}

fn skills_table(out: &mut impl std::io::Write, records: &[SkillRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12}  {:<11}  {:<20}  {:<14}  {:<22}  CAPABILITIES",
        "DIGEST", "STATE", "NAME", "ADMITTED", "EXPIRES"
    )?;
    for r in records {
        let expires = match r.state {
            State::Approved | State::Expired => until(r.expires_ms),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<12}  {:<11}  {:<20}  {:<14}  {:<22}  {}",
            r.digest.short(),
            r.state.as_str(),
            escape(&r.name, 20),
            ago(r.admitted_ms),
            expires,
            capabilities(r)
        )?;
    }
    Ok(())
}

fn held(record: &SkillRecord) {
    println!(
        "{} `{}` ({}): its running instances are stopped",
        record.state,
        escape(&record.name, 200),
        record.digest.short()
    );
}

fn capabilities(record: &SkillRecord) -> String {
    if record.capabilities.is_empty() {
        "none (compute only)".into()
    } else {
        record.capabilities.join(", ")
    }
}

fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("airlock: could not render JSON: {e}"),
    }
}

pub async fn run(
    command: AdminCommand,
    config: Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    match command {
        AdminCommand::SigningKey(command) => return signing_key(command),
        AdminCommand::Sign { skill, key } => {
            let seed = read_key(&key)?;
            let digest = SkillDigest::of(&read(&skill)?);
            let signature = {
                use ed25519_dalek::Signer;
                ed25519_dalek::SigningKey::from_bytes(&seed).sign(digest.as_bytes())
            };
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
            );
            return Ok(exit::OK);
        }
        _ => {}
    }
    let node = node(config, data_dir).await?;
    let store = node.skills()?.clone();
    match command {
        AdminCommand::Admit(args) => {
            let args = *args;
            let bytes = read(&args.skill)?;
            let input_schema = match &args.input_schema {
                Some(path) => Some(serde_json::from_slice(&read(path)?).map_err(|e| {
                    Failure::usage(format!("`{}` is not JSON: {e}", path.display()))
                })?),
                None => None,
            };
            let signature = match &args.signature {
                Some(path) => Some(parse_signature(&read(path)?)?),
                None => None,
            };
            let submission = Submission {
                name: args.name,
                description: args.description,
                agent: args.agent,
                trust: args.trust,
                submitter: args.actor.name()?,
                tenant: args.tenant,
                input_schema,
                signature,
            };
            let (record, fresh) = node.admit(bytes, submission).await?;
            if args.json {
                json(&record);
            } else {
                if !fresh {
                    eprintln!("airlock: already admitted; the existing record is unchanged");
                }
                println!("{}", record.digest);
                println!(
                    "{} {} ({} bytes): can request {}",
                    escape(&record.name, 200),
                    record.state,
                    record.size,
                    capabilities(&record)
                );
            }
        }
        AdminCommand::Approve {
            digest,
            expires_in,
            actor,
        } => {
            let record = node
                .approve(store.resolve(&digest).await?, &actor.name()?, expires_in)
                .await?;
            println!(
                "approved `{}` ({}) until it expires {}",
                escape(&record.name, 200),
                record.digest.short(),
                until(record.expires_ms)
            );
        }
        AdminCommand::Quarantine {
            digest,
            reason,
            actor,
        } => {
            let record = node
                .quarantine(store.resolve(&digest).await?, &actor.name()?, &reason)
                .await?;
            held(&record);
        }
        AdminCommand::Revoke {
            digest,
            reason,
            actor,
        } => {
            let record = node
                .revoke(store.resolve(&digest).await?, &actor.name()?, &reason)
                .await?;
            held(&record);
        }
        AdminCommand::Skills {
            state,
            json: as_json,
        } => {
            let mut records = store.list().await?;
            if let Some(state) = &state {
                records.retain(|r| r.state.as_str() == state.as_str());
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = if as_json {
                serde_json::to_writer_pretty(&mut out, &records)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
            } else {
                skills_table(&mut out, &records)
            };
            if let Err(e) = written.and_then(|()| out.flush()) {
                return output_failed(e);
            }
        }
        AdminCommand::Inspect {
            digest,
            json: as_json,
        } => {
            let digest = store.resolve(&digest).await?;
            let record = store
                .get(&digest)
                .await?
                .ok_or_else(|| Failure::usage(format!("no admitted skill has digest {digest}")))?;
            let history = store.history(&digest).await?;
            if as_json {
                json(&serde_json::json!({ "skill": record, "history": history }));
            } else {
                print_record(&record);
                println!("imports");
                for import in &record.imports {
                    println!("  {}", escape(import, 200));
                }
                println!("history");
                for t in &history {
                    println!(
                        "  {:<14} {} -> {} by {}{}",
                        ago(t.at_ms),
                        t.from.as_deref().unwrap_or("-"),
                        t.to,
                        escape(&t.actor, 100),
                        t.reason
                            .as_deref()
                            .map(|r| format!(": {}", escape(r, 400)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        AdminCommand::Sign { .. } | AdminCommand::SigningKey(_) => {}
    }
    Ok(exit::OK)
}

fn read_key(path: &Path) -> Result<[u8; 32], Failure> {
    let text = String::from_utf8(read(path)?).unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Failure::usage(format!(
                "`{}` is not a signing key (from `airlock signing-key new`)",
                path.display()
            ))
        })
}

fn public(seed: &[u8; 32]) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
}

fn signing_key(command: KeyCommand) -> Result<u8, Failure> {
    match command {
        KeyCommand::New { path } => {
            if path.exists() {
                return Err(Failure::usage(format!(
                    "`{}` exists; not overwriting a key",
                    path.display()
                )));
            }
            let seed: [u8; 32] = rand::random();
            let text = base64::engine::general_purpose::STANDARD.encode(seed);
            crate::fsutil::write_private(&path, text.as_bytes())?;
            println!("{}", public(&seed));
        }
        KeyCommand::Public { path } => println!("{}", public(&read_key(&path)?)),
    }
    Ok(exit::OK)
}
