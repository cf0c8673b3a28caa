//! worker-cpu on the real model, in-process: one test binary (see STYLE.md).

mod template;
