//! Stamps the binary with the commit it was built from (`a2a-sidecar
//! --version`, `a2a_build_info`): `A2A_GIT_COMMIT` when set (a container
//! build has no `.git`), else `git rev-parse`, else `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=A2A_GIT_COMMIT");
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        let path = git.join(watched);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let commit = std::env::var("A2A_GIT_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let commit = commit.filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'));
    println!("cargo:rustc-env=A2A_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
