//! worker-cpu on the real model, in-process, and checks of the built binary
//! itself: one test binary (see STYLE.md).

mod binary;
mod template;
