//! The NPU telemetry readers on temporary directories laid out like debugfs
//! and sysfs: present files are read, absent ones give `None`.

use std::fs;
use std::path::Path;

use model_check::rkllm::{read_soc, Platform};
use supervisor::telemetry::npu::{
    read_driver_version, read_npu_freq_hz, read_npu_load, CoreLoad, NpuTelemetry,
};

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn reads_a_board_like_tree() {
    let debugfs = tempfile::tempdir().unwrap();
    let sysfs = tempfile::tempdir().unwrap();
    write(
        debugfs.path(),
        "rknpu/load",
        b"NPU load:  Core0: 12%, Core1:  0%, Core2: 47%,\n",
    );
    write(debugfs.path(), "rknpu/version", b"RKNPU driver: v0.9.8\n");
    write(
        sysfs.path(),
        "class/devfreq/fdab0000.npu/cur_freq",
        b"1000000000\n",
    );
    write(
        sysfs.path(),
        "firmware/devicetree/base/compatible",
        b"radxa,rock-5b\0rockchip,rk3588\0",
    );

    let t = NpuTelemetry::read(debugfs.path(), sysfs.path());
    assert_eq!(
        t.load,
        Some(vec![
            CoreLoad {
                core: 0,
                percent: 12
            },
            CoreLoad {
                core: 1,
                percent: 0
            },
            CoreLoad {
                core: 2,
                percent: 47
            },
        ])
    );
    assert_eq!(t.driver_version.as_deref(), Some("v0.9.8"));
    assert_eq!(t.freq_hz, Some(1_000_000_000));
    assert_eq!(
        t.to_string(),
        "npu load: core0 12%, core1 0%, core2 47%; freq: 1000 MHz; driver: v0.9.8"
    );
    assert_eq!(read_soc(sysfs.path()), Some(Platform::Rk3588));
}

#[test]
fn one_core_per_line_and_other_devfreq_names() {
    let debugfs = tempfile::tempdir().unwrap();
    let sysfs = tempfile::tempdir().unwrap();
    write(debugfs.path(), "rknpu/load", b"Core0:  3%\nCore1: 99%\n");
    write(
        sysfs.path(),
        "class/devfreq/27700000.npu/cur_freq",
        b"800000000",
    );
    write(sysfs.path(), "class/devfreq/dmc/cur_freq", b"2112000000");
    assert_eq!(read_npu_load(debugfs.path()).unwrap()[1].percent, 99);
    assert_eq!(read_npu_freq_hz(sysfs.path()), Some(800_000_000));
}

#[test]
fn absent_or_garbled_files_are_none() {
    let empty = tempfile::tempdir().unwrap();
    let t = NpuTelemetry::read(empty.path(), empty.path());
    assert_eq!(t, NpuTelemetry::default());
    assert_eq!(t.to_string(), "npu load: n/a; freq: n/a; driver: n/a");
    assert_eq!(read_soc(empty.path()), None);

    write(
        empty.path(),
        "rknpu/load",
        b"permission denied or something\n",
    );
    write(empty.path(), "rknpu/version", b"\n\n");
    write(empty.path(), "class/devfreq/fdab0000.npu/cur_freq", b"fast");
    assert_eq!(read_npu_load(empty.path()), None);
    assert_eq!(read_driver_version(empty.path()), None);
    assert_eq!(read_npu_freq_hz(empty.path()), None);
}
