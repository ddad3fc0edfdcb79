//! `airlock identity` and `airlock serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Failure, exit};
use crate::Config;
use crate::identity::Issuer;
use crate::node::{Node, NodeOptions};

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Retire the signing key and start signing with a new one. The old key
    /// stays in the JWKS until every token it signed has expired
    /// (`identity.max_token_ttl`). Prints the new key id.
    Rotate,
    /// Print the JWKS: the public keys downstream services verify with.
    Jwks,
}

fn need_data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
    data_dir.ok_or_else(|| Failure::usage("no data directory: pass --data-dir or set AIRLOCK_HOME"))
}

pub fn run(
    command: IdentityCommand,
    config: &Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    let data_dir = need_data_dir(data_dir)?;
    match command {
        IdentityCommand::Rotate => {
            let kid = crate::identity::rotate(&data_dir, &config.identity)?;
            println!("{kid}");
        }
        IdentityCommand::Jwks => {
            let issuer = Issuer::open(&data_dir, config.identity.clone())?;
            println!("{:#}", issuer.jwks());
        }
    }
    Ok(exit::OK)
}

/// `airlock serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8480", value_name = "ADDR")]
    listen: SocketAddr,
}

/// Serve the verification endpoints of this runtime's identity tokens:
/// `/.well-known/openid-configuration`, `/.well-known/jwks.json` and
/// `/oauth2/introspect` (RFC 7662).
pub async fn serve(
    args: ServeArgs,
    config: Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    let data_dir = need_data_dir(data_dir)?;
    let node = Node::new(
        config,
        NodeOptions {
            data_dir: Some(data_dir),
            ..NodeOptions::default()
        },
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!(
        "airlock: serving identity verification on http://{} (issuer {})",
        args.listen,
        node.issuer().config().issuer
    );
    axum::serve(listener, node.identity_router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::usage(format!("serving: {e}")))?;
    Ok(exit::OK)
}
