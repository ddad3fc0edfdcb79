//! `airlock`: see `airlock --help`.

fn main() -> std::process::ExitCode {
    airlock_runtime::cli::main()
}
