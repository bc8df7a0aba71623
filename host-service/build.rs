//! Embeds the built web UI (`ui/dist`, made by `npm run build` in `ui/`) into the binary, so
//! `taos-host serve` needs no files beside it. Without a build the host still compiles and
//! serves a page that says how to build the UI (a clean clone's `cargo test` works).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo sets CARGO_MANIFEST_DIR")?,
    );
    let ui = manifest.join("../ui");
    let dist = ui.join("dist");
    println!("cargo::rustc-check-cfg=cfg(ui_built)");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        // A directory here is scanned as a whole: new, changed or removed files rebuild.
        println!("cargo::rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
        println!("cargo::rustc-cfg=ui_built");
    } else if ui.is_dir() {
        // Not built yet: rebuild when it appears (ui/ itself changes when dist/ is made).
        println!("cargo::rerun-if-changed={}", ui.display());
    }
    files.sort();
    let mut out = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        )?;
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    std::fs::write(out_dir.join("ui_files.rs"), out)?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            let abs = path.canonicalize().unwrap_or(path.clone());
            files.push((rel, abs));
        }
    }
}
