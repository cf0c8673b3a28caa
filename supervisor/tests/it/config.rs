//! The daemon binary as an operator runs it on a bad config.

use std::process::Command;

use crate::support::bin;

#[test]
fn bad_config_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[slots.primary]\nbackend = \"cpu\"\nmodel = \"m.gguf\"\nprofile.context_size = 5\n",
            "slots.primary.profile.context_size",
        ),
        (
            "[slots.primary]\nbackend = \"tpu\"\nmodel = \"m.gguf\"\n",
            "slots.primary.backend",
        ),
        (
            "[policy]\nrestart_intensity = -1\n[slots.primary]\nbackend = \"cpu\"\nmodel = \"m\"\n",
            "policy.restart_intensity",
        ),
        (
            "[supervisor]\nqueue_capacity = 0\n[slots.primary]\nbackend = \"cpu\"\nmodel = \"m\"\n",
            "supervisor.queue_capacity",
        ),
        (
            "[slots.primary]\nbackend = \"cpu\"\nmodel = \"m\"\nwarmth = true\n",
            "warmth",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(bin("rocksteady-supervisor"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: accepted");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}
