//! Any bytes as an image manifest, index, config or docker-archive manifest.json.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ember_images::parse_manifest(data);
    let _ = ember_images::parse_index(data);
    let _ = ember_images::parse_config(data);
    let _ = ember_images::parse_docker_manifest(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ember_images::reference::normalize(s);
    }
});
