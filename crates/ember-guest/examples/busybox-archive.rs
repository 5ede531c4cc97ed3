//! Writes the busybox test image as a docker-archive tar: `busybox-archive OUT NAME`.
fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(out), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: busybox-archive OUT.tar NAME");
        std::process::exit(2);
    };
    if let Err(e) = ember_guest::busybox_docker_archive(std::path::Path::new(&out), &name) {
        eprintln!("busybox-archive: {e}");
        std::process::exit(1);
    }
}
