//! Any bytes as a layer blob: applying must fail cleanly or succeed, never panic,
//! and never create anything beside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for overlay in [false, true] {
        let opts = ember_diff::ApplyOptions {
            overlay,
            devices: ember_diff::DevicePolicy::Skip,
            ..Default::default()
        };
        let _ = ember_diff::apply(&root, data, &opts);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "something was written beside the root");
});
