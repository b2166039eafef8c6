//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub(crate) mod fixtures;
pub(crate) mod loopback;
pub(crate) mod organizations;
pub(crate) mod redis;
pub(crate) mod reference;

use std::path::PathBuf;

/// The repository's root: the library's package, whichever package's tests ask.
pub(crate) fn repository() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|p| p.join("tests/vectors").is_dir()).map_or(here.clone(), PathBuf::from)
}

/// The folder of one kind of test vector, e.g. `vectors("tokens/invalid")`.
pub(crate) fn vectors(kind: &str) -> PathBuf {
    repository().join("tests/vectors").join(kind)
}

/// Every file in a vector folder, sorted, with its contents.
pub(crate) fn read_vectors(kind: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(vectors(kind))
        .unwrap_or_else(|e| panic!("reading {kind}: {e}"))
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("read vector"))
        })
        .collect();
    out.sort();
    out
}
