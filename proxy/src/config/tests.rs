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
        ("colour: blue", "unknown field `colour`"),
        ("identity: {socket: unix:///x}\ninbound: {upstream: 'http://a:1'}", "`policy.file`: required with `inbound`"),
        ("identity: {socket: unix:///x}\npolicy: {cedar: [x.cedar]}", "`policy.file`: required"),
        ("identity: {socket: unix:///x}\npolicy: {file: p.yaml, mode: audit}", "`policy.mode`: `audit` is not one of"),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {listen: 0.0.0.0:8443}",
            "`inbound.upstream`: required",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'https://app:1'}",
            "`inbound.upstream`: `https://app:1`: must start with `http://`",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://app:1/x'}",
            "must not have a path",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://a:1', allowed_callers: ['spiffe://*/x']}",
            "`inbound.allowed_callers[0]`",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://a:1', max_header_bytes: 4KiB}",
            "`inbound.max_header_bytes`: must be at least",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://a:1', header_timeout: fast}",
            "`inbound.header_timeout`",
        ),
        (
            "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://a:1', idle_timeout: 0s}",
            "`inbound.idle_timeout`: must be greater than zero",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {listen: '127.0.0.1:0', header_timeout: 0ms}",
            "`outbound.header_timeout`: must be greater than zero",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {listen: '0.0.0.0:8080'}",
            "`outbound.listen`: `0.0.0.0:8080` is not loopback",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', state_file: s.json, keys: [{name: a, role: admin, sha256: '00'}]}",
            "`mgmt.listen`: `0.0.0.0:9443` is not loopback: set `mgmt.tls.allowed_callers`",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', tls: {allowed_callers: []}}",
            "`mgmt.tls.allowed_callers`: at least one",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', tls: {allowed_callers: ['spiffe://td/a/**', 'nope']}}",
            "`mgmt.tls.allowed_callers[1]`",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', tls: {allowed_callers: ['spiffe://td/c'], loopback_plain: true}}",
            "`mgmt.tls.loopback_plain`: `0.0.0.0:9443` is not loopback",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', tls: {allowed_callers: ['spiffe://td/c'], roles: {'spiffe://td/c': root}}}",
            "`mgmt.tls.roles.spiffe://td/c`: `root` is not one of admin, viewer",
        ),
        (
            "identity: {socket: unix:///x}\nmgmt: {listen: '0.0.0.0:9443', tls: {allowed_callers: ['spiffe://td/c'], consoles: ['nope']}}",
            "`mgmt.tls.consoles[0]`",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {routes: [{name: a, upstream: 'http://b:1', server_id: 'spiffe://td/b'}]}",
            "`outbound.routes[0].upstream`",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {routes: [{name: a, upstream: 'https://b:1', server_id: 'spiffe://td/b/'}]}",
            "`outbound.routes[0].server_id`",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {routes: [{name: 'a b', upstream: 'https://b:1', server_id: 'spiffe://td/b'}]}",
            "`outbound.routes[0].name`",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {routes: [{name: a, upstream: 'https://b', server_id: 'spiffe://td/b'}, {name: A, upstream: 'https://c', server_id: 'spiffe://td/c'}]}",
            "`outbound.routes[1].name`: `a` is used",
        ),
        (
            "identity: {socket: unix:///x}\noutbound: {routes: [{name: a, match: {path_prefix: x}, upstream: 'https://b', server_id: 'spiffe://td/b'}]}",
            "`outbound.routes[0].match.path_prefix`",
        ),
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

#[test]
fn inbound_and_outbound_defaults() {
    let yaml = "identity: {socket: unix:///x}
policy: {file: policy.yaml, cedar: [extra.cedar], mode: shadow}
inbound: {upstream: 'http://127.0.0.1:8000', allowed_callers: ['spiffe://aim.example/ests/bp/*/aid/budget-report']}
outbound:
  allow_non_loopback: false
  routes:
    - {name: Budget-Backend, match: {path_prefix: /budget-backend/}, upstream: 'https://budget-backend:8443', server_id: 'spiffe://aim.example/**'}
";
    let config = parse(yaml, &MapEnv::default()).unwrap();
    let inbound = config.inbound.unwrap();
    assert_eq!(inbound.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(inbound.upstream.as_str(), "127.0.0.1:8000");
    assert_eq!(inbound.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(inbound.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(inbound.limits.max_header_bytes, 32 * 1024);
    assert!(!inbound.tls_resumption && !inbound.path_options.allow_semicolons);
    assert_eq!(inbound.allowed_callers.len(), 1);
    let outbound = config.outbound.unwrap();
    assert_eq!(outbound.listen, "127.0.0.1:8080".parse().unwrap());
    let route = &outbound.routes[0];
    assert_eq!((route.name.as_str(), route.path_prefix.as_deref()), ("budget-backend", Some("/budget-backend")));
    assert_eq!(route.upstream.as_str(), "budget-backend:8443");
    assert_eq!(config.runtime.drain_timeout, Duration::from_secs(10));

    let policy = config.policy.unwrap();
    assert_eq!(policy.file, PathBuf::from("/etc/a2a/policy.yaml"));
    assert_eq!(policy.cedar, [PathBuf::from("/etc/a2a/extra.cedar")]);
    assert_eq!(policy.mode, PolicyMode::Shadow);
    assert!(!policy.case_insensitive_paths);

    let empty = parse(
        "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\ninbound: {upstream: 'http://a'}",
        &MapEnv::default(),
    )
    .unwrap();
    assert!(empty.inbound.unwrap().allowed_callers.is_empty(), "nobody is allowed by default");
    assert!(parse("identity: {socket: unix:///x}", &MapEnv::default()).unwrap().inbound.is_none());
}

#[test]
fn the_start_up_summary_and_debug_carry_no_secret() {
    let yaml = "identity: {socket: unix:///x}
mgmt: {state_file: s.json, keys: [{name: ops, role: admin, env: OPS_KEY}], tls: {allowed_callers: ['spiffe://td/admin']}}";
    let env = MapEnv::default().with("OPS_KEY", "hunter2-admin-key-hunter2-admin-key");
    let config = parse(yaml, &env).unwrap();
    let summary = config.summary().to_string();
    assert!(summary.contains("\"ops\"") && summary.contains("spiffe://td/admin"), "{summary}");
    for text in [summary, format!("{config:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn an_admin_key_from_the_environment_must_not_be_guessable() {
    let yaml =
        "identity: {socket: unix:///x}\nmgmt: {state_file: s.json, keys: [{name: ops, role: admin, env: OPS_KEY}]}";
    let short = parse(yaml, &MapEnv::default().with("OPS_KEY", "password")).unwrap_err().to_string();
    assert!(
        short.contains("`mgmt.keys[0].env`") && short.contains("8 characters") && !short.contains("password"),
        "{short}"
    );
    assert!(parse(yaml, &MapEnv::default().with("OPS_KEY", "0123456789abcdef0123456789abcdef")).is_ok());
}

#[test]
fn the_reference_deployments_environment_fills_jwt_and_entra() {
    let env = MapEnv::default()
        .with("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
        .with("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555")
        .with("ENTRA_OAUTH2_AUDIENCE", "api://budget-backend, 99999999-0000-0000-0000-000000000001")
        .with("AZURE_CLIENT_ID", "budget-backend-client")
        .with("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token");
    let config = parse("jwt: {}\nentra: {}", &env).unwrap();
    let jwt = config.jwt.unwrap();
    let entra_jwt = jwt.entra.clone().unwrap();
    assert_eq!(entra_jwt.tenant_id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(entra_jwt.audiences, ["api://budget-backend", "99999999-0000-0000-0000-000000000001"]);
    let entra = config.entra.unwrap();
    assert_eq!(
        (entra.client_id.as_str(), entra.tenant_id.as_str()),
        ("budget-backend-client", entra_jwt.tenant_id.as_str())
    );
    assert_eq!(
        entra.assertion,
        AssertionSource::File(PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token"))
    );

    // The file wins over the environment.
    let config = parse("jwt: {tenant_id: from-file, audiences: [a]}\nentra: {client_id: c}", &env).unwrap();
    let tenant = config.jwt.unwrap().entra.unwrap().tenant_id;
    assert_eq!((tenant.as_str(), config.entra.unwrap().client_id.as_str()), ("from-file", "c"));

    // Neither: the error names the field and the variable.
    let socket_only = MapEnv::default().with("SPIFFE_ENDPOINT_SOCKET", "unix:///x.sock");
    let missing = parse("jwt: {audiences: [a]}", &socket_only).unwrap_err().to_string();
    assert!(missing.contains("`jwt.tenant_id`") && missing.contains("AZURE_TENANT_ID"), "{missing}");
    let missing = parse("jwt: {tenant_id: t}", &socket_only).unwrap_err().to_string();
    assert!(missing.contains("`jwt.audiences`") && missing.contains("ENTRA_OAUTH2_AUDIENCE"), "{missing}");
}

#[test]
fn a_console_config_names_the_field_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let oidc = "oidc: {issuer: 'https://idp.example/t/v2.0', client_id: c, admin: [A]}";
    for (yaml, want) in [
        ("listen: nowhere".to_owned(), "`listen`"),
        ("sidecars: []".to_owned(), "`oidc`: required"),
        ("oidc: {issuer: 'http://idp.example', client_id: c, admin: [A]}".to_owned(), "`oidc.issuer`"),
        ("oidc: {issuer: 'https://idp.example', admin: [A]}".to_owned(), "`oidc.client_id`"),
        ("oidc: {issuer: 'https://idp.example', client_id: c}".to_owned(), "`oidc.admin`"),
        (format!("{oidc}\nurl: 'http://console.example'"), "`url`"),
        (format!("{oidc}\nfleet: {{concurrency: 0}}"), "`fleet.concurrency`"),
        (format!("{oidc}\nfleet: {{timeout: soon}}"), "`fleet.timeout`"),
        (
            format!("{oidc}\nsidecars: [{{name: a, mgmt: 'http://10.0.0.1:9443', spiffe_id: 'spiffe://td/a'}}]"),
            "`sidecars[0].mgmt`",
        ),
        (format!("{oidc}\nsidecars: [{{name: a, mgmt: 'https://h:1'}}]"), "`sidecars[0].spiffe_id`"),
        (
            format!(
                "{oidc}\nsidecars: [{{name: a, mgmt: 'https://h:1', spiffe_id: 'spiffe://td/a'}}, {{name: a, mgmt: 'https://h:2', spiffe_id: 'spiffe://td/b'}}]"
            ),
            "`sidecars[1].name`: `a` is listed twice",
        ),
        (format!("{oidc}\nsurprise: 1"), "unknown field `surprise`"),
    ] {
        let path = dir.path().join("console.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let error = crate::config::ConsoleConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains(want), "{yaml}\n=> {error}");
    }
}

#[test]
fn issuers_beyond_entra_with_their_defaults_and_the_fields_they_refuse() {
    let env = MapEnv::default();
    let yaml = "identity: {socket: unix:///x}
jwt:
  require_bound_tokens: true
  issuers:
    - {issuer: 'https://kc.example/realms/agents', audiences: [api], algorithms: [ES256, PS256], roles_claim: realm_access.roles}
    - {name: auth0, issuer: 'https://tenant.auth0.example/', jwks_uri: 'https://tenant.auth0.example/.well-known/jwks.json', audiences: [b], agent_claim: 'https://a2a.example/agent_id', roles_claim: permissions}";
    let jwt = parse(yaml, &env).unwrap().jwt.unwrap();
    assert!(jwt.entra.is_none(), "no tenant_id and other issuers: no Entra issuer");
    assert!(jwt.require_bound_tokens);
    let [kc, a0] = jwt.issuers.as_slice() else { panic!("two issuers") };
    assert_eq!(kc.name, "https://kc.example/realms/agents", "the issuer names itself by default");
    assert_eq!(kc.algorithms, [jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::PS256]);
    assert_eq!(
        (kc.agent_claims.as_slice(), kc.roles_claim.as_str()),
        (&["azp".into(), "client_id".into()][..], "realm_access.roles")
    );
    assert_eq!(kc.jwks_uri, None);
    assert_eq!(a0.algorithms, [jsonwebtoken::Algorithm::RS256], "RS256 by default");
    assert_eq!(a0.agent_claims, ["https://a2a.example/agent_id"]);
    let sources = crate::layers::oauth::key_sources(&jwt);
    let ats: Vec<_> = sources.iter().map(|s| s.at.clone()).collect();
    assert_eq!(
        ats,
        [
            crate::facts::jwks::KeysAt::Discovery {
                url: "https://kc.example/realms/agents/.well-known/openid-configuration".into(),
                issuer: Some("https://kc.example/realms/agents".into()),
            },
            crate::facts::jwks::KeysAt::Jwks("https://tenant.auth0.example/.well-known/jwks.json".into()),
        ]
    );

    let with = |issuer: &str| format!("identity: {{socket: unix:///x}}\njwt:\n  issuers:\n    - {issuer}");
    let ok = "issuer: 'https://i.example', audiences: [a]";
    for (yaml, want) in [
        (with("{audiences: [a]}"), "`jwt.issuers[0].issuer`: required"),
        (with("{issuer: 'http://i.example', audiences: [a]}"), "`jwt.issuers[0].issuer`"),
        (with("{issuer: 'https://i.example'}"), "`jwt.issuers[0].audiences`"),
        (with(&format!("{{{ok}, algorithms: [none]}}")), "`jwt.issuers[0].algorithms`: `none` is not one of"),
        (with(&format!("{{{ok}, algorithms: [HS256]}}")), "never `none` or HMAC"),
        (with(&format!("{{{ok}, algorithms: []}}")), "`jwt.issuers[0].algorithms`: at least one"),
        (with(&format!("{{{ok}, jwks_uri: 'http://keys.example/jwks'}}")), "`jwt.issuers[0].jwks_uri`"),
        (with(&format!("{{{ok}, roles_claim: 'realm_access..roles'}}")), "`jwt.issuers[0].roles_claim`"),
        (with(&format!("{{{ok}, agent_claim: ''}}")), "`jwt.issuers[0].agent_claim`"),
        (with(&format!("{{{ok}, colour: blue}}")), "unknown field `colour`"),
        (format!("{}\n    - {{{ok}}}", with(&format!("{{{ok}}}"))), "`jwt.issuers[1].issuer`: is configured twice"),
        (
            format!("{}\n    - {{name: x, issuer: 'https://j.example', audiences: [a]}}", with(&format!("{{name: x, {ok}}}"))),
            "`jwt.issuers[1].name`: `x` is taken",
        ),
        (format!("{}\n  audiences: [a]", with(&format!("{{{ok}}}"))), "`jwt.audiences`: is for the Entra issuer"),
        (with(&format!("{{name: entra, {ok}}}")), "`jwt.issuers[0].name`: `entra` is taken"),
        (
            "identity: {socket: unix:///x}\njwt:\n  tenant_id: t\n  audiences: [a]\n  issuers: [{issuer: 'https://sts.windows.net/t/', audiences: [a]}]".into(),
            "`jwt.issuers[0].issuer`: is configured twice",
        ),
    ] {
        let error = parse(&yaml, &env).unwrap_err().to_string();
        assert!(error.contains(want), "{yaml}\n=> {error}");
    }
}

#[test]
fn authzen_fields_are_checked_and_named() {
    let base = "identity: {socket: unix:///x}\npolicy: {file: p.yaml}\n";
    let mgmt = "mgmt: {state_file: s.json, keys: [{name: ops, role: viewer, sha256: '0000000000000000000000000000000000000000000000000000000000000000'}]}\n";
    let env = MapEnv::default().with("PDP_KEY", "k1");
    let config = parse(
        &format!("{base}{mgmt}authzen: {{listen: 127.0.0.1:9444, pdp: {{url: 'https://pdp.example/access/v1/evaluation', key_env: PDP_KEY, rules: marked}}}}"),
        &env,
    )
    .unwrap();
    let pdp = config.authzen.pdp.as_ref().unwrap();
    assert_eq!(
        (pdp.timeout, pdp.cache_ttl, pdp.cache_size),
        (Duration::from_millis(250), Duration::from_secs(30), 10_000)
    );
    assert_eq!((pdp.fail_open, pdp.rules), (false, PdpRules::Marked));
    assert!(!format!("{:?}", pdp.bearer).contains("k1"), "the key never reaches Debug");
    let cases = [
        (format!("{base}authzen: {{listen: 127.0.0.1:9444}}"), "`authzen.listen`: needs the `mgmt` section"),
        (format!("{base}{mgmt}authzen: {{listen: 0.0.0.0:9444}}"), "`authzen.listen`: `0.0.0.0:9444` is not loopback"),
        (format!("{base}authzen: {{pdp: {{url: 'http://pdp.example/e'}}}}"), "`authzen.pdp.url`"),
        (format!("{base}authzen: {{pdp: {{url: 'https://u:p@pdp.example/e'}}}}"), "`authzen.pdp.url`: no user info"),
        (format!("{base}authzen: {{pdp: {{url: 'https://pdp.example/e?k=1'}}}}"), "`authzen.pdp.url`: no user info"),
        (
            format!("{base}authzen: {{pdp: {{url: 'https://pdp.example/e', key_env: NOPE}}}}"),
            "`authzen.pdp.key_env`: `NOPE` is not set",
        ),
        (format!("{base}authzen: {{pdp: {{url: 'https://pdp.example/e', rules: some}}}}"), "`authzen.pdp.rules`"),
        (
            format!("{base}authzen: {{pdp: {{url: 'http://127.0.0.1:1/e', server_id: 'spiffe://td/pdp'}}}}"),
            "`authzen.pdp.server_id`",
        ),
        (
            format!("{base}authzen: {{pdp: {{url: 'https://pdp.example/e', cache_size: 0}}}}"),
            "`authzen.pdp.cache_size`",
        ),
        (format!("{base}authzen: {{pdp: {{url: 'https://pdp.example/e', colour: 1}}}}"), "unknown field `colour`"),
    ];
    for (yaml, expected) in cases {
        let error = err(&yaml);
        assert!(error.contains(expected), "{yaml}\n{error}");
    }
}
