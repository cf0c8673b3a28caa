//! Integration tests of the wire protocol: framing, handshake, golden files.

mod framing;
mod golden;
mod handshake;
