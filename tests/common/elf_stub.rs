//! A stand-in for today's Chainflip runner: a real ELF program, built with `cc`, whose dynamic
//! section names stub engine libraries `libchainflip_engine_vX_Y_Z.so` (as the runner's does) and
//! whose `main` execs fake-engine `--as-version VERSION` with its own args, so `--version` names
//! only that version, like the runner's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::bin;

/// Builds a runner at `path` linked against the engine libraries of `linked` (built in `lib_dir`,
/// found through the program's rpath) that runs as fake-engine `as_version`. Written to a
/// temporary name beside `path` and renamed over it, as a package manager installs a program, so
/// a shim watching `path` never sees a half-written file.
pub fn build_runner(path: &Path, lib_dir: &Path, as_version: &str, linked: &[&str]) -> PathBuf {
    fs::create_dir_all(lib_dir).unwrap();
    let empty = lib_dir.join("empty.c");
    fs::write(&empty, "").unwrap();
    let mut link = vec![
        "-L".to_string(),
        lib_dir.display().to_string(),
        "-Wl,--no-as-needed".to_string(),
    ];
    for version in linked {
        let name = format!("libchainflip_engine_v{}.so", version.replace('.', "_"));
        let library = lib_dir.join(&name);
        if !library.exists() {
            cc(&[
                "-shared",
                "-fPIC",
                &format!("-Wl,-soname,{name}"),
                "-o",
                library.to_str().unwrap(),
                empty.to_str().unwrap(),
            ]);
        }
        link.push(format!("-l:{name}"));
    }
    link.push(format!("-Wl,-rpath,{}", lib_dir.display()));
    let source = path.with_extension("c");
    fs::write(
        &source,
        format!(
            "#include <unistd.h>\n\
             int main(int argc, char **argv) {{\n\
             \x20   char *args[argc + 3];\n\
             \x20   args[0] = {fake:?};\n\
             \x20   args[1] = \"--as-version\";\n\
             \x20   args[2] = {as_version:?};\n\
             \x20   for (int i = 1; i < argc; i++) args[i + 2] = argv[i];\n\
             \x20   args[argc + 2] = 0;\n\
             \x20   execv(args[0], args);\n\
             \x20   return 127;\n\
             }}\n",
            fake = bin("fake-engine").display().to_string(),
        ),
    )
    .unwrap();
    let staged = path.with_extension("new");
    let mut args = vec![
        "-o".to_string(),
        staged.display().to_string(),
        source.display().to_string(),
    ];
    args.extend(link);
    cc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    fs::rename(&staged, path).unwrap();
    path.to_path_buf()
}

fn cc(args: &[&str]) {
    let status = Command::new("cc")
        .args(args)
        .status()
        .expect("cc is needed to build the stand-in runner");
    assert!(status.success(), "cc {args:?} failed");
}
