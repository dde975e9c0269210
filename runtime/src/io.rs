//! Small I/O helpers over monoio's owned-buffer ("rent") API.
//!
//! - [`read_into`] appends to a `BytesMut` (monoio's plain `read` would overwrite
//!   from offset 0), making room when less than a quarter of [`READ_CHUNK`] is
//!   left, in a way that lets `BytesMut` reuse an allocation nothing else shares;
//! - [`read_into_cancelable`] does the same with a monoio `CancelHandle`, so a read
//!   that is given up on hands back any bytes it did receive;
//! - [`peer_state`] peeks at a socket without consuming anything, to tell a client
//!   that went away (EOF / reset) from one that pipelined its next request.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelHandle, CancelableAsyncReadRent};
use socket2::SockRef;

/// Spare room guaranteed before each read: 16 KiB.
pub const READ_CHUNK: usize = 16 * 1024;

/// Read once from `r`, appending to `buf`. Returns the byte count (0 = EOF) and the
/// buffer back.
pub async fn read_into<R: AsyncReadRent>(
    r: &mut R,
    mut buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    make_room(&mut buf);
    let start = buf.len();
    let slice = buf.slice_mut(start..);
    let (res, slice) = r.read(slice).await;
    (res, slice.into_inner())
}

/// Ensure a quarter of [`READ_CHUNK`] of spare room, asking for a READ_CHUNK-sized
/// buffer: when the allocation is no longer shared, `BytesMut` reclaims it in place
/// instead of allocating a new one.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK.saturating_sub(buf.len()).max(READ_CHUNK / 4));
    }
}

/// [`read_into`] with a cancel handle: cancelling it (from a timer, say) makes the
/// read return `ECANCELED` *or* the bytes it had already received, never losing
/// them, which a dropped io_uring read could.
pub async fn read_into_cancelable<R: CancelableAsyncReadRent>(
    r: &mut R,
    mut buf: BytesMut,
    cancel: CancelHandle,
) -> (std::io::Result<usize>, BytesMut) {
    make_room(&mut buf);
    let start = buf.len();
    let slice = buf.slice_mut(start..);
    let (res, slice) = r.cancelable_read(slice, cancel).await;
    (res, slice.into_inner())
}

/// What a non-consuming look at a socket shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Bytes are waiting (e.g. a pipelined request).
    Data,
    /// The peer closed or reset the connection.
    Gone,
    /// Nothing to read right now.
    Idle,
}

/// Peek at `sock` with `MSG_PEEK | MSG_DONTWAIT`; never consumes data and never
/// allocates (a one-byte stack buffer).
///
/// The `recv` goes through socket2's safe [`socket2::SockRef`]. monoio's sockets
/// implement `AsRawFd` but not `AsFd`, so the one `unsafe` of this crate is the
/// borrow of the raw descriptor as a `BorrowedFd` for the duration of the call.
#[allow(unsafe_code)]
pub fn peer_state<S: AsRawFd>(sock: &S) -> PeerState {
    // SAFETY: `sock` is borrowed for this whole call, so the descriptor it owns stays
    // open while the `BorrowedFd` (and the `SockRef` made from it) live.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(&fd).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(0) => PeerState::Gone,
        Ok(_) => PeerState::Data,
        Err(e) => match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => PeerState::Idle,
            _ => PeerState::Gone,
        },
    }
}

/// Peek at up to `N` waiting bytes of `sock` without consuming them
/// (`MSG_PEEK | MSG_DONTWAIT`, no allocation): the bytes seen (0 when none are
/// waiting or the peer is gone). The HTTP listeners use it to tell an HTTP/2
/// connection preface from an HTTP/1.1 request line before either is read.
///
/// The same borrow of the raw descriptor as [`peer_state`]; the buffer is
/// initialised before the call, so reading it back is sound whatever `recv` wrote.
#[allow(unsafe_code)]
pub fn peek_prefix<S: AsRawFd, const N: usize>(sock: &S, out: &mut [u8; N]) -> usize {
    // SAFETY: as in `peer_state`: `sock` outlives the borrowed descriptor.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let mut buf = [MaybeUninit::new(0u8); N];
    let n = SockRef::from(&fd)
        .recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .unwrap_or(0)
        .min(N);
    for (o, b) in out.iter_mut().zip(&buf[..n]) {
        // SAFETY: every element was initialised (to 0, or by `recv`).
        *o = unsafe { b.assume_init() };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Poll `peer_state` until it answers `want` or 5 s pass.
    fn wait_for(sock: &TcpStream, want: PeerState) -> PeerState {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let got = peer_state(sock);
            if got == want || Instant::now() > end {
                return got;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn peer_state_sees_idle_data_and_gone_without_consuming() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, _) = l.accept().expect("accept");
        assert_eq!(peer_state(&server), PeerState::Idle);
        client.write_all(b"x").expect("write");
        assert_eq!(wait_for(&server, PeerState::Data), PeerState::Data);
        // Peeking left the byte in place.
        assert_eq!(peer_state(&server), PeerState::Data);
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut &server, &mut byte).expect("read");
        assert_eq!(&byte, b"x");
        drop(client);
        assert_eq!(wait_for(&server, PeerState::Gone), PeerState::Gone);
    }
}
