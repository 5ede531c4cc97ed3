//! Process stdin, output and terminal size.

use std::os::fd::AsRawFd;

use ember_agent_api::{OutputStream, MAX_IO_CHUNK};
use ember_ttrpc::Status;

use super::{internal, Agent, R};
use crate::stdio::{self};

impl Agent {
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> R<u32> {
        let (_c, p) = self.process(id, exec_id)?;
        if data.len() > MAX_IO_CHUNK as usize {
            return Err(Status::invalid_argument(format!(
                "chunk larger than {MAX_IO_CHUNK} bytes"
            )));
        }
        let w = p.stdin.lock().await;
        let Some(w) = w.as_ref() else {
            return Err(Status::failed_precondition(if p.stdin_enabled {
                "stdin was closed"
            } else {
                "process was created without stdin"
            }));
        };
        match w.write_all(data).await {
            Ok(()) => Ok(data.len() as u32),
            Err(e)
                if e.raw_os_error() == Some(libc::EPIPE) || e.raw_os_error() == Some(libc::EIO) =>
            {
                Err(Status::failed_precondition(format!(
                    "stdin is closed by the process: {e}"
                )))
            }
            Err(e) => Err(internal("writing stdin", e)),
        }
    }

    /// Closes stdin (EOF for the process). With a pty the master stays open (it
    /// carries the output too): a terminal has no EOF but ^D, which the caller may
    /// send itself; further writes are refused.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> R<()> {
        let (_c, p) = self.process(id, exec_id)?;
        p.stdin.lock().await.take();
        Ok(())
    }

    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stream: i32,
        max_len: u32,
    ) -> R<(Vec<u8>, bool)> {
        let (_c, p) = self.process(id, exec_id)?;
        let buf = match OutputStream::try_from(stream) {
            Ok(OutputStream::Stdout) => p.stdout.clone(),
            Ok(OutputStream::Stderr) => p.stderr.clone(),
            Err(_) => return Err(Status::invalid_argument(format!("unknown stream {stream}"))),
        };
        let max = if max_len == 0 {
            MAX_IO_CHUNK
        } else {
            max_len.min(MAX_IO_CHUNK)
        };
        Ok(buf.read(max as usize).await)
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, w: u32, h: u32) -> R<()> {
        let (_c, p) = self.process(id, exec_id)?;
        if !p.terminal {
            return Err(Status::failed_precondition("process has no terminal"));
        }
        *p.pty_size.lock().unwrap() = Some((w, h));
        let master = p.pty_master.lock().unwrap();
        match master.as_ref() {
            Some(m) => {
                stdio::resize_pty(m.as_raw_fd(), w, h).map_err(|e| internal("TIOCSWINSZ", e))
            }
            // Not started yet: applied once the pty exists.
            None => Ok(()),
        }
    }
}
