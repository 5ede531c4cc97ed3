//! A real registry on loopback for tests and benchmarks: Debian's
//! `docker-registry` (distribution 2.x) with filesystem storage in a directory of
//! the caller's, on a free port, optionally behind htpasswd basic auth or TLS
//! with a self-signed certificate.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's registry binary.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// Whether a registry can be started here.
pub fn available() -> bool {
    Path::new(DOCKER_REGISTRY).exists()
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// How a registry is set up.
#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// Storage shared with another registry process, if given.
    pub storage: Option<PathBuf>,
    /// `(user, password)` for htpasswd basic auth.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1 (`cert.pem` in
    /// the registry's directory).
    pub tls: bool,
}

/// A running `docker-registry`.
pub struct TestRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    pub dir: PathBuf,
    pub storage: PathBuf,
    /// The certificate clients trust when `tls` was asked for.
    pub cert: Option<PathBuf>,
    child: Option<Child>,
}

fn bcrypt(password: &str) -> std::io::Result<String> {
    // glibc's crypt(3) does bcrypt ($2b$, which distribution reads).
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .stderr(Stdio::null())
        .output()?;
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !h.starts_with("$2") {
        return Err(std::io::Error::other("no bcrypt from python3's crypt"));
    }
    Ok(h)
}

impl TestRegistry {
    /// Starts a registry with its files under `dir`.
    pub fn start(dir: &Path, opts: &RegistryOptions) -> std::io::Result<TestRegistry> {
        std::fs::create_dir_all(dir)?;
        let storage = opts.storage.clone().unwrap_or_else(|| dir.join("storage"));
        std::fs::create_dir_all(&storage)?;
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            storage.display()
        );
        let mut cert = None;
        if opts.tls {
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let ok = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&k)
                .arg("-out")
                .arg(&c)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if !ok {
                return Err(std::io::Error::other(
                    "openssl could not make a certificate",
                ));
            }
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.display(),
                k.display()
            ));
            cert = Some(c);
        }
        if let Some((user, password)) = &opts.basic_auth {
            let file = dir.join("htpasswd");
            std::fs::write(&file, format!("{user}:{}\n", bcrypt(password)?))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ember\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut r = TestRegistry {
            host,
            dir: dir.to_path_buf(),
            storage,
            cert,
            child: Some(child),
        };
        r.wait_up()?;
        Ok(r)
    }

    fn wait_up(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(std::io::Error::other(format!(
                    "docker-registry exited with {s}: {}",
                    std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other("docker-registry did not come up"))
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
