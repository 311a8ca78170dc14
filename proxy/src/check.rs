//! `a2a-sidecar check`: load and validate everything, print a summary.

use std::fmt::Write as _;

use certs::source::FilesSource;

use crate::config::{Config, IdentityConfig};

/// A human summary of a valid config, or the first problem found in the
/// material it points at (SVID files, dev CA).
pub fn summarize(config: &Config) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(out, "config: {} is valid", config.path.display());
    match &config.identity {
        IdentityConfig::WorkloadApi { endpoint } => {
            let _ = writeln!(out, "identity: workload_api at {endpoint} (not contacted by check)");
        }
        IdentityConfig::Files(files) => {
            let identity = FilesSource::new(files.clone())
                .load_now()
                .map_err(|e| format!("`{}`: `identity.files`: {e}", config.path.display()))?;
            let svid = identity.svid();
            let _ = writeln!(
                out,
                "identity: files, {} (serial {}, expires {}), trust domains: {}",
                svid.id(),
                svid.serial(),
                humantime_utc(svid.not_after()),
                identity.bundles().trust_domains().map(|td| td.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        IdentityConfig::Dev { ca_dir, id, ttl } => {
            #[cfg(feature = "dev")]
            certs::dev::DevCa::load(ca_dir)
                .map_err(|e| format!("`{}`: `identity.dev.ca_dir`: {e}", config.path.display()))?;
            let _ = writeln!(out, "identity: dev CA {} issuing {id} every {ttl:?}", ca_dir.display());
        }
    }
    let threads = config.runtime.worker_threads.map_or("one per CPU".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "runtime: worker_threads {threads}");
    let _ = writeln!(out, "telemetry: {} ({:?} logs)", config.telemetry.listen, config.telemetry.log_format);
    Ok(out)
}

/// RFC 3339-ish UTC time for humans, without another dependency.
fn humantime_utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    format!("@{secs} (unix)")
}
