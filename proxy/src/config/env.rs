//! The environment, behind a trait so tests never touch the process's.

use std::collections::HashMap;
use std::sync::Arc;

pub trait Env: std::fmt::Debug + Send + Sync {
    fn get(&self, name: &str) -> Option<String>;

    /// An owned handle, kept by the config for later reloads (policy enrichment).
    fn snapshot(&self) -> Arc<dyn Env>;
}

/// The real process environment. Empty values count as unset.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn snapshot(&self) -> Arc<dyn Env> {
        Arc::new(ProcessEnv)
    }
}

/// A fixed map, for tests. `Debug` shows the names, never the values.
#[derive(Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl std::fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl MapEnv {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }
}

impl Env for MapEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn snapshot(&self) -> Arc<dyn Env> {
        Arc::new(self.clone())
    }
}
