//! Writing rule changes back into the config file: the document is edited in place with
//! toml_edit so comments and layout stay, then replaced atomically (temporary file + rename).

use anyhow::{Context, Result, anyhow};
use std::io::Write;
use std::path::Path;

/// Sets `enabled = VALUE` on the rule with `id`, keeping everything else in the file as it was.
pub fn set_rule_enabled(path: &Path, id: &str, enabled: bool) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    let rules = doc
        .get_mut("rule")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| anyhow!("{} has no [[rule]] tables", path.display()))?;
    let table = rules
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| anyhow!("no rule with id {id:?} in {}", path.display()))?;
    match table.get_mut("enabled").and_then(|v| v.as_value_mut()) {
        Some(v) => {
            let decor = v.decor().clone();
            *v = toml_edit::Value::from(enabled);
            *v.decor_mut() = decor;
        }
        None => {
            table.insert("enabled", toml_edit::value(enabled));
        }
    }
    write_atomically(path, doc.to_string().as_bytes())
}

/// Replaces `path` with `bytes` so that a reader sees either the old or the new file, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.crr-tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        if let Ok(meta) = std::fs::metadata(path) {
            let _ = f.set_permissions(meta.permissions());
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = "# my endpoints\n[[rule]]\nid = \"a\"   # first\nenabled = true  # on\n\n[[rule]]\nid = \"b\"\n";
        std::fs::write(&path, text).unwrap();
        set_rule_enabled(&path, "a", false).unwrap();
        set_rule_enabled(&path, "b", false).unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        assert!(
            out.starts_with("# my endpoints\n[[rule]]\nid = \"a\"   # first\nenabled = false  # on\n"),
            "{out}"
        );
        assert!(out.contains("id = \"b\"\nenabled = false"), "{out}");
        assert!(set_rule_enabled(&path, "zz", true).is_err());
    }
}
