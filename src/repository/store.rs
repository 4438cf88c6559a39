//! The model repository on disk, in the Triton layout:
//! `<root>/<name>/config.toml` (optional) and `<root>/<name>/<version>/model.onnx`.
//!
//! Scanning is pure file-system reading; new versions are written atomically: the file goes into
//! a hidden temporary directory beside the versions and the directory is renamed into place, so a
//! reader sees either no version or the whole file.

use std::path::{Path, PathBuf};

use super::config::{ModelConfig, ModelConfigError};
use crate::protocol::{ModelName, ModelNameError};

/// Why the repository could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ModelConfigError),
    #[error("model name {0}")]
    InvalidName(#[from] ModelNameError),
}

/// One model directory as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: ModelName,
    pub config: ModelConfig,
    /// Every version directory that holds a `model.onnx`, ascending.
    pub versions: Vec<u64>,
    /// The versions the model's policy serves, ascending.
    pub served: Vec<u64>,
}

/// Servable models, and the models whose configuration was refused (with why).
pub type Scan = (Vec<ModelEntry>, Vec<(String, RepositoryError)>);

/// A model repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    only: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepositoryError + '_ {
    move |source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ModelStore {
    /// `only`: serve just these names (empty: every model, including ones that appear later).
    pub fn new(root: impl Into<PathBuf>, only: Vec<String>) -> ModelStore {
        ModelStore {
            root: root.into(),
            only,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn model_path(&self, name: &str, version: u64) -> PathBuf {
        self.root
            .join(name)
            .join(version.to_string())
            .join("model.onnx")
    }

    /// Every servable model, sorted by name. A model whose `config.toml` is invalid is reported
    /// in the second list and left out of the first.
    pub fn scan(&self) -> Result<Scan, RepositoryError> {
        let mut models = Vec::new();
        let mut broken = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(io(&self.root))?;
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            // Directories whose name breaks the rule are not models (nor `.tmp-*` writes).
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| ModelName::parse(n).ok())
            else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            if !self.only.is_empty() && !self.only.iter().any(|o| *o == *name) {
                continue;
            }
            match self.read_model(&name) {
                Ok(Some(model)) => models.push(model),
                Ok(None) => {}
                Err(e) => broken.push((name.to_string(), e)),
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((models, broken))
    }

    /// One model; `None` when the directory holds no version with a `model.onnx`.
    pub fn read_model(&self, name: &ModelName) -> Result<Option<ModelEntry>, RepositoryError> {
        let dir = self.root.join(name.as_str());
        let versions = self.versions(name)?;
        if versions.is_empty() {
            return Ok(None);
        }
        let config = ModelConfig::read(&dir.join("config.toml"))?;
        let served = config.version_policy.select(&versions);
        Ok(Some(ModelEntry {
            name: name.clone(),
            config,
            versions,
            served,
        }))
    }

    /// The version directories of `name` that hold a `model.onnx`, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<u64>, RepositoryError> {
        let dir = self.root.join(name);
        let mut versions = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(versions),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let version = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(version) = version.filter(|&v| v > 0) {
                if entry.path().join("model.onnx").is_file() {
                    versions.push(version);
                }
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Reads one version's ONNX bytes.
    pub fn read_version(&self, name: &str, version: u64) -> Result<Vec<u8>, RepositoryError> {
        let path = self.model_path(name, version);
        std::fs::read(&path).map_err(io(&path))
    }

    /// Writes `model` as the next version of `name` (creating the model), atomically.
    /// Returns the new version number.
    pub fn write_version(&self, name: &str, model: &[u8]) -> Result<u64, RepositoryError> {
        let name = ModelName::parse(name)?;
        let name = name.as_str();
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let result = (|| {
            let file = tmp.join("model.onnx");
            std::fs::write(&file, model).map_err(io(&file))?;
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(io(&file))?;
            // Another writer may take a number first: try the next one.
            let mut version = self.versions(name)?.last().copied().unwrap_or(0) + 1;
            loop {
                let target = dir.join(version.to_string());
                match std::fs::rename(&tmp, &target) {
                    Ok(()) => return Ok(version),
                    Err(_) if target.exists() => version += 1,
                    Err(e) => return Err(io(&target)(e)),
                }
            }
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_versions_configs_and_policies() {
        let root = tempfile::tempdir().unwrap();
        let store = ModelStore::new(root.path(), vec![]);
        for (name, version) in [("a", 1), ("a", 2), ("a", 10), ("b", 3)] {
            let dir = root.path().join(name).join(version.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir_all(root.path().join("a/7")).unwrap(); // no model.onnx: ignored
        std::fs::create_dir_all(root.path().join("empty")).unwrap(); // no versions: not a model
        std::fs::write(
            root.path().join("b/config.toml"),
            "version_policy = \"all\"\nmax_batch_size = 4\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("c/1")).unwrap();
        std::fs::write(root.path().join("c/1/model.onnx"), b"x").unwrap();
        std::fs::write(root.path().join("c/config.toml"), "max_batch = 4\n").unwrap();

        let (models, broken) = store.scan().unwrap();
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(models[0].versions, vec![1, 2, 10]);
        assert_eq!(models[0].served, vec![10]);
        assert_eq!(models[1].config.max_batch_size, Some(4));
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].1.to_string().contains("max_batch"),
            "{}",
            broken[0].1
        );

        let only = ModelStore::new(root.path(), vec!["b".into()]);
        assert_eq!(only.scan().unwrap().0.len(), 1);
    }

    #[test]
    fn writes_versions_atomically_and_numbers_them() {
        let root = tempfile::tempdir().unwrap();
        let store = ModelStore::new(root.path(), vec![]);
        assert_eq!(store.write_version("new-model", b"one").unwrap(), 1);
        assert_eq!(store.write_version("new-model", b"two").unwrap(), 2);
        assert_eq!(store.read_version("new-model", 2).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("new-model"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        let over = "m".repeat(ModelName::MAX_LEN + 1);
        for bad in ["../evil", over.as_str()] {
            assert!(matches!(
                store.write_version(bad, b"x"),
                Err(RepositoryError::InvalidName(_))
            ));
        }
    }

    /// The listing takes names by the one rule: the longest legal name is a model, one byte
    /// more is not.
    #[test]
    fn lists_names_by_the_one_rule() {
        let root = tempfile::tempdir().unwrap();
        let longest = "m".repeat(ModelName::MAX_LEN);
        let over = "n".repeat(ModelName::MAX_LEN + 1);
        for name in [longest.as_str(), over.as_str(), ".hidden"] {
            let dir = root.path().join(name).join("1");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        }
        let (models, broken) = ModelStore::new(root.path(), vec![]).scan().unwrap();
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, [longest.as_str()]);
        assert!(broken.is_empty());
    }
}
