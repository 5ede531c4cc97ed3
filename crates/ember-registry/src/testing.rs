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
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a CA made for the
    /// registry (`ca.pem` in its directory, [`TestRegistry::cert`]).
    pub tls: bool,
}

/// A running `docker-registry`.
pub struct TestRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    pub dir: PathBuf,
    pub storage: PathBuf,
    /// The CA certificate clients trust when `tls` was asked for.
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

fn openssl(args: &[&str], dir: &Path) -> std::io::Result<()> {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        return Err(std::io::Error::other(format!("openssl {args:?} failed")));
    }
    Ok(())
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed
/// (`cert.pem`, key `key.pem`), in `dir`.
fn make_certificates(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let subj = ["-subj", "/CN=ember test CA"];
    openssl(
        &[
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ][..],
            &subj,
            &["-keyout", "ca-key.pem", "-out", "ca.pem"],
        ]
        .concat(),
        dir,
    )?;
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.csr",
        ],
        dir,
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
        dir,
    )?;
    Ok((dir.join("ca.pem"), dir.join("cert.pem")))
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
            let (ca, leaf) = make_certificates(dir)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                leaf.display(),
                dir.join("key.pem").display()
            ));
            cert = Some(ca);
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
