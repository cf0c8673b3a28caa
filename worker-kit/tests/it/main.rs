//! The worker runtime's behaviour table (see the crate docs), tested once
//! against a scripted engine driven in-process over a pipe.

mod puppet;
mod table;
