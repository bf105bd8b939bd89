//! Artifacts: content-addressed transfer to real agents, cache hits, and damage
//! detected during a transfer.

mod common;

use common::*;

fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Same content twice to one agent: transferred once, then served from its cache;
/// the file lands at dest with the mode asked for, byte for byte.
#[test]
fn same_content_is_transferred_once_per_agent() {
    let fleet = TestFleet::web(2);
    let dest = fleet.path().join("out");
    let script = format!(
        r#"
local body = string.rep("sloth-{n}\0", 300000)          -- ~6 MB, binary-safe
local a = artifact.bytes(body, "blob")
for round = 1, 2 do
  local hs = {{}}
  for _, h in ipairs(fleet.hosts("web")) do
    hs[#hs + 1] = goroutine.async(function()
      local path = {dest:?} .. "/" .. host.name .. "/blob.bin"
      local ok, how = a:save(path, "0640")
      local st = fs.stat(path)
      return how, st.size == #body and fs.read(path) == body, string.format("%o", st.mode % 4096)
    end, {{ delegate_to = h }})
  end
  for _, r in ipairs(goroutine.await_all(hs)) do
    print("SAVE", round, r.host, r.values[1], tostring(r.values[2]), r.values[3])
  end
end
"#,
        n = nonce(),
        dest = dest.display().to_string()
    );
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert_eq!(
        out.all("SAVE"),
        vec![
            vec!["1", "web-01", "transferred", "true", "640"],
            vec!["1", "web-02", "transferred", "true", "640"],
            vec!["2", "web-01", "cached", "true", "640"],
            vec!["2", "web-02", "cached", "true", "640"],
        ],
        "{out}"
    );
}

/// A file that changes (corruption) or shrinks (truncation) after it was hashed:
/// the save fails cleanly and nothing is left at dest.
#[test]
fn corrupted_or_truncated_transfer_leaves_no_file() {
    let fleet = TestFleet::web(1);
    let src = fleet.path().join("release.tar");
    let dest = fleet.path().join("deployed.tar");
    let script = format!(
        r#"
local src, dest = {src:?}, {dest:?}
local body = string.rep("release-{n}\n", 200000)
fs.write(src, body)
local a = assert(artifact.file(src))
fs.write(src, (body:gsub("release", "RELEASE", 1)))        -- same size, other bytes
local ok, err = goroutine.await(goroutine.async(function()
  local ok, err = a:save(dest)
  return ok, err, fs.exists(dest)
end, {{ delegate_to = "web-01" }}))
print("CORRUPT", tostring(select(2, goroutine.await(goroutine.async(function() return fs.exists(dest) end)))))
local _, ok1, err1, exists1 = goroutine.await(goroutine.async(function()
  local ok, err = a:save(dest)
  return tostring(ok), err, tostring(fs.exists(dest))
end, {{ delegate_to = "web-01" }}))
print("CORRUPT_SAVE", ok1, err1:match("checksum mismatch") and "checksum mismatch" or err1, exists1)
fs.write(src, body)
local b = assert(artifact.file(src))
fs.write(src, body:sub(1, 1000))                          -- truncated
local _, ok2, err2, exists2 = goroutine.await(goroutine.async(function()
  local ok, err = b:save(dest)
  return tostring(ok), err, tostring(fs.exists(dest))
end, {{ delegate_to = "web-01" }}))
print("TRUNC_SAVE", ok2, err2:match("truncated") and "truncated" or err2, exists2)
"#,
        n = nonce(),
        src = src.display().to_string(),
        dest = dest.display().to_string()
    );
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert_eq!(
        out.one("CORRUPT_SAVE"),
        vec!["nil", "checksum mismatch", "false"],
        "{out}"
    );
    assert_eq!(
        out.one("TRUNC_SAVE"),
        vec!["nil", "truncated", "false"],
        "{out}"
    );
    assert!(!dest.exists());
}
