//! OCI image layouts assembled from files with the system's `tar`, `gzip` and
//! `zstd`, so that `skopeo copy oci:DIR:NAME docker://...` pushes images Ember
//! did not write itself: single images and multi-platform indexes, with plain,
//! gzip and zstd layers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// How a layer's tar is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A layer as stored: its descriptor and the digest of its uncompressed tar.
#[derive(Clone, Debug)]
pub struct Layer {
    pub desc: Value,
    pub diff_id: String,
}

impl Layer {
    pub fn digest(&self) -> String {
        self.desc["digest"].as_str().unwrap().to_string()
    }
}

/// An OCI image layout directory being filled.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<Value>,
}

fn filter(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

/// A reproducible tar of a directory's contents.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar of {}", dir.display());
    out.stdout
}

/// A tar holding `files` (`path`, contents), directories made as needed.
pub fn tar_of(scratch: &Path, files: &[(&str, &[u8])]) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(scratch);
    for (path, data) in files {
        let p = scratch.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let t = tar_dir(scratch);
    std::fs::remove_dir_all(scratch).unwrap();
    t
}

/// The tar of a busybox root filesystem.
pub fn busybox_tar(scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    ember_guest::busybox_rootfs(scratch).unwrap();
    let t = tar_dir(scratch);
    std::fs::remove_dir_all(scratch).unwrap();
    t
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => filter(Command::new("gzip").args(["-n", "-c"]), tar),
        Compression::Zstd => filter(Command::new("zstd").args(["-q", "-c"]), tar),
    }
}

/// Incompressible bytes (from the kernel's generator).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": ember_images::sha256_digest(data),
        "size": data.len(),
    })
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        }
    }

    /// Stores a blob and returns its descriptor.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let d = descriptor(media_type, data);
        let hex = d["digest"].as_str().unwrap().trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), data).unwrap();
        d
    }

    pub fn layer(&self, tar: &[u8], c: Compression) -> Layer {
        let desc = self.blob(c.media_type(), &compress(tar, c));
        Layer {
            desc,
            diff_id: ember_images::sha256_digest(tar),
        }
    }

    /// An image manifest for `linux/<arch>` running `sh`; its descriptor carries
    /// the platform, as an index lists it.
    pub fn image(&self, arch: &str, layers: &[Layer]) -> Value {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
                "WorkingDir": "/"
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()
            },
            "history": [{"created_by": "assembled by an Ember test"}]
        });
        let config = self.blob(
            ember_images::MEDIA_TYPE_OCI_CONFIG,
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": ember_images::MEDIA_TYPE_OCI_MANIFEST,
            "config": config,
            "layers": layers.iter().map(|l| l.desc.clone()).collect::<Vec<_>>(),
        });
        let mut d = self.blob(
            ember_images::MEDIA_TYPE_OCI_MANIFEST,
            manifest.to_string().as_bytes(),
        );
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    }

    /// An index of `manifests` (descriptors with platforms).
    pub fn index(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": ember_images::MEDIA_TYPE_OCI_INDEX,
            "manifests": manifests,
        });
        self.blob(
            ember_images::MEDIA_TYPE_OCI_INDEX,
            index.to_string().as_bytes(),
        )
    }

    /// Names `desc` (a manifest or index) `name` in the layout's `index.json`.
    pub fn name(&mut self, name: &str, desc: &Value) {
        let mut d = desc.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        d["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
        self.refs.push(d);
        let top = json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(self.dir.join("index.json"), top.to_string()).unwrap();
    }

    /// `skopeo copy` of the layout's image `name` to `dest` (`host/repo:tag`,
    /// plain HTTP), every platform of an index included.
    pub fn skopeo_push(&self, name: &str, dest: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{name}", self.dir.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
