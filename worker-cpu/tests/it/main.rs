//! worker-cpu on the real model, in-process, and checks of the built binary
//! itself: one test binary (see STYLE.md).

use std::sync::Mutex;

mod binary;
mod cache;
mod template;

/// llama.cpp's backend can be initialised once per process at a time.
static BACKEND: Mutex<()> = Mutex::new(());
