//! The bridge's integration tests: boards on this machine, a real
//! nats-server, the real model.

mod cluster;
