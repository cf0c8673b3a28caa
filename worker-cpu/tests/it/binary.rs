//! Checks of the built `worker-cpu` binary itself.

/// The production worker carries no fault injection: none of the switches
/// the tests once used (worker-cpu's `ROCKSTEADY_WORKER_FAULTS`) or use now
/// (test-kit's fake worker) is in the binary installed on the board.
#[test]
fn the_binary_has_no_fault_switch() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_worker-cpu")).unwrap();
    for needle in [
        "ROCKSTEADY_WORKER_FAULTS",
        "ROCKSTEADY_FAKE_WORKER",
        "fault injection",
        "token-delay-ms",
        "grow-mib-per-s",
        "crash-on-load",
    ] {
        assert!(
            memchr::memmem::find(&binary, needle.as_bytes()).is_none(),
            "worker-cpu contains {needle:?}"
        );
    }
}
