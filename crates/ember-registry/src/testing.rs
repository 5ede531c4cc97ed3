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
    /// Docker token auth: a token server on loopback (Python, tokens signed with
    /// openssl) that gives tokens to this user and password only.
    pub token_auth: Option<(String, String)>,
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
    token_server: Option<Child>,
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
        let mut token_server = None;
        if opts.tls {
            let (ca, leaf) = make_certificates(dir)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                leaf.display(),
                dir.join("key.pem").display()
            ));
            cert = Some(ca);
        }
        if let Some((user, password)) = &opts.token_auth {
            let certs = dir.join("token-certs");
            std::fs::create_dir_all(&certs)?;
            let (ca, _) = make_certificates(&certs)?;
            let port = free_port();
            std::fs::write(dir.join("token.py"), TOKEN_SERVER)?;
            let log = std::fs::File::create(dir.join("token.log"))?;
            let child = Command::new("/usr/bin/python3")
                .arg(dir.join("token.py"))
                .args([port.to_string().as_str(), user, password])
                .current_dir(&certs)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            token_server = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other("the token server did not come up"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: ember-test\n    issuer: ember-issuer\n    rootcertbundle: {}\n",
                ca.display()
            ));
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
            token_server,
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
        for mut c in [self.child.take(), self.token_server.take()]
            .into_iter()
            .flatten()
        {
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

/// A Docker registry token server: `token.py PORT USER PASSWORD`, run in a
/// directory holding `cert.pem` and `key.pem` (a certificate the registry's
/// `rootcertbundle` CA signed). Tokens (RS256, the certificate in `x5c`) grant
/// what the scope asks for, to the user with the password only.
const TOKEN_SERVER: &str = r#"
import base64, json, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse, parse_qs

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
der = subprocess.run(["openssl", "x509", "-in", "cert.pem", "-outform", "DER"],
                     capture_output=True, check=True).stdout

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

class Token(BaseHTTPRequestHandler):
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.end_headers()
            return
        access = []
        for s in q.get("scope", []):
            kind, name, actions = s.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "ember-issuer", "sub": user, "aud": q.get("service", [""])[0],
                  "exp": now + 600, "nbf": now - 10, "iat": now, "jti": str(now),
                  "access": access}
        head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "key.pem"],
                             input=signing.encode(), capture_output=True, check=True).stdout
        body = json.dumps({"token": signing + "." + b64(sig)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", port), Token).serve_forever()
"#;
