//! What every hostile case checks: the `meshgate` binary run as a user runs it, and the verdict
//! on its answer (exit code, a message naming the value at fault, no panic, no secret echoed).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
pub const TD: &str = "bank.example";
pub const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// Runs `meshgate` with `args` (no token in the environment, logs at the default level).
pub fn meshgate<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MESHGATE_BOOTSTRAP_TOKEN")
        .env_remove("MESHGATE_LOG")
        .env_remove("MESHGATE_LOG_FORMAT")
        .output()
        .expect("run meshgate")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command failed with `code`, said each of `needles` on stderr, and did not panic.
#[track_caller]
pub fn assert_refused(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert_no_panic(o);
    for needle in needles {
        assert!(err.contains(needle), "stderr should name {needle:?}: {err}");
    }
}

/// No panic: not exit 101, no "panicked" on stderr, and the process was not killed by a signal
/// (a stack overflow aborts with SIGSEGV or SIGABRT).
#[track_caller]
pub fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert_ne!(o.status.code(), Some(101), "panic: {err}");
    assert!(
        o.status.code().is_some(),
        "killed by a signal: {:?}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// Neither stdout nor stderr contains `secret`.
#[track_caller]
pub fn assert_not_echoed(o: &Output, secret: &str) {
    assert!(!secret.is_empty());
    assert!(
        !stderr(o).contains(secret),
        "echoed on stderr: {}",
        stderr(o)
    );
    assert!(
        !stdout(o).contains(secret),
        "echoed on stdout: {}",
        stdout(o)
    );
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A CA made by `meshgate ca init` in a temporary directory.
pub struct CliCa {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl CliCa {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let o = meshgate(&["ca", "init", "--dir", s(&dir), "--trust-domain", TD]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        Self { tmp, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `ca issue` of `ID` into OUT; returns OUT (svid.pem, key.pem, bundle.pem).
    pub fn issue(&self) -> PathBuf {
        let out = self.path("out");
        let o = meshgate(&[
            "ca",
            "issue",
            "--dir",
            s(&self.dir),
            "--spiffe-id",
            ID,
            "--out",
            s(&out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        out
    }

    /// A bootstrap token for `ID`, as `ca token create` prints it.
    pub fn token(&self) -> String {
        let o = meshgate(&[
            "ca",
            "token",
            "create",
            "--dir",
            s(&self.dir),
            "--spiffe-id",
            ID,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o).trim().to_owned()
    }
}
