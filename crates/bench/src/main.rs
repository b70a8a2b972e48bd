//! `nacre-bench`: runs the benchmark suite and writes the report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nacre_bench::boot::{boot_to_ready, BootSample, Vmm};
use nacre_bench::container::{busybox_bundle, Runtime};
use nacre_bench::harness::Harness;
use nacre_bench::report::{HostInfo, Report, Section};
use nacre_bench::stats::median;
use nacre_runtime::image::{locate_vmm, GuestImage};

/// The report's sections, in order, as `--only` names them.
const SECTIONS: [&str; 6] = ["boot", "containers", "phases", "templates", "ctr", "pods"];

#[derive(Parser)]
#[command(version, about = "nacre benchmarks: writes report.md and report.json")]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Boots per VMM (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest memory in MiB for every VM.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// QEMU binary for the comparison.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Per-boot time limit in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Sandboxes restored from one template for the density figures.
    #[arg(long, default_value_t = 20)]
    template_sandboxes: usize,
    /// Pods started together in the `pods` section.
    #[arg(long, default_value_t = 10)]
    pods_concurrent: usize,
    /// Time limit in seconds of each CRI call and of each pod start in the
    /// `pods` section (cold VMs started together on a small host are slow).
    #[arg(long, default_value_t = 1800)]
    pods_timeout: u64,
    /// Run only these sections (boot, containers, phases, templates, ctr, pods); all
    /// by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(bad) = args.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        anyhow::bail!(
            "--only: unknown section {bad:?} (sections: {})",
            SECTIONS.join(", ")
        );
    }
    let image = GuestImage::locate().context("guest image")?;
    let vmms = [
        Vmm::Nacre {
            binary: locate_vmm().context("nacre-vmm")?,
        },
        Vmm::QemuMicrovm {
            binary: args.qemu.clone(),
        },
    ];
    let mut samples: Vec<BootSample> = Vec::new();
    let boot_runs = if args.wants("boot") { args.runs } else { 0 };
    let total = vmms.len() * boot_runs;
    for (i, (vmm, run)) in vmms
        .iter()
        .flat_map(|v| (0..boot_runs).map(move |r| (v, r)))
        .enumerate()
    {
        eprintln!(
            "[{}/{total}] booting under {} (run {})...",
            i + 1,
            vmm.name(),
            run + 1
        );
        let s = boot_to_ready(
            vmm,
            &image,
            args.memory_mib,
            Duration::from_secs(args.timeout),
        )
        .with_context(|| format!("boot under {}", vmm.name()))?;
        let guest = s
            .guest_uptime
            .map(|(init, ready)| {
                format!(" (guest uptime: agent started {init:.2} s, ready {ready:.2} s)")
            })
            .unwrap_or_default();
        eprintln!(
            "    agent ready after {:.2} s, VMM RSS {} MiB{guest}",
            s.ready_secs,
            s.memory.rss_kib / 1024
        );
        samples.push(s);
    }
    let mut sections = Vec::new();
    if args.wants("boot") {
        sections.push(boot_section(&samples, &vmms, args.memory_mib));
    }
    if args.wants("containers") {
        sections.push(container_section(args.runs).context("container benchmark")?);
    }
    if args.wants("phases") {
        sections.push(phases_section(args.runs, &args.out).context("phase benchmark")?);
    }
    if args.wants("templates") {
        let (templates, restore) = template_section(&args, &image).context("template benchmark")?;
        sections.push(templates);
        sections.push(restore);
    }
    let mut leftovers = Vec::new();
    if args.wants("ctr") || args.wants("pods") {
        let (mut cri_sections, left) = containerd_sections(&args, &image)?;
        sections.append(&mut cri_sections);
        leftovers = left;
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host: HostInfo::current(),
        sections,
    };
    report.write(&args.out).context("writing the report")?;
    print!("{}", report.markdown());
    eprintln!("report written to {}", args.out.display());
    if !leftovers.is_empty() {
        anyhow::bail!("left after the pods were removed: {}", leftovers.join(", "));
    }
    Ok(())
}

/// The `ctr` and `pods` sections, on one private containerd; also returns
/// what the pods left behind.
fn containerd_sections(args: &Args, image: &GuestImage) -> Result<(Vec<Section>, Vec<String>)> {
    eprintln!("starting a private containerd (CRI, runc + nacre handlers)...");
    let vmm = locate_vmm().context("nacre-vmm")?;
    let h = Harness::start("bench", image, &vmm).context("private containerd")?;
    let mut sections = Vec::new();
    if args.wants("ctr") {
        let times = nacre_bench::ctr_run::measure(&h, args.runs);
        sections.push(nacre_bench::ctr_run::section(&times, args.runs));
    }
    let mut leftovers = Vec::new();
    if args.wants("pods") {
        let r = nacre_bench::pods::measure(
            &h,
            args.runs,
            args.pods_concurrent,
            Duration::from_secs(args.pods_timeout),
        );
        leftovers = r.leftovers.clone();
        sections.push(nacre_bench::pods_report::section(&r));
    }
    drop(h);
    sections.extend(traced_sections(args, image, &vmm)?);
    Ok((sections, leftovers))
}

/// The phase tables of `ctr run` and of a CRI pod, from the traces of
/// shims on a second private containerd with `NACRE_TRACE` set (so the
/// untraced figures stay untraced).
fn traced_sections(args: &Args, image: &GuestImage, vmm: &std::path::Path) -> Result<Vec<Section>> {
    use nacre_bench::shim_phases;
    let scratch =
        std::env::temp_dir().join(format!("nacre-bench-shim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let trace = shim_phases::trace_file(&scratch);
    eprintln!("starting a private containerd whose shims trace...");
    let env = vec![(
        nacre_runtime::trace::TRACE_ENV.to_string(),
        trace.display().to_string(),
    )];
    let result = Harness::start_with("bench-trace", image, vmm, env).map(|h| {
        let mut sections = Vec::new();
        if args.wants("ctr") {
            let t = shim_phases::measure_ctr(&h, &trace, args.runs);
            sections.push(shim_phases::section(
                "`ctr run --rm` of `true`",
                "`ctr run` spawn to exit",
                &t,
            ));
        }
        if args.wants("pods") {
            let timeout = Duration::from_secs(args.pods_timeout);
            let t = shim_phases::measure_pod(&h, &trace, args.runs, timeout);
            sections.push(shim_phases::section(
                "a CRI pod start",
                "RunPodSandbox to the container reported running",
                &t,
            ));
        }
        sections
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result.context("private containerd for the traces")
}

/// Cold boot vs. template restore, and the memory of N restored
/// sandboxes; then nacre's template restore beside QEMU's own restore.
fn template_section(args: &Args, image: &GuestImage) -> Result<(Section, Section)> {
    let scratch = std::env::temp_dir().join(format!("nacre-bench-tpl-{}", std::process::id()));
    let result = nacre_bench::template::run(
        &locate_vmm().context("nacre-vmm")?,
        image,
        args.memory_mib,
        args.template_sandboxes.max(1),
        Duration::from_secs(args.timeout),
        &scratch,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let s = result?;
    let restore = median(s.restore_ready_secs.clone());
    eprintln!("[qemu] boot, save and restore of the same guest...");
    let qemu_scratch =
        std::env::temp_dir().join(format!("nacre-bench-qemu-restore-{}", std::process::id()));
    let qemu = nacre_bench::qemu_restore::measure(
        &args.qemu,
        image,
        args.memory_mib,
        Duration::from_secs(args.timeout),
        &qemu_scratch,
    );
    let _ = std::fs::remove_dir_all(&qemu_scratch);
    let restore_section = restore_section(restore, &s.one, qemu);
    // Boot times swing widely on a shared host: compare with the faster of
    // the cold boot and the template's making (a cold boot plus ~5 s).
    let cold_ref = s.cold_ready_secs.min(s.template_create_secs);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let n = s.sandboxes;
    let rows = vec![
        vec![
            "cold boot".into(),
            format!("{:.2}", s.cold_ready_secs),
            "1.0".into(),
            "-".into(),
        ],
        vec![
            "from template (median)".into(),
            format!("{restore:.2}"),
            format!("{:.1}", cold_ref / restore),
            format!("{:.2}", s.per_second),
        ],
    ];
    let templates = Section {
        title: "Sandbox start: cold boot vs. VM template".into(),
        columns: [
            "start",
            "spawn to first agent answer (s)",
            "speed-up",
            "sandboxes/s (in a row)",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes: vec![
            format!(
                "Template made in {:.1} s (a cold boot, then the snapshot). A restored \
                 sandbox is timed from spawning `nacre-vmm --restore` to the answer of \
                 `Agent.Restored` (entropy, clock, host name); a cold one from spawn to \
                 the answer of `Health.Check`. {n} sandboxes restored one after another; \
                 each is paused once it answered, so the next ones are not starved. \
                 Speed-up against the faster of the cold boot and the template's making \
                 ({cold_ref:.1} s): boot times swing widely on a shared host.",
                s.template_create_secs
            ),
            format!(
                "Host memory (VMM PSS): 1 restored sandbox {:.1} MiB; {n} together \
                 {:.1} MiB = {:.2} x one, {:.1}% of {n} x one (RSS: {:.1} MiB and {:.1} MiB). \
                 Pages a sandbox has not written are shared through the page cache.",
                mib(s.one.pss_kib),
                mib(s.all.pss_kib),
                s.all.pss_kib as f64 / s.one.pss_kib.max(1) as f64,
                100.0 * s.all.pss_kib as f64 / (n as f64 * s.one.pss_kib.max(1) as f64),
                mib(s.one.rss_kib),
                mib(s.all.rss_kib),
            ),
            format!(
                "Idle host CPU of one running restored sandbox: {:.0}% of a CPU (the guest's \
                 periodic tick in emulated kernel mode).",
                s.idle_cpu_percent
            ),
        ],
        data: serde_json::to_value(&s).unwrap_or_default(),
    };
    Ok((templates, restore_section))
}

/// nacre's template restore (median `restore`, memory `one`) beside
/// QEMU's restore from a migration file of the same guest.
fn restore_section(
    restore: f64,
    one: &nacre_bench::memory::Memory,
    qemu: std::result::Result<
        nacre_bench::qemu_restore::QemuRestore,
        nacre_bench::qemu_restore::QemuRestoreError,
    >,
) -> Section {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut rows = vec![vec![
        "nacre-vmm (template)".into(),
        format!("{restore:.3}"),
        "spawn to the restored agent's first answer".into(),
        format!("{:.1}", mib(one.pss_kib)),
        format!("{:.1}", mib(one.rss_kib)),
    ]];
    let mut notes = vec![
        "Same kernel, initrd and memory size. nacre maps the template's memory file \
         copy-on-write (pages are read on first touch and shared between sandboxes); QEMU \
         reads its whole migration stream into fresh memory. QEMU has no agent channel \
         here (no vhost-vsock on this host), so its time stops when QMP reports the guest \
         running: a lower bound of its time to an answering agent."
            .to_owned(),
    ];
    let data = match qemu {
        Ok(q) => {
            rows.push(vec![
                "QEMU microvm (-incoming exec:cat)".into(),
                format!("{:.3}", q.restore_running_secs),
                "spawn to QMP `running` (after `cont`)".into(),
                format!("{:.1}", mib(q.memory.pss_kib)),
                format!("{:.1}", mib(q.memory.rss_kib)),
            ]);
            notes.push(format!(
                "QEMU's migration file: {:.1} MiB, written in {:.2} s (`stop`, `migrate`). \
                 Ratio nacre/QEMU: restore {:.2}, PSS {:.2}.",
                q.snapshot_bytes as f64 / 1048576.0,
                q.save_secs,
                restore / q.restore_running_secs.max(1e-9),
                one.pss_kib as f64 / q.memory.pss_kib.max(1) as f64
            ));
            serde_json::to_value(&q).unwrap_or_default()
        }
        Err(e) => {
            rows.push(vec![
                "QEMU microvm".into(),
                "failed".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            notes.push(format!("QEMU's restore could not be measured here: {e}"));
            serde_json::Value::Null
        }
    };
    Section {
        title: "Snapshot restore: nacre's template vs. QEMU's migration file".into(),
        columns: ["VMM", "restore (s)", "timed", "PSS (MiB)", "RSS (MiB)"]
            .map(String::from)
            .to_vec(),
        rows,
        notes,
        data,
    }
}

fn boot_section(samples: &[BootSample], vmms: &[Vmm], memory_mib: u32) -> Section {
    fn of<'a>(samples: &'a [BootSample], name: &'a str) -> impl Iterator<Item = &'a BootSample> {
        samples.iter().filter(move |s| s.vmm == name)
    }
    let nacre_ready = median(of(samples, "nacre-vmm").map(|s| s.ready_secs).collect());
    let rows = vmms
        .iter()
        .map(|v| {
            let ready = median(of(samples, v.name()).map(|s| s.ready_secs).collect());
            let first = median(of(samples, v.name()).map(|s| s.first_output_secs).collect());
            let rss = median(
                of(samples, v.name())
                    .map(|s| s.memory.rss_kib as f64)
                    .collect(),
            );
            let pss = median(
                of(samples, v.name())
                    .map(|s| s.memory.pss_kib as f64)
                    .collect(),
            );
            vec![
                v.name().to_string(),
                format!("{first:.2}"),
                format!("{ready:.2}"),
                format!("{:.2}", ready / nacre_ready),
                format!("{:.1}", rss / 1024.0),
                format!("{:.1}", pss / 1024.0),
            ]
        })
        .collect();
    Section {
        title: "Cold boot to agent ready".into(),
        columns: [
            "VMM",
            "first console output (s)",
            "`nacre-agent: ready` (s)",
            "ratio to nacre-vmm",
            "VMM RSS (MiB)",
            "VMM PSS (MiB)",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes: vec![format!(
            "Same vmlinux, initrd and kernel command line; 1 vCPU, {memory_mib} MiB; \
             median of {} boots each, timed from process spawn to the console line.",
            samples.len() / vmms.len().max(1)
        )],
        data: serde_json::to_value(samples).unwrap_or_default(),
    }
}

/// `nacre run` of `true`, traced: the phase table, the host CPU per
/// process and the timeline picture (`<out>/phases-timeline.svg`).
fn phases_section(runs: usize, out: &std::path::Path) -> Result<Section> {
    let scratch = std::env::temp_dir().join(format!("nacre-bench-phases-{}", std::process::id()));
    let result = (|| {
        let bundle = busybox_bundle(&scratch.join("bundle"), &["true"])?;
        let rt = Runtime {
            name: "nacre",
            binary: nacre_binary(),
            root: scratch.join("root"),
        };
        let mut phases = Vec::new();
        for i in 0..runs.max(1) {
            eprintln!("[nacre] traced run {}/{runs} of `true`...", i + 1);
            let trace = scratch.join(format!("trace-{i}.json"));
            let wall = rt.time_run_traced(&bundle, &format!("bench-phases-{i}"), Some(&trace))?;
            let doc: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&trace).with_context(|| format!("reading {}", trace.display()))?,
            )
            .with_context(|| format!("parsing {}", trace.display()))?;
            // The last run's (the first may have made the VM template).
            if i + 1 == runs.max(1) {
                std::fs::create_dir_all(out)?;
                std::fs::write(
                    out.join("phases-timeline.svg"),
                    nacre_bench::phases::timeline_svg(&doc),
                )?;
                std::fs::write(out.join("phases-trace.json"), doc.to_string())?;
            }
            phases.push(nacre_bench::phases::analyse(&doc, wall));
        }
        Ok(nacre_bench::phases::section(&phases))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The `nacre` binary next to this one, else the installed one.
fn nacre_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("nacre")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "/usr/local/bin/nacre".into())
}

/// `run` of the same busybox bundle (`true`) under runc, crun and nacre, and
/// the host memory of one running nacre sandbox.
fn container_section(runs: usize) -> Result<Section> {
    let scratch = std::env::temp_dir().join(format!("nacre-bench-ctr-{}", std::process::id()));
    let result = container_section_in(&scratch, runs);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn container_section_in(scratch: &std::path::Path, runs: usize) -> Result<Section> {
    let bundle = busybox_bundle(&scratch.join("bundle"), &["true"])?;
    let sleeper = busybox_bundle(&scratch.join("sleeper"), &["sleep", "100000"])?;
    let nacre = nacre_binary();
    let runtimes = [
        ("runc", PathBuf::from("runc")),
        ("crun", "crun".into()),
        ("nacre", nacre),
    ]
    .map(|(name, binary)| Runtime {
        name,
        binary,
        root: scratch.join(format!("root-{name}")),
    });
    let mut rows = Vec::new();
    let mut data = serde_json::Map::new();
    let mut runc_median = f64::NAN;
    let mut failures = Vec::new();
    for rt in &runtimes {
        let mut times = Vec::new();
        for i in 0..runs {
            eprintln!("[{}] run {}/{runs} of `true`...", rt.name, i + 1);
            match rt.time_run(&bundle, &format!("bench-{}-{i}", rt.name)) {
                Ok(t) => times.push(t),
                Err(e) => {
                    eprintln!("    {e}");
                    failures.push(format!("{} could not run the bundle here: {e}", rt.name));
                    break;
                }
            }
        }
        if times.is_empty() {
            rows.push(vec![rt.name.to_string(), "failed".into(), "-".into()]);
            continue;
        }
        let m = median(times.clone());
        if rt.name == "runc" {
            runc_median = m;
        }
        rows.push(vec![
            rt.name.to_string(),
            format!("{m:.3}"),
            format!("{:.1}", m / runc_median),
        ]);
        data.insert(rt.name.into(), serde_json::json!(times));
    }
    eprintln!("[nacre] memory of one running sandbox...");
    let nacre_rt = &runtimes[2];
    let mem = nacre_rt.running_memory(&sleeper, "bench-nacre-mem")?;
    data.insert("nacre_sandbox_memory".into(), serde_json::json!(mem));
    Ok(Section {
        title: "Container `run` of `true` (same busybox bundle)".into(),
        columns: ["runtime", "median wall time (s)", "ratio to runc"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: [
            format!(
                "Foreground `<runtime> --root R run --bundle B id`, spawn to exit, median of {runs}. \
                 nacre's time includes booting the sandbox VM (from its template unless \
                 NACRE_TEMPLATES=0) and shutting it down. On a hybrid cgroup host whose v2 \
                 hierarchy has controllers, which crun 1.8 refuses, crun runs in a mount \
                 namespace without the v2 mount (v1 cgroups, as runc uses here)."
            ),
            format!(
                "Host memory of one running nacre sandbox (monitor + nacre-vmm, idle `sleep`): \
                 PSS {:.1} MiB, RSS {:.1} MiB.",
                mem.pss_kib as f64 / 1024.0,
                mem.rss_kib as f64 / 1024.0
            ),
        ]
        .into_iter()
        .chain(failures)
        .collect(),
        data: serde_json::Value::Object(data),
    })
}
