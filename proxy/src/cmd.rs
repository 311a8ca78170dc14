//! Command line (DESIGN 1.1) and the commands besides `run`.

pub(crate) mod check;
#[cfg(feature = "dev")]
pub mod demo;
#[cfg(feature = "dev")]
pub(crate) mod dev;
#[cfg(feature = "dev")]
pub mod dev_idp;
pub mod explain;
pub(crate) mod probe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "dev")]
use clap::Args;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "a2a-sidecar", version = crate::VERSION, about = "SPIFFE mTLS sidecar with layered identity policy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file for the default `run` command.
    #[arg(long, global = true, env = "A2A_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Load and validate the configuration, print a summary; exit 0 valid, 2 invalid.
    Check,
    /// Which layer allows or denies a request and why, from the configuration alone; exit 0 if it would be forwarded, 1 if denied.
    Explain {
        #[arg(long)]
        caller: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long)]
        path: String,
        /// A bearer token to check against Layer 3 (with --jwks).
        #[arg(long, requires = "jwks")]
        token: Option<String>,
        /// The tenant's JWKS document (no network is used).
        #[arg(long, requires = "token")]
        jwks: Option<PathBuf>,
        /// The caller's certificate (PEM, e.g. its svid.pem): a certificate-bound
        /// token (RFC 8705) is compared with it.
        #[arg(long, requires = "token")]
        cert: Option<PathBuf>,
        /// The caller's risk level as Graph reports it (with `risk.source: graph`);
        /// without it the risk is unknown and `risk.on_unavailable` decides.
        #[arg(long)]
        risk: Option<policy::RiskLevel>,
        /// The caller's tag in Graph (with `tags.source: graph`); without it the
        /// tag is unknown and `tags.on_unavailable` decides.
        #[arg(long)]
        tag: Option<String>,
    },
    /// The operator console: OIDC sign-in, a fleet of sidecars' /mgmt over mTLS (docs/console.md).
    Console {
        #[arg(long, env = "A2A_CONSOLE_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 iff the sidecar's /readyz answers 200 (a HEALTHCHECK without curl).
    Probe {
        #[arg(long, default_value = "127.0.0.1:9090")]
        addr: SocketAddr,
    },
    /// The embedded end-to-end demo: a whole mesh on loopback; exit 0 iff every case matched.
    #[cfg(feature = "dev")]
    Demo {
        /// After the matrix, leave the whole stack up and print its addresses, the admin key and curl commands.
        #[arg(long)]
        keep_running: bool,
        /// With --keep-running: where to write the stack's addresses as `export` lines
        /// (default: demo.env in the demo's directory).
        #[arg(long, requires = "keep_running")]
        env_file: Option<std::path::PathBuf>,
    },
    /// Development tooling: dev CA, Workload API server.
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Dev(DevCommand),
}

#[cfg(feature = "dev")]
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// A dev CA for one trust domain.
    #[command(subcommand)]
    Ca(CaCommand),
    /// A SPIFFE Workload API server (gRPC on a Unix socket) that issues and rotates SVIDs: a stand-in for a SPIRE agent.
    WorkloadApi(WorkloadApiArgs),
    /// A dev Entra stand-in: OIDC discovery and JWKS over HTTP, key rotation at run time.
    Idp {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The base URL clients reach it at, which also makes the tokens' issuer
        /// (default: `http://<listen address>`); e.g. behind a port forward in a container.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print an Entra-shaped RS256 access token signed by the dev IdP key in DIR.
    Token(TokenArgs),
}

#[cfg(feature = "dev")]
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// Audience(s), comma-separated.
    #[arg(long)]
    pub aud: String,
    /// Client ID (`azp`, or `appid` with --v1).
    #[arg(long)]
    pub azp: String,
    /// Service principal object ID (`oid`); defaults to the client ID.
    #[arg(long)]
    pub oid: Option<String>,
    #[arg(long, default_value = "")]
    pub roles: String,
    #[arg(long, default_value = "10m")]
    pub ttl: String,
    #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
    pub tid: String,
    /// A v1 token (`sts.windows.net` issuer, `appid`).
    #[arg(long)]
    pub v1: bool,
    /// RFC 8705: bind the token to this certificate (PEM, the first one is
    /// used: an `svid.pem`), as `cnf.x5t#S256`.
    #[arg(long)]
    pub bind_cert: Option<PathBuf>,
}

#[cfg(feature = "dev")]
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA in DIR (ca.pem, ca_key.pem, jwt_key.pem).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
    },
    /// Issue an X509-SVID into OUT as svid.pem, svid_key.pem, svid_bundle.pem.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[cfg(feature = "dev")]
#[derive(Debug, Args)]
pub struct WorkloadApiArgs {
    /// The dev CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Unix socket path to serve on.
    #[arg(long)]
    pub socket: PathBuf,
    /// The SPIFFE ID every caller receives.
    #[arg(long)]
    pub id: String,
    /// SVID lifetime; a new SVID is pushed at half of it.
    #[arg(long, default_value = "1m")]
    pub ttl: String,
    /// Other dev CA directories whose bundles are sent as federated bundles.
    #[arg(long = "federate")]
    pub federate: Vec<PathBuf>,
}

/// Exit code for a configuration that does not load (`check`, `run`, `explain`).
const BAD_CONFIG: u8 = 2;

/// Runs the command and maps its outcome to the exit code: 0 ok, 1 a
/// runtime failure (or a denied `explain`, a failed demo case), 2 a bad
/// configuration.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            // A policy that does not load is a configuration error, as in `check`.
            if let Err(e) = check::policy(&config) {
                eprintln!("error: {e}");
                return ExitCode::from(BAD_CONFIG);
            }
            crate::observe::logging::init(config.telemetry.log_format);
            tracing::info!(config = ?config, "configuration loaded");
            match crate::app::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "a2a-sidecar failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            match check::summarize(&config) {
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
        Command::Explain { caller, method, path, token, jwks, cert, risk, tag } => {
            let Some(config) = load(cli.config.as_deref()) else { return ExitCode::from(BAD_CONFIG) };
            let question = explain::Question {
                caller: &caller,
                method: &method,
                path: &path,
                token: token.as_deref(),
                jwks: jwks.as_deref(),
                cert: cert.as_deref(),
                graph_risk: risk,
                graph_tag: tag,
            };
            match explain::explain(&config, &question) {
                Ok(explanation) => {
                    print!("{}", explanation.text);
                    let forwarded = explanation.verdict.forwarded();
                    println!("result   {}", if forwarded { "forwarded to the app" } else { "denied" });
                    if forwarded { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(BAD_CONFIG)
                }
            }
        }
        Command::Console { config } => {
            let config = match crate::config::ConsoleConfig::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(BAD_CONFIG);
                }
            };
            crate::observe::logging::init(crate::config::LogFormat::Json);
            match crate::console::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "a2a-sidecar console failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe { addr } => {
            if probe::run(addr) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        #[cfg(feature = "dev")]
        Command::Demo { keep_running, env_file } => match demo::run(keep_running, env_file) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "dev")]
        Command::Dev(dev) => {
            crate::observe::logging::init(crate::config::LogFormat::Text);
            match dev::run(dev) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    if e.downcast_ref::<dev::BadArgument>().is_some() {
                        ExitCode::from(BAD_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
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
