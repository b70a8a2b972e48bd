//! A per-call-site budget: each call site (a `tracing` macro, or a `log`
//! macro in a third-party crate such as virtio-queue or fuse-backend-rs)
//! may emit `burst` events per `window`; the rest are dropped and counted,
//! and one summary line per site reports them when the window ends (at the
//! site's next event) or at exit ([`RateLimit::flush`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer};

use super::CappedWriter;

/// Call sites tracked one by one; more (there are not that many in the
/// binary) share one budget.
const MAX_SITES: usize = 4096;

/// The rate-limiting [`Layer`]; cheap to clone (shared state).
#[derive(Clone)]
pub struct RateLimit {
    state: Arc<State>,
}

struct State {
    sites: Mutex<HashMap<u64, Site>>,
    burst: u32,
    window: Duration,
    out: CappedWriter,
    suppressed: AtomicU64,
}

struct Site {
    target: String,
    location: String,
    start: Instant,
    emitted: u32,
    suppressed: u64,
}

impl RateLimit {
    /// At most `burst` events per call site per `window`; summaries go to `out`.
    pub fn new(burst: u32, window: Duration, out: CappedWriter) -> Self {
        Self {
            state: Arc::new(State {
                sites: Mutex::new(HashMap::new()),
                burst,
                window,
                out,
                suppressed: AtomicU64::new(0),
            }),
        }
    }

    /// Events dropped so far, over all call sites.
    pub fn suppressed(&self) -> u64 {
        self.state.suppressed.load(Ordering::Relaxed)
    }

    /// Writes the summary line of every site with dropped events (at exit).
    pub fn flush(&self) {
        let mut sites = self.state.lock();
        for site in sites.values_mut() {
            self.state.summarize(site);
        }
    }

    fn admit(&self, meta: &Metadata<'_>) -> bool {
        let mut hasher = DefaultHasher::new();
        (
            meta.target(),
            meta.file(),
            meta.line(),
            meta.level().as_str(),
        )
            .hash(&mut hasher);
        let mut key = hasher.finish();
        let now = Instant::now();
        let mut sites = self.state.lock();
        if sites.len() >= MAX_SITES && !sites.contains_key(&key) {
            key = 0;
        }
        let site = sites.entry(key).or_insert_with(|| Site {
            target: if key == 0 {
                "(other call sites)".into()
            } else {
                meta.target().into()
            },
            location: match (meta.file(), meta.line()) {
                (Some(file), Some(line)) if key != 0 => {
                    // Paths of dependencies are long: from their `src/` on.
                    let file = file.rfind("src/").map_or(file, |i| &file[i..]);
                    format!(" at {file}:{line}")
                }
                _ => String::new(),
            },
            start: now,
            emitted: 0,
            suppressed: 0,
        });
        if now.duration_since(site.start) >= self.state.window {
            self.state.summarize(site);
            site.start = now;
            site.emitted = 0;
        }
        if site.emitted < self.state.burst {
            site.emitted += 1;
            true
        } else {
            site.suppressed += 1;
            self.state.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Site>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One line for the events `site` dropped since its window started.
    fn summarize(&self, site: &mut Site) {
        if site.suppressed == 0 {
            return;
        }
        let mut line = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        line.push_str(&format!(
            "  WARN nacre_vmm::logging: {} messages from {}{} suppressed (more than {} in {} s)\n",
            site.suppressed,
            site.target,
            site.location,
            self.burst,
            self.window.as_secs()
        ));
        self.out.write_line(line.as_bytes());
        site.suppressed = 0;
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // Events bridged from the `log` crate share one callsite per level;
        // their own target, file and line tell the sites apart.
        match event.normalized_metadata() {
            Some(meta) => self.admit(&meta),
            None => self.admit(event.metadata()),
        }
    }
}
