//! The `pgtenant` binary: parse the command line and hand over to `pgtenant::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    pgtenant::cli::main()
}
