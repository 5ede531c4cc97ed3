//! Cgroup-backed operations: pause, resume, pids, stats, resource updates.

use std::sync::Arc;

use ember_agent_api::StatsResponse;
use ember_ttrpc::Status;
use oci_spec::runtime::LinuxResources;

use super::{internal, Agent, Container, R};
use crate::cgroup::Cgroup;

impl Agent {
    fn cgroup_of(&self, id: &str) -> R<(Arc<Container>, Cgroup)> {
        let c = self.container(id)?;
        let cg = c
            .cgroup
            .clone()
            .ok_or_else(|| Status::failed_precondition("cgroups are not available"))?;
        Ok((c, cg))
    }

    pub async fn pause(&self, id: &str) -> R<()> {
        let (c, cg) = self.cgroup_of(id)?;
        if c.init.exited().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is not running"
            )));
        }
        cg.freeze(true).await.map_err(|e| internal("freezing", e))
    }

    pub async fn resume(&self, id: &str) -> R<()> {
        let (_c, cg) = self.cgroup_of(id)?;
        if !cg.is_frozen() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is not paused"
            )));
        }
        cg.freeze(false).await.map_err(|e| internal("thawing", e))
    }

    pub fn list_pids(&self, id: &str) -> R<Vec<u32>> {
        let c = self.container(id)?;
        match &c.cgroup {
            Some(cg) => cg.procs().map_err(|e| internal("reading cgroup.procs", e)),
            None => {
                let mut v = vec![];
                if c.init.exited().is_none() && c.init.pid() > 0 {
                    v.push(c.init.pid() as u32);
                }
                for p in c.execs.lock().unwrap().values() {
                    if p.exited().is_none() && p.pid() > 0 {
                        v.push(p.pid() as u32);
                    }
                }
                Ok(v)
            }
        }
    }

    pub fn stats(&self, id: &str) -> R<StatsResponse> {
        let (_c, cg) = self.cgroup_of(id)?;
        Ok(cg.stats())
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> R<()> {
        let res: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI resources JSON: {e}")))?;
        let (_c, cg) = self.cgroup_of(id)?;
        cg.apply(&res)
            .map_err(|e| Status::invalid_argument(format!("applying resources: {e}")))?;
        // New device rules replace the container's program; none keep it.
        if let Some(d) = res.devices().as_ref().filter(|d| !d.is_empty()) {
            crate::container::device_cgroup::apply(&cg.path, Some(d))
                .map_err(|e| Status::invalid_argument(format!("applying device rules: {e}")))?;
        }
        Ok(())
    }
}
