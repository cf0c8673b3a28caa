//! Integration tests of the NPU worker.
