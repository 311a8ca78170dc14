//! `docs/spire.md` ("SPIRE on one machine") shows the configuration files and
//! commands these tests run, rendered for the example paths the doc uses:
//! if the harness changes, this fails until the doc follows.

use std::net::SocketAddr;
use std::path::Path;

use super::harness::{
    agent_conf, backend_yaml, bundle_args, caller_yaml, entry_args, oidc_conf, open_policy, run_args, server_conf,
    token_args,
};

/// Every snippet the doc must contain verbatim: (what, text).
fn snippets() -> Vec<(&'static str, String)> {
    let dir = Path::new("/tmp/spire");
    let server_socket = dir.join("server/api.sock");
    let agent_socket = dir.join("agent/workload.sock");
    let endpoint = format!("unix://{}", agent_socket.display());
    let (backend, caller) = (dir.join("backend/a2a-sidecar"), dir.join("caller/a2a-sidecar"));
    let server_cmd =
        |args: Vec<String>| format!("spire-server {} -socketPath {}", args.join(" "), server_socket.display());
    let app: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let inbound: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    vec![
        ("server.conf", server_conf(8081, &server_socket, "td1.test", &dir.join("server/data"), ("1h", "5m"))),
        (
            "agent.conf",
            agent_conf(&dir.join("agent/data"), 8081, &agent_socket, &dir.join("agent/bootstrap.pem"), "td1.test"),
        ),
        ("the server", format!("spire-server {}", run_args(&dir.join("server/server.conf"), None).join(" "))),
        ("the join token", server_cmd(token_args("spiffe://td1.test/agent/node1"))),
        ("the agent's bootstrap bundle", server_cmd(bundle_args("pem"))),
        (
            "the agent",
            format!("spire-agent {}", run_args(&dir.join("agent/agent.conf"), Some("<join token>")).join(" ")),
        ),
        (
            "the backend's entry",
            server_cmd(entry_args("spiffe://td1.test/agent/node1", "spiffe://td1.test/backend", &backend)),
        ),
        (
            "the caller's entry",
            server_cmd(entry_args("spiffe://td1.test/agent/node1", "spiffe://td1.test/caller", &caller)),
        ),
        ("the OIDC discovery provider", oidc_conf(8082, &server_socket)),
        ("the backend's policy", open_policy("td1.test", "spiffe://td1.test/caller")),
        (
            "the backend sidecar",
            backend_yaml(&endpoint, app, "spiffe://td1.test/caller", &dir.join("backend/policy.yaml")),
        ),
        ("the caller sidecar", caller_yaml(&endpoint, inbound, "spiffe://td1.test/backend")),
    ]
}

#[test]
fn the_spire_doc_shows_what_the_tests_run() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/spire.md")).unwrap();
    let missing: Vec<String> = snippets()
        .into_iter()
        .filter(|(_, text)| !doc.contains(text.trim_end()))
        .map(|(what, text)| format!("--- {what} ---\n{text}"))
        .collect();
    assert!(missing.is_empty(), "docs/spire.md has drifted from proxy/tests/spire/harness.rs:\n{}", missing.join("\n"));
}
