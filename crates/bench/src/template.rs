//! Cold boot vs. start from a VM template, and the density of
//! template-restored sandboxes (host memory of 1 and of N).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nacre_runtime::agent::RestoredIdentity;
use nacre_runtime::image::GuestImage;
use nacre_runtime::sandbox::{Sandbox, SandboxError};
use nacre_runtime::template::{TemplateError, TemplateStore};
use nacre_runtime::vm::VmSpec;
use serde::Serialize;

use crate::memory::{self, Memory};

/// Why the template benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum TemplateBenchError {
    #[error("cold boot: {0}")]
    Cold(#[source] SandboxError),
    #[error("template: {0}")]
    Template(#[from] TemplateError),
    #[error("restoring sandbox {index}: {source}")]
    Restore {
        index: usize,
        #[source]
        source: SandboxError,
    },
    #[error("host entropy: {0}")]
    Entropy(#[source] std::io::Error),
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateSample {
    /// Cold boot: VMM spawn to the agent's first answered RPC.
    pub cold_ready_secs: f64,
    /// Making the template (a cold boot, then the snapshot).
    pub template_create_secs: f64,
    /// Per restored sandbox: VMM spawn to `Agent.Restored` answered.
    pub restore_ready_secs: Vec<f64>,
    /// Host memory of the first restored sandbox's VMM.
    pub one: Memory,
    /// Host memory of all restored sandboxes' VMMs together.
    pub all: Memory,
    pub sandboxes: usize,
    /// Sandboxes restored and answering per second, one after another.
    pub per_second: f64,
    /// Host CPU of one idle restored sandbox (vCPU threads), in percent
    /// of one CPU, over a few seconds.
    pub idle_cpu_percent: f64,
}

/// CPU time (user + system, in clock ticks) of every thread of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    get(11) + get(12)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Runs the benchmark in `scratch` (created; removed by the caller).
pub fn run(
    vmm: &Path,
    image: &GuestImage,
    memory_mib: u32,
    sandboxes: usize,
    timeout: Duration,
    scratch: &Path,
) -> Result<TemplateSample, TemplateBenchError> {
    std::fs::create_dir_all(scratch).map_err(|source| TemplateBenchError::Scratch {
        path: scratch.to_path_buf(),
        source,
    })?;
    let spec = VmSpec {
        memory_mib,
        ..VmSpec::new(image.clone())
    };

    eprintln!("[templates] cold boot for comparison...");
    let start = Instant::now();
    let cold = Sandbox::boot(vmm, &spec, &scratch.join("cold"), timeout)
        .map_err(TemplateBenchError::Cold)?;
    cold.agent()
        .health()
        .map_err(|e| TemplateBenchError::Cold(e.into()))?;
    let cold_ready_secs = start.elapsed().as_secs_f64();
    eprintln!("    agent answered after {cold_ready_secs:.2} s");
    drop(cold);

    eprintln!("[templates] making the template (cold boot + snapshot)...");
    let store = TemplateStore::new(scratch.join("templates"));
    let start = Instant::now();
    let template = store.get_or_create(vmm, &spec, timeout)?;
    let template_create_secs = start.elapsed().as_secs_f64();
    eprintln!("    template ready after {template_create_secs:.2} s");

    let mut running: Vec<Sandbox> = Vec::new();
    let mut restore_ready_secs = Vec::new();
    let mut one = Memory::default();
    let mut idle_cpu_percent = f64::NAN;
    let all_start = Instant::now();
    // Time spent measuring idle CPU, not restoring.
    let mut measuring = Duration::ZERO;
    for index in 0..sandboxes {
        let name = format!("bench-{index}");
        let identity = RestoredIdentity::new(&name, &name).map_err(TemplateBenchError::Entropy)?;
        let sandbox = Sandbox::restore(
            vmm,
            &template,
            image,
            &[],
            &[],
            &scratch.join(&name),
            &Default::default(),
            &identity,
            timeout,
        )
        .map_err(|source| TemplateBenchError::Restore { index, source })?;
        let secs = sandbox.boot_time().as_secs_f64();
        eprintln!(
            "[templates] sandbox {}/{sandboxes} answered after {secs:.2} s",
            index + 1
        );
        restore_ready_secs.push(secs);
        let pid = sandbox.vm().pid();
        if index == 0 {
            one = memory::of_pid(pid).unwrap_or_default();
            let before = cpu_ticks(pid);
            let window = Duration::from_secs(5);
            std::thread::sleep(window);
            measuring += window;
            let used = cpu_ticks(pid).saturating_sub(before) as f64 / ticks_per_second();
            idle_cpu_percent = 100.0 * used / window.as_secs_f64();
        }
        // An idle guest costs a good part of a CPU here (periodic tick in
        // emulated kernel code): paused, N of them do not starve the next.
        match sandbox.vm().api(&nacre_vmm_api::Request::Pause) {
            Ok(reply) => {
                if let Err(e) = reply.into_result() {
                    eprintln!("    pausing: {e}");
                }
            }
            Err(e) => eprintln!("    pausing: {e}"),
        }
        running.push(sandbox);
    }
    let per_second = sandboxes as f64 / all_start.elapsed().saturating_sub(measuring).as_secs_f64();
    let all = running
        .iter()
        .filter_map(|s| memory::of_pid(s.vm().pid()))
        .fold(Memory::default(), |a, b| a + b);
    drop(running);
    Ok(TemplateSample {
        cold_ready_secs,
        template_create_secs,
        restore_ready_secs,
        one,
        all,
        sandboxes,
        per_second,
        idle_cpu_percent,
    })
}
