//! The `airlock` CLI, built inside the test package so tests can run it.

fn main() -> std::process::ExitCode {
    airlock_runtime::cli::main()
}
