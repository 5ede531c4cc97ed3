//! Writing to stdout when its reader may have gone.

use std::io::Write;

/// Writes to stdout; a reader that has gone ends `ember` as it ends any Unix filter.
pub fn write(args: std::fmt::Arguments) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|_| o.flush()) {
        check(&e);
        eprintln!("ember: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Ends `ember` quietly when `e` says stdout's reader has gone; other errors are
/// left to the caller.
pub fn check(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        gone();
    }
}

/// Dies of SIGPIPE, the way `cat` does when `head` has read enough.
pub fn gone() -> ! {
    // SAFETY: restoring the default disposition of SIGPIPE and raising it affects
    // only this process, which is meant to end here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141);
}
