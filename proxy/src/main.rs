//! The `a2a-sidecar` binary: parse the command line and run it (see
//! [`proxy::cmd::run`] for the commands and exit codes).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    certs::crypto::install_default_provider();
    proxy::cmd::run(proxy::cmd::Cli::parse())
}
