//! The `lockstep` binary: parses the command line and dispatches to
//! `cli/<command>.rs`.

mod cli;

use clap::Parser;

fn main() {
    // Output piped into a reader that stops early (`| head`) ends the
    // process quietly, as other command-line tools do, instead of a panic
    // in println! (Rust starts with SIGPIPE ignored).
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread
    // starts; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    if let Some(path) = &args.tolerances {
        match lockstep::verify::tolerances::apply_overrides(path) {
            Ok(list) => {
                for o in list {
                    eprintln!(
                        "tolerance override ({}): {} = {:e} (committed {:e}): {}",
                        o.file, o.name, o.value, o.committed, o.reason
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Err(e) = cli::run(args.cmd) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
