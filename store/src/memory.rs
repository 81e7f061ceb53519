//! In-memory store for tests and simulation: a sorted map behind a mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{check_key, etag_of, ObjectMeta, ObjectStore, StoreError};

#[derive(Debug, Clone, Default)]
pub struct MemStore {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes behind the engine's back (corruption tests).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut objects = self.objects.lock().unwrap();
        let mut data = objects.get(key).map(|b| b.to_vec()).unwrap_or_default();
        f(&mut data);
        objects.insert(key.to_string(), Bytes::from(data));
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let data = self.get(key).await?;
        let size = data.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(data.slice(offset as usize..end as usize)),
            _ => Err(StoreError::OutOfRange {
                key: key.into(),
                offset,
                len,
                size,
            }),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        check_key(key)?;
        let etag = etag_of(&data);
        self.objects.lock().unwrap().insert(key.into(), data);
        Ok(etag)
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        check_key(key)?;
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(key) {
            return Err(StoreError::PreconditionFailed(key.into()));
        }
        let etag = etag_of(&data);
        objects.insert(key.into(), data);
        Ok(etag)
    }

    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        check_key(key)?;
        let mut objects = self.objects.lock().unwrap();
        match objects.get(key) {
            Some(cur) if etag_of(cur) == etag => {}
            _ => return Err(StoreError::PreconditionFailed(key.into())),
        }
        let new_etag = etag_of(&data);
        objects.insert(key.into(), data);
        Ok(new_etag)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        Ok(self.objects.lock().unwrap().get(key).map(|d| ObjectMeta {
            key: key.into(),
            size: d.len() as u64,
            etag: etag_of(d),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, d)| ObjectMeta {
                key: k.clone(),
                size: d.len() as u64,
                etag: etag_of(d),
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}
