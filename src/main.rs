//! The `lockstep` binary: parses the command line and dispatches to
//! `cli/<command>.rs`.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args.cmd) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
