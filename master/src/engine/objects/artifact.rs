//! Artifacts: content shipped to hosts by `a:save()`, read by agents in chunks.

use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, Value};

use super::{int, int_arg, unknown};

/// Content shipped to hosts by `a:save()`: a file read in chunks on demand (never
/// held whole in memory), or bytes given by the script.
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub source: ArtifactSource,
}

pub enum ArtifactSource {
    File(std::path::PathBuf),
    Bytes(Vec<u8>),
}

impl Artifact {
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let len = len.min(sloth_lua::artifact::CHUNK * 4);
        match &self.source {
            ArtifactSource::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + len).min(b.len());
                Ok(b[start..end].to_vec())
            }
            ArtifactSource::File(p) => {
                use std::io::{Read, Seek, SeekFrom};
                let mut f =
                    std::fs::File::open(p).map_err(|e| format!("artifact {}: {e}", p.display()))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| format!("artifact {}: {e}", p.display()))?;
                let mut buf = Vec::with_capacity(len);
                f.take(len as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("artifact {}: {e}", p.display()))?;
                Ok(buf)
            }
        }
    }
}

impl Artifact {
    pub fn call(&self, method: &str, args: Data) -> Result<Data, String> {
        let a = args.roots();
        let text = |s: &str| Ok(Data::scalars(vec![Value::Str(s.as_bytes().to_vec())]));
        match method {
            "sha256" => text(&self.sha256),
            "size" => int(self.size as i64),
            "name" => text(&self.name),
            "read" => {
                let off = int_arg(a, 0, 0, "artifact:read")?;
                let len = int_arg(a, 1, sloth_lua::artifact::CHUNK as i64, "artifact:read")?;
                if off < 0 || len < 0 {
                    return Err("artifact:read: negative offset or length".into());
                }
                let bytes = self.read(off as u64, len as usize)?;
                Ok(Data::scalars(vec![Value::Str(bytes)]))
            }
            _ => unknown(SharedKind::Artifact, method),
        }
    }
}
