//! The image side of `ember run`: finding the image, its config, its snapshot chain,
//! and the OCI runtime spec built from them and the flags.

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::tonic::Code;
use ember_images::Descriptor;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Conn;

/// The type URL containerd gives OCI runtime specs.
pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process part of an image config (`config` in the OCI image config).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ProcessConfig>,
}

/// An image as `run` needs it.
pub struct Image {
    pub name: String,
    pub config: ProcessConfig,
    /// Chain id of the top layer: the snapshot parent.
    pub top: String,
}

/// Looks `name` up as given, then normalized (`busybox` → `docker.io/library/busybox:latest`).
pub async fn image(conn: &Conn, name: &str) -> Result<Image> {
    let mut images = ImagesClient::new(conn.channel.clone());
    let mut candidates = vec![name.to_string()];
    if let Some(n) = ember_images::reference::normalize(name) {
        if n != name {
            candidates.push(n);
        }
    }
    for c in &candidates {
        let r = images
            .get(conn.req(api::GetImageRequest { name: c.clone() }))
            .await;
        let img = match r {
            Ok(r) => r.into_inner().image.context("daemon returned no image")?,
            Err(s) if s.code() == Code::NotFound => continue,
            Err(s) => return Err(super::rpc(s)),
        };
        let t = img.target.context("image has no target")?;
        let target = Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: t.annotations.into_iter().collect(),
            platform: None,
        };
        let (bytes, chain) =
            crate::client::images::config_and_chain(&conn.opts, conn.channel.clone(), &target)
                .await
                .with_context(|| format!("reading image {c}"))?;
        let doc: ConfigDoc = serde_json::from_slice(&bytes).context("image config")?;
        let top = chain
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("image {c} has no layers"))?;
        return Ok(Image {
            name: img.name,
            config: doc.config.unwrap_or_default(),
            top,
        });
    }
    Err(MissingImage(name.to_string()).into())
}

/// The image `run` was asked for is not in the daemon's image store.
#[derive(Debug)]
pub struct MissingImage(pub String);

impl std::fmt::Display for MissingImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image {} not found locally (`ember pull {}` fetches it)",
            self.0, self.0
        )
    }
}

impl std::error::Error for MissingImage {}

/// What the flags add to the image's process.
#[derive(Default)]
pub struct ProcessOpts {
    pub args: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub terminal: bool,
}

/// `uid[:gid]`, numeric (or `root`).
pub fn parse_user(u: &str) -> Result<(u32, u32)> {
    let (user, group) = u.split_once(':').unwrap_or((u, ""));
    let num = |s: &str, what: &str| -> Result<u32> {
        match s {
            "root" => Ok(0),
            s => s
                .parse()
                .map_err(|_| anyhow!("{what} {s:?}: only numeric ids (or root) are supported")),
        }
    };
    let uid = if user.is_empty() {
        0
    } else {
        num(user, "user")?
    };
    let gid = if group.is_empty() {
        uid
    } else {
        num(group, "group")?
    };
    Ok((uid, gid))
}

/// Merges `KEY=VALUE` lists: later keys replace earlier ones.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.iter().chain(extra) {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        out.retain(|o| o.split_once('=').map(|(k, _)| k).unwrap_or(o) != key);
        out.push(e.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.into());
    }
    out
}

/// The process JSON of a spec.
pub fn process(image: &ProcessConfig, o: &ProcessOpts) -> Result<Value> {
    let entry: Vec<String> = match &o.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if o.args.is_empty() && o.entrypoint.is_none() {
        image.cmd.clone().unwrap_or_default()
    } else {
        o.args.clone()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!("no command: the image has neither entrypoint nor cmd, and none was given");
    }
    let env = merge_env(image.env.as_deref().unwrap_or_default(), &o.env);
    let cwd = o
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = o
        .user
        .clone()
        .or_else(|| image.user.clone())
        .unwrap_or_default();
    let (uid, gid) = parse_user(&user)?;
    Ok(json!({
        "terminal": o.terminal,
        "user": { "uid": uid, "gid": gid },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": caps(),
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true
    }))
}

fn caps() -> Value {
    let c = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({ "bounding": c, "effective": c, "permitted": c })
}

/// A bind mount from `-v HOST:CTR[:ro]`.
pub fn volume(v: &str) -> Result<Value> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => bail!("volume {v:?} is not HOST:CONTAINER[:ro]"),
    };
    bind(src, dst, ro, v)
}

/// A bind mount from `--mount type=bind,source=...,target=...[,readonly]`.
pub fn mount_flag(m: &str) -> Result<Value> {
    let (mut kind, mut src, mut dst, mut ro) = ("bind", "", "", false);
    for kv in m.split(',') {
        match kv.split_once('=') {
            Some(("type", t)) => kind = t,
            Some(("source" | "src", s)) => src = s,
            Some(("target" | "destination" | "dst", d)) => dst = d,
            Some(("readonly" | "ro", v)) => ro = v != "false",
            None if kv == "readonly" || kv == "ro" => ro = true,
            _ => bail!("--mount {m:?}: unknown option {kv:?}"),
        }
    }
    if kind != "bind" {
        bail!("--mount {m:?}: only type=bind is supported");
    }
    bind(src, dst, ro, m)
}

fn bind(src: &str, dst: &str, ro: bool, what: &str) -> Result<Value> {
    if !src.starts_with('/') || !dst.starts_with('/') {
        bail!("mount {what:?}: source and target must be absolute paths");
    }
    if !std::path::Path::new(src).exists() {
        bail!("mount {what:?}: {src} does not exist");
    }
    let mut opts = vec!["rbind", "rprivate"];
    opts.push(if ro { "ro" } else { "rw" });
    Ok(json!({ "destination": dst, "type": "bind", "source": src, "options": opts }))
}

/// The whole runtime spec, with containerd's default mounts and namespaces.
pub fn spec(
    id: &str,
    process: Value,
    binds: Vec<Value>,
    annotations: &[(String, String)],
) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    mounts.extend(binds);
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let hostname: String = id.chars().take(12).collect();
    json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": { "path": "rootfs" },
        "hostname": hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "cgroupsPath": format!("/ember/{id}"),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_from_image_and_flags() {
        let img = ProcessConfig {
            entrypoint: Some(vec!["/bin/ep".into()]),
            cmd: Some(vec!["a".into()]),
            env: Some(vec!["PATH=/bin".into(), "X=1".into()]),
            working_dir: Some("/w".into()),
            user: Some("5:6".into()),
        };
        let p = process(&img, &ProcessOpts::default()).unwrap();
        assert_eq!(p["args"], json!(["/bin/ep", "a"]));
        assert_eq!(p["cwd"], "/w");
        assert_eq!(p["user"], json!({"uid": 5, "gid": 6}));
        let o = ProcessOpts {
            args: vec!["b".into()],
            env: vec!["X=2".into()],
            workdir: Some("/x".into()),
            ..Default::default()
        };
        let p = process(&img, &o).unwrap();
        assert_eq!(p["args"], json!(["/bin/ep", "b"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "X=2"]));
        assert_eq!(p["cwd"], "/x");
        assert!(process(&ProcessConfig::default(), &ProcessOpts::default()).is_err());
        assert!(parse_user("bob").is_err());
    }

    #[test]
    fn volumes() {
        assert!(volume("/tmp:/data:ro").unwrap()["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        assert!(volume("rel:/data").is_err());
        assert!(volume("/tmp").is_err());
        assert!(mount_flag("type=bind,source=/tmp,target=/t,readonly").is_ok());
        assert!(mount_flag("type=volume,source=x,target=/t").is_err());
    }
}
