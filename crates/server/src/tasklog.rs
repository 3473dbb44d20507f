//! Task output files: what a task writes to stdout and stderr, kept on its node by the agent
//! and copied to the server, which serves it to `gantry logs`.
//!
//! One file per task run: `<dir>/<job>/<group>.<index>.<attempt>.log`. A file is capped: once
//! the next write would take it past the cap it is rotated to `….log.1` (replacing the older
//! generation), so a task never holds more than twice the cap on disk.
//!
//! Every byte has an *offset*: its position in everything the file ever took, rotated or not.
//! The offset at which the current file starts (`base`) is kept beside it in `….log.meta`, which
//! is written only when the file rotates, so offsets survive a restart. On the server the same
//! meta file also keeps the *skew*: how many bytes of gap notes the server wrote itself (for
//! output the agent had to drop), so the agent's offsets map onto the server's.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::state::TaskKey;

/// A capped, rotating output file of one task run.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    cap: u64,
    /// Offset of the current file's first byte.
    base: u64,
    /// The server's offsets less the agent's: its gap notes' bytes less the bytes they stand
    /// for.
    skew: i64,
    /// Length of the current file.
    len: u64,
    file: File,
}

/// The smallest cap accepted: a rotation per write would lose what was just written.
pub const MIN_CAP: u64 = 64 * 1024;

/// The directory name of a job's output: its name, except that `.` and `..` (never valid job
/// names, but this is where a path is made) cannot climb out of the logs directory.
fn job_dir(dir: &Path, job: &str) -> PathBuf {
    if job.is_empty() || job.chars().all(|c| c == '.') || job.contains('/') {
        dir.join(format!("_{}", job.replace('/', "_")))
    } else {
        dir.join(job)
    }
}

/// Where a task run's output lives under `dir`.
pub fn path_of(dir: &Path, key: &TaskKey) -> PathBuf {
    job_dir(dir, &key.job).join(format!("{}.{}.{}.log", key.group, key.index, key.attempt))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_meta(path: &Path) -> (u64, i64) {
    let text = std::fs::read_to_string(with_suffix(path, ".meta")).unwrap_or_default();
    let mut it = text.split_whitespace();
    let base = it.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let skew = it.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    (base, skew)
}

impl LogFile {
    /// Open (or create) the output file at `path`, capped at `cap` bytes (at least [`MIN_CAP`]).
    ///
    /// # Errors
    /// The directory or the file cannot be created.
    pub fn open(path: PathBuf, cap: u64) -> std::io::Result<LogFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        let (base, skew) = read_meta(&path);
        Ok(LogFile {
            path,
            cap: cap.max(MIN_CAP),
            base,
            skew,
            len,
            file,
        })
    }

    /// The offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }

    /// The offset just past the last byte the agent sent (the server's end, less its notes).
    pub fn agent_end(&self) -> u64 {
        (self.end() as i64 - self.skew).max(0) as u64
    }

    fn write_meta(&self) -> std::io::Result<()> {
        let meta = with_suffix(&self.path, ".meta");
        let tmp = with_suffix(&self.path, ".meta.tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.base, self.skew))?;
        std::fs::rename(tmp, meta)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, with_suffix(&self.path, ".1"))?;
        self.base += self.len;
        self.len = 0;
        self.write_meta()?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }

    /// Append bytes, rotating first when they would take the file past its cap. A write
    /// larger than the cap keeps only its last `cap` bytes (the ones before count as rotated
    /// away).
    ///
    /// # Errors
    /// The file cannot be written or rotated (e.g. the disk is full).
    pub fn append(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if data.len() as u64 > self.cap {
            let skip = data.len() - self.cap as usize;
            if self.len > 0 {
                self.rotate()?;
            }
            self.base += skip as u64;
            self.write_meta()?;
            data = &data[skip..];
        }
        if self.len > 0 && self.len + data.len() as u64 > self.cap {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Take bytes the agent sent at its `offset`: bytes already held are skipped (a retried
    /// send), and a hole (output the agent had to drop) is marked with a note in the file.
    ///
    /// # Errors
    /// As for [`LogFile::append`].
    pub fn receive(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let have = self.agent_end();
        let end = offset + data.len() as u64;
        if end <= have {
            return Ok(());
        }
        if offset > have {
            let note = format!(
                "\n[gantry: {} bytes of output were not copied to the server; the node's own file \
                 may still hold them]\n",
                offset - have
            );
            self.append(note.as_bytes())?;
            // The note stands for the missing bytes in the agent's numbering.
            self.skew += note.len() as i64 - (offset - have) as i64;
            self.write_meta()?;
            return self.append(data);
        }
        self.append(&data[(have - offset) as usize..])
    }
}

/// Read up to `max` bytes of the output at `path` from `offset`. Returns the offset the bytes
/// start at (later than asked when what was asked for has rotated away) and the bytes; no file
/// yet reads as empty.
///
/// # Errors
/// A file exists but cannot be read.
pub fn read_at(path: &Path, offset: u64, max: usize) -> std::io::Result<(u64, Vec<u8>)> {
    let (base, _) = read_meta(path);
    let older = with_suffix(path, ".1");
    let older_len = std::fs::metadata(&older).map_or(0, |m| m.len());
    let oldest = base.saturating_sub(older_len);
    let from = offset.max(oldest);
    let (file, at) = if from < base {
        (older, from - oldest)
    } else {
        (path.to_path_buf(), from - base)
    };
    let mut f = match File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((from, Vec::new())),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::with_capacity(max.min(1 << 20));
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok((from, buf))
}

/// The offset just past the end of the output at `path` (0 when there is none yet).
pub fn end_of(path: &Path) -> u64 {
    let (base, _) = read_meta(path);
    base + std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The task runs of `job` with output under `dir`: (group, index, attempt), sorted.
pub fn runs(dir: &Path, job: &str) -> Vec<(u16, u32, u32)> {
    let Ok(entries) = std::fs::read_dir(job_dir(dir, job)) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, u32, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".log")?;
            let mut it = stem.split('.');
            let g = it.next()?.parse().ok()?;
            let i = it.next()?.parse().ok()?;
            let a = it.next()?.parse().ok()?;
            it.next().is_none().then_some((g, i, a))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Delete the output of `job` under `dir` (all its runs).
pub fn remove_job(dir: &Path, job: &str) {
    let _ = std::fs::remove_dir_all(job_dir(dir, job));
}

/// The job directories under `dir` (their names).
pub fn jobs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Delete the job directories under `dir` not written to for `older_than`.
pub fn prune(dir: &Path, older_than: std::time::Duration) -> usize {
    let mut removed = 0;
    for name in jobs(dir) {
        let path = dir.join(&name);
        let newest = std::fs::read_dir(&path)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.metadata().ok()?.modified().ok())
                    .max()
            })
            .ok()
            .flatten();
        let stale = newest.is_none_or(|t| t.elapsed().is_ok_and(|age| age > older_than));
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str) -> TaskKey {
        TaskKey {
            job: job.into(),
            group: 0,
            index: 1,
            attempt: 2,
        }
    }

    #[test]
    fn a_file_rotates_at_its_cap_and_offsets_keep_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), &key("train"));
        assert!(path.ends_with("train/0.1.2.log"));
        let mut f = LogFile::open(path.clone(), MIN_CAP).unwrap();
        let line = vec![b'a'; 40 * 1024];
        f.append(&line).unwrap();
        f.append(&[b'b'; 40 * 1024]).unwrap();
        // The second write rotated the first away.
        assert_eq!(f.end(), 80 * 1024);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40 * 1024);
        let (from, got) = read_at(&path, 0, 10).unwrap();
        assert_eq!((from, got.as_slice()), (0, &b"aaaaaaaaaa"[..]));
        let (from, got) = read_at(&path, 40 * 1024 - 2, 4).unwrap();
        assert_eq!((from, got.as_slice()), (40 * 1024 - 2, &b"aa"[..]));
        f.append(&[b'c'; 40 * 1024]).unwrap();
        // Now the a's are gone: reading from 0 starts at the oldest byte kept.
        let (from, got) = read_at(&path, 0, 1).unwrap();
        assert_eq!((from, got.as_slice()), (40 * 1024, &b"b"[..]));
        drop(f);
        // Reopened, offsets go on where they were.
        let f = LogFile::open(path.clone(), MIN_CAP).unwrap();
        assert_eq!(f.end(), 120 * 1024);
        assert_eq!(end_of(&path), 120 * 1024);
        let total: u64 = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(total <= 2 * MIN_CAP + 64, "{total} bytes on disk");
    }

    #[test]
    fn a_write_larger_than_the_cap_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), &key("big"));
        let mut f = LogFile::open(path.clone(), MIN_CAP).unwrap();
        let mut data = vec![b'x'; MIN_CAP as usize];
        data.extend_from_slice(b"tail");
        f.append(&data).unwrap();
        assert_eq!(f.end(), MIN_CAP + 4);
        let (from, got) = read_at(&path, MIN_CAP, 100).unwrap();
        assert_eq!((from, got.as_slice()), (MIN_CAP, &b"tail"[..]));
    }

    #[test]
    fn the_server_skips_resent_bytes_and_marks_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), &key("copy"));
        let mut f = LogFile::open(path.clone(), MIN_CAP).unwrap();
        f.receive(0, b"hello ").unwrap();
        // A retried send of bytes already held, partly overlapping.
        f.receive(0, b"hello ").unwrap();
        f.receive(3, b"lo world\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world\n");
        assert_eq!(f.agent_end(), 12);
        // The agent dropped bytes 12..20.
        f.receive(20, b"later\n").unwrap();
        assert_eq!(f.agent_end(), 26);
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(
            text.starts_with("hello world\n\n[gantry: 8 bytes of output were not copied"),
            "{text}"
        );
        assert!(text.ends_with("]\nlater\n"), "{text}");
        drop(f);
        // The skew survives a restart: a resend of "later" is still recognised.
        let mut f = LogFile::open(path.clone(), MIN_CAP).unwrap();
        f.receive(20, b"later\n").unwrap();
        assert_eq!(f.agent_end(), 26);
        assert!(String::from_utf8(std::fs::read(&path).unwrap())
            .unwrap()
            .ends_with("]\nlater\n"));
    }

    #[test]
    fn runs_lists_a_jobs_files_and_names_cannot_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        for (g, i, a) in [(0, 0, 0), (0, 1, 0), (1, 0, 3)] {
            let k = TaskKey {
                job: "j".into(),
                group: g,
                index: i,
                attempt: a,
            };
            LogFile::open(path_of(dir.path(), &k), MIN_CAP).unwrap();
        }
        assert_eq!(runs(dir.path(), "j"), vec![(0, 0, 0), (0, 1, 0), (1, 0, 3)]);
        assert!(path_of(dir.path(), &key("..")).starts_with(dir.path()));
        assert_ne!(path_of(dir.path(), &key("..")).parent(), Some(dir.path()));
        remove_job(dir.path(), "j");
        assert!(runs(dir.path(), "j").is_empty());
    }

    #[test]
    fn prune_deletes_jobs_not_written_to_for_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        for job in ["old", "new"] {
            LogFile::open(path_of(dir.path(), &key(job)), MIN_CAP)
                .unwrap()
                .append(b"x")
                .unwrap();
        }
        let two_days_ago =
            std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(path_of(dir.path(), &key("old")))
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(prune(dir.path(), std::time::Duration::from_secs(86_400)), 1);
        let mut left = jobs(dir.path());
        left.sort();
        assert_eq!(left, vec!["new".to_string()]);
    }
}
