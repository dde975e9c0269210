//! What the two HTTP/2 sides of a shard share: the server side of `GRPC`
//! and `HTTPS` listeners (module `h2`) and the client side to gRPC backends
//! (module `h2_upstream`). Both run the `h2` crate over
//! `monoio-compat` buffers of [`IO_BUFFER`] bytes, both may run it over TLS
//! ([`tls_io::TlsIo`]), and one [`Limits`] (one CLI flag each; defaults in
//! the `h2` module docs) bounds both.
//!
//! This module sits below both sides and imports neither: the server side
//! (which carries out requests and so reaches the upstream client) and the
//! upstream client (which opens HTTP/2 streams to backends) each build on it.

pub mod tls_io;

/// HTTP/2 limits, for clients and for upstream connections (defaults in the
/// `h2` module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` offered to clients.
    pub max_concurrent_streams: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, in bytes.
    pub max_header_list_bytes: u32,
    /// `SETTINGS_HEADER_TABLE_SIZE` (HPACK dynamic table), in bytes.
    pub header_table_bytes: u32,
    /// Receive window per stream, in bytes.
    pub stream_window: u32,
    /// Receive window per connection, in bytes.
    pub connection_window: u32,
    /// `SETTINGS_MAX_FRAME_SIZE`, in bytes.
    pub max_frame_bytes: u32,
    /// Most bytes buffered to send per stream.
    pub max_send_buffer: usize,
    /// Streams a client may reset before the gateway accepted them (rapid
    /// reset) before it is sent GOAWAY.
    pub max_pending_resets: usize,
    /// Streams the gateway may reset for a client's protocol errors before it
    /// is sent GOAWAY.
    pub max_error_resets: usize,
    /// Streams per pooled upstream HTTP/2 connection before another is opened.
    pub upstream_streams_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: 100,
            max_header_list_bytes: 16 * 1024,
            header_table_bytes: 4096,
            stream_window: 1 << 20,
            connection_window: 2 << 20,
            max_frame_bytes: 16 * 1024,
            max_send_buffer: 64 * 1024,
            max_pending_resets: 20,
            max_error_resets: 1024,
            upstream_streams_per_connection: 100,
        }
    }
}

/// Compat buffer sizes per connection (read, write).
pub const IO_BUFFER: usize = 16 * 1024;
