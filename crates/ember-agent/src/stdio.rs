//! Process stdio: pipes or a pty on the process side, bounded output buffers and a
//! stdin writer on the agent side.
//!
//! Each output stream has a reader task that reads the pipe (or pty master) only
//! while its buffer has room, so a host that stops calling `ReadOutput` stops the
//! writer (back-pressure). `eof` is reported only once the stream ended *and* every
//! buffered byte was handed out.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::sys;

/// Bytes buffered per output stream before the reader stops reading.
pub const OUTPUT_BUFFER: usize = 1 << 20;

#[derive(Default)]
struct OutState {
    data: VecDeque<u8>,
    eof: bool,
}

/// A bounded buffer of one output stream.
pub struct OutputBuf {
    state: Mutex<OutState>,
    cap: usize,
    /// Signalled whenever data, room or eof changes.
    changed: Notify,
}

impl OutputBuf {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(OutputBuf {
            state: Mutex::new(OutState::default()),
            cap,
            changed: Notify::new(),
        })
    }

    /// A stream that never carries data (stderr with a pty, or no stream at all).
    pub fn closed() -> Arc<Self> {
        let b = Self::new(0);
        b.state.lock().unwrap().eof = true;
        b
    }

    /// Waits until the buffer has room; returns how much.
    async fn room(&self) -> usize {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state.lock().unwrap();
                let free = self.cap.saturating_sub(s.data.len());
                if free > 0 {
                    return free;
                }
            }
            notified.await;
        }
    }

    fn push(&self, bytes: &[u8]) {
        self.state.lock().unwrap().data.extend(bytes);
        self.changed.notify_waiters();
    }

    pub fn set_eof(&self) {
        self.state.lock().unwrap().eof = true;
        self.changed.notify_waiters();
    }

    /// Takes what is buffered now: `Some((data, eof))`, or `None` if nothing yet.
    pub fn try_take(&self, max: usize) -> Option<(Vec<u8>, bool)> {
        let mut s = self.state.lock().unwrap();
        if !s.data.is_empty() {
            let n = max.max(1).min(s.data.len());
            let out: Vec<u8> = s.data.drain(..n).collect();
            drop(s);
            self.changed.notify_waiters();
            return Some((out, false));
        }
        if s.eof {
            return Some((Vec::new(), true));
        }
        None
    }

    /// Long-polls: returns as soon as there is data or the stream ended.
    pub async fn read(&self, max: usize) -> (Vec<u8>, bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_take(max) {
                return r;
            }
            notified.await;
        }
    }

    /// Reads `fd` into this buffer until EOF (EIO on a pty master counts as EOF).
    pub fn spawn_reader(self: &Arc<Self>, fd: OwnedFd) {
        let buf = self.clone();
        tokio::spawn(async move {
            if let Err(e) = buf.pump(fd).await {
                tracing::debug!("output reader ended: {e}");
            }
            buf.set_eof();
        });
    }

    async fn pump(&self, fd: OwnedFd) -> io::Result<()> {
        sys::set_nonblocking(&fd)?;
        let afd = crate::sys::async_fd(fd)?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let room = self.room().await.min(chunk.len());
            let mut guard = afd.readable().await?;
            let res =
                guard.try_io(|inner| Ok(nix::unistd::read(inner.get_ref(), &mut chunk[..room])?));
            match res {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => self.push(&chunk[..n]),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// The agent's end of a process's stdin: a pipe write end or the pty master.
pub struct StdinWriter {
    fd: AsyncFd<OwnedFd>,
}

impl StdinWriter {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(&fd)?;
        Ok(StdinWriter {
            fd: crate::sys::async_fd(fd)?,
        })
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| Ok(nix::unistd::write(inner.get_ref(), data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// Opens a pty pair; both ends close-on-exec. Returns (master, slave).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )?;
    let (m, s) = (pty.master, pty.slave);
    sys::set_cloexec(m.as_raw_fd(), true)?;
    sys::set_cloexec(s.as_raw_fd(), true)?;
    Ok((m, s))
}

pub fn resize_pty(master: RawFd, width: u32, height: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `struct winsize`, and `ws` is a live one that
    // outlives the call. A bad or non-tty `master` gives an error.
    sys::check(unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// A close-on-exec unix stream socket pair.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Control-message space for one fd (CMSG_SPACE(sizeof(int))).
// SAFETY: CMSG_SPACE is pure arithmetic on its argument; it reads no memory.
const FD_CMSG_SPACE: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;

/// A control buffer for one fd, aligned for `cmsghdr` (whose widest field is a
/// `size_t`).
type FdCmsgBuf = [u64; FD_CMSG_SPACE.div_ceil(8)];

/// Sends `fd` (or, with `None`, just a byte saying "none") over a unix socket.
pub fn send_fd(sock: RawFd, fd: Option<RawFd>) -> io::Result<()> {
    let mut byte = [if fd.is_some() { b'y' } else { b'n' }];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let space = FD_CMSG_SPACE;
    let mut cbuf: FdCmsgBuf = [0; FD_CMSG_SPACE.div_ceil(8)];
    // SAFETY: msghdr is plain C data for which all-zero bytes are a valid value
    // (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cbuf`: zeroed, 8-aligned (as cmsghdr needs)
        // and at least `space` = CMSG_SPACE(one fd) bytes, which is msg_controllen.
        // So CMSG_FIRSTHDR returns a non-null header at its start, and the fd
        // payload at CMSG_DATA lies inside it (written unaligned all the same).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        }
    }
    // SAFETY: `msg` points at `iov` (one byte in `byte`) and, with an fd, at `cbuf`,
    // all alive until the call returns; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives an fd sent with [`send_fd`] if one is waiting (never blocks):
/// `Ok(None)` when nothing, or "none", was sent.
pub fn recv_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let space = FD_CMSG_SPACE;
    let mut cbuf: FdCmsgBuf = [0; FD_CMSG_SPACE.div_ceil(8)];
    // SAFETY: msghdr is plain C data for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (the one-byte `byte`) and at `cbuf` (at least
    // `space` bytes, 8-aligned), both alive and writable for the call; the kernel
    // writes at most those lengths.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: after a successful recvmsg, `msg` describes `cbuf` with the kernel's
    // msg_controllen, so CMSG_FIRSTHDR is null or a header inside `cbuf`; an
    // SCM_RIGHTS header of ours carries one fd at CMSG_DATA (read unaligned). With
    // MSG_CMSG_CLOEXEC that fd is new in this process and owned by nobody else, so
    // the OwnedFd becomes its only owner.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd);
            return Ok(Some(OwnedFd::from_raw_fd(fd)));
        }
    }
    Ok(None)
}

/// Opens a new pty in the devpts that `/dev/ptmx` leads to (the container's, when
/// called inside it). Returns (master, slave), both close-on-exec.
pub fn open_pty_here() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = nix::fcntl::open(
        c"/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, and `unlock` is a live one; `m` is the open
    // master owned by `master`.
    sys::check(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags by value (no pointer) and returns a new
    // fd for the slave, or -1.
    let s = sys::check(unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `s` is the new fd TIOCGPTPEER just returned (check passed it as
    // non-negative); nothing else owns it.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// The pty number of a master (`/dev/pts/<n>`).
pub fn pty_number(master: RawFd) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int, and `n` is a live, writable one. A
    // bad or non-master fd gives an error.
    sys::check(unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// Opens /dev/null close-on-exec.
pub fn dev_null() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eof_only_after_all_data() {
        let b = OutputBuf::new(8);
        b.push(b"hello");
        b.set_eof();
        assert_eq!(b.read(3).await, (b"hel".to_vec(), false));
        assert_eq!(b.read(100).await, (b"lo".to_vec(), false));
        assert_eq!(b.read(100).await, (Vec::new(), true));
        assert_eq!(b.read(100).await, (Vec::new(), true));
    }

    #[tokio::test]
    async fn reader_respects_capacity() {
        let (r, w) = sys::pipe().unwrap();
        let b = OutputBuf::new(4096);
        b.spawn_reader(r);
        let writer = std::thread::spawn(move || {
            let data = vec![7u8; 100_000];
            sys::write_all(w.as_raw_fd(), &data).unwrap();
        });
        let mut total = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            assert!(b.state.lock().unwrap().data.len() <= 4096);
            let (d, eof) = b.read(1000).await;
            total += d.len();
            if eof {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(total, 100_000);
    }

    #[tokio::test]
    async fn closed_stream_is_eof() {
        let b = OutputBuf::closed();
        assert_eq!(b.read(10).await, (Vec::new(), true));
    }
}
