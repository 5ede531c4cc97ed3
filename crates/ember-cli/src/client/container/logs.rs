//! `ember logs`: the kept output of a container `ember run` made.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use super::logger::{CURRENT, PREVIOUS};
use super::{is_running, Conn, LOG_DIR_LABEL};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Show the output of a container")]
pub struct LogsArgs {
    /// Keep following until the task exits.
    #[arg(short, long)]
    follow: bool,
    id: String,
}

fn copy_from(path: &Path, offset: u64, out: &mut impl Write) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return offset;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(start)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
        crate::stdout::check(&e);
    }
    start + buf.len() as u64
}

pub async fn run(opts: &ClientOpts, a: LogsArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let c = conn.container(&a.id).await?;
    let Some(dir) = c.labels.get(LOG_DIR_LABEL) else {
        bail!(
            "container {} keeps no output (only containers `ember run` made do)",
            a.id
        );
    };
    let dir = Path::new(dir);
    let mut out = std::io::stdout().lock();
    copy_from(&dir.join(PREVIOUS), 0, &mut out);
    let mut offset = copy_from(&dir.join(CURRENT), 0, &mut out);
    if !a.follow {
        return Ok(0);
    }
    loop {
        let running = matches!(conn.task(&a.id).await?, Some(p) if is_running(&p));
        let cur = dir.join(CURRENT);
        let len = std::fs::metadata(&cur).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated: the rest of the old file is now the previous one.
            copy_from(&dir.join(PREVIOUS), offset, &mut out);
            offset = 0;
        }
        offset = copy_from(&cur, offset, &mut out);
        if !running {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
