//! Binaries loaded once and shared across threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::binary::Binary;
use super::build_id::BuildId;
use super::locate::SearchPaths;
use super::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    BuildId(BuildId),
    Path(PathBuf),
}

type Slot = Arc<OnceLock<Result<Arc<Binary>, Error>>>;

/// Loads each binary once, keyed by build-id (or by recorded path when there is none), and hands out
/// `Arc<Binary>`. Failures are remembered too, so a missing binary is looked for (and reported)
/// once. `Send + Sync`; two threads asking for the same binary wait for one load, while different
/// binaries load in parallel.
#[derive(Debug)]
pub struct BinaryCache {
    search: SearchPaths,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl BinaryCache {
    /// An empty cache that finds binaries through `search`.
    pub fn new(search: SearchPaths) -> BinaryCache {
        BinaryCache {
            search,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Where it looks.
    pub fn search_paths(&self) -> &SearchPaths {
        &self.search
    }

    /// The binary recorded as `recorded_path` with `build_id`: located, loaded (with its debug
    /// file) on the first call, shared after.
    pub fn get(
        &self,
        recorded_path: &Path,
        build_id: Option<&BuildId>,
    ) -> Result<Arc<Binary>, Error> {
        let key = match build_id {
            Some(id) => Key::BuildId(*id),
            None => Key::Path(recorded_path.to_owned()),
        };
        let slot = {
            // The map only ever gains entries, so a poisoned lock still holds a usable map.
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.entry(key).or_default().clone()
        };
        // Loading happens outside the map's lock so that other binaries are not held up.
        slot.get_or_init(|| {
            let located = self.search.locate(recorded_path, build_id)?;
            Binary::load(&self.search, recorded_path, &located).map(Arc::new)
        })
        .clone()
    }
}
