//! Message framing: header layout and bounded reads.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// Size of the fixed message header.
pub const HEADER_LEN: usize = 10;
/// Largest payload a peer may send (containerd's limit).
pub const MAX_DATA_LEN: u32 = 4 << 20;

/// The kind of message a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Request,
    Response,
    Data,
}

impl MessageType {
    fn to_wire(self) -> u8 {
        match self {
            MessageType::Request => 1,
            MessageType::Response => 2,
            MessageType::Data => 3,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        match b {
            1 => Some(MessageType::Request),
            2 => Some(MessageType::Response),
            3 => Some(MessageType::Data),
            _ => None,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub stream_id: u32,
    pub kind: MessageType,
    pub flags: u8,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.kind.to_wire();
        b[9] = self.flags;
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, Error> {
        let length = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let stream_id = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let kind = MessageType::from_wire(b[8])
            .ok_or_else(|| Error::Protocol(format!("unknown message type {}", b[8])))?;
        if length > MAX_DATA_LEN {
            return Err(Error::Protocol(format!(
                "message of {length} bytes exceeds the {MAX_DATA_LEN} byte limit"
            )));
        }
        Ok(FrameHeader {
            length,
            stream_id,
            kind,
            flags: b[9],
        })
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream before any header byte.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(FrameHeader, Vec<u8>)>, Error> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(Error::Protocol("stream ended inside a header".into()));
        }
        got += n;
    }
    let header = FrameHeader::decode(&hdr)?;
    let mut payload = vec![0u8; header.length as usize];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Protocol("stream ended inside a payload".into())
        } else {
            Error::Io(e)
        }
    })?;
    Ok(Some((header, payload)))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    stream_id: u32,
    kind: MessageType,
    flags: u8,
    payload: &[u8],
) -> Result<(), Error> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_DATA_LEN)
        .ok_or_else(|| {
            Error::Protocol(format!("payload of {} bytes is too large", payload.len()))
        })?;
    let header = FrameHeader {
        length,
        stream_id,
        kind,
        flags,
    };
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            length: 513,
            stream_id: 7,
            kind: MessageType::Response,
            flags: 1,
        };
        let b = h.encode();
        assert_eq!(b, [0, 0, 2, 1, 0, 0, 0, 7, 2, 1]);
        assert_eq!(FrameHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn rejects_oversized_and_unknown() {
        let mut b = FrameHeader {
            length: 1,
            stream_id: 1,
            kind: MessageType::Request,
            flags: 0,
        }
        .encode();
        b[8] = 9;
        assert!(matches!(FrameHeader::decode(&b), Err(Error::Protocol(_))));
        let big = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        assert!(matches!(FrameHeader::decode(&big), Err(Error::Protocol(_))));
    }

    #[tokio::test]
    async fn truncated_payload_is_a_protocol_error() {
        let mut data: &[u8] = &[0, 0, 0, 5, 0, 0, 0, 1, 1, 0, 1, 2];
        assert!(matches!(
            read_frame(&mut data).await,
            Err(Error::Protocol(_))
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).await.unwrap().is_none());
    }
}
