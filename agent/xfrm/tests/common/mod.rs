//! Test helpers: run a test body in a fresh network namespace of its own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::process::Command;

/// Runs `body` on a thread that has unshared its network namespace, on a current-thread tokio
/// runtime. The namespace has only `lo` (up) and dies with the thread: nothing here can touch
/// the host's own XFRM state. Child processes (`ip ...`) started from the body inherit it.
pub fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        let root = std::fs::read_link("/proc/self/ns/net").unwrap();
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the tests need root");
        let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(root, mine, "still in the root network namespace");
        sh("ip link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Runs a shell command in the current thread's namespace; panics with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
