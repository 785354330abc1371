//! Reading the small files that configuration names: creds files, seeds, PEM files.

use std::io::{self, Read};
use std::path::Path;

/// The whole of `path`, if it is a regular file of at most `limit` bytes; otherwise why
/// not, in words fit for an error message. A device (`/dev/zero`, `/dev/stdin`), a FIFO
/// or a directory named where a file belongs would otherwise exhaust memory or block the
/// run; the type is checked before opening, since opening a FIFO blocks.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let regular = |meta: &std::fs::Metadata| {
        if meta.is_file() {
            Ok(())
        } else {
            Err("not a regular file".to_owned())
        }
    };
    regular(&std::fs::metadata(path).map_err(|e| describe(&e))?)?;
    let file = std::fs::File::open(path).map_err(|e| describe(&e))?;
    regular(&file.metadata().map_err(|e| describe(&e))?)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| describe(&e))?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {} KiB", limit / 1024));
    }
    Ok(bytes)
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "file not found".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        kind => format!("cannot be read ({kind})"),
    }
}

#[cfg(test)]
mod tests {
    use super::read_bounded;
    use std::path::Path;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = std::env::temp_dir().join(format!("arn-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, b"0123456789").unwrap();
        assert_eq!(read_bounded(&small, 10).unwrap(), b"0123456789");
        assert_eq!(read_bounded(&small, 9).unwrap_err(), "larger than 0 KiB");
        assert_eq!(read_bounded(&dir, 10).unwrap_err(), "not a regular file");
        assert_eq!(
            read_bounded(&dir.join("missing"), 10).unwrap_err(),
            "file not found"
        );
        // Endless, or blocking: refused before a byte is read. (The test's own stdin may
        // be anything, a regular file included: only checked when it is not one.)
        for device in ["/dev/zero", "/dev/stdin", "/dev/null"] {
            if std::fs::metadata(device).is_ok_and(|m| !m.is_file()) {
                assert_eq!(
                    read_bounded(Path::new(device), 1 << 20).unwrap_err(),
                    "not a regular file",
                    "{device}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
