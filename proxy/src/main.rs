//! The `a2a-sidecar` binary: parse the command line, dispatch, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 bad configuration).

use std::process::ExitCode;

use clap::Parser;
use proxy::cmd::{Cli, Command};
use proxy::config::Config;

const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    certs::crypto::install_default_provider();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            // A policy that does not load is a configuration error, as in `check`.
            if let Err(e) = proxy::cmd::check::policy(&config) {
                eprintln!("error: {e}");
                return ExitCode::from(BAD_CONFIG);
            }
            proxy::observe::logging::init(config.telemetry.log_format);
            tracing::info!(config = ?config, "configuration loaded");
            match proxy::app::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "a2a-sidecar failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            match proxy::cmd::check::summarize(&config) {
                Ok(summary) => {
                    print!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(BAD_CONFIG)
                }
            }
        }
        Command::Explain { caller, method, path, token, jwks } => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            let token = token.zip(jwks);
            match proxy::cmd::explain::explain(
                &config,
                &caller,
                &method,
                &path,
                token.as_ref().map(|(t, j)| (t.as_str(), j.as_path())),
            ) {
                Ok((text, forwarded)) => {
                    print!("{text}");
                    println!("result   {}", if forwarded { "forwarded to the app" } else { "denied" });
                    if forwarded { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(BAD_CONFIG)
                }
            }
        }
        Command::Probe { addr } => {
            if proxy::cmd::probe::run(addr) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        #[cfg(feature = "dev")]
        Command::Demo { keep_running, env_file } => match proxy::cmd::demo::run(keep_running, env_file) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "dev")]
        Command::Dev(dev) => {
            proxy::observe::logging::init(proxy::config::LogFormat::Text);
            match proxy::cmd::dev::run(dev) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the config or prints why not (naming file and field).
fn load(path: Option<&std::path::Path>) -> Option<Config> {
    let Some(path) = path else {
        eprintln!("error: `--config` is required");
        return None;
    };
    Config::load(path).map_err(|e| eprintln!("error: {e}")).ok()
}
