//! Writing rule changes back into the config file: the document is edited in place with
//! toml_edit so comments and layout stay, then replaced atomically (temporary file + rename).

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// A rule as an editor fills it in: the config file's fields, as text. Saving validates it
/// with the same checks as loading the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDraft {
    pub id: String,
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// "all" or "put"
    pub operations: String,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub historical: bool,
    /// "always", "if-different" or "never"
    pub overwrite: String,
    pub enabled: bool,
}

/// The config text with the rule `previous_id` replaced by `draft` (or `draft` appended as a new
/// `[[rule]]` when `previous_id` is None). Comments and layout of everything else are kept, and
/// so are the comments of keys the draft keeps. The caller validates the result.
pub fn with_rule_saved(text: &str, previous_id: Option<&str>, draft: &RuleDraft) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config")?;
    if doc.get("rule").is_none() {
        doc.insert("rule", toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    }
    let rules = doc
        .get_mut("rule")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| anyhow!("`rule` in the config is not a list of [[rule]] tables"))?;
    let table = match previous_id {
        Some(id) => rules
            .iter_mut()
            .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
            .ok_or_else(|| anyhow!("there is no rule {id:?} in the config"))?,
        None => {
            rules.push(toml_edit::Table::new());
            rules.iter_mut().last().ok_or_else(|| anyhow!("could not add a rule"))?
        }
    };
    set_value(table, "id", Some(draft.id.as_str().into()));
    set_value(table, "source", Some(draft.source.as_str().into()));
    set_value(table, "destination", Some(draft.destination.as_str().into()));
    let prefixes: toml_edit::Array = draft.prefixes.iter().map(String::as_str).collect();
    set_value(table, "prefixes", (!draft.prefixes.is_empty()).then(|| prefixes.into()));
    set_value(table, "operations", Some(draft.operations.as_str().into()));
    set_value(
        table,
        "storage_class",
        draft.storage_class.as_deref().filter(|c| !c.is_empty()).map(Into::into),
    );
    set_value(table, "historical", Some(draft.historical.into()));
    set_value(table, "overwrite", Some(draft.overwrite.as_str().into()));
    set_value(table, "enabled", Some(draft.enabled.into()));
    Ok(doc.to_string())
}

/// The config text without the rule `id`.
pub fn without_rule(text: &str, id: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config")?;
    let rules = doc
        .get_mut("rule")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| anyhow!("there is no rule {id:?} in the config"))?;
    let index = rules
        .iter()
        .position(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| anyhow!("there is no rule {id:?} in the config"))?;
    rules.remove(index);
    Ok(doc.to_string())
}

/// Sets (keeping the comment beside the old value) or removes one key of a table.
fn set_value(table: &mut toml_edit::Table, key: &str, value: Option<toml_edit::Value>) {
    match value {
        None => {
            table.remove(key);
        }
        Some(mut v) => match table.get_mut(key).and_then(|i| i.as_value_mut()) {
            Some(old) => {
                *v.decor_mut() = old.decor().clone();
                *old = v;
            }
            None => {
                table.insert(key, toml_edit::value(v));
            }
        },
    }
}

/// Sets `enabled = VALUE` on the rule with `id`, keeping everything else in the file as it was.
pub fn set_rule_enabled(path: &Path, id: &str, enabled: bool) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let fresh = with_rule_enabled(&text, id, enabled).with_context(|| format!("editing {}", path.display()))?;
    write_atomically(path, fresh.as_bytes())
}

/// The config text with `enabled = VALUE` on the rule `id`.
pub fn with_rule_enabled(text: &str, id: &str, enabled: bool) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config")?;
    let rules = doc
        .get_mut("rule")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| anyhow!("the config has no [[rule]] tables"))?;
    let table = rules
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| anyhow!("no rule with id {id:?} in the config"))?;
    set_value(table, "enabled", Some(enabled.into()));
    Ok(doc.to_string())
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
