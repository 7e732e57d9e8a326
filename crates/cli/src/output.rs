//! Writing to standard output without panicking when its reader goes away. `println!` panics on a closed pipe
//! (`vibecheck generate ... | head -c 5` exited 101); `outln!` ends the process quietly instead: the
//! reader has all it wanted, and there is no one left to tell.

use std::io::Write;

/// `println!` that exits quietly (status 0) when stdout is a closed pipe, and with status 1 and a message on any
/// other write error.
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        gone(&e);
    }
}

/// Ends the process for a failed write to stdout: quietly when the reader closed the pipe.
fn gone(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// Whether an error comes from writing to a reader that went away (a closed pipe).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
