//! `containerd-shim-nacre-v2`: containerd's shim v2 for nacre.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-nacre-v2: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(nacre_shim::bootstrap::run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-nacre-v2: {e}");
            ExitCode::FAILURE
        }
    }
}
