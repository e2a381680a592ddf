//! Facts about the process, read from `/proc` with plain syscalls so that they work at any
//! point of start-up (the first `malloc` can come before the C library has set `environ`).

pub struct ProcInfo {
    pub argv: Vec<String>,
    pub environ: Vec<String>,
    pub exe: String,
}

pub fn read_file(path: &std::ffi::CStr) -> Vec<u8> {
    let mut out = Vec::new();
    // SAFETY: plain syscalls on a buffer we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return out;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fd);
    }
    out
}

/// NUL-terminated strings; an empty argument (`""`) stays an empty string.
fn split_nul(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl ProcInfo {
    pub fn read() -> ProcInfo {
        ProcInfo {
            argv: split_nul(&read_file(c"/proc/self/cmdline")),
            environ: split_nul(&read_file(c"/proc/self/environ")),
            exe: std::fs::read_link("/proc/self/exe")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn env(&self, name: &str) -> Option<String> {
        self.environ.iter().find_map(|kv| {
            kv.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    }

    /// The program's name for the dump's file name: `argv[0]`'s last component, made safe.
    pub fn program_name(&self) -> String {
        let a0 = self.argv.first().map(String::as_str).unwrap_or("");
        let base = a0.rsplit('/').next().unwrap_or("");
        let base = if base.is_empty() {
            self.exe.rsplit('/').next().unwrap_or("program")
        } else {
            base
        };
        let clean: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if clean.is_empty() {
            "program".into()
        } else {
            clean
        }
    }
}
