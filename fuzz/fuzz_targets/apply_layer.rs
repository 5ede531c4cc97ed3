//! Any bytes as a layer blob: applying must fail cleanly or succeed, never panic,
//! and never create or change anything outside the root: nothing appears beside
//! it, and the file in `outside/` next to it is neither changed nor linked to.
#![no_main]

use std::os::unix::fs::MetadataExt;

use libfuzzer_sys::fuzz_target;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    let secret = outside.join("secret");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(&secret, b"s").unwrap();
    let before = std::fs::metadata(&secret).unwrap();
    // On a thread with the stack emberd applies layers on (a tokio blocking
    // thread's 2 MiB), so that recursion as deep as a layer's paths shows. Joined
    // explicitly: the scope alone does not wait for the thread to exit, and
    // LeakSanitizer would count what it still holds as leaked.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn_scoped(s, || {
                for overlay in [false, true] {
                    let opts = ember_diff::ApplyOptions {
                        overlay,
                        devices: ember_diff::DevicePolicy::Skip,
                        ..Default::default()
                    };
                    let _ = ember_diff::apply(&root, data, &opts);
                }
            })
            .unwrap()
            .join()
            .unwrap();
    });
    assert_eq!(
        names(dir.path()),
        ["outside", "root"],
        "something was written beside the root"
    );
    assert_eq!(names(&outside), ["secret"], "something was written outside");
    let after = std::fs::metadata(&secret).unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    assert_eq!(
        (after.nlink(), after.mode(), after.uid(), after.gid()),
        (before.nlink(), before.mode(), before.uid(), before.gid()),
        "the file outside was linked to or changed"
    );
});
