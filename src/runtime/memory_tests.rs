use std::collections::BTreeMap;

use super::*;

const MEMINFO: &str = "MemTotal:       24683664 kB\nMemFree:        20678636 kB\n";

/// Files as a map; anything else is absent.
fn limit(configured: u64, files: &[(&str, &str)]) -> Option<MemoryLimit> {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    memory_limit_from(configured, &|path| files.get(path).cloned())
}

#[test]
fn limit_values_are_parsed() {
    let cases = [
        ("max\n", None),
        ("8589934592\n", Some(8 << 30)),
        ("9223372036854771712", None),
        ("", None),
        ("-1", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_limit(text), expected, "{text:?}");
    }
    assert_eq!(parse_mem_total(MEMINFO), Some(24683664 * 1024));
    assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
}

#[test]
fn cgroup_lines_name_the_limit_files() {
    let cases: [(&str, &[&str]); 2] = [
        (
            "0::/kubepods/pod1/c1\n",
            &[
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max",
                "/sys/fs/cgroup/kubepods/pod1/memory.max",
                "/sys/fs/cgroup/kubepods/memory.max",
                "/sys/fs/cgroup/memory.max",
            ],
        ),
        (
            "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n",
            &[
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
            ],
        ),
    ];
    for (cgroup, expected) in cases {
        let files = limit_files(cgroup);
        let files: Vec<_> = files.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(files, expected, "{cgroup:?}");
    }
    assert!(limit_files("garbage\n").is_empty());
}

/// The configured limit wins; else the smallest cgroup limit of the cgroup and its ancestors,
/// or the machine's memory when that is smaller or no cgroup limits.
#[test]
fn the_limit_is_configured_else_the_smallest_cgroup_else_the_machine() {
    let v2 = "0::/pod/c\n";
    /// (configured, files, expected bytes and description)
    type Case<'a> = (u64, &'a [(&'a str, &'a str)], Option<(u64, &'a str)>);
    let cases: [Case; 6] = [
        (1000, &[], Some((1000, "1000 bytes (runtime.memory_limit)"))),
        (
            0,
            &[
                ("/proc/self/cgroup", v2),
                ("/sys/fs/cgroup/pod/c/memory.max", "max"),
                ("/sys/fs/cgroup/pod/memory.max", "4294967296"),
                ("/proc/meminfo", MEMINFO),
            ],
            Some((4 << 30, "4294967296 bytes (/sys/fs/cgroup/pod/memory.max)")),
        ),
        (
            0,
            &[
                ("/proc/self/cgroup", v2),
                ("/sys/fs/cgroup/pod/c/memory.max", "max"),
                ("/proc/meminfo", MEMINFO),
            ],
            Some((24683664 * 1024, "25276071936 bytes (the machine's memory)")),
        ),
        (
            0,
            &[
                ("/proc/self/cgroup", v2),
                ("/sys/fs/cgroup/pod/c/memory.max", "99999999999999"),
                ("/proc/meminfo", MEMINFO),
            ],
            Some((24683664 * 1024, "25276071936 bytes (the machine's memory)")),
        ),
        (
            0,
            &[
                ("/proc/self/cgroup", "4:memory:/docker/abc\n"),
                (
                    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                    "2147483648\n",
                ),
                ("/proc/meminfo", MEMINFO),
            ],
            Some((
                2 << 30,
                "2147483648 bytes (/sys/fs/cgroup/memory/memory.limit_in_bytes)",
            )),
        ),
        (0, &[], None),
    ];
    for (configured, files, expected) in cases {
        let found = limit(configured, files);
        let found = found.as_ref().map(|l| (l.bytes, l.to_string()));
        let expected = expected.map(|(b, s)| (b, s.to_string()));
        assert_eq!(found, expected, "{files:?}");
    }
}

/// This process's limit is readable here (a machine always has `MemTotal`).
#[test]
fn this_process_has_a_limit() {
    let found = memory_limit(0).expect("/proc/meminfo is readable");
    assert!(found.bytes > 0);
    assert_eq!(memory_limit(5).map(|l| l.bytes), Some(5));
}
