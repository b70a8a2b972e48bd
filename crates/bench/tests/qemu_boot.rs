//! VM tier: the guest image nacre builds also boots under QEMU's microvm
//! (Debian's qemu-system-x86) to the agent's ready line.

use std::time::Duration;

use nacre_bench::boot::{boot_to_ready, Vmm};
use nacre_runtime::testing::vm_prereqs;

#[test]
fn guest_image_boots_under_qemu_microvm() {
    let Some(p) = vm_prereqs("guest_image_boots_under_qemu_microvm") else {
        return;
    };
    let qemu = Vmm::QemuMicrovm {
        binary: "qemu-system-x86_64".into(),
    };
    let sample = boot_to_ready(&qemu, &p.image, 256, Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("QEMU microvm boot: {e}"));
    eprintln!("qemu-microvm: agent ready after {:.1} s", sample.ready_secs);
}
