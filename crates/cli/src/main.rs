//! The `vibecheck` binary: parse arguments, set up logging, dispatch.

#[macro_use]
mod output;
mod args;
mod commands;
mod cost;
mod deploy;
mod engines;
mod judging;
mod quality;
mod runs;

fn main() -> std::process::ExitCode {
    quiet_candle_workers();
    commands::main()
}

/// candle's element-wise CPU operations hand work to a pool whose workers spin 25 000 times after each
/// operation before they sleep; on a machine with few cores that spinning takes a core from the matrix kernels
/// that run next (a 128-token prefill measured 1.2–1.4× faster with the workers sleeping at once, decoding
/// unchanged). Unless the user set `CANDLE_BARRIER_POOL_SPIN_LIMIT`, the workers sleep at once. Set here, before
/// any thread starts, because candle reads it when its pool starts.
fn quiet_candle_workers() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "0");
    }
}
