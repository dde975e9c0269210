//! Small I/O helpers over monoio's owned-buffer ("rent") API.
//!
//! - [`read_into`] appends to a `BytesMut` (monoio's plain `read` would overwrite
//!   from offset 0), making room when less than a quarter of [`READ_CHUNK`] is
//!   left, in a way that lets `BytesMut` reuse an allocation nothing else shares;
//! - [`read_into_cancelable`] does the same with a monoio `CancelHandle`, so a read
//!   that is given up on hands back any bytes it did receive;
//! - [`peer_state`] peeks at a socket without consuming anything, to tell a client
//!   that went away (EOF / reset) from one that pipelined its next request.

use std::os::fd::AsRawFd;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelHandle, CancelableAsyncReadRent};

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

/// Peek at `sock` with `MSG_PEEK | MSG_DONTWAIT`; never consumes data.
pub fn peer_state<S: AsRawFd>(sock: &S) -> PeerState {
    let mut byte = [0u8; 1];
    // SAFETY: recv into a valid 1-byte stack buffer on a socket fd we own a borrow of.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => PeerState::Gone,
        n if n > 0 => PeerState::Data,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => PeerState::Idle,
            _ => PeerState::Gone,
        },
    }
}
