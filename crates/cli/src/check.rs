//! `nacre check`: can this host run nacre sandboxes? With `--boot`, boot
//! one and ask its agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use nacre_runtime::host::{self, KernelMode};
use nacre_runtime::image::{locate_vmm, GuestImage};
use nacre_runtime::pod::{CacheMode, Pod, PodOptions};
use nacre_runtime::sandbox::default_boot_timeout;

#[derive(Args)]
pub struct CheckArgs {
    /// Also boot a VM and ask its agent for the guest's details.
    #[arg(long)]
    boot: bool,
    /// Guest memory for --boot, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Where the VM's run directory goes for --boot.
    #[arg(long, default_value = "/run/nacre/check")]
    run_dir: PathBuf,
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let api = host::check_kvm()?;
    println!("/dev/kvm            ok (KVM API {api})");
    let mode = host::kernel_mode();
    println!(
        "guest kernel mode   {}",
        match mode {
            KernelMode::Hardware => "hardware virtualization",
            KernelMode::Emulated => "emulated (kvm_pvm, no VT-x/AMD-V): boots take tens of seconds",
        }
    );
    let vmm = locate_vmm()?;
    println!("nacre-vmm           {}", vmm.display());
    let image = GuestImage::locate()?;
    println!("guest kernel        {}", image.kernel.display());
    println!("guest initrd        {}", image.initrd.display());
    if !args.boot {
        return Ok(());
    }

    let dir = args.run_dir.join(format!("vm-{}", std::process::id()));
    println!("booting a VM ({} MiB, 1 vCPU)...", args.memory_mib);
    let pod = Pod::start(PodOptions {
        id: "check".into(),
        hostname: None,
        vmm,
        image,
        vcpus: 1,
        memory_mib: args.memory_mib,
        kernel_params: None,
        vm_dir: dir,
        share: None,
        share_cache: CacheMode::Auto,
        cgroup: None,
        oom_score_adj: None,
        network: None,
        templates: None,
        boot_timeout: default_boot_timeout(),
    })
    .context("booting the check VM")?;
    println!(
        "agent answered      after {:.2} s (VMM pid {})",
        pod.started().seconds,
        pod.pid()
    );
    let details = pod.agent().guest_details().context("asking the agent")?;
    println!("agent version       {}", details.agent_version);
    println!("guest kernel        {}", details.kernel_release);
    println!("host kernel         {}", host::kernel_release());
    println!(
        "guest               {} CPU(s), {} MiB",
        details.cpus,
        details.memory_total_bytes >> 20
    );
    pod.shutdown(Duration::from_secs(60))
        .context("shutting the check VM down")?;
    println!("shutdown            VMM exited cleanly, run directory removed");
    Ok(())
}
