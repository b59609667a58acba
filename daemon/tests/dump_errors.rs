//! `ptlens dump FILE` on bad input: one clear error line naming the file and offset, nonzero exit.

use std::process::Command;

fn dump(bytes: &[u8], name: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("ptlens-dump-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .arg("dump")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().expect("exited, not killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_error(stderr: &str, name: &str, offset: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    assert!(lines[0].contains(name), "names the file: {stderr}");
    assert!(lines[0].contains(offset), "names offset {offset}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn empty_file() {
    let (code, _, err) = dump(b"", "empty.data");
    assert_ne!(code, 0);
    assert_one_error(&err, "empty.data", "0x0");
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn wrong_magic() {
    let (code, _, err) = dump(&[0x42; 200], "magic.data");
    assert_ne!(code, 0);
    assert_one_error(&err, "magic.data", "0x0");
    assert!(err.contains("not a perf.data file"), "{err}");
}

#[test]
fn truncated_header() {
    let original = std::fs::read(perf_support_skylake()).unwrap();
    let (code, _, err) = dump(&original[..50], "short.data");
    assert_ne!(code, 0);
    assert_one_error(&err, "short.data", "0x0");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn corrupt_record_size() {
    let mut bytes = std::fs::read(perf_support_skylake()).unwrap();
    // The TIME_CONV record at 0x2e8: a size of 0 would make a naive reader loop forever.
    bytes[0x2e8 + 6] = 0;
    bytes[0x2e8 + 7] = 0;
    let (code, _, err) = dump(&bytes, "size0.data");
    assert_ne!(code, 0);
    assert_one_error(&err, "size0.data", "0x2e8");
}

#[test]
fn huge_attr_ids_do_not_allocate() {
    let mut bytes = std::fs::read(perf_support_skylake()).unwrap();
    // The first attr's ids section size (entry at 0xe8, size 128: ids {offset,size} at +112).
    bytes[0xe8 + 120..0xe8 + 128].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let (code, _, err) = dump(&bytes, "ids.data");
    assert_ne!(code, 0);
    assert!(
        err.contains("ids.data") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn truncated_mid_payload_prints_what_came_before() {
    let original = std::fs::read(perf_support_skylake()).unwrap();
    let (code, out, err) = dump(&original[..0x10000], "cut.data");
    assert_ne!(code, 0);
    assert_one_error(&err, "cut.data", "0x77b8");
    assert!(out.contains("PERF_RECORD_TIME_CONV"));
    assert_eq!(out.matches("Intel Processor Trace data").count(), 2);
}

fn perf_support_skylake() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/skylake-echo/perf.data")
}
