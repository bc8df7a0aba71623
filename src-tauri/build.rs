fn main() {
    // The app embeds the built UI (`ui/dist`). On a clean clone it has not been built yet; a
    // placeholder page keeps `cargo check` and `cargo clippy` working, and says what to do.
    let dist = std::path::Path::new("../ui/dist");
    if !dist.join("index.html").exists() {
        let _ = std::fs::create_dir_all(dist);
        let _ = std::fs::write(
            dist.join("index.html"),
            "<!doctype html><title>taos</title><p>The UI is not built: run <code>npm ci &amp;&amp; npm run build</code> in ui/.</p>",
        );
    }
    tauri_build::build()
}
