//! Async frame I/O over any byte stream (quinn streams in practice).

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{self, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame; `Ok(None)` on a clean end of stream before any header byte.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Malformed("stream ended inside a frame header".into()).into());
        }
        got += n;
    }
    let len = protocol::frame_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(protocol::decode(&body)?))
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = protocol::encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Take the end of a quinn receive stream if it has already arrived, without waiting.
///
/// Dropping a receive stream whose FIN was never read makes quinn send the peer a
/// STOP_SENDING frame (one more packet per task) even when every byte is in. Call this
/// once the last expected frame has been read and before the stream is dropped.
pub fn take_fin(recv: &mut quinn::RecvStream) {
    let mut byte = [0u8; 1];
    let fut = std::pin::pin!(recv.read(&mut byte));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Pending (FIN not here yet) or extra bytes: nothing to do, the drop stops it.
    let _ = std::future::Future::poll(fut, &mut cx);
}
