//! `containerd.services.introspection.v1.Introspection`: the plugins and their
//! state, and who this server is (a UUID kept under the plugin's root).

use std::sync::Arc;

use containerd_client::google::rpc::Status as RpcStatus;
use containerd_client::services::v1::{
    Plugin, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
};
use containerd_client::types::Platform;
use ember_metadata::filters::{present, Fields};
use tonic::{Code, Request, Response, Status};

use crate::daemon::{DaemonInfo, PluginSummary};
use crate::grpc::introspection::introspection_server::{Introspection, IntrospectionServer};
use crate::plugin::{InitError, Registration, GRPC, SNAPSHOTTER};
use crate::services::{filter, GrpcService};

pub fn registration(info: Arc<DaemonInfo>) -> Registration {
    Registration::new(GRPC, "introspection", &["*"], move |ctx| {
        let uuid = load_uuid(&ctx.root)?;
        let service = Service {
            info: info.clone(),
            uuid,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(IntrospectionServer::new(service.clone())));
        }))
    })
}

/// The server's UUID, made on first start.
fn load_uuid(dir: &std::path::Path) -> Result<String, InitError> {
    let path = dir.join("uuid");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if uuid::Uuid::parse_str(&s).is_ok() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join("uuid.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[derive(Clone)]
pub struct Service {
    info: Arc<DaemonInfo>,
    uuid: String,
}

fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.into(),
        architecture: arch.into(),
        variant: String::new(),
        os_version: String::new(),
    }
}

fn to_wire(p: &PluginSummary) -> Plugin {
    let platforms = if p.plugin_type == SNAPSHOTTER {
        vec![host_platform()]
    } else {
        vec![]
    };
    Plugin {
        r#type: p.plugin_type.clone(),
        id: p.id.clone(),
        requires: p.requires.clone(),
        platforms,
        exports: p
            .exports
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capabilities: p.capabilities.clone(),
        init_err: p.error.as_ref().map(|e| RpcStatus {
            // containerd's clients show FailedPrecondition as "skip".
            code: if p.skipped {
                Code::FailedPrecondition as i32
            } else {
                Code::Unknown as i32
            },
            message: e.clone(),
            details: vec![],
        }),
    }
}

impl Fields for PluginSummary {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "type" => present(&self.plugin_type),
            "id" => present(&self.id),
            "capabilities" => present(&self.capabilities.join(",")),
            "requires" => present(&self.requires.join(",")),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl Introspection for Service {
    async fn plugins(
        &self,
        r: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        let f = filter(&r.into_inner().filters)?;
        let plugins = self
            .info
            .plugins()
            .iter()
            .filter(|p| f.matches(*p))
            .map(to_wire)
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _r: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|l| {
                let s = l.to_string_lossy().to_string();
                s.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
            })
            .unwrap_or(0);
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: std::process::id() as u64,
            pidns,
            deprecations: vec![],
        }))
    }

    async fn plugin_info(
        &self,
        r: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        let r = r.into_inner();
        let p = self
            .info
            .plugins()
            .iter()
            .find(|p| p.plugin_type == r.r#type && p.id == r.id)
            .ok_or_else(|| Status::not_found(format!("plugin {}.{}: not found", r.r#type, r.id)))?;
        // As containerd 2.x: a plugin that did not come up has no instance to ask.
        if let Some(e) = &p.error {
            return Err(Status::failed_precondition(format!(
                "failed to get plugin instance {}.{}: {e}: failed precondition",
                r.r#type, r.id
            )));
        }
        Ok(Response::new(PluginInfoResponse {
            plugin: Some(to_wire(p)),
            extra: None,
        }))
    }
}
