//! The `vibecheck` binary: parse arguments, set up logging, dispatch.

mod commands;

fn main() -> std::process::ExitCode {
    commands::main()
}
