//! Admin changes that must survive a restart: written to `mgmt.state_file`
//! (random temp file, fsync, rename: a crash never leaves a torn file) before the
//! admin API answers 200, and re-applied on start.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Everything the admin API changed, with when and through which key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// An allow-list set through the API (overrides `inbound.allowed_callers`
    /// until the config is reloaded, which is a more recent change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ids: Option<Vec<String>>,
    /// A policy set through the API, as YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_yaml: Option<String>,
    /// [`fingerprint`] of the config file at the last override (allow-list or
    /// policy): a config edited since, even while the sidecar was down, is
    /// the more recent change and wins at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// [`fingerprint`] of the policy files at the last override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    #[serde(default)]
    pub risks: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The last change: `<channel>:<key name>` and when (RFC 3339).
    #[serde(default)]
    pub last_change: Option<String>,
    #[serde(default)]
    pub last_change_at: Option<String>,
}

/// [`crate::config::fingerprint`]s of the config file and of the policy files (if any), as
/// they are now: what `config_sha256` and `policy_sha256` record.
pub fn file_fingerprints(
    config: &Path,
    policy: Option<&crate::config::PolicyConfig>,
) -> (Option<String>, Option<String>) {
    (crate::config::fingerprint([config]), policy.and_then(|p| crate::config::fingerprint(p.files())))
}

pub struct StateFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl StateFile {
    /// Reads the file; a missing file is an empty state, a broken one an error.
    pub fn open(path: &Path) -> Result<Self, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(format!("`{}`: {e}", path.display())),
        };
        Ok(Self { path: path.into(), state: Mutex::new(state) })
    }

    pub fn get(&self) -> State {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Applies `change` and persists the result; on a write error nothing changes.
    pub fn update(&self, actor: &str, change: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = guard.clone();
        change(&mut next);
        next.last_change = Some(actor.to_owned());
        next.last_change_at = Some(crate::observe::audit::rfc3339(std::time::SystemTime::now()));
        write_atomically(&self.path, &next)?;
        *guard = next;
        Ok(())
    }
}

/// Temp file (random name beside the target, created with `O_EXCL` so a
/// planted symlink is never followed, mode 0600), fsync, rename, fsync of
/// the directory: a crash leaves the old file or the new one, never a torn one.
fn write_atomically(path: &Path, state: &State) -> Result<(), String> {
    write_until(path, state, None)
}

/// The steps of [`write_atomically`]; tests stop after one, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Written,
    Synced,
    Renamed,
}

fn write_until(path: &Path, state: &State, crash_after: Option<Step>) -> Result<(), String> {
    let crashed = || Err("crashed".to_owned());
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("`{}`: {e}", path.display());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".a2a-state-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    if crash_after == Some(Step::Written) {
        // A crash leaves the temp file behind (the drop would remove it).
        let _ = tmp.keep();
        return crashed();
    }
    tmp.as_file().sync_all().map_err(io)?;
    if crash_after == Some(Step::Synced) {
        let _ = tmp.keep();
        return crashed();
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    if crash_after == Some(Step::Renamed) {
        return crashed();
    }
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risk_of(path: &Path) -> Option<String> {
        StateFile::open(path).unwrap().get().risks.get("spiffe://td/a").cloned()
    }

    fn with_risk(level: &str) -> State {
        let mut state = State::default();
        state.risks.insert("spiffe://td/a".into(), level.into());
        state
    }

    #[test]
    fn an_update_replaces_the_file_whole_never_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let file = StateFile::open(&path).unwrap();
        file.update("agent-risk:ops", |s| {
            s.risks.insert("spiffe://td/a".into(), "low".into());
        })
        .unwrap();
        // A reader holding the old file keeps reading the old file whole: the
        // new one arrived by rename, not by rewriting these bytes.
        let mut old = std::fs::File::open(&path).unwrap();
        file.update("agent-risk:ops", |s| {
            s.risks.insert("spiffe://td/a".into(), "high".into());
        })
        .unwrap();
        let mut before = String::new();
        std::io::Read::read_to_string(&mut old, &mut before).unwrap();
        assert!(before.contains(r#""spiffe://td/a": "low""#), "{before}");
        assert_eq!(risk_of(&path).as_deref(), Some("high"));
        assert_eq!(StateFile::open(&path).unwrap().get().last_change.as_deref(), Some("agent-risk:ops"));
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(StateFile::open(&path).is_err(), "a broken state file refuses to start");
    }

    #[test]
    fn a_crash_between_the_steps_leaves_the_old_state_or_the_new_one() {
        for (step, expect) in [(Step::Written, "low"), (Step::Synced, "low"), (Step::Renamed, "high")] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            write_until(&path, &with_risk("low"), None).unwrap();
            assert!(write_until(&path, &with_risk("high"), Some(step)).is_err());
            // The restart reads the old state or the new one, never a mix, and
            // ignores what the crash left beside it.
            assert_eq!(risk_of(&path).as_deref(), Some(expect), "{step:?}");
            let left = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(left, if step == Step::Renamed { 1 } else { 2 }, "{step:?}: a temp file stays after a crash");
            // And the next update succeeds beside the leftover.
            StateFile::open(&path)
                .unwrap()
                .update("agent-risk:ops", |s| {
                    s.risks.insert("spiffe://td/a".into(), "medium".into());
                })
                .unwrap();
            assert_eq!(risk_of(&path).as_deref(), Some("medium"), "{step:?}");
        }
    }

    #[test]
    fn the_file_is_private_and_a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // What the old fixed temp name (`state.tmp`) would have written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        let file = StateFile::open(&path).unwrap();
        file.update("agent-tags:ops", |s| {
            s.tags.insert("spiffe://td/a".into(), "finance".into());
        })
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        // Nothing but the state file, the planted link and the victim is left behind.
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.tmp", "victim"]);
    }

    #[test]
    fn a_state_file_named_like_a_temp_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.tmp");
        let file = StateFile::open(&path).unwrap();
        for level in ["low", "high"] {
            file.update("agent-risk:ops", |s| {
                s.risks.insert("spiffe://td/a".into(), level.into());
            })
            .unwrap();
        }
        let reopened = StateFile::open(&path).unwrap().get();
        assert_eq!(reopened.risks.get("spiffe://td/a").map(String::as_str), Some("high"));
    }
}
