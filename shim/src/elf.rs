//! The engine libraries a program links, read from its ELF dynamic section.
//!
//! Chainflip's runner reports only its newest version in `--version`; the versions it covers are
//! the engine libraries it is linked against, `libchainflip_engine_vMAJOR_MINOR_PATCH.so`, which
//! are `DT_NEEDED` entries of its dynamic section. Reading them here (rather than running `ldd`)
//! executes nothing and needs no library to be resolvable. Only 64-bit little-endian ELF is read:
//! the platforms the engine ships for.

use std::path::{Path, PathBuf};

use crate::version::SemVer;

/// Why the dynamic section could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ELF file: {0}")]
pub struct ElfError(&'static str);

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// The versions of the engine libraries in `image`'s `DT_NEEDED` entries, oldest first.
/// Anything that is not 64-bit little-endian ELF (a `#!` script, a 32-bit program) links none.
pub fn engine_library_versions(image: &[u8]) -> Result<Vec<SemVer>, ElfError> {
    let Some(Dynamic { needed, .. }) = dynamic_section(image)? else {
        return Ok(Vec::new());
    };
    let mut versions: Vec<SemVer> = needed
        .iter()
        .filter_map(|name| engine_library_version(name))
        .collect();
    versions.sort();
    versions.dedup();
    Ok(versions)
}

/// Where the engine libraries `image` links are found on disk: each name looked up in the
/// program's `DT_RUNPATH` / `DT_RPATH` directories (`$ORIGIN` being `program`'s directory), as the
/// runner finds them. A package upgrade replaces these files too, so they are watched with the
/// program. Names found in none of those directories are left out.
pub fn engine_library_paths(program: &Path, image: &[u8]) -> Vec<PathBuf> {
    let Ok(Some(Dynamic { needed, search })) = dynamic_section(image) else {
        return Vec::new();
    };
    let origin = program.parent().unwrap_or(Path::new("/"));
    let dirs: Vec<PathBuf> = search
        .iter()
        .flat_map(|list| list.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| {
            let dir = dir
                .replace("${ORIGIN}", &origin.to_string_lossy())
                .replace("$ORIGIN", &origin.to_string_lossy());
            PathBuf::from(dir)
        })
        .collect();
    needed
        .iter()
        .filter(|name| engine_library_version(name).is_some())
        .filter_map(|name| dirs.iter().map(|dir| dir.join(name)).find(|p| p.is_file()))
        .collect()
}

/// `libchainflip_engine_v2_3_0.so` → 2.3.0; any other name → `None`.
pub fn engine_library_version(name: &str) -> Option<SemVer> {
    let fields = name
        .strip_prefix("libchainflip_engine_v")?
        .strip_suffix(".so")?;
    let mut parts = fields.split('_');
    let mut next = || -> Option<u8> {
        let part = parts.next()?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let version = SemVer::new(next()?, next()?, next()?);
    parts.next().is_none().then_some(version)
}

/// What the dynamic section says about libraries.
struct Dynamic {
    /// `DT_NEEDED` names.
    needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` values (colon-separated directory lists).
    search: Vec<String>,
}

/// The dynamic section's library entries, or `None` when `image` is not 64-bit little-endian ELF.
fn dynamic_section(image: &[u8]) -> Result<Option<Dynamic>, ElfError> {
    let no_libraries = || Dynamic {
        needed: Vec::new(),
        search: Vec::new(),
    };
    if image.len() < 64 || image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Ok(None);
    }
    let headers = program_headers(image)?;
    let Some(dynamic) = headers.iter().find(|h| h.kind == PT_DYNAMIC) else {
        // Statically linked: no libraries.
        return Ok(Some(no_libraries()));
    };
    let entries = slice(image, dynamic.offset, dynamic.file_size)?;
    let (mut needed, mut search, mut strtab) = (Vec::new(), Vec::new(), None);
    for entry in entries.chunks_exact(16) {
        let (tag, value) = (u64_at(entry, 0)?, u64_at(entry, 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(value),
            DT_RPATH | DT_RUNPATH => search.push(value),
            DT_STRTAB => strtab = Some(value),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(Some(no_libraries()));
    }
    // DT_STRTAB is an address in memory: the loadable segment holding it says where it is on disk.
    let strtab = strtab.ok_or(ElfError("DT_NEEDED without DT_STRTAB"))?;
    let strtab_offset = headers
        .iter()
        .filter(|h| h.kind == PT_LOAD)
        .find(|h| h.vaddr <= strtab && strtab < h.vaddr.saturating_add(h.file_size))
        .map(|h| strtab - h.vaddr + h.offset)
        .ok_or(ElfError("DT_STRTAB lies outside every loadable segment"))?;
    let strings = |offsets: Vec<u64>| {
        offsets
            .into_iter()
            .map(|at| string_at(image, strtab_offset.saturating_add(at)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Some(Dynamic {
        needed: strings(needed)?,
        search: strings(search)?,
    }))
}

struct ProgramHeader {
    kind: u32,
    offset: u64,
    vaddr: u64,
    file_size: u64,
}

fn program_headers(image: &[u8]) -> Result<Vec<ProgramHeader>, ElfError> {
    let offset = u64_at(image, 0x20)?;
    let size = u16_at(image, 0x36)? as u64;
    let count = u16_at(image, 0x38)? as u64;
    if size < 56 {
        return Err(ElfError("program header entries are too small"));
    }
    (0..count)
        .map(|i| {
            let header = slice(image, offset.saturating_add(i * size), 56)?;
            Ok(ProgramHeader {
                kind: u32_at(header, 0)?,
                offset: u64_at(header, 0x08)?,
                vaddr: u64_at(header, 0x10)?,
                file_size: u64_at(header, 0x20)?,
            })
        })
        .collect()
}

fn slice(image: &[u8], offset: u64, len: u64) -> Result<&[u8], ElfError> {
    let start = usize::try_from(offset).map_err(|_| ElfError("offset out of range"))?;
    let end =
        usize::try_from(offset.saturating_add(len)).map_err(|_| ElfError("size out of range"))?;
    image
        .get(start..end)
        .ok_or(ElfError("a header points past the end of the file"))
}

fn string_at(image: &[u8], offset: u64) -> Result<String, ElfError> {
    let start = usize::try_from(offset).map_err(|_| ElfError("string offset out of range"))?;
    let rest = image
        .get(start..)
        .ok_or(ElfError("a library name lies past the end of the file"))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(ElfError("unterminated library name"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, ElfError> {
    array(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, ElfError> {
    array(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, ElfError> {
    array(bytes, at).map(u64::from_le_bytes)
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(ElfError("truncated header"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn v(s: &str) -> SemVer {
        s.parse().unwrap()
    }

    fn cc(args: &[&str], dir: &Path) {
        let status = Command::new("cc")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("cc is needed to build the test's ELF programs");
        assert!(status.success(), "cc {args:?} failed");
    }

    #[test]
    fn library_names_give_versions() {
        assert_eq!(
            engine_library_version("libchainflip_engine_v2_3_0.so"),
            Some(v("2.3.0"))
        );
        for other in [
            "libc.so.6",
            "libchainflip_engine_v2_3.so",
            "libchainflip_engine_v2_3_0_1.so",
            "libchainflip_engine_v2_3_x.so",
            "libchainflip_engine_v2_3_300.so",
            "libchainflip_engine_v2_3_0.so.1",
        ] {
            assert_eq!(engine_library_version(other), None, "{other}");
        }
    }

    /// A real program built by `cc`, linked against two stub engine libraries and libc.
    #[test]
    fn reads_the_engine_libraries_a_real_program_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("empty.c"), "").unwrap();
        std::fs::write(d.join("main.c"), "int main(void) { return 0; }\n").unwrap();
        for name in [
            "libchainflip_engine_v2_2_8.so",
            "libchainflip_engine_v2_3_0.so",
        ] {
            cc(
                &[
                    "-shared",
                    "-fPIC",
                    &format!("-Wl,-soname,{name}"),
                    "-o",
                    name,
                    "empty.c",
                ],
                d,
            );
        }
        cc(
            &[
                "-o",
                "runner",
                "main.c",
                "-L.",
                "-Wl,--no-as-needed",
                "-l:libchainflip_engine_v2_3_0.so",
                "-l:libchainflip_engine_v2_2_8.so",
            ],
            d,
        );
        let image = std::fs::read(d.join("runner")).unwrap();
        let needed = dynamic_section(&image).unwrap().unwrap().needed;
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert_eq!(
            engine_library_versions(&image).unwrap(),
            vec![v("2.2.8"), v("2.3.0")]
        );
        // Found where the loader finds them: through the rpath, `$ORIGIN` being the program's dir.
        assert_eq!(
            engine_library_paths(&d.join("runner"), &image),
            Vec::<PathBuf>::new()
        );
        cc(
            &[
                "-o",
                "runner",
                "main.c",
                "-L.",
                "-Wl,--no-as-needed",
                "-l:libchainflip_engine_v2_3_0.so",
                "-l:libchainflip_engine_v2_2_8.so",
                "-Wl,-rpath,$ORIGIN",
            ],
            d,
        );
        let image = std::fs::read(d.join("runner")).unwrap();
        assert_eq!(
            engine_library_paths(&d.join("runner"), &image),
            vec![
                d.join("libchainflip_engine_v2_3_0.so"),
                d.join("libchainflip_engine_v2_2_8.so")
            ]
        );
    }

    #[test]
    fn the_test_binary_itself_links_no_engine_library() {
        let image = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(engine_library_versions(&image).unwrap(), vec![]);
    }

    #[test]
    fn scripts_and_other_files_link_nothing() {
        for image in [&b"#!/bin/sh\necho 1.0.0\n"[..], b"", b"\x7fELF"] {
            assert_eq!(engine_library_versions(image).unwrap(), vec![]);
        }
    }

    #[test]
    fn a_truncated_program_is_an_error_not_a_panic() {
        let image = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for len in [64, 200, 4096] {
            // Either an error or an answer, never a panic or an out-of-bounds read.
            let _ = engine_library_versions(&image[..len.min(image.len())]);
        }
        let mut bad = image[..64].to_vec();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(engine_library_versions(&bad).is_err());
    }
}
