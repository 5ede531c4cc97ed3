//! Where the agent serves: the `ember.agent` virtio-serial port, an AF_VSOCK
//! listener and (for host-side tests) a unix socket.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::runtime::Agent;

/// A non-blocking fd (vsock connection, virtio-serial port) as a tokio stream.
#[derive(Clone)]
pub struct FdStream(Arc<AsyncFd<OwnedFd>>);

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        crate::sys::set_nonblocking(&fd)?;
        Ok(FdStream(Arc::new(crate::sys::async_fd(fd)?)))
    }

    /// One non-blocking read: `Ok(None)` when nothing is there yet.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match nix::unistd::read(self.0.get_ref(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                let e = io::Error::from(e);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), data)?)) {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Size of one read from the virtio-serial port.
const SERIAL_CHUNK: usize = 64 * 1024;

/// Bytes read ahead of a reader, handed out before anything new is read.
#[derive(Default)]
struct ReadAhead {
    bytes: Vec<u8>,
    pos: usize,
}

impl ReadAhead {
    fn new(bytes: Vec<u8>) -> Self {
        ReadAhead { bytes, pos: 0 }
    }

    /// Moves what is left (as much as fits) into `buf`; false when nothing was.
    fn give(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.pos >= self.bytes.len() {
            return false;
        }
        let n = (self.bytes.len() - self.pos).min(buf.remaining());
        buf.put_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        true
    }
}

/// The virtio-serial port as one session's stream. A port reads EOF (or EIO) while no
/// host is connected, and a host that reconnects quickly may or may not show that gap
/// to the guest, so the end of a host connection is no reliable session boundary here:
/// a session on the port ends only at a protocol error, which is also what the next
/// connection's sync marker causes. "Not connected" just means no data yet.
///
/// A new connection's sync marker seen inside a session ends it at once: the bytes
/// before the marker are the session's last, those after it go to `next`, where the
/// next session begins (a VM restored from a template meets its host's first
/// connection in the middle of the session the template was saved in).
struct SerialPort {
    port: FdStream,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    next: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// The session's input ended at a marker: reads give EOF once `pending` is out.
    done: bool,
    /// Bytes read from the port (in chunks big enough to hold a whole marker) and
    /// not handed to the session yet.
    pending: ReadAhead,
}

impl SerialPort {
    fn new(port: FdStream, next: Arc<std::sync::Mutex<Option<Vec<u8>>>>) -> Self {
        SerialPort {
            port,
            idle: None,
            next,
            done: false,
            pending: ReadAhead::default(),
        }
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pending.give(buf) || this.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(idle) = this.idle.as_mut() {
                ready!(idle.as_mut().poll(cx));
                this.idle = None;
            }
            // The spent read-ahead's buffer takes the next chunk.
            let mut chunk = std::mem::take(&mut this.pending.bytes);
            chunk.resize(SERIAL_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut chunk);
            let res = match Pin::new(&mut this.port).poll_read(cx, &mut rb) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    chunk.clear();
                    this.pending = ReadAhead::new(chunk);
                    return Poll::Pending;
                }
            };
            let n = rb.filled().len();
            let disconnected = match &res {
                Ok(()) => n == 0,
                Err(e) => e.raw_os_error() == Some(libc::EIO),
            };
            chunk.truncate(if disconnected { 0 } else { n });
            if !disconnected {
                res?;
                let marker = ember_agent_api::SERIAL_SYNC;
                if let Some(at) = find(&chunk, marker) {
                    *this.next.lock().unwrap() = Some(chunk[at + marker.len()..].to_vec());
                    chunk.truncate(at);
                    this.done = true;
                    tracing::info!("a new host connection ends the serial session");
                }
            }
            this.pending = ReadAhead::new(chunk);
            if disconnected {
                this.idle = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.port).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.port).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The port outlives every session: never shut it down.
        Poll::Ready(Ok(()))
    }
}

/// Wraps a connection for one session: replays bytes read ahead, reports EOF (or a
/// read error) through `closed`, and refuses writes once the session is over so
/// that a late reply of an old session never lands in a new one.
struct SessionStream<S> {
    inner: S,
    prefix: ReadAhead,
    closed: watch::Sender<bool>,
    ended: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for SessionStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.give(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let eof = match &res {
            Ok(()) => buf.filled().len() == before && buf.remaining() > 0,
            Err(_) => true,
        };
        if eof {
            tracing::debug!(?res, "session input ended");
            self.ended.store(true, Ordering::SeqCst);
            self.closed.send_replace(true);
            // EIO on a serial port whose host side went away: a plain EOF.
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(res)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SessionStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ended.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one session on `stream` (after `prefix`, bytes already read from it).
/// Returns `Err` on a protocol violation.
pub async fn serve_session<S>(
    agent: Arc<Agent>,
    stream: S,
    prefix: Vec<u8>,
) -> Result<(), ember_ttrpc::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let ended = Arc::new(AtomicBool::new(false));
    let server = crate::service::server(agent, closed_rx.clone());
    let s = SessionStream {
        inner: stream,
        prefix: ReadAhead::new(prefix),
        closed: closed_tx.clone(),
        ended: ended.clone(),
    };
    let mut serve = Box::pin(server.serve_connection(s));
    let res = tokio::select! {
        r = &mut serve => r,
        _ = async { closed_rx.wait_for(|c| *c).await.map(|_| ()) } => {
            // Long polls of this session are being cancelled; give them a moment.
            tokio::time::timeout(Duration::from_secs(1), &mut serve).await.unwrap_or(Ok(()))
        }
    };
    ended.store(true, Ordering::SeqCst);
    closed_tx.send_replace(true);
    tracing::debug!(?res, "session ended");
    res
}

/// Finds the `/dev` node of the virtio-serial port called `name`.
pub fn find_serial_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in rd.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Serves the virtio-serial port forever, one session per host connection.
pub async fn serve_serial(agent: Arc<Agent>, path: PathBuf) -> io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&path)?;
    let port = FdStream::new(f.into())?;
    tracing::info!("serving on virtio-serial port {}", path.display());
    let mut buf = vec![0u8; 64 * 1024];
    let next = Arc::new(std::sync::Mutex::new(None));
    loop {
        // Every host connection begins with the sync marker: skip anything before
        // it, unless the last session already ended at one.
        let pending = next.lock().unwrap().take();
        let rest = match pending {
            Some(rest) => rest,
            None => wait_for_sync(&port, &mut buf).await,
        };
        let session = SerialPort::new(port.clone(), next.clone());
        match serve_session(agent.clone(), session, rest).await {
            Ok(()) => tracing::info!("serial session ended"),
            Err(e) => tracing::warn!("serial session: {e}; waiting for the next connection"),
        }
    }
}

/// Reads the port until the host's sync marker went by; returns the bytes after it.
async fn wait_for_sync(port: &FdStream, buf: &mut [u8]) -> Vec<u8> {
    let marker = ember_agent_api::SERIAL_SYNC;
    let mut window: Vec<u8> = Vec::new();
    loop {
        match port.try_read(buf) {
            Ok(Some(n)) if n > 0 => {
                window.extend_from_slice(&buf[..n]);
                if let Some(at) = find(&window, marker) {
                    return window.split_off(at + marker.len());
                }
                // Keep only what could be the start of a marker split across reads.
                let keep = window.len().min(marker.len() - 1);
                window.drain(..window.len() - keep);
            }
            // EOF while no host is connected, or a passing error.
            Ok(Some(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(None) => {
                // Connected but idle: wait for readiness (bounded, to notice HUP).
                if let Ok(Ok(mut g)) =
                    tokio::time::timeout(Duration::from_millis(200), port.0.readable()).await
                {
                    g.clear_ready();
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

use std::os::unix::fs::OpenOptionsExt;

/// Binds the AF_VSOCK listener; `Err` when the kernel has no vsock.
pub fn vsock_listener(port: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(64)?)?;
    crate::sys::async_fd(fd)
}

/// Whether a vsock peer CID is the host's (`VMADDR_CID_HOST`, 2). Firecracker's
/// hybrid vsock and vhost-vsock both connect from it.
pub fn cid_is_host(cid: u32) -> bool {
    cid == libc::VMADDR_CID_HOST
}

fn peer_is_host(conn: &OwnedFd) -> bool {
    nix::sys::socket::getpeername::<VsockAddr>(conn.as_raw_fd())
        .map(|a| cid_is_host(a.cid()))
        .unwrap_or(false)
}

pub async fn serve_vsock(agent: Arc<Agent>, listener: AsyncFd<OwnedFd>) -> io::Result<()> {
    loop {
        let mut guard = listener.readable().await?;
        let res = guard.try_io(|l| {
            let fd = accept4(
                l.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            )?;
            // SAFETY: accept4 succeeded, so `fd` is a new connection fd that nothing
            // else in the process knows of; the OwnedFd becomes its only owner.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        match res {
            Ok(Ok(conn)) if !peer_is_host(&conn) => {
                // Containers in the guest (local or loopback vsock) never reach the
                // agent: only the host's CID may talk to it.
                tracing::warn!("vsock connection from a peer other than the host refused");
                drop(conn);
            }
            Ok(Ok(conn)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    match FdStream::new(conn) {
                        Ok(s) => {
                            if let Err(e) = serve_session(agent, s, Vec::new()).await {
                                tracing::warn!("vsock connection: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("vsock connection: {e}"),
                    }
                });
            }
            Ok(Err(e)) => {
                tracing::warn!("vsock accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_would_block) => {}
        }
    }
}

pub async fn serve_unix(agent: Arc<Agent>, listener: tokio::net::UnixListener) -> io::Result<()> {
    loop {
        let (conn, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_session(agent, conn, Vec::new()).await {
                tracing::warn!("unix connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_host_cid_reaches_the_agent() {
        assert!(super::cid_is_host(2));
        for cid in [0, 1, 3, u32::MAX] {
            assert!(!super::cid_is_host(cid), "{cid}");
        }
    }

    use super::find;

    #[test]
    fn marker_is_found_anywhere() {
        let m = ember_agent_api::SERIAL_SYNC;
        let mut data = b"garbage".to_vec();
        data.extend_from_slice(m);
        data.extend_from_slice(b"rest");
        let at = find(&data, m).unwrap();
        assert_eq!(&data[at + m.len()..], b"rest");
        assert!(find(b"no marker here", m).is_none());
    }
}
