//! The rocksteady wire protocol, shared by every process.
//!
//! Every connection is a Unix stream socket carrying length-prefixed bincode
//! frames ([`frame`]). The first frame each way is the handshake ([`hello`]);
//! after it, the frames belong to exactly one conversation:
//!
//! | module      | peers                          | socket                  |
//! |-------------|--------------------------------|-------------------------|
//! | [`client`]  | gateway / `supctl ask` <-> supervisor | client socket    |
//! | [`worker`]  | supervisor <-> worker process   | one socket per worker   |
//! | [`admin`]   | `supctl` <-> supervisor         | admin socket            |
//!
//! [`chat`] holds the vocabulary the conversations share (messages, generation
//! parameters, statistics, backends); [`cpus`] the CPU lists of status and
//! the workers' pinning. bincode is not self-describing: new enum
//! variants go at the end, and the golden files under `proto/tests/data/` catch
//! accidental changes of the wire format.
//!
//! It must hold nothing but the wire protocol: no model-file parsing (that is
//! `model-check`), no client logic (`client`), no decisions of any process,
//! and it depends on no other rocksteady crate.

pub mod admin;
pub mod chat;
pub mod client;
pub mod cpus;
pub mod error;
pub mod frame;
pub mod hello;
pub mod role;
pub mod worker;

pub use error::ProtoError;
pub use frame::{Connection, FrameReader, FrameWriter, MAX_FRAME_LEN};
pub use hello::{PeerRole, PROTOCOL_VERSION};
