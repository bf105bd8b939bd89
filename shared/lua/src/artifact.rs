//! `a:save(dest [, mode])` inside a task: content-addressed copies of an artifact
//! that lives on the master. The content is fetched in chunks through the task's
//! shared-object backend (over its QUIC stream on an agent), hashed as it arrives,
//! kept in a per-host cache keyed by sha256, and copied to `dest` atomically. A
//! second save of the same content on the same host transfers nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mlua::{Lua, MultiValue, Value as LV};
use sha2::{Digest, Sha256};

use crate::context::{stop_to_lua, task_ctx};
use crate::shared_obj::SharedBackend;
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedRef, Value};

/// Bytes per fetch call.
pub const CHUNK: usize = 1 << 20;

/// Transfers (cache misses) completed by this process; tests and stats read it.
pub static TRANSFERS: AtomicU64 = AtomicU64::new(0);

/// The cache directory for `host`: $SLOTH_CACHE_DIR, else a per-host directory
/// under the temp directory. Either way it must be a real directory (not a
/// symlink) owned by this user and closed to others (0700), created so if missing:
/// a cache in a world-writable place must not be something others can plant files in.
pub fn cache_dir(host: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = match std::env::var_os("SLOTH_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("sloth-artifacts-{host}")),
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        return Err(format!("cache {}: {e}", dir.display()));
    }
    let meta =
        std::fs::symlink_metadata(&dir).map_err(|e| format!("cache {}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(format!(
            "cache {} is not a directory owned by this user (uid {me}): refusing to use it",
            dir.display()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cache {}: {e}", dir.display()))?;
    }
    Ok(dir)
}

fn call(b: &dyn SharedBackend, r: SharedRef, m: &str, args: Vec<Value>) -> Result<Data, String> {
    b.call(r, m, Data::scalars(args))
}

fn first_str(g: &Data) -> Option<Vec<u8>> {
    match g.roots().first() {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    }
}

fn first_int(g: &Data) -> Option<i64> {
    match g.roots().first() {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Copy `src` to `dest` through a temporary file in dest's directory, then rename.
fn install_copy(src: &Path, dest: &Path, mode: Option<u32>) -> Result<(), String> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A fresh, unpredictable temporary name per save (concurrent saves to one dest
    // each land whole; nothing planted at a guessable name is followed).
    let mut tmp = tempfile::Builder::new()
        .prefix(".sloth-save")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut from = std::fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    std::io::copy(&mut from, tmp.as_file_mut()).map_err(|e| format!("{}: {e}", dest.display()))?;
    let m = mode.unwrap_or(0o644);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(m))
            .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    }
    tmp.persist(dest)
        .map_err(|e| format!("{}: {}", dest.display(), e.error))?;
    Ok(())
}

fn parse_mode(v: &LV) -> Result<Option<u32>, String> {
    match v {
        LV::Nil => Ok(None),
        LV::Integer(i) if *i >= 0 => Ok(Some(*i as u32)),
        LV::String(s) => u32::from_str_radix(s.to_string_lossy().trim_start_matches("0o"), 8)
            .map(Some)
            .map_err(|_| format!("bad mode '{}' (use e.g. \"0644\")", s.to_string_lossy())),
        _ => Err("mode must be an integer or an octal string".into()),
    }
}

/// Returns `true, "cached" | "transferred"` or `nil, err`.
pub fn save(
    lua: &Lua,
    r: SharedRef,
    backend: &dyn SharedBackend,
    dest: String,
    mode: LV,
) -> mlua::Result<MultiValue> {
    let fail = |m: String| {
        Ok(MultiValue::from_iter([
            LV::Nil,
            LV::String(lua.create_string(format!("artifact:save: {m}"))?),
        ]))
    };
    let mode = match parse_mode(&mode) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    if let Some(done) = crate::context::skip_in_check_mode(lua, &format!("artifact:save {dest}"))? {
        return Ok(done);
    }
    let fetched = match fetch(lua, r, backend)? {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match install_copy(&fetched.path, Path::new(&dest), mode) {
        Ok(()) => Ok(MultiValue::from_iter([
            LV::Boolean(true),
            LV::String(lua.create_string(fetched.how)?),
        ])),
        Err(e) => fail(e),
    }
}

/// What the master says of an artifact: its sha256 (hex) and size.
pub fn describe(backend: &dyn SharedBackend, r: SharedRef) -> Result<(String, u64), String> {
    let sha = match call(backend, r, "sha256", vec![]).map(|g| first_str(&g)) {
        Ok(Some(s)) => String::from_utf8_lossy(&s).to_string(),
        Ok(None) => return Err("the master sent no checksum".into()),
        Err(e) => return Err(e),
    };
    let size = match call(backend, r, "size", vec![]).map(|g| first_int(&g)) {
        Ok(Some(s)) if s >= 0 => s as u64,
        Ok(_) => return Err("the master sent no size".into()),
        Err(e) => return Err(e),
    };
    Ok((sha, size))
}

/// An artifact's content in this host's cache.
pub struct Fetched {
    /// The cached file (named by its sha256; never write to it).
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// `"cached"` (it was there) or `"transferred"`.
    pub how: &'static str,
}

/// Bring an artifact into this host's cache (nothing crosses the network when the
/// cache has it). `Err` of the outer result: the task was stopped.
pub fn fetch(
    lua: &Lua,
    r: SharedRef,
    backend: &dyn SharedBackend,
) -> mlua::Result<Result<Fetched, String>> {
    let ctx = task_ctx(lua)?;
    let (sha, size) = match describe(backend, r) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let dir = match cache_dir(&ctx.host) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let cached = dir.join(&sha);
    // A hit must still hash to its name (a damaged cache entry is fetched again).
    let hit = std::fs::symlink_metadata(&cached)
        .map(|m| m.is_file() && m.len() == size)
        .unwrap_or(false)
        && hash_file(&cached).map(|(h, _)| h == sha).unwrap_or(false);
    let how = if hit {
        "cached"
    } else {
        let part = match tempfile::Builder::new()
            .prefix(&format!("{sha}.part"))
            .tempfile_in(&dir)
        {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("cache {}: {e}", dir.display()))),
        };
        let tmp = part.path().to_path_buf();
        let fetched = (|| -> Result<(), String> {
            let mut f = part
                .as_file()
                .try_clone()
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            let mut hasher = Sha256::new();
            let mut offset: u64 = 0;
            while offset < size {
                if let Some(reason) = ctx.cancel.stopped() {
                    return Err(format!("\u{0}{reason:?}"));
                }
                let want = CHUNK.min((size - offset) as usize);
                let g = call(
                    backend,
                    r,
                    "read",
                    vec![Value::Int(offset as i64), Value::Int(want as i64)],
                )?;
                let chunk = first_str(&g).ok_or("the master sent no data")?;
                if chunk.is_empty() {
                    return Err(format!("transfer truncated at {offset} of {size} bytes"));
                }
                hasher.update(&chunk);
                f.write_all(&chunk)
                    .map_err(|e| format!("{}: {e}", tmp.display()))?;
                offset += chunk.len() as u64;
            }
            if offset != size {
                return Err(format!(
                    "transfer size mismatch: got {offset} bytes, expected {size}"
                ));
            }
            f.sync_all().map_err(|e| e.to_string())?;
            let got = hex(&hasher.finalize());
            if got != sha {
                return Err(format!(
                    "checksum mismatch (got {got}, expected {sha}): corrupted transfer"
                ));
            }
            std::fs::rename(&tmp, &cached).map_err(|e| format!("{}: {e}", cached.display()))
        })();
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            if let Some(reason) = ctx.cancel.stopped() {
                return Err(stop_to_lua(reason));
            }
            return Ok(Err(e));
        }
        TRANSFERS.fetch_add(1, Ordering::Relaxed);
        "transferred"
    };
    Ok(Ok(Fetched {
        path: cached,
        sha256: sha,
        size,
        how,
    }))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 and size of a file, streamed (never held in memory whole).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex(&h.finalize()), n_total))
}

pub fn hash_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}
