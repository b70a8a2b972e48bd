//! `nacre-metrics`: serves every nacre sandbox's metrics of this node on
//! one Prometheus endpoint (`GET /metrics`).

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use nacre_metrics::collect::{scrape, Sources};

#[derive(Parser, Debug)]
#[command(name = "nacre-metrics", version, about)]
struct Args {
    /// Address to serve `/metrics` on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// The containerd shim's sandbox directories (default:
    /// `NACRE_SHIM_ROOT` or /run/nacre-shim).
    #[arg(long)]
    shim_root: Option<PathBuf>,
    /// The VM template store (default: `NACRE_TEMPLATE_DIR` or the
    /// runtime's default).
    #[arg(long)]
    template_dir: Option<PathBuf>,
    /// Print one scrape and exit.
    #[arg(long)]
    once: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let shim_root = args
        .shim_root
        .unwrap_or_else(nacre_runtime::container::paths::shim_root);
    let template_dir = args.template_dir.or_else(|| {
        nacre_runtime::template::TemplateStore::from_env().map(|s| s.root().to_path_buf())
    });
    let sources = Sources {
        shim_root,
        template_dir,
    };
    if args.once {
        print!("{}", scrape(&sources));
        return Ok(());
    }
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "nacre-metrics: serving /metrics on {}",
        listener.local_addr()?
    );
    nacre_metrics::http::serve(listener, move || scrape(&sources));
    Ok(())
}
