use std::path::Path;

use super::*;
use crate::config::MapEnv;
use crate::observe::metrics::Metrics;

const POLICY: &str = "version: 'VERSION'
trust_domain: td.example
default_action: deny
policies:
  - {name: a, spiffe_id: 'spiffe://td.example/a', rules: [{path: '/*', methods: [GET], action: allow}]}
";

fn policy(version: &str) -> String {
    POLICY.replace("VERSION", version)
}

/// A sidecar's change machinery without its listeners (no background watcher:
/// the test calls `poll_policy_files` itself, in the order it chooses).
fn reloader(dir: &Path) -> Reloader {
    std::fs::write(dir.join("policy.yaml"), policy("v1")).unwrap();
    let yaml = "identity: {socket: 'unix:///x.sock'}
inbound: {upstream: 'http://127.0.0.1:8000', allowed_callers: ['spiffe://td.example/a']}
policy: {file: policy.yaml}
mgmt: {state_file: state.json, keys: [{name: ops, role: admin, sha256: '0000000000000000000000000000000000000000000000000000000000000000'}]}
";
    std::fs::write(dir.join("sidecar.yaml"), yaml).unwrap();
    let config = Config::load_with_env(&dir.join("sidecar.yaml"), &MapEnv::default()).unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let cfg = config.policy.as_ref().unwrap();
    let (engine, fingerprint) = rbac::load(cfg, config.env.as_ref(), None).unwrap();
    let changes = crate::changes::Changes::default();
    let store = PolicyStore::new(engine, cfg.mode, fingerprint, metrics, None, changes.clone());
    let handles = Handles {
        allowlist: AllowList::new(vec![]),
        policy: Some(store),
        oauth: Arc::new(ArcSwapOption::empty()),
        governor: Arc::new(Governor::new(config.risk.clone(), config.tags.clone(), None, changes.clone())),
        pdp: None,
        keys: Arc::new(ArcSwap::from_pointee(vec![])),
        state: Some(Arc::new(StateFile::open(&dir.join("state.json")).unwrap())),
        changes,
        metrics: Arc::new(Metrics::new().unwrap()),
    };
    Reloader::new(&config, handles)
}

/// What `PUT /mgmt/policy` does: validate, persist, install.
async fn admin_put(reloader: &Reloader, version: &str) {
    let _changing = reloader.lock().await;
    let cfg = reloader.applied().policy.clone().unwrap();
    let engine = rbac::build_yaml(policy(version), "PUT", cfg, reloader.env.clone(), None).await.unwrap();
    let state = reloader.state.as_ref().unwrap();
    let files = crate::config::fingerprint([reloader.applied().policy.as_ref().unwrap().file.as_path()]);
    state.update("policy:ops", |s| (s.policy_yaml, s.policy_sha256) = (Some(policy(version)), files.clone())).unwrap();
    reloader.install_admin_policy(engine, "policy:ops".into(), files).unwrap();
}

fn version(reloader: &Reloader) -> String {
    reloader.policy.as_ref().unwrap().current().engine.doc().version.clone()
}

/// "The most recent change wins": the watcher compares the files with what
/// was last applied *from them*, not with its own last look, so an admin
/// change made after a file reload is never undone by a file that did not
/// change; rewriting the same bytes (a new mtime, as a ConfigMap sync or an
/// editor does) is no change either. The old watcher compared (mtime, size)
/// stamps with its previous look and re-applied the file at that step.
#[tokio::test]
async fn a_file_unchanged_since_applied_never_overrides_a_later_admin_change() {
    let dir = tempfile::tempdir().unwrap();
    let reloader = reloader(dir.path());
    let file = dir.path().join("policy.yaml");
    let mut rejected = None;
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);

    std::fs::write(&file, policy("v2")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Applied);
    assert_eq!(version(&reloader), "v2");

    // Within the same second, an admin change; the watcher looks again.
    admin_put(&reloader, "v3").await;
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);
    assert_eq!(version(&reloader), "v3");
    // The same bytes written again.
    std::fs::write(&file, policy("v2")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);
    assert_eq!(version(&reloader), "v3", "a rewrite without a change reverted the admin change");

    // A real edit is the most recent change: it wins, and the override leaves the state file.
    std::fs::write(&file, policy("v4")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Applied);
    assert_eq!(version(&reloader), "v4");
    assert_eq!(reloader.state.as_ref().unwrap().get().policy_yaml, None);

    // A broken file is refused once (not every second); the running policy stays.
    std::fs::write(&file, "version: [").unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Rejected);
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);
    assert_eq!(version(&reloader), "v4");
    // A missing file (mid-replacement) changes nothing either.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unreadable);
    assert_eq!(version(&reloader), "v4");
}

/// A file edit the watcher has not applied yet, then an admin change: the
/// admin change is the more recent one and the watcher leaves it alone.
#[tokio::test]
async fn an_admin_change_supersedes_a_file_edit_not_yet_applied() {
    let dir = tempfile::tempdir().unwrap();
    let reloader = reloader(dir.path());
    let mut rejected = None;
    std::fs::write(dir.path().join("policy.yaml"), policy("edited")).unwrap();
    admin_put(&reloader, "admin").await;
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);
    assert_eq!(version(&reloader), "admin");
    assert!(reloader.state.as_ref().unwrap().get().policy_yaml.is_some(), "the override stays recorded");
    // The next edit is more recent again.
    std::fs::write(dir.path().join("policy.yaml"), policy("edited-again")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Applied);
    assert_eq!(version(&reloader), "edited-again");
}

/// The watcher follows `policy.file` when a reload points it elsewhere.
#[tokio::test]
async fn the_watcher_follows_a_reloaded_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let reloader = reloader(dir.path());
    std::fs::write(dir.path().join("other.yaml"), policy("other-1")).unwrap();
    let yaml = std::fs::read_to_string(dir.path().join("sidecar.yaml")).unwrap();
    std::fs::write(dir.path().join("sidecar.yaml"), yaml.replace("file: policy.yaml", "file: other.yaml")).unwrap();
    reloader.reload().await.unwrap();
    assert_eq!(version(&reloader), "other-1");

    let mut rejected = None;
    std::fs::write(dir.path().join("policy.yaml"), policy("old-file-edited")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Unchanged);
    std::fs::write(dir.path().join("other.yaml"), policy("other-2")).unwrap();
    assert_eq!(reloader.poll_policy_files(&mut rejected).await, FilePoll::Applied);
    assert_eq!(version(&reloader), "other-2");
}

#[tokio::test]
async fn a_restart_only_change_refuses_the_whole_reload() {
    let dir = tempfile::tempdir().unwrap();
    let reloader = reloader(dir.path());
    let yaml = std::fs::read_to_string(dir.path().join("sidecar.yaml")).unwrap();
    let changed = yaml
        .replace("allowed_callers: ['spiffe://td.example/a']", "allowed_callers: ['spiffe://td.example/b']")
        .replace("http://127.0.0.1:8000", "http://127.0.0.1:9000")
        .replace(
            "identity: {socket: 'unix:///x.sock'}",
            "identity: {socket: 'unix:///y.sock'}\nrisk: {source: mgmt, refresh: 5m}",
        );
    std::fs::write(dir.path().join("sidecar.yaml"), changed).unwrap();
    let Err(ReloadError::RestartRequired(fields)) = reloader.reload().await else { panic!("not refused") };
    assert_eq!(fields, ["identity", "inbound.upstream", "risk.refresh"]);
    assert!(reloader.allowlist.patterns().is_empty(), "the hot part was not half-applied");
}
