//! Engine packages as operators install them, for tests of version discovery and in-place upgrades.
//!
//! Today's Chainflip package installs `/usr/bin/chainflip-engine`, a runner linked against two
//! versioned engine libraries in `/usr/lib/chainflip-engine/` (`libchainflip_engine_vX_Y_Z.so`,
//! found through its rpath); the next package replaces all of them at the same paths. This module
//! builds a real ELF program with those `DT_NEEDED` entries (with `cc`: stub libraries from a few
//! lines of C, a stub program that `exec`s `fake-engine --as-versions OLD,NEW` with its own
//! arguments, or `fake-engine --as-version NEW` for a [`Runner::Passive`] one), and installs or
//! removes it under a prefix the way dpkg does.
//!
//! The stub keeps its own program open across the `exec` (a descriptor without close-on-exec), as
//! a running runner keeps its program's inode mapped: after an in-place upgrade a test can see the
//! running process still on the old inode ([`open_inodes`]).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::bin;

/// The program's name, as the package installs it.
pub const PROGRAM: &str = "chainflip-engine";

/// The stub runner. FAKE_ENGINE, IDENTITY_FLAG and IDENTITY come from `-D` at build time.
const STUB_SOURCE: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    /* The identity is this program's to give, whatever the environment says. */
    unsetenv("FAKE_ENGINE_AS_VERSION");
    /* No O_CLOEXEC: fake-engine inherits a handle on this program's inode. */
    (void)open("/proc/self/exe", O_RDONLY);
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (args == NULL) return 127;
    args[0] = FAKE_ENGINE;
    args[1] = IDENTITY_FLAG;
    args[2] = IDENTITY;
    for (int i = 1; i < argc; i++) args[i + 2] = argv[i];
    execv(FAKE_ENGINE, args);
    perror("chainflip-engine stub: cannot exec fake-engine");
    return 127;
}
"#;

/// `libchainflip_engine_v2_3_0.so` for `2.3.0`.
pub fn library_name(version: &str) -> String {
    format!("libchainflip_engine_v{}.so", version.replace('.', "_"))
}

/// What the installed program does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runner {
    /// Today's runner (`fake-engine --as-versions OLD,NEW`): follows the node itself (its
    /// arguments need `--node URL`), switches OLD → NEW inside at the upgrade block and leaves on
    /// its own at a release past NEW.
    Follows,
    /// Runs its newest version from the moment it starts (`fake-engine --as-version NEW`) until
    /// stopped, so only the shim decides when it stops: for tests of the shim's own decisions.
    Passive,
}

/// An install prefix laid out like `/usr`: `bin/chainflip-engine` and `lib/chainflip-engine/`.
pub struct Prefix {
    root: PathBuf,
}

impl Prefix {
    pub fn new(root: &Path) -> Prefix {
        Prefix {
            root: root.to_path_buf(),
        }
    }

    /// Where the package puts the program.
    pub fn program(&self) -> PathBuf {
        self.root.join("bin").join(PROGRAM)
    }

    /// Where the package puts the engine libraries.
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("lib").join(PROGRAM)
    }

    /// Installs the package covering `versions` (one version, or OLD and NEW of a runner) as
    /// dpkg does: each file is written under a temporary name in its directory and renamed over
    /// its path (so a running process keeps the old inode), libraries before the program, then
    /// the libraries of the previous package that the new one does not ship are removed.
    pub fn install(&self, versions: &[&str]) {
        self.install_runner(versions, Runner::Follows);
    }

    /// [`Prefix::install`] of a package whose program is a [`Runner::Passive`] one.
    pub fn install_passive(&self, versions: &[&str]) {
        self.install_runner(versions, Runner::Passive);
    }

    fn install_runner(&self, versions: &[&str], runner: Runner) {
        let built = built(versions, runner);
        let (bin_dir, lib_dir) = (self.root.join("bin"), self.lib_dir());
        fs::create_dir_all(&bin_dir).unwrap();
        fs::create_dir_all(&lib_dir).unwrap();
        let shipped: Vec<String> = versions.iter().map(|v| library_name(v)).collect();
        for name in &shipped {
            replace_in_place(
                &built.join("lib").join(PROGRAM).join(name),
                &lib_dir.join(name),
            );
        }
        replace_in_place(&built.join("bin").join(PROGRAM), &self.program());
        for stale in self.libraries() {
            if !shipped.contains(&stale) {
                fs::remove_file(lib_dir.join(&stale)).unwrap();
            }
        }
    }

    /// Removes the package: the program and its engine libraries (a running process keeps its
    /// inodes).
    pub fn remove(&self) {
        let _ = fs::remove_file(self.program());
        for name in self.libraries() {
            fs::remove_file(self.lib_dir().join(name)).unwrap();
        }
    }

    /// The engine libraries installed now, by file name, sorted.
    pub fn libraries(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.lib_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("libchainflip_engine_v") && n.ends_with(".so"))
            .collect();
        names.sort();
        names
    }
}

/// Copies `from` to a temporary name beside `to`, then renames it over `to` (dpkg's `.dpkg-new`).
fn replace_in_place(from: &Path, to: &Path) {
    let name = to.file_name().unwrap().to_string_lossy();
    let temporary = to.with_file_name(format!("{name}.dpkg-new"));
    fs::copy(from, &temporary).unwrap_or_else(|e| {
        panic!(
            "cannot copy {} to {}: {e}",
            from.display(),
            temporary.display()
        )
    });
    fs::rename(&temporary, to).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} over {}: {e}",
            temporary.display(),
            to.display()
        )
    });
}

/// The `DT_NEEDED` entries of an ELF file, read with `readelf -d` (binutils). Panics if readelf
/// cannot run: a check that silently passed without it would prove nothing.
pub fn needed_libraries(program: &Path) -> Vec<String> {
    let output = Command::new("readelf")
        .arg("-d")
        .arg(program)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run readelf (install binutils) to read {}: {e}",
                program.display()
            )
        });
    assert!(
        output.status.success(),
        "readelf -d {} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| {
            let start = line.find('[')? + 1;
            let end = line.rfind(']')?;
            Some(line[start..end].to_string())
        })
        .collect()
}

/// The inode number of `path` now.
pub fn inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .ino()
}

/// What process `pid` holds open: (the path /proc shows, e.g. with ` (deleted)`, the inode).
pub fn open_inodes(pid: u32) -> Vec<(String, u64)> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {dir}: {e}"));
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let target = fs::read_link(&path).ok()?;
            let inode = fs::metadata(&path).ok()?.ino();
            Some((target.to_string_lossy().into_owned(), inode))
        })
        .collect()
}

/// The package for `versions` with `runner`, compiled once per test process into a directory laid
/// out like the installed one (`bin/`, `lib/chainflip-engine/`).
fn built(versions: &[&str], runner: Runner) -> PathBuf {
    type Key = (Vec<String>, Runner);
    static BUILT: Mutex<Option<HashMap<Key, PathBuf>>> = Mutex::new(None);
    let key: Key = (versions.iter().map(|v| v.to_string()).collect(), runner);
    let mut cache = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(dir) = cache.get(&key) {
        return dir.clone();
    }
    let dir = build_dir().join(format!("{}-{runner:?}", key.0.join("+")));
    build(versions, runner, &dir);
    cache.insert(key, dir.clone());
    dir
}

/// A directory for this test process's builds under the target directory, emptied once when the
/// process first needs it (a leftover from an earlier process with the same pid goes).
fn build_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let fake_engine = bin("fake-engine");
        let dir = fake_engine
            .parent()
            .unwrap()
            .join("engine-packages")
            .join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    })
    .clone()
}

fn build(versions: &[&str], runner: Runner, dir: &Path) {
    let (flag, identity) = match (versions, runner) {
        ([one], _) | ([_, one], Runner::Passive) => ("--as-version", one.to_string()),
        ([old, new], Runner::Follows) => ("--as-versions", format!("{old},{new}")),
        _ => panic!("a package covers one version or a runner's two, not {versions:?}"),
    };
    let (bin_dir, lib_dir) = (dir.join("bin"), dir.join("lib").join(PROGRAM));
    fs::create_dir_all(&bin_dir).unwrap();
    fs::create_dir_all(&lib_dir).unwrap();

    let mut link_libraries = Vec::new();
    for version in versions {
        let name = library_name(version);
        let source = dir.join(format!("{name}.c"));
        let entrypoint = format!("cfe_entrypoint_v{}", version.replace('.', "_"));
        fs::write(&source, format!("int {entrypoint}(void) {{ return 0; }}\n")).unwrap();
        cc(Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(lib_dir.join(&name))
            .arg(format!("-Wl,-soname,{name}"))
            .arg(&source));
        link_libraries.push(format!("-l:{name}"));
    }

    let source = dir.join("runner.c");
    fs::write(&source, STUB_SOURCE).unwrap();
    cc(Command::new("cc")
        .arg(format!(
            "-DFAKE_ENGINE=\"{}\"",
            bin("fake-engine").display()
        ))
        .arg(format!("-DIDENTITY_FLAG=\"{flag}\""))
        .arg(format!("-DIDENTITY=\"{identity}\""))
        .arg("-o")
        .arg(bin_dir.join(PROGRAM))
        .arg(&source)
        .arg(format!("-L{}", lib_dir.display()))
        // Keep every engine library as DT_NEEDED although the stub calls none of them.
        .arg("-Wl,--no-as-needed")
        .args(&link_libraries)
        .arg(format!("-Wl,-rpath,$ORIGIN/../lib/{PROGRAM}")));
}

fn cc(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc (install gcc) for {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
