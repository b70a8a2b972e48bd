//! Helpers for the tests that run the real `nacre-vmm` binary on KVM.
//!
//! Tests needing KVM (or the guest kernel) skip with a message when it is
//! missing, except when `CI` is set: then they fail, so a CI machine without
//! `/dev/kvm` cannot pass silently.

#![allow(dead_code, reason = "each test binary uses a subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nacre-vmm")
}

/// Whether a missing prerequisite must fail the test rather than skip it.
pub fn strict() -> bool {
    ["CI", "NACRE_REQUIRE_VM"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"))
}

/// Returns false (skip) or panics (CI) when `/dev/kvm` cannot be opened.
pub fn require_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) if strict() => panic!("CI is set and /dev/kvm is unusable: {e}"),
        Err(e) => {
            eprintln!("skipping: /dev/kvm is unusable: {e}");
            false
        }
    }
}

/// Returns false (skip) or panics (CI) when `path` is missing.
pub fn require_file(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    if strict() {
        panic!("CI is set and {} is missing", path.display());
    }
    eprintln!("skipping: {} is missing", path.display());
    false
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nacre-vmm-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

const LOAD_ADDR: u64 = 0x100_0000;
const HEADERS: u64 = 64 + 56;

/// A minimal ELF64 executable loading `code` at 16 MiB, entered there.
pub fn elf_with_code(code: &[u8]) -> Vec<u8> {
    let total = HEADERS + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(LOAD_ADDR + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // paddr
    elf.extend_from_slice(&total.to_le_bytes()); // filesz
    elf.extend_from_slice(&total.to_le_bytes()); // memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    elf.extend_from_slice(code);
    elf
}

/// The message the test kernels print.
pub const TEST_KERNEL_MESSAGE: &str = "nacre-test-kernel: long mode\n";

fn print_then(message: &str, tail: [u8; 5]) -> Vec<u8> {
    let mut code = vec![
        0x48, 0x8d, 0x35, 0x11, 0x00, 0x00, 0x00, // lea msg(%rip), %rsi
        0x66, 0xba, 0xf8, 0x03, // mov $0x3f8, %dx
        0xac, // 1: lodsb
        0x84, 0xc0, // test %al, %al
        0x74, 0x03, // jz 2f
        0xee, // out %al, %dx
        0xeb, 0xf8, // jmp 1b
    ];
    code.extend_from_slice(&tail); // 2:
    code.extend_from_slice(message.as_bytes());
    code.push(0);
    code
}

/// A "kernel" that prints [`TEST_KERNEL_MESSAGE`] on COM1 from 64-bit mode,
/// then resets through the i8042 like Linux's `reboot=k`.
pub fn reset_kernel() -> Vec<u8> {
    // mov $0xfe, %al; out %al, $0x64; hlt
    elf_with_code(&print_then(
        TEST_KERNEL_MESSAGE,
        [0xb0, 0xfe, 0xe6, 0x64, 0xf4],
    ))
}

/// A "kernel" that prints [`TEST_KERNEL_MESSAGE`] and spins forever.
pub fn spinning_kernel() -> Vec<u8> {
    // jmp .; nop; nop; nop
    elf_with_code(&print_then(
        TEST_KERNEL_MESSAGE,
        [0xeb, 0xfe, 0x90, 0x90, 0x90],
    ))
}

/// Waits up to `timeout` for `child`; kills it on timeout.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running VMM, killed when dropped so a failing test leaves no VM behind.
pub struct VmmProcess(pub Child);

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the VMM with `args`; stdout is discarded, stderr inherited.
pub fn spawn_vmm(args: &[&str]) -> VmmProcess {
    let child = Command::new(vmm_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", vmm_bin()));
    VmmProcess(child)
}

/// Waits for `path` to appear.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A "kernel" that prints a Linux panic line, then resets like `panic=-1`.
pub fn panicking_kernel() -> Vec<u8> {
    elf_with_code(&print_then(
        "Kernel panic - not syncing: test\n",
        [0xb0, 0xfe, 0xe6, 0x64, 0xf4],
    ))
}
