//! `airlock identity`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{Failure, exit};
use crate::Config;
use crate::identity::Issuer;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Retire the signing key and start signing with a new one. The old key
    /// stays in the JWKS until every token it signed has expired
    /// (`identity.max_token_ttl`). Prints the new key id.
    Rotate,
    /// Print the JWKS: the public keys downstream services verify with.
    Jwks,
}

pub(crate) fn need_data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
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
