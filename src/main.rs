//! The `lockstep` binary: parses the command line and dispatches to
//! `cli/<command>.rs`.

mod cli;

use clap::Parser;

fn main() {
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
