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
use crate::rotation::{IdentityPublisher, RejectedBundle};
use crate::spiffe_id::TrustDomain;
use crate::svid::{Bundle, BundleSet, Identity, MaterialError, Svid};

/// Why the files could not be turned into an identity.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}`: {source}")]
    Material { path: PathBuf, source: MaterialError },
    #[error("federated bundle for `{}`: {}", .0.trust_domain, .0.error)]
    Federated(RejectedBundle),
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

    /// The SVID files (required), then each federated bundle (read or why not).
    async fn read_all(&self) -> Result<Contents, FilesError> {
        let mut required = Vec::new();
        for path in [&self.config.cert, &self.config.key, &self.config.bundle] {
            let bytes =
                tokio::fs::read(path).await.map_err(|source| FilesError::Read { path: path.clone(), source })?;
            required.push(bytes);
        }
        let mut federated = Vec::new();
        for path in self.config.federated_bundles.values() {
            federated.push(tokio::fs::read(path).await.map_err(|e| format!("cannot read `{}`: {e}", path.display())));
        }
        Ok(Contents { required, federated })
    }

    /// Reads and parses the files once, now (for `check`): a federated
    /// bundle that cannot be used is an error here.
    pub fn load_now(&self) -> Result<Identity, FilesError> {
        let c = &self.config;
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|source| FilesError::Read { path: path.clone(), source });
        let required = [&c.cert, &c.key, &c.bundle].into_iter().map(read).collect::<Result<Vec<_>, _>>()?;
        let federated = c.federated_bundles.values().map(read).collect::<Result<Vec<_>, _>>()?;
        let contents = Contents { required, federated: federated.into_iter().map(Ok).collect() };
        let (identity, rejected) = self.parse(&contents)?;
        match rejected.into_iter().next() {
            None => Ok(identity),
            Some(bad) => Err(FilesError::Federated(bad)),
        }
    }

    /// Builds the identity; a federated bundle that cannot be used is left
    /// out and returned (the SVID must not stop rotating over it).
    fn parse(&self, contents: &Contents) -> Result<(Identity, Vec<RejectedBundle>), FilesError> {
        let c = &self.config;
        fn material(path: &std::path::Path) -> impl FnOnce(MaterialError) -> FilesError + '_ {
            move |source| FilesError::Material { path: path.to_path_buf(), source }
        }
        let [cert, key, bundle] = contents.required.as_slice() else {
            // Invariant: read_all reads exactly the three SVID files.
            return Err(FilesError::Material { path: c.cert.clone(), source: MaterialError::EmptyChain });
        };
        let svid = Svid::from_pem(cert, key).map_err(material(&c.cert))?;
        let own = svid.id().trust_domain();
        let mut bundles = BundleSet::default();
        bundles.insert(own.clone(), Bundle::from_pem(&own, bundle).map_err(material(&c.bundle))?);
        let mut rejected = Vec::new();
        for ((td, path), pem) in c.federated_bundles.iter().zip(&contents.federated) {
            let parsed = pem
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|pem| Bundle::from_pem(td, pem).map_err(|e| format!("`{}`: {e}", path.display())));
            match parsed {
                Ok(bundle) if *td != own => bundles.insert(td.clone(), bundle),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(trust_domain = %td, %error, "federated bundle skipped");
                    rejected.push(RejectedBundle { trust_domain: td.to_string(), error });
                }
            }
        }
        Ok((Identity::new(svid, bundles).map_err(material(&c.key))?, rejected))
    }
}

/// What the files held at one look.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    required: Vec<Vec<u8>>,
    federated: Vec<Result<Vec<u8>, String>>,
}

impl SvidSource for FilesSource {
    fn describe(&self) -> String {
        format!("files {}", self.config.cert.display())
    }

    fn run(self: Box<Self>, publisher: IdentityPublisher) -> BoxFuture {
        Box::pin(async move {
            let mut last_seen: Option<Contents> = None;
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
                    Ok((identity, rejected)) => publisher.publish_with(identity, rejected),
                    Err(e) => publisher.failed(&e, true),
                }
                last_seen = Some(contents);
            }
        })
    }
}
