//! The plugin registry.
//!
//! Everything the daemon is made of is a plugin identified by type and id
//! (`io.containerd.snapshotter.v1` / `overlayfs`), as in containerd. A plugin
//! declares the types it needs; plugins are initialised in dependency order and the
//! outcome of each (an instance, or the reason it failed or was skipped) is kept and
//! reported by the introspection service. A failed plugin does not stop the daemon
//! unless the configuration lists it in `required_plugins`.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::config::Config;

pub const CONTENT: &str = "io.containerd.content.v1";
pub const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
pub const DIFFER: &str = "io.containerd.differ.v1";
pub const METADATA: &str = "io.containerd.metadata.v1";
pub const EVENT: &str = "io.containerd.event.v1";
pub const GRPC: &str = "io.containerd.grpc.v1";
pub const RUNTIME: &str = "io.containerd.runtime.v2";
pub const INTERNAL: &str = "io.containerd.internal.v1";
pub const SERVICE: &str = "io.containerd.service.v1";

pub type Instance = Arc<dyn Any + Send + Sync>;

/// What initialising a plugin needs.
pub struct InitContext<'a> {
    /// The plugin's own directory under the daemon root (`<root>/<type>.<id>`);
    /// created on demand by the plugin.
    pub root: PathBuf,
    /// The plugin's directory under the daemon state directory.
    pub state: PathBuf,
    pub config: &'a Config,
    /// The plugin's configuration section, if any.
    pub section: Option<&'a toml::Value>,
    /// Plugins initialised so far.
    pub registry: &'a Registry,
    /// Filled by the init function: what the plugin reports about itself.
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
}

type InitFn = Box<dyn FnOnce(&mut InitContext) -> Result<Instance, InitError> + Send>;

/// Why a plugin did not come up.
#[derive(Debug)]
pub enum InitError {
    /// Not usable on this host (reported as "skip").
    Skip(String),
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for InitError {
    fn from(e: E) -> Self {
        InitError::Failed(format!("{e:#}"))
    }
}

pub struct Registration {
    pub plugin_type: &'static str,
    pub id: String,
    /// Plugin types this one uses; `"*"` means every other type.
    pub requires: Vec<&'static str>,
    pub init: InitFn,
}

impl Registration {
    pub fn new(
        plugin_type: &'static str,
        id: impl Into<String>,
        requires: &[&'static str],
        init: impl FnOnce(&mut InitContext) -> Result<Instance, InitError> + Send + 'static,
    ) -> Self {
        Registration {
            plugin_type,
            id: id.into(),
            requires: requires.to_vec(),
            init: Box::new(init),
        }
    }
}

/// An initialised (or failed) plugin.
pub struct Plugin {
    pub plugin_type: String,
    pub id: String,
    pub requires: Vec<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub result: Result<Instance, String>,
    pub skipped: bool,
}

impl Plugin {
    pub fn uri(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }
}

#[derive(Default)]
pub struct Registry {
    plugins: Vec<Plugin>,
}

impl Registry {
    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// The instance of a plugin, downcast to what it is known to be.
    pub fn get<T: Any + Send + Sync>(&self, plugin_type: &str, id: &str) -> Result<Arc<T>, String> {
        let p = self
            .plugins
            .iter()
            .find(|p| p.plugin_type == plugin_type && p.id == id)
            .ok_or_else(|| format!("plugin {plugin_type}.{id} not loaded"))?;
        let inst = p
            .result
            .as_ref()
            .map_err(|e| format!("plugin {plugin_type}.{id} failed: {e}"))?;
        inst.clone()
            .downcast::<T>()
            .map_err(|_| format!("plugin {plugin_type}.{id} has an unexpected type"))
    }

    /// The working instances of a type, by id.
    pub fn all<T: Any + Send + Sync>(&self, plugin_type: &str) -> Vec<(String, Arc<T>)> {
        self.plugins
            .iter()
            .filter(|p| p.plugin_type == plugin_type)
            .filter_map(|p| {
                let inst = p.result.as_ref().ok()?.clone().downcast::<T>().ok()?;
                Some((p.id.clone(), inst))
            })
            .collect()
    }

    /// The first working instance of a type.
    pub fn first<T: Any + Send + Sync>(&self, plugin_type: &str) -> Result<Arc<T>, String> {
        self.all::<T>(plugin_type)
            .into_iter()
            .next()
            .map(|(_, i)| i)
            .ok_or_else(|| format!("no {plugin_type} plugin loaded"))
    }
}

/// Orders registrations so that every plugin comes after the types it requires
/// (stable otherwise).
fn sort(mut regs: Vec<Registration>) -> Vec<Registration> {
    let mut out: Vec<Registration> = Vec::with_capacity(regs.len());
    while !regs.is_empty() {
        let ready = regs.iter().position(|r| {
            r.requires.iter().all(|t| {
                let pending = |other: &Registration| {
                    !std::ptr::eq(other, r)
                        && (*t == "*" || other.plugin_type == *t)
                        && !(other.requires.contains(&"*") && *t == "*")
                };
                !regs.iter().any(pending)
            })
        });
        // A cycle: take the first one and let its init report what is missing.
        let i = ready.unwrap_or(0);
        out.push(regs.remove(i));
    }
    out
}

/// Initialises the registrations the configuration does not disable.
pub fn init_all(config: &Config, regs: Vec<Registration>) -> Registry {
    let mut registry = Registry::default();
    for reg in sort(regs) {
        if config.is_disabled(reg.plugin_type, &reg.id) {
            tracing::info!(plugin_type = reg.plugin_type, id = %reg.id, "plugin disabled");
            continue;
        }
        let uri = format!("{}.{}", reg.plugin_type, reg.id);
        let mut ctx = InitContext {
            root: config.root.join(&uri),
            state: config.state.join(&uri),
            config,
            section: config.plugin(reg.plugin_type, &reg.id),
            registry: &registry,
            exports: BTreeMap::new(),
            capabilities: Vec::new(),
        };
        tracing::debug!(plugin = %uri, "loading plugin");
        let result = (reg.init)(&mut ctx);
        let (exports, capabilities) = (ctx.exports, ctx.capabilities);
        let (result, skipped) = match result {
            Ok(i) => (Ok(i), false),
            Err(InitError::Skip(why)) => {
                tracing::info!(plugin = %uri, reason = %why, "plugin skipped");
                (Err(why), true)
            }
            Err(InitError::Failed(why)) => {
                tracing::warn!(plugin = %uri, error = %why, "plugin failed to load");
                (Err(why), false)
            }
        };
        registry.plugins.push(Plugin {
            plugin_type: reg.plugin_type.to_string(),
            id: reg.id,
            requires: reg.requires.iter().map(|s| s.to_string()).collect(),
            exports,
            capabilities,
            result,
            skipped,
        });
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_results_and_lookup() {
        let regs = vec![
            Registration::new(GRPC, "b", &[METADATA], |ctx| {
                let n = ctx
                    .registry
                    .get::<u32>(METADATA, "m")
                    .map_err(InitError::Failed)?;
                Ok(Arc::new(*n + 1) as Instance)
            }),
            Registration::new(METADATA, "m", &[CONTENT], |ctx| {
                ctx.exports.insert("k".into(), "v".into());
                Ok(Arc::new(41u32) as Instance)
            }),
            Registration::new(CONTENT, "bad", &[], |_| {
                Err(InitError::Failed("broken".into()))
            }),
            Registration::new(SNAPSHOTTER, "skipped", &[], |_| {
                Err(InitError::Skip("no".into()))
            }),
            Registration::new(SNAPSHOTTER, "off", &[], |_| {
                panic!("disabled plugins do not run")
            }),
        ];
        let config = Config {
            disabled_plugins: vec![format!("{SNAPSHOTTER}.off")],
            ..Default::default()
        };
        let r = init_all(&config, regs);
        let order: Vec<_> = r.plugins().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(order, ["bad", "m", "b", "skipped"]);
        assert_eq!(*r.get::<u32>(GRPC, "b").unwrap(), 42);
        assert!(r.get::<u32>(CONTENT, "bad").unwrap_err().contains("broken"));
        assert!(r.plugins()[3].skipped);
        assert_eq!(r.plugins()[1].exports["k"], "v");
        assert!(r.get::<String>(GRPC, "b").is_err());
    }
}
