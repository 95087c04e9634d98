//! `kiln-measure -- PROGRAM ARGS...`: the helper `kiln worker` runs each
//! action's command through, so that the command's resource usage can be
//! read for that action alone (see `kiln::client::worker::measure_action`).
//! A binary of its own, not a `kiln` subcommand, because it starts once per
//! action: it is a fraction of kiln's size and starts in about a millisecond.

//!
//! `kiln-measure --resident` is the init of a worker slot's resident
//! sandbox instead (see `kiln::client::worker::resident_helper`).

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--resident") {
        std::process::exit(kiln::client::worker::resident_helper());
    }
    std::process::exit(kiln::client::worker::measure_action(args));
}
