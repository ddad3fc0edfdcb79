//! `airlock policy`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{Failure, exit};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a directory of Cedar policies against Airlock's schema, together
    /// with the built-in base policies. Prints each problem as
    /// `file:line:column: message`; exits 2 if there is any.
    Validate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

pub fn run(command: PolicyCommand) -> Result<u8, Failure> {
    match command {
        PolicyCommand::Validate { dir } => {
            if !dir.is_dir() {
                return Err(Failure::usage(format!(
                    "`{}` is not a directory of policies",
                    dir.display()
                )));
            }
            match airlock_policy::Policies::load(&[dir.as_path()]) {
                Ok(policies) => {
                    println!(
                        "{}: {} policies are valid (including the base policies)",
                        dir.display(),
                        policies.ids().len()
                    );
                    Ok(exit::OK)
                }
                Err(airlock_policy::Error::Invalid(problems)) => {
                    for problem in &problems {
                        println!(
                            "{}",
                            dir.join(&problem.file).display().to_string()
                                + &problem.to_string()[problem.file.len()..]
                        );
                    }
                    eprintln!(
                        "airlock: {} problem{} in `{}`",
                        problems.len(),
                        if problems.len() == 1 { "" } else { "s" },
                        dir.display()
                    );
                    Ok(exit::USAGE)
                }
                Err(e) => Err(Failure::usage(e.to_string())),
            }
        }
    }
}
