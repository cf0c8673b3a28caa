//! Integration tests of supctl: the real binary and its verbs in-process,
//! against a real supervisor (test-kit's harness) with real workers and the
//! real default model.

mod bench;
mod cli;

use test_kit::harness as support;
