//! `a2a-sidecar dev ...`: the dev CA and the Workload API stand-in.

use std::path::Path;
use std::sync::Arc;

use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig, write_svid_files};
use certs::{SpiffeId, TrustDomain};

use crate::cmd::dev_idp::{DevIdp, TokenSpec};
use crate::cmd::{CaCommand, DevCommand, TokenArgs, WorkloadApiArgs};
use crate::config::parse_duration;

/// A bad command-line argument (exit 2, like a bad configuration), as
/// opposed to a failure while running (exit 1).
#[derive(Debug)]
pub struct BadArgument(String);

impl std::fmt::Display for BadArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgument {}

fn bad(message: String) -> anyhow::Error {
    anyhow::Error::new(BadArgument(message))
}

fn duration(flag: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    parse_duration(text).map_err(|e| bad(format!("{flag} `{text}`: {e}")))
}

fn spiffe_id(text: &str) -> anyhow::Result<SpiffeId> {
    text.parse().map_err(|e| bad(format!("--id `{text}`: {e}")))
}

pub fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Ca(CaCommand::Init { dir, trust_domain }) => {
            let td =
                TrustDomain::new(&trust_domain).map_err(|e| bad(format!("--trust-domain `{trust_domain}`: {e}")))?;
            DevCa::init(&dir, &td)?;
            println!("dev CA for {td} written to {}", dir.display());
            Ok(())
        }
        DevCommand::Ca(CaCommand::Issue { dir, id, out, ttl }) => issue(&dir, &id, &out, &ttl),
        DevCommand::WorkloadApi(args) => workload_api(args),
        DevCommand::Idp { dir, listen, url } => idp(&dir, listen, url),
        DevCommand::Token(args) => token(args),
    }
}

fn idp(dir: &Path, listen: std::net::SocketAddr, url: Option<String>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let idp = DevIdp::open(dir)?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let url = url.unwrap_or_else(|| format!("http://{addr}"));
        idp.set_url(url.trim_end_matches('/'))?;
        println!("dev idp on {addr}, as {url} (discovery: {url}/<tenant>/v2.0/.well-known/openid-configuration)");
        tokio::select! {
            () = idp.serve(listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let idp = DevIdp::open(&args.dir)?;
    let spec = TokenSpec {
        tenant: args.tid,
        audiences: args.aud.split(',').map(str::to_owned).collect(),
        oid: args.oid.unwrap_or_else(|| args.azp.clone()),
        client_id: args.azp,
        roles: args.roles.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
        ttl: duration("--ttl", &args.ttl)?,
        v1: args.v1,
        cnf_x5t: args
            .bind_cert
            .as_deref()
            .map(|path| {
                crate::admin::explain::cert_thumbprint(path).map_err(|e| bad(e.replace("--cert", "--bind-cert")))
            })
            .transpose()?,
    };
    println!("{}", idp.token(&spec)?);
    Ok(())
}

fn issue(dir: &Path, id: &str, out: &Path, ttl: &str) -> anyhow::Result<()> {
    let ca = DevCa::load(dir)?;
    let id = spiffe_id(id)?;
    if id.trust_domain() != *ca.trust_domain() {
        return Err(bad(format!("--id `{id}` is not in the CA's trust domain `{}`", ca.trust_domain())));
    }
    let ttl = duration("--ttl", ttl)?;
    let svid = ca.issue(&id, ttl)?;
    write_svid_files(out, &svid, ca.bundle_pem())?;
    println!("issued {id} (serial {}) into {}", svid.serial(), out.display());
    Ok(())
}

fn workload_api(args: WorkloadApiArgs) -> anyhow::Result<()> {
    let ca = Arc::new(DevCa::load(&args.dir)?);
    let id = spiffe_id(&args.id)?;
    let ttl = duration("--ttl", &args.ttl)?;
    let federated = args.federate.iter().map(|d| DevCa::load(d).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
    let config = WorkloadApiServerConfig { ca, id: id.clone(), ttl, federated };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let server = WorkloadApiServer::start(&args.socket, config).await?;
        println!("workload api for {id} on {} (svid ttl {ttl:?})", server.endpoint());
        tokio::signal::ctrl_c().await?;
        server.stop().await;
        Ok(())
    })
}
