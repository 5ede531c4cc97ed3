//! The Transfer API's binary streams: `Data` chunks flowing against
//! `WindowUpdate` credit. The receiver grants a window (64 KiB) and tops it up
//! as data arrives; the sender never has more than the granted bytes in flight
//! and sends chunks of at most 32 KiB. The sender ends the data by closing its
//! side of the stream.

use containerd_client::types::transfer::{Data, WindowUpdate};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tonic::Status;

use crate::services::streaming::{pack, type_name, unpack, Stream};

const MAX_CHUNK: usize = 32 * 1024;
const WINDOW: i32 = 2 * MAX_CHUNK as i32;

/// Receives a whole binary stream into `out`; returns the bytes received.
pub async fn receive(
    stream: &mut Stream,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, Status> {
    let mut window: i32 = 0;
    let mut total = 0u64;
    loop {
        if window < WINDOW {
            // A client gone mid-stream shows up on the next receive.
            let _ = stream.send(pack(&WindowUpdate { update: WINDOW })).await;
            window += WINDOW;
        }
        let Some(a) = stream.recv().await? else {
            break;
        };
        if type_name(&a) != "containerd.types.transfer.Data" {
            tracing::warn!(type_url = %a.type_url, "ignoring a message on a data stream");
            continue;
        }
        let d: Data = unpack(&a)?;
        out.write_all(&d.data)
            .await
            .map_err(|e| Status::unknown(format!("storing the stream: {e}")))?;
        window -= d.data.len() as i32;
        total += d.data.len() as u64;
    }
    out.flush()
        .await
        .map_err(|e| Status::unknown(format!("storing the stream: {e}")))?;
    Ok(total)
}

/// Sends the chunks `rx` yields over `stream`, within the client's window.
pub async fn send(
    stream: &mut Stream,
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> Result<(), Status> {
    let mut credit: i64 = 0;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| Status::unknown(format!("writing the archive: {e}")))?;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            while credit <= 0 {
                let a = stream
                    .recv()
                    .await?
                    .ok_or_else(|| Status::cancelled("the receiver closed the stream"))?;
                match unpack::<WindowUpdate>(&a) {
                    Ok(w) => credit += i64::from(w.update),
                    Err(_) => {
                        tracing::warn!(type_url = %a.type_url, "ignoring a message on a data stream")
                    }
                }
            }
            let n = rest.len().min(MAX_CHUNK).min(credit as usize);
            stream
                .send(pack(&Data {
                    data: rest[..n].to_vec(),
                }))
                .await?;
            credit -= n as i64;
            rest = &rest[n..];
        }
    }
    Ok(())
}
