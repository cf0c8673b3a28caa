//! The one call into libc the runtime needs that has no safe wrapper: the
//! only module of this crate with `unsafe`.
#![allow(unsafe_code)]

/// Ends the process at once with `code`: no exit handlers, no destructors
/// (see [`crate::exit`] for why).
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit takes no pointers, touches no Rust state and does not
    // return; any thread may call it.
    unsafe { libc::_exit(code) }
}
