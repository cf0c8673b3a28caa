//! Builds the test double of the RKLLM runtime (tests/fake-rkllm/fake_rkllm.c)
//! as shared libraries, one per ABI plus one of a version the worker must
//! refuse, and tells the tests where they are through `FAKE_RKLLM_*_SO`.
//!
//! The libraries are built with the target's C compiler (as the `cc` crate
//! finds it), so they can be loaded by the worker built for the same target.
//! A missing compiler does not fail the build of the worker itself: the
//! tests then fail, naming the library that could not be built.

use std::env;
use std::path::PathBuf;

/// (env name suffix, file name part, `RKLLM_ABI`, embedded version).
const VARIANTS: [(&str, &str, &str, &str); 3] = [
    ("1_2", "1_2", "12", "1.2.1"),
    ("1_3", "1_3", "13", "1.3.0"),
    // A release this worker does not know: `abi = "auto"` must refuse it.
    ("UNKNOWN", "unknown", "12", "1.1.4"),
];

fn main() {
    let src = PathBuf::from("tests/fake-rkllm/fake_rkllm.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    for (env_suffix, file_part, abi, version) in VARIANTS {
        let so = out_dir.join(format!("libfake_rkllm_{file_part}.so"));
        println!(
            "cargo:rustc-env=FAKE_RKLLM_{env_suffix}_SO={}",
            so.display()
        );
        let compiler = match cc::Build::new()
            .cargo_metadata(false)
            .warnings(true)
            .try_get_compiler()
        {
            Ok(c) => c,
            Err(err) => {
                println!("cargo:warning=no C compiler for the test runtime: {err}");
                return;
            }
        };
        let status = compiler
            .to_command()
            .args(["-shared", "-fPIC", "-std=c11", "-pthread", "-O1"])
            .arg(format!("-DRKLLM_ABI={abi}"))
            .arg(format!("-DRKLLM_VERSION=\"{version}\""))
            .arg("-o")
            .arg(&so)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => println!("cargo:warning=building {} failed: {s}", so.display()),
            Err(err) => println!("cargo:warning=cannot run the C compiler: {err}"),
        }
    }
}
