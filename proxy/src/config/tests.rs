use super::*;

fn parse(yaml: &str, env: &MapEnv) -> Result<Config, Error> {
    Config::parse(Path::new("/etc/a2a/sidecar.yaml"), yaml, env)
}

fn err(yaml: &str) -> String {
    parse(yaml, &MapEnv::default()).unwrap_err().to_string()
}

#[test]
fn workload_api_socket_from_config_or_env() {
    let env = MapEnv::default().with("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock");
    let config = parse("", &env).unwrap();
    assert_eq!(config.identity, IdentityConfig::WorkloadApi { endpoint: "unix:///run/spire/agent.sock".into() });
    assert_eq!(config.telemetry.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
    assert_eq!(config.runtime.worker_threads, None);

    let config = parse("identity: {socket: unix:///x.sock}", &env).unwrap();
    assert_eq!(config.identity, IdentityConfig::WorkloadApi { endpoint: "unix:///x.sock".into() });

    let missing = err("");
    assert!(missing.contains("identity.socket") && missing.contains("SPIFFE_ENDPOINT_SOCKET"), "{missing}");
}

#[test]
fn files_paths_are_relative_to_the_config() {
    let yaml = "identity:\n  source: files\n  files: {cert: svid.pem, key: /abs/key.pem, bundle: b.pem, \
                federated_bundles: {other.example: fed.pem}, poll_interval: 250ms}";
    let IdentityConfig::Files(files) = parse(yaml, &MapEnv::default()).unwrap().identity else { panic!("files") };
    assert_eq!(files.cert, PathBuf::from("/etc/a2a/svid.pem"));
    assert_eq!(files.key, PathBuf::from("/abs/key.pem"));
    assert_eq!(files.poll_interval, Duration::from_millis(250));
    let fed: Vec<_> = files.federated_bundles.iter().map(|(td, p)| (td.to_string(), p.clone())).collect();
    assert_eq!(fed, [("other.example".to_owned(), PathBuf::from("/etc/a2a/fed.pem"))]);
}

#[test]
fn errors_name_the_file_and_field() {
    let cases = [
        ("identity: {socket: unix:///x, colour: blue}", "unknown field `colour`"),
        ("inbound: {listen: 0.0.0.0:8443}", "unknown field `inbound`"),
        ("identity: {source: spire}", "`identity.source`: `spire` is not one of"),
        ("identity: {source: files}", "`identity.files`: required"),
        ("identity: {socket: /run/agent.sock}", "`identity.socket`: `/run/agent.sock` must start with"),
        (
            "identity: {source: files, socket: unix:///x, files: {cert: a, key: b, bundle: c}}",
            "`identity.socket`: not used",
        ),
        (
            "identity: {source: files, files: {cert: a, key: b, bundle: c, federated_bundles: {Bad_TD: x}}}",
            "`identity.files.federated_bundles.Bad_TD`",
        ),
        ("identity: {source: files, files: {cert: a, key: b, bundle: c, poll_interval: 0s}}", "poll_interval"),
        ("identity: {socket: unix:///x}\ntelemetry: {listen: localhost}", "`telemetry.listen`: `localhost`"),
        ("identity: {socket: unix:///x}\ntelemetry: {log_format: xml}", "`telemetry.log_format`"),
        ("identity: {socket: unix:///x}\nruntime: {worker_threads: 0}", "`runtime.worker_threads`"),
        ("identity: {source: dev, dev: {ca_dir: d, id: 'spiffe://td/a/'}}", "`identity.dev.id`"),
        ("identity: {source: dev, dev: {ca_dir: d, id: 'spiffe://td/a', ttl: soon}}", "`identity.dev.ttl`"),
    ];
    for (yaml, want) in cases {
        let message = err(yaml);
        assert!(message.contains("/etc/a2a/sidecar.yaml"), "{message}");
        assert!(message.contains(want), "{yaml:?}: {message}");
    }
}

#[test]
fn static_client_secrets_are_refused() {
    for name in ["AZURE_CLIENT_SECRET", "GRAPH_CLIENT_SECRET"] {
        let env = MapEnv::default().with(name, "s3cr3t").with("SPIFFE_ENDPOINT_SOCKET", "unix:///x");
        let message = parse("", &env).unwrap_err().to_string();
        assert!(message.contains(name) && !message.contains("s3cr3t"), "{message}");
    }
}
