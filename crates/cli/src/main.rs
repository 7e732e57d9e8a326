//! The `vibecheck` binary: parse arguments, set up logging, dispatch.

mod commands;
mod judging;
mod quality;
mod runs;

fn main() -> std::process::ExitCode {
    commands::main()
}
