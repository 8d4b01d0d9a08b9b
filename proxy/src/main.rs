//! The `portico` command: parse arguments, then run, check or print.

fn main() {
    std::process::exit(portico::cli::main());
}
