//! Sandbox records (containerd 1.7's sandbox store), namespaced like containers:
//!
//! ```text
//! sandboxes       <ns> \0 <id>                       -> Sandbox
//! ```
//!
//! As in containerd 1.7, a record needs a valid id (the runtime name may be
//! empty); the runtime name cannot change through a whole-record update; updates
//! name the fields they change (`labels`, `labels.KEY`, `extensions`,
//! `extensions.KEY`, `spec`, `runtime`, `sandboxer`). Filters see `id` and
//! `labels.KEY`, as containerd's do.

use std::collections::BTreeMap;
use std::time::SystemTime;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::db::{key, prefix, Reader, WriteTx};
use crate::filters::{label_field, present, Fields};
use crate::identifiers::{validate, validate_labels};
use crate::{AnyValue, Error, Filter, Labels, Result, Runtime};

pub const SANDBOXES: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("sandboxes");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub runtime: Runtime,
    pub spec: Option<AnyValue>,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, AnyValue>,
    pub sandboxer: String,
}

impl Fields for Sandbox {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "id" => present(&self.id),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

fn validate_sandbox(s: &Sandbox) -> Result<()> {
    validate(&s.id).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("invalid sandbox ID: {m}")),
        e => e,
    })?;
    validate_labels(&s.labels)
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("sandbox {id:?}"))
}

/// A namespace's sandbox.
pub fn get_sandbox(tx: &impl Reader, ns: &str, id: &str) -> Result<Sandbox> {
    tx.get(SANDBOXES, &key(&[ns, id]))?
        .ok_or_else(|| not_found(id))
}

/// A namespace's sandboxes that match `filter`, by id.
pub fn list_sandboxes(tx: &impl Reader, ns: &str, filter: &Filter) -> Result<Vec<Sandbox>> {
    let all: Vec<Sandbox> = tx.scan(SANDBOXES, &prefix(&[ns]))?;
    Ok(all.into_iter().filter(|s| filter.matches(s)).collect())
}

/// Stores a new sandbox; its times are set here.
pub fn create_sandbox(tx: &WriteTx, ns: &str, s: &Sandbox) -> Result<Sandbox> {
    let now = SystemTime::now();
    let s = Sandbox {
        created_at: now,
        updated_at: now,
        ..s.clone()
    };
    validate_sandbox(&s)?;
    tx.ensure_namespace(ns)?;
    let k = key(&[ns, &s.id]);
    if tx.get_raw(SANDBOXES, &k)?.is_some() {
        return Err(Error::AlreadyExists(format!("sandbox {:?}", s.id)));
    }
    tx.put(SANDBOXES, &k, &s)?;
    Ok(s)
}

/// Updates the fields `fieldpaths` names (all updatable ones when empty).
pub fn update_sandbox(
    tx: &WriteTx,
    ns: &str,
    u: &Sandbox,
    fieldpaths: &[String],
) -> Result<Sandbox> {
    let k = key(&[ns, &u.id]);
    let mut s = get_sandbox(tx, ns, &u.id)?;
    let all: Vec<String>;
    let paths = if fieldpaths.is_empty() {
        if s.runtime.name != u.runtime.name {
            return Err(Error::InvalidArgument(
                "sandbox.Runtime.Name field is immutable".into(),
            ));
        }
        all = ["labels", "extensions", "spec", "runtime"]
            .map(String::from)
            .to_vec();
        &all
    } else {
        fieldpaths
    };
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            match u.labels.get(key) {
                Some(v) if !v.is_empty() => s.labels.insert(key.to_string(), v.clone()),
                _ => s.labels.remove(key),
            };
            continue;
        }
        if let Some(key) = path.strip_prefix("extensions.") {
            match u.extensions.get(key) {
                Some(v) => s.extensions.insert(key.to_string(), v.clone()),
                None => s.extensions.remove(key),
            };
            continue;
        }
        match path.as_str() {
            "labels" => s.labels = u.labels.clone(),
            "extensions" => s.extensions = u.extensions.clone(),
            "spec" => s.spec = u.spec.clone(),
            "runtime" => s.runtime = u.runtime.clone(),
            "sandboxer" => s.sandboxer = u.sandboxer.clone(),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {other:?} field on sandbox {:?}",
                    u.id
                )))
            }
        }
    }
    s.updated_at = SystemTime::now();
    validate_sandbox(&s)?;
    tx.put(SANDBOXES, &k, &s)?;
    Ok(s)
}

pub fn delete_sandbox(tx: &WriteTx, ns: &str, id: &str) -> Result<()> {
    if !tx.delete(SANDBOXES, &key(&[ns, id]))? {
        return Err(not_found(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Db;

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: None,
            labels: [("a".to_string(), "1".to_string())].into(),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
            extensions: BTreeMap::new(),
            sandboxer: String::new(),
        }
    }

    #[test]
    fn lifecycle_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("m.redb")).unwrap();
        let made = db
            .update(|tx| create_sandbox(tx, "ns", &sandbox("s1")))
            .unwrap();
        assert!(made.created_at > SystemTime::UNIX_EPOCH);
        let again = db.update(|tx| create_sandbox(tx, "ns", &sandbox("s1")));
        assert!(matches!(again, Err(Error::AlreadyExists(_))));
        // Namespaced.
        db.update(|tx| create_sandbox(tx, "other", &sandbox("s1")))
            .unwrap();
        let bad = db.update(|tx| create_sandbox(tx, "ns", &sandbox("bad id")));
        assert!(matches!(bad, Err(Error::InvalidArgument(_))));
        let mut no_runtime = sandbox("s2");
        no_runtime.runtime.name.clear();
        db.update(|tx| create_sandbox(tx, "ns", &no_runtime))
            .unwrap();

        let mut u = sandbox("s1");
        u.labels = [("b".to_string(), "2".to_string())].into();
        let got = db
            .update(|tx| update_sandbox(tx, "ns", &u, &["labels.b".into()]))
            .unwrap();
        assert_eq!(got.labels.len(), 2);
        let got = db.update(|tx| update_sandbox(tx, "ns", &u, &[])).unwrap();
        assert_eq!(got.labels, u.labels);
        assert_eq!(got.created_at, made.created_at);
        u.runtime.name = "other".into();
        let bad = db.update(|tx| update_sandbox(tx, "ns", &u, &[]));
        assert!(matches!(bad, Err(Error::InvalidArgument(_))));
        let bad = db.update(|tx| update_sandbox(tx, "ns", &u, &["id".into()]));
        assert!(matches!(bad, Err(Error::InvalidArgument(_))));
        let missing = db.update(|tx| update_sandbox(tx, "ns", &sandbox("nope"), &[]));
        assert!(matches!(missing, Err(Error::NotFound(_))));

        let f = Filter::parse_all(&["labels.b==2"]).unwrap();
        let listed = db.view(|tx| list_sandboxes(tx, "ns", &f)).unwrap();
        assert_eq!(listed.len(), 1);
        let f = Filter::parse_all(&["id==s1"]).unwrap();
        assert_eq!(db.view(|tx| list_sandboxes(tx, "ns", &f)).unwrap().len(), 1);
        db.update(|tx| delete_sandbox(tx, "ns", "s1")).unwrap();
        let gone = db.update(|tx| delete_sandbox(tx, "ns", "s1"));
        assert!(matches!(gone, Err(Error::NotFound(_))));
        assert!(db.view(|tx| get_sandbox(tx, "other", "s1")).is_ok());
    }
}
