//! OCI hooks, run on the host by the shim as runc runs them: the hook's `path` with
//! its `args` (argv, `args[0]` included) and exactly its `env`, the container's OCI
//! state JSON on stdin, killed after its `timeout` seconds.
//!
//! `createRuntime` and `prestart` run once the VM (the sandbox) exists and the
//! container is created in it, before Create returns; one that fails fails Create.
//! `poststart` runs after Start and `poststop` on Delete; their failures are logged.
//! `createContainer` and `startContainer` run in the container's namespaces under
//! runc: inside a VM no host binary can run there, so a spec with them is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// One hook of the runtime spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// The hooks the shim runs, by point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("bad hooks in the runtime spec: {0}")]
    Spec(String),
    #[error(
        "{0} hooks are not supported: they run in the container's namespaces, inside the \
         VM, where host binaries cannot run (use prestart or createRuntime, which run on the host)"
    )]
    Unsupported(&'static str),
    #[error("{kind} hook #{index} ({path}): {what}")]
    Failed {
        kind: &'static str,
        index: usize,
        path: String,
        what: String,
    },
}

/// The OCI state a hook reads on stdin.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    pub pid: u32,
    pub bundle: String,
    pub annotations: HashMap<String, String>,
}

impl State {
    pub fn with_status(&self, status: &str) -> State {
        State {
            status: status.into(),
            ..self.clone()
        }
    }
}

impl Hooks {
    /// The hooks of a runtime spec (none when it has no `hooks`). Hooks the shim
    /// cannot run are refused here, before anything is made.
    pub fn from_spec(spec: &serde_json::Value) -> Result<Hooks, HookError> {
        let Some(h) = spec.get("hooks").filter(|h| !h.is_null()) else {
            return Ok(Hooks::default());
        };
        let hooks: Hooks =
            serde_json::from_value(h.clone()).map_err(|e| HookError::Spec(e.to_string()))?;
        if !hooks.create_container.is_empty() {
            return Err(HookError::Unsupported("createContainer"));
        }
        if !hooks.start_container.is_empty() {
            return Err(HookError::Unsupported("startContainer"));
        }
        for (kind, list) in [
            ("prestart", &hooks.prestart),
            ("createRuntime", &hooks.create_runtime),
            ("poststart", &hooks.poststart),
            ("poststop", &hooks.poststop),
        ] {
            for (i, hk) in list.iter().enumerate() {
                if !hk.path.is_absolute() {
                    return Err(HookError::Spec(format!(
                        "{kind} hook #{i}: path {} is not absolute",
                        hk.path.display()
                    )));
                }
                if hk.timeout.is_some_and(|t| t <= 0) {
                    return Err(HookError::Spec(format!(
                        "{kind} hook #{i}: timeout must be positive"
                    )));
                }
            }
        }
        Ok(hooks)
    }
}

/// Output kept from a failing hook, per stream.
const KEEP_OUTPUT: usize = 4096;

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[b.len().saturating_sub(KEEP_OUTPUT)..]);
    s.trim().to_string()
}

/// Runs one hook to its end.
async fn run_one(
    kind: &'static str,
    index: usize,
    hook: &Hook,
    state: &[u8],
) -> Result<(), HookError> {
    let fail = |what: String| HookError::Failed {
        kind,
        index,
        path: hook.path.display().to_string(),
        what,
    };
    let mut cmd = tokio::process::Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in &hook.env {
        match kv.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(kv, ""),
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| fail(format!("starting it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is fine (EPIPE ignored).
        let _ = stdin.write_all(state).await;
    }
    let out = child.wait_with_output();
    let out = match hook.timeout {
        Some(t) => tokio::time::timeout(Duration::from_secs(t as u64), out)
            .await
            .map_err(|_| fail(format!("timed out after {t}s (killed)")))?,
        None => out.await,
    }
    .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(fail(format!(
        "{}, stdout: {:?}, stderr: {:?}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    )))
}

/// Runs `hooks` in order; the first failure stops them.
pub async fn run(kind: &'static str, hooks: &[Hook], state: &State) -> Result<(), HookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(state).map_err(|e| HookError::Spec(e.to_string()))?;
    for (i, h) in hooks.iter().enumerate() {
        run_one(kind, i, h, &json).await?;
    }
    Ok(())
}

/// Runs `hooks` in order, logging failures (poststart, poststop).
pub async fn run_logged(kind: &'static str, hooks: &[Hook], state: &State) {
    if hooks.is_empty() {
        return;
    }
    let Ok(json) = serde_json::to_vec(state) else {
        return;
    };
    for (i, h) in hooks.iter().enumerate() {
        if let Err(e) = run_one(kind, i, h, &json).await {
            tracing::warn!(container = %state.id, "{e}");
        }
    }
}

/// The step after a container exists in the VM, before Create returns:
/// `createRuntime` then `prestart` hooks (status `creating`). The network
/// interfaces they may have added are wired to the VM right after, by the caller
/// (`Task::after_create_hooks`).
pub async fn after_create(hooks: &Hooks, state: &State) -> Result<(), HookError> {
    let st = state.with_status("creating");
    run("createRuntime", &hooks.create_runtime, &st).await?;
    run("prestart", &hooks.prestart, &st).await
}

impl From<HookError> for ember_ttrpc::Status {
    fn from(e: HookError) -> Self {
        let code = match e {
            HookError::Spec(_) => ember_ttrpc::Code::InvalidArgument,
            HookError::Unsupported(_) => ember_ttrpc::Code::Unimplemented,
            HookError::Failed { .. } => ember_ttrpc::Code::FailedPrecondition,
        };
        ember_ttrpc::Status::new(code, e.to_string())
    }
}

/// A created container's hooks and the state they are given.
#[derive(Debug, Clone, Default)]
pub struct ContainerHooks {
    pub hooks: Hooks,
    pub state: Option<State>,
}

impl ContainerHooks {
    /// After Start (status `running`); failures are logged.
    pub async fn poststart(&self, pid: u32) {
        if let Some(s) = &self.state {
            let st = State {
                pid,
                ..s.with_status("running")
            };
            run_logged("poststart", &self.hooks.poststart, &st).await;
        }
    }

    /// On Delete (status `stopped`); failures are logged.
    pub async fn poststop(&self) {
        if let Some(s) = &self.state {
            run_logged("poststop", &self.hooks.poststop, &s.with_status("stopped")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> State {
        State {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: "creating".into(),
            pid: 4242,
            bundle: "/b".into(),
            annotations: [("k".to_string(), "v".to_string())].into(),
        }
    }

    fn sh_hook(script: &str) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["HOOKVAR=x=y".into()],
            timeout: None,
        }
    }

    #[test]
    fn spec_parsing() {
        let h = Hooks::from_spec(&json!({"hooks": {
            "prestart": [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 5}],
            "poststop": [{"path": "/bin/true"}]
        }}))
        .unwrap();
        assert_eq!(h.prestart[0].timeout, Some(5));
        assert_eq!(h.poststop.len(), 1);
        assert_eq!(Hooks::from_spec(&json!({})).unwrap(), Hooks::default());
        let e =
            Hooks::from_spec(&json!({"hooks": {"createContainer": [{"path": "/x"}]}})).unwrap_err();
        assert!(
            e.to_string()
                .contains("createContainer hooks are not supported"),
            "{e}"
        );
        let e =
            Hooks::from_spec(&json!({"hooks": {"startContainer": [{"path": "/x"}]}})).unwrap_err();
        assert!(e.to_string().contains("startContainer"), "{e}");
        let e = Hooks::from_spec(&json!({"hooks": {"prestart": [{"path": "rel"}]}})).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = Hooks::from_spec(&json!({"hooks": {"prestart": [{"args": []}]}})).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }

    #[tokio::test]
    async fn a_hook_reads_the_state_with_its_own_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state.json");
        let hook = sh_hook(&format!(
            "cat > {0}; echo \"$HOOKVAR:$0:${{HOME:-nohome}}\" > {0}.env",
            out.display()
        ));
        run("prestart", &[hook], &state()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4242,
                   "bundle": "/b", "annotations": {"k": "v"}})
        );
        let env = std::fs::read_to_string(dir.path().join("state.json.env")).unwrap();
        assert_eq!(env.trim(), "x=y:sh:nohome");
    }

    #[tokio::test]
    async fn failures_and_timeouts_name_the_hook() {
        let e = run(
            "prestart",
            &[sh_hook("true"), sh_hook("echo broken >&2; exit 3")],
            &state(),
        )
        .await
        .unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("prestart hook #1 (/bin/sh)"), "{m}");
        assert!(m.contains("exit status: 3") && m.contains("broken"), "{m}");
        let mut slow = sh_hook("sleep 30");
        slow.timeout = Some(1);
        let t0 = std::time::Instant::now();
        let e = run("createRuntime", &[slow], &state()).await.unwrap_err();
        assert!(e.to_string().contains("timed out after 1s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let missing = Hook {
            path: "/nonexistent/hook".into(),
            args: vec![],
            env: vec![],
            timeout: None,
        };
        let e = run("prestart", &[missing], &state()).await.unwrap_err();
        assert!(e.to_string().contains("starting it"), "{e}");
    }
}
