//! A loader inherited through `fork()`: the child builds its own threads and buffers, a pass
//! started in the parent reports an error in the child instead of waiting for ever on a thread
//! that does not exist there, and the parent's pass goes on undisturbed.

use std::sync::Arc;

use vantix_read::{testing, Codec, Dataset, EpochIterator, Loader, LoaderConfig};

fn images(pass: EpochIterator) -> Vec<u8> {
    pass.flat_map(|b| b.expect("batch").images().to_vec())
        .collect()
}

#[test]
fn a_forked_child_builds_its_own_threads_and_never_hangs() {
    let tiny = testing::tiny_dataset(Codec::Raw);
    let dir = tempfile::tempdir().unwrap();
    tiny.write_to(dir.path()).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    let config = LoaderConfig {
        batch_size: 2,
        prefetch: 1,
        num_threads: Some(2),
        ..Default::default()
    };
    let loader = Loader::new(ds, config).unwrap();
    let want0 = images(loader.epoch(0, 0));
    let want1 = images(loader.epoch(1, 0));
    let mut inflight = loader.epoch(1, 0);
    let first = inflight.next().unwrap().unwrap().images().to_vec(); // its thread is busy now

    // SAFETY: the child only runs this test's code, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe { libc::alarm(30) }; // a hang kills the child, and the parent sees it
        let inherited = matches!(inflight.next(), Some(Err(e)) if e.to_string().contains("fork"));
        let over = inflight.next().is_none();
        drop(inflight); // must not join the parent's thread
        let fresh = images(loader.epoch(0, 0)) == want0;
        let code = if inherited && over && fresh { 0 } else { 1 };
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed or hung: status {status:#x}"
    );
    let mut rest = first;
    rest.extend(images(inflight));
    assert_eq!(rest, want1, "the parent's pass was disturbed");
}
