//! A socket whose read buffer exists only while data is in flight.
//!
//! tungstenite keeps one read buffer per WebSocket for the connection's whole life
//! (`read_buffer_size`, 1 KiB here): at 19 000 idle connections that buffer was a sixth of
//! the server's memory. Sessions therefore run tungstenite with a read buffer of zero
//! (it then grows only to the frames it is given) over [`ReadOnDemand`], which reads the
//! socket a chunk at a time into a buffer on the stack and keeps on the heap only the
//! bytes tungstenite has not taken yet. Once the socket has nothing more to read, that
//! heap buffer is given back: an idle connection holds no read buffer at all, and a busy
//! one keeps its buffer for as long as reads find data (no allocation per frame).
//!
//! A read that asks for at least a chunk (the payload of a large frame) goes straight to
//! the socket, without the copy.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most the stack buffer holds; a larger `websocket.read_buffer_bytes` reads this
/// much at a time.
const MAX_CHUNK: usize = 8 * 1024;

/// `io` with reads of `chunk` bytes whose surplus is held only until it is taken.
#[derive(Debug)]
pub(crate) struct ReadOnDemand<IO> {
    io: IO,
    /// Read from the socket, not taken yet: `pending[taken..]`. Empty (no capacity) while
    /// the socket has nothing to read.
    pending: Vec<u8>,
    // 32-bit: this struct is part of every connection's task (both are at most 8 KiB).
    taken: u32,
    chunk: u32,
}

impl<IO> ReadOnDemand<IO> {
    /// Reads `io` `chunk` bytes at a time (at least 1, at most 8 KiB).
    pub(crate) fn new(io: IO, chunk: usize) -> Self {
        ReadOnDemand {
            io,
            pending: Vec::new(),
            taken: 0,
            chunk: chunk.clamp(1, MAX_CHUNK) as u32,
        }
    }

    /// Bytes read from the socket and not taken yet, and the heap they hold (for tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (
            self.pending.len() - self.taken as usize,
            self.pending.capacity(),
        )
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadOnDemand<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (taken, chunk) = (this.taken as usize, this.chunk as usize);
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if taken < this.pending.len() {
            let n = out.remaining().min(this.pending.len() - taken);
            out.put_slice(&this.pending[taken..taken + n]);
            // At most a chunk is pending, so this fits.
            this.taken += n as u32;
            if this.taken as usize == this.pending.len() {
                // Drained: the capacity stays for the next read while data keeps coming.
                this.pending.clear();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= chunk {
            return Pin::new(&mut this.io).poll_read(cx, out);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); MAX_CHUNK];
        let mut scratch = ReadBuf::uninit(&mut stack[..chunk]);
        match Pin::new(&mut this.io).poll_read(cx, &mut scratch) {
            Poll::Pending => {
                // Nothing in flight: give the buffer back until data comes again.
                if this.pending.capacity() > 0 {
                    this.pending = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let read = scratch.filled();
                let n = out.remaining().min(read.len());
                out.put_slice(&read[..n]);
                if n < read.len() {
                    this.pending.extend_from_slice(&read[n..]);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadOnDemand<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Polls one read of up to `len` bytes without waiting: `None` if it would block.
    fn try_read<IO: AsyncRead + Unpin>(r: &mut ReadOnDemand<IO>, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut rb = ReadBuf::new(&mut buf);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(r).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.truncate(n);
                Some(buf)
            }
            Poll::Ready(Err(e)) => panic!("read error: {e}"),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_chunk_then_the_buffer_is_released() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let mut r = ReadOnDemand::new(io, 1024);
        assert_eq!(r.held(), (0, 0), "nothing allocated before data comes");
        assert_eq!(try_read(&mut r, 8), None, "would block");
        let data: Vec<u8> = (0..100u8).collect();
        peer.write_all(&data).await.expect("write");
        // A header-sized read gets 8 bytes; the other 92 wait on the heap.
        assert_eq!(try_read(&mut r, 8).expect("data"), data[..8]);
        assert_eq!(r.held().0, 92);
        assert_eq!(try_read(&mut r, 50).expect("data"), data[8..58]);
        assert_eq!(try_read(&mut r, 50).expect("data"), data[58..]);
        // Drained, but kept while data may still be coming...
        assert_eq!(r.held().0, 0);
        assert!(r.held().1 > 0);
        // ...and given back once the socket has nothing more.
        assert_eq!(try_read(&mut r, 8), None);
        assert_eq!(r.held(), (0, 0));
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_socket() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let mut r = ReadOnDemand::new(io, 1024);
        let data = vec![7u8; 5000];
        peer.write_all(&data).await.expect("write");
        let got = try_read(&mut r, 4096).expect("data");
        assert_eq!(got.len(), 4096);
        assert_eq!(
            r.held(),
            (0, 0),
            "no copy kept for a read of a chunk or more"
        );
        let mut rest = Vec::new();
        drop(peer);
        r.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest.len(), 904);
    }

    #[tokio::test]
    async fn end_of_stream_and_writes_pass_through() {
        let (mut peer, io) = tokio::io::duplex(1024);
        let mut r = ReadOnDemand::new(io, 16);
        r.write_all(b"hello").await.expect("write");
        r.flush().await.expect("flush");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        peer.write_all(b"0123456789abcdefXYZ").await.expect("write");
        drop(peer);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"0123456789abcdefXYZ");
        assert_eq!(try_read(&mut r, 4), Some(Vec::new()), "end of stream");
    }
}
