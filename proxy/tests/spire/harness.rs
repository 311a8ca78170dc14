//! The real SPIRE (server and agent, built by `tools/spire/build.sh`) and
//! real sidecar processes, each started by a test in its own temp dir on
//! loopback and Unix sockets, and killed when dropped.
//!
//! The commands and configuration files here are the ones
//! `docs/spire.md` ("SPIRE on one machine") shows; `docs.rs` checks that
//! the two have not drifted apart.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where `tools/spire/build.sh` put the binaries (built on first use).
pub fn spire_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::var_os("A2A_SPIRE_BIN").map_or_else(|| root.join("target/spire"), PathBuf::from);
        let out = Command::new("bash").arg(root.join("tools/spire/build.sh")).env("A2A_SPIRE_BIN", &dir).output();
        let out = out.unwrap_or_else(|e| panic!("tools/spire/build.sh did not run: {e}"));
        assert!(
            out.status.success(),
            "SPIRE could not be built (no stand-in is used):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    dir.join(name)
}

/// Runs `spire-<kind> <args>` to completion; (success, stdout + stderr).
fn spire(kind: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(spire_bin(&format!("spire-{kind}"))).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub fn poll<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on 127.0.0.1 (SPIRE's server needs one in its config).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process killed (and reaped) when dropped, its output kept.
pub struct Process {
    child: Child,
    pub output: Arc<Mutex<String>>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        Self { child, output }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The first output line containing `needle` (waits up to 30 s; fails
    /// at once, with what it printed, if the process exits first).
    pub fn line_with(&mut self, needle: &str) -> String {
        poll(Duration::from_secs(30), needle, || {
            let found = self.output().lines().find(|l| l.contains(needle)).map(str::to_owned);
            if found.is_none() && self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("exited before printing {needle:?}:\n{}", self.output());
            }
            found
        })
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `server.conf`: loopback, a sqlite datastore and keys in memory, join-token
/// node attestation, X509-SVIDs of `svid_ttl`.
pub fn server_conf(port: u16, socket: &Path, trust_domain: &str, data: &Path, (x509, jwt): (&str, &str)) -> String {
    format!(
        r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    log_level = "WARN"
    default_x509_svid_ttl = "{x509}"
    default_jwt_svid_ttl = "{jwt}"
    jwt_key_type = "rsa-2048"
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
        socket = socket.display(),
        data = data.display(),
    )
}

/// `agent.conf`: the server on loopback, its bundle to bootstrap, the agent's
/// keys (and so its SVID) kept on disk across restarts, the `unix` workload
/// attestor with `discover_workload_path` (for `unix:path` selectors).
pub fn agent_conf(data: &Path, port: u16, socket: &Path, bundle: &Path, trust_domain: &str) -> String {
    format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{trust_domain}"
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = true
        }}
    }}
}}
"#,
        data = data.display(),
        socket = socket.display(),
        bundle = bundle.display(),
    )
}

/// `spire-server run` / `spire-agent run` (the agent with its join token).
pub fn run_args(config: &Path, join_token: Option<&str>) -> Vec<String> {
    let mut args = vec!["run".to_owned(), "-config".to_owned(), config.display().to_string()];
    if let Some(token) = join_token {
        args.extend(["-joinToken".to_owned(), token.to_owned()]);
    }
    args
}

/// `spire-server bundle show`: the trust bundle as `pem` or `spiffe` JSON.
pub fn bundle_args(format: &str) -> Vec<String> {
    ["bundle", "show", "-format", format].map(String::from).to_vec()
}

/// `spire-server token generate`: a join token for the agent known as `agent_id`.
pub fn token_args(agent_id: &str) -> Vec<String> {
    ["token", "generate", "-spiffeID", agent_id].map(String::from).to_vec()
}

/// `spire-server entry create`: `id` for the process run from `binary`, under `parent`.
pub fn entry_args(parent: &str, id: &str, binary: &Path) -> Vec<String> {
    let selector = format!("unix:path:{}", binary.display());
    ["entry", "create", "-parentID", parent, "-spiffeID", id, "-selector", &selector].map(String::from).to_vec()
}

/// A SPIRE server for one trust domain.
pub struct Server {
    pub trust_domain: String,
    pub socket: PathBuf,
    pub port: u16,
    _process: Process,
}

impl Server {
    /// `spire-server run` with a sqlite datastore in `dir` and X509-SVIDs of `svid_ttl`.
    pub fn start(dir: &Path, trust_domain: &str, svid_ttl: &str) -> Self {
        Self::start_with(dir, trust_domain, (svid_ttl, "5m"))
    }

    /// As [`Self::start`], with the (X509-SVID, JWT-SVID) lifetimes.
    pub fn start_with(dir: &Path, trust_domain: &str, ttls: (&str, &str)) -> Self {
        let dir = dir.join(format!("server-{trust_domain}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let port = free_port();
        let config = server_conf(port, &socket, trust_domain, &dir.join("data"), ttls);
        let path = dir.join("server.conf");
        std::fs::write(&path, config).unwrap();
        let process = Process::spawn(Command::new(spire_bin("spire-server")).args(run_args(&path, None)));
        let server = Self { trust_domain: trust_domain.into(), socket, port, _process: process };
        poll(Duration::from_secs(60), "spire-server healthy", || server.run(&["healthcheck"]).0.then_some(()));
        server
    }

    /// `spire-server <args> -socketPath <its socket>`.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let mut args = args.to_vec();
        let socket = self.socket.to_str().unwrap();
        args.extend(["-socketPath", socket]);
        spire("server", &args)
    }

    /// Runs `args`, which must succeed; its output.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "spire-server {args:?}: {text}");
        text
    }

    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// A join token for an agent that will be known as `agent_path`.
    pub fn join_token(&self, agent_path: &str) -> String {
        let args = token_args(&self.id(agent_path));
        let out = self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        out.lines().find_map(|l| l.strip_prefix("Token: ")).unwrap_or_else(|| panic!("no token in {out}")).trim().into()
    }

    /// A registration entry: `path` for the workload run from `binary`.
    pub fn entry(&self, agent_path: &str, path: &str, binary: &Path, extra: &[&str]) {
        let args = entry_args(&self.id(agent_path), &self.id(path), binary);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(extra);
        self.ok(&args);
    }

    /// The trust bundle: PEM (`-format pem`) or SPIFFE JSON (`-format spiffe`).
    pub fn bundle(&self, format: &str) -> String {
        let args = bundle_args(format);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// SPIRE's OIDC discovery provider in front of `server` (its Server API
/// socket): `/.well-known/openid-configuration` and the JWKS of the trust
/// domain's JWT keys, over plain HTTP on loopback, following key rotations.
pub struct OidcProvider {
    pub issuer: String,
    _process: Process,
}

/// `oidc-provider.conf`.
pub fn oidc_conf(port: u16, server_socket: &Path) -> String {
    format!(
        r#"log_level = "WARN"
domains = ["127.0.0.1"]
insecure_addr = "127.0.0.1:{port}"
allow_insecure_scheme = true

server_api {{
    address = "unix://{socket}"
    poll_interval = "1s"
}}
"#,
        socket = server_socket.display()
    )
}

impl OidcProvider {
    pub fn start(dir: &Path, server: &Server) -> Self {
        let port = free_port();
        let config = dir.join(format!("oidc-{}.conf", server.trust_domain));
        std::fs::write(&config, oidc_conf(port, &server.socket)).unwrap();
        let process = Process::spawn(Command::new(spire_bin("oidc-discovery-provider")).arg("-config").arg(&config));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        poll(Duration::from_secs(30), "the OIDC discovery provider serves keys", || {
            http_get(addr, "127.0.0.1", "/keys")
                .filter(|(status, body)| *status == 200 && body.contains("\"kid\""))
                .map(|_| ())
        });
        Self { issuer: format!("http://127.0.0.1:{port}"), _process: process }
    }
}

/// A SPIRE agent attested to `server` with a join token, its Workload API on
/// a Unix socket; the `unix` workload attestor with `discover_workload_path`.
pub struct Agent {
    pub socket: PathBuf,
    config: PathBuf,
    token: String,
    process: Process,
}

impl Agent {
    pub fn start(dir: &Path, server: &Server, token: &str) -> Self {
        let dir = dir.join(format!("agent-{}", server.trust_domain));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("workload.sock");
        let bundle = dir.join("bootstrap.pem");
        std::fs::write(&bundle, server.bundle("pem")).unwrap();
        let config_text = agent_conf(&dir.join("data"), server.port, &socket, &bundle, &server.trust_domain);
        let config = dir.join("agent.conf");
        std::fs::write(&config, config_text).unwrap();
        let process = Self::spawn(&config, token);
        let agent = Self { socket, config, token: token.into(), process };
        agent.wait_healthy();
        agent
    }

    fn spawn(config: &Path, token: &str) -> Process {
        Process::spawn(Command::new(spire_bin("spire-agent")).args(run_args(config, Some(token))))
    }

    fn wait_healthy(&self) {
        let socket = self.socket.to_str().unwrap().to_owned();
        poll(Duration::from_secs(60), "spire-agent healthy", || {
            spire("agent", &["healthcheck", "-socketPath", &socket]).0.then_some(())
        });
    }

    /// `unix://<socket>`, for `identity.socket`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same data directory (its own SVID is kept
    /// there, so the used join token is not needed again).
    pub fn restart(&mut self) {
        self.process = Self::spawn(&self.config, &self.token);
        self.wait_healthy();
    }
}

/// A sidecar process run from its own copy of the binary (`dir/<name>/a2a-sidecar`),
/// so that the agent's `unix:path` selector tells it from the others.
pub struct Sidecar {
    pub binary: PathBuf,
    pub dir: PathBuf,
    process: Option<Process>,
    pub telemetry: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
}

impl Sidecar {
    /// Copies the binary; not started yet (its path must be registered first).
    pub fn prepare(dir: &Path, name: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("a2a-sidecar");
        std::fs::copy(env!("CARGO_BIN_EXE_a2a-sidecar"), &binary).unwrap();
        Self { binary, dir, process: None, telemetry: None, inbound: None, outbound: None }
    }

    /// `a2a-sidecar run` with `yaml` (written to `sidecar.yaml` in its directory).
    pub fn start(&mut self, yaml: &str) {
        let config = self.dir.join("sidecar.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut command = Command::new(&self.binary);
        command.args(["run", "--config"]).arg(&config).env_remove("SPIFFE_ENDPOINT_SOCKET").env("RUST_LOG", "info");
        let mut process = Process::spawn(&mut command);
        let started: serde_json::Value = serde_json::from_str(&process.line_with("a2a-sidecar started")).unwrap();
        let addr = |key: &str| started[key].as_str().and_then(|a| a.parse().ok());
        (self.telemetry, self.inbound, self.outbound) = (addr("telemetry"), addr("inbound"), addr("outbound"));
        self.process = Some(process);
    }

    pub fn output(&self) -> String {
        self.process.as_ref().map(Process::output).unwrap_or_default()
    }

    /// `GET` on its telemetry listener: (status, body).
    pub fn telemetry(&self, path: &str) -> (u16, String) {
        http_get(self.telemetry.unwrap(), "localhost", path).unwrap_or((0, String::new()))
    }

    /// Waits for `/readyz` 200; how long that took since `since`.
    pub fn wait_ready(&self, since: Instant) -> Duration {
        poll(Duration::from_secs(60), "sidecar ready", || (self.telemetry("/readyz").0 == 200).then_some(()));
        since.elapsed()
    }

    /// A metric's value (the first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.telemetry("/metrics").1;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

/// `GET path` with `Host: host` over plain HTTP/1.1 (`Connection: close`):
/// (status, body); `None` if the connection failed.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// A plain HTTP app on loopback that answers every request with the
/// `X-Spiffe-Caller-Id` it received.
pub struct EchoApp {
    pub addr: SocketAddr,
}

impl EchoApp {
    pub fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if tcp.read(&mut byte).unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        let caller = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-spiffe-caller-id:"))
                            .map(str::trim)
                            .unwrap_or("none")
                            .to_owned();
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{caller}", caller.len());
                        if tcp.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr }
    }
}

/// The backend's open policy for `caller` (the reference YAML).
pub fn open_policy(trust_domain: &str, caller: &str) -> String {
    format!(
        "version: '1'
trust_domain: {trust_domain}
default_action: deny
policies:
  - {{name: caller, spiffe_id: '{caller}', rules: [{{path: '/*', methods: ['*'], action: allow}}]}}
"
    )
}

/// An inbound sidecar in front of `app`, allowing `caller`.
pub fn backend_yaml(endpoint: &str, app: SocketAddr, caller: &str, policy: &Path) -> String {
    format!(
        "identity: {{source: workload_api, socket: '{endpoint}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
inbound:
  listen: '127.0.0.1:0'
  upstream: 'http://{app}'
  allowed_callers: ['{caller}']
policy: {{file: '{policy}'}}
",
        policy = policy.display()
    )
}

/// An outbound sidecar whose route `backend` goes to `inbound`, expecting `server_id`.
pub fn caller_yaml(endpoint: &str, inbound: SocketAddr, server_id: &str) -> String {
    format!(
        "identity: {{source: workload_api, socket: '{endpoint}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: json}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: backend, upstream: 'https://{inbound}', server_id: '{server_id}'}}
"
    )
}
