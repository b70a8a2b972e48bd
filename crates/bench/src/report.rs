//! The benchmark report: `report.md` for people, `report.json` for tools.

use std::path::Path;

use serde::Serialize;

/// Facts about the machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub kernel: String,
    pub kernel_mode: String,
    pub cpus: usize,
}

impl HostInfo {
    /// Reads the running host.
    pub fn current() -> Self {
        Self {
            kernel: nacre_runtime::host::kernel_release(),
            kernel_mode: format!("{:?}", nacre_runtime::host::kernel_mode()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One table of the report, with its raw data for the JSON side.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    pub data: serde_json::Value,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub host: HostInfo,
    pub sections: Vec<Section>,
}

impl Report {
    /// Renders the Markdown side.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# nacre benchmark report\n\n");
        md.push_str(&format!(
            "Command: `{}`  \nHost: kernel {}, guest kernel mode {}, {} CPUs\n\n",
            self.command, self.host.kernel, self.host.kernel_mode, self.host.cpus
        ));
        for s in &self.sections {
            md.push_str(&format!("## {}\n\n", s.title));
            md.push_str(&format!("| {} |\n", s.columns.join(" | ")));
            md.push_str(&format!("|{}\n", "---|".repeat(s.columns.len())));
            for row in &s.rows {
                md.push_str(&format!("| {} |\n", row.join(" | ")));
            }
            md.push('\n');
            for n in &s.notes {
                md.push_str(&format!("{n}\n\n"));
            }
        }
        md
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_table() {
        let r = Report {
            command: "make bench".into(),
            host: HostInfo::current(),
            sections: vec![Section {
                title: "Boot".into(),
                columns: vec!["vmm".into(), "s".into()],
                rows: vec![vec!["nacre-vmm".into(), "1.0".into()]],
                notes: vec!["note".into()],
                data: serde_json::json!({}),
            }],
        };
        let md = r.markdown();
        assert!(
            md.contains("| vmm | s |\n|---|---|\n| nacre-vmm | 1.0 |"),
            "{md}"
        );
        let dir = std::env::temp_dir().join(format!("nacre-report-{}", std::process::id()));
        r.write(&dir).unwrap();
        assert!(dir.join("report.json").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
