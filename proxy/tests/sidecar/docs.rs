//! The documentation's `curl` examples, run against `a2a-sidecar demo
//! --keep-running` (the real binary). In a ```sh block, a `curl` line that
//! uses the demo's `$A2A_*` variables must end with `# <status>`: the status
//! it gets from the demo's stack (`# 502|403` when either is right). Files
//! run in order README.md, docs/*.md (sorted), each top to bottom, so each
//! file leaves the stack as it found it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::bin;

struct Example {
    at: String,
    command: String,
    /// `# 200`, or `# 502|403` when either is right.
    statuses: Vec<String>,
}

fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (mut in_sh, mut pending, mut start) = (false, String::new(), 0);
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("```") {
                in_sh = line == "```sh" && !in_sh;
                continue;
            }
            if !in_sh {
                continue;
            }
            if pending.is_empty() {
                if !line.starts_with("curl ") {
                    continue;
                }
                start = i + 1;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(line);
            let command = std::mem::take(&mut pending);
            if !command.contains("$A2A_") {
                continue;
            }
            let at = format!("{name}:{start}");
            let statuses: Vec<String> = command
                .split_once(" # ")
                .and_then(|(_, comment)| comment.split_whitespace().next())
                .map(|first| first.split('|').map(str::to_owned).collect())
                .unwrap_or_default();
            assert!(
                !statuses.is_empty() && statuses.iter().all(|s| s.len() == 3 && s.parse::<u16>().is_ok()),
                "{at}: a demo curl example must end with `# <status>`"
            );
            out.push(Example { at, command, statuses });
        }
    }
    out
}

/// Stops the demo (SIGTERM, so it cleans up) when the test ends, passed or not.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

#[test]
fn documented_curl_examples_work_against_the_demo() {
    let examples = examples();
    assert!(examples.len() >= 15, "only {} demo curl examples found", examples.len());
    assert!(Command::new("curl").arg("--version").output().is_ok(), "curl is needed (.ci/run installs it)");

    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("demo.env");
    let mut demo = Demo(
        bin()
            .args(["demo", "--keep-running", "--env-file"])
            .arg(&env_file)
            .stdout(std::fs::File::create(dir.path().join("demo.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !env_file.exists() {
        assert!(demo.0.try_wait().unwrap().is_none(), "the demo exited before its stack was up");
        assert!(Instant::now() < deadline, "the demo did not come up within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // What it printed: the matrix passed, then how to reach the stack (the same values as the file).
    let printed = std::fs::read_to_string(dir.path().join("demo.out")).unwrap();
    let exported = std::fs::read_to_string(&env_file).unwrap();
    assert!(printed.contains(", 0 failed"), "{printed}");
    for line in exported.lines().filter(|l| l.contains("A2A_ADMIN_KEY") || l.contains("A2A_MGMT")) {
        assert!(printed.contains(line), "not printed: {line}");
    }
    let console = exported.lines().find_map(|l| l.strip_prefix("export A2A_CONSOLE=")).expect("the console's address");
    assert!(printed.contains(&format!("The operator console: http://{console}")), "{printed}");
    for command in ["/mgmt/health", "/mgmt/agent-risk", "/mgmt/audit/stream", "/metrics", "$A2A_REPORT/budget/read"] {
        assert!(printed.lines().any(|l| l.starts_with("curl ") && l.contains(command)), "no curl for {command}");
    }

    let mut failures = Vec::new();
    for example in &examples {
        let rest = example.command.trim_start_matches("curl ");
        // A hang guard only (a stream example's own `--max-time`, later on the line, wins).
        let script = format!(". '{}'; curl -o /dev/null -w '%{{http_code}}' --max-time 60 {rest}", env_file.display());
        let output = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        let got = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !example.statuses.contains(&got) {
            failures.push(format!("{}: expected {:?}, got {got:?}: {}", example.at, example.statuses, example.command));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
