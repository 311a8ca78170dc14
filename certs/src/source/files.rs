//! SVIDs from PEM files (spiffe-helper's `svid.pem`, `svid_key.pem`,
//! `svid_bundle.pem`), watched and hot-reloaded.
//!
//! The files are polled: that survives the symlink swaps Kubernetes uses for
//! mounted secrets, which inotify watches miss. A set of files that does not
//! parse, or whose key does not match its certificate (a half-finished
//! rotation), is skipped and the current SVID stays in service.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{BoxFuture, SvidSource};
use crate::rotation::IdentityPublisher;
use crate::spiffe_id::TrustDomain;
use crate::svid::{Bundle, BundleSet, Identity, MaterialError, Svid};

/// Why the files could not be turned into an identity.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}`: {source}")]
    Material { path: PathBuf, source: MaterialError },
}

/// Paths of the SVID files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub federated_bundles: BTreeMap<TrustDomain, PathBuf>,
    pub poll_interval: Duration,
}

/// Polls [`FilesConfig`] and publishes each new, valid set of files.
#[derive(Debug, Clone)]
pub struct FilesSource {
    config: FilesConfig,
}

impl FilesSource {
    pub fn new(config: FilesConfig) -> Self {
        Self { config }
    }

    async fn read_all(&self) -> Result<Vec<Vec<u8>>, FilesError> {
        let mut contents = Vec::new();
        for path in self.paths() {
            let bytes =
                tokio::fs::read(path).await.map_err(|source| FilesError::Read { path: path.clone(), source })?;
            contents.push(bytes);
        }
        Ok(contents)
    }

    /// Reads and parses the files once, now (for `check`).
    pub fn load_now(&self) -> Result<Identity, FilesError> {
        let contents = self
            .paths()
            .map(|path| std::fs::read(path).map_err(|source| FilesError::Read { path: path.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        self.parse(&contents)
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        let c = &self.config;
        [&c.cert, &c.key, &c.bundle].into_iter().chain(c.federated_bundles.values())
    }

    /// Builds the identity from file contents in [`Self::paths`] order.
    fn parse(&self, contents: &[Vec<u8>]) -> Result<Identity, FilesError> {
        let c = &self.config;
        fn material(path: &std::path::Path) -> impl FnOnce(MaterialError) -> FilesError + '_ {
            move |source| FilesError::Material { path: path.to_path_buf(), source }
        }
        let [cert, key, bundle, federated @ ..] = contents else {
            // Invariant: read_all returns one entry per path, and there are at least three.
            return Err(FilesError::Material { path: c.cert.clone(), source: MaterialError::EmptyChain });
        };
        let svid = Svid::from_pem(cert, key).map_err(material(&c.cert))?;
        let own = svid.id().trust_domain();
        let mut bundles = BundleSet::default();
        bundles.insert(own.clone(), Bundle::from_pem(&own, bundle).map_err(material(&c.bundle))?);
        for ((td, path), pem) in c.federated_bundles.iter().zip(federated) {
            bundles.insert(td.clone(), Bundle::from_pem(td, pem).map_err(material(path))?);
        }
        Identity::new(svid, bundles).map_err(material(&c.key))
    }
}

impl SvidSource for FilesSource {
    fn describe(&self) -> String {
        format!("files {}", self.config.cert.display())
    }

    fn run(self: Box<Self>, publisher: IdentityPublisher) -> BoxFuture {
        Box::pin(async move {
            let mut last_seen: Option<Vec<Vec<u8>>> = None;
            let mut tick = tokio::time::interval(self.config.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let contents = match self.read_all().await {
                    Ok(contents) => contents,
                    Err(e) => {
                        publisher.failed(&e, false);
                        continue;
                    }
                };
                if last_seen.as_ref() == Some(&contents) {
                    continue;
                }
                match self.parse(&contents) {
                    Ok(identity) => publisher.publish(identity),
                    Err(e) => publisher.failed(&e, true),
                }
                last_seen = Some(contents);
            }
        })
    }
}
