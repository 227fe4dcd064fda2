//! Name reservations: a sandbox or container name is held by one id at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Names (`name_namespace_uid_attempt`) in use, each mapped to the id holding it.
#[derive(Default, Clone)]
pub struct Names {
    inner: Arc<Mutex<HashMap<String, String>>>,
}

impl Names {
    /// Reserves `name` for `id`. The reservation is released when the guard drops
    /// unless `keep()` was called, so a failed or cancelled create never leaks a name.
    pub fn reserve(&self, name: &str, id: &str, what: &str) -> Result<Reservation> {
        let mut m = self.lock();
        if let Some(owner) = m.get(name) {
            return Err(Error::AlreadyExists(format!(
                "{what} name {name:?} is reserved for {owner}"
            )));
        }
        m.insert(name.to_string(), id.to_string());
        Ok(Reservation {
            names: self.clone(),
            name: name.to_string(),
            id: id.to_string(),
            kept: false,
        })
    }

    /// Records a name that is already in use (recovery at start).
    pub fn restore(&self, name: &str, id: &str) {
        self.lock().insert(name.to_string(), id.to_string());
    }

    /// Frees `name` if `id` still holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut m = self.lock();
        if m.get(name).map(|o| o == id).unwrap_or(false) {
            m.remove(name);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A poisoned map still holds valid names; recovering beats failing every later create.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Reservation {
    names: Names,
    name: String,
    id: String,
    kept: bool,
}

impl Reservation {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.names.release(&self.name, &self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_released_on_drop_and_kept_on_keep() {
        let n = Names::default();
        {
            let _r = n.reserve("a", "1", "sandbox").unwrap();
            assert!(n.reserve("a", "2", "sandbox").is_err());
        }
        let r = n.reserve("a", "2", "sandbox").unwrap();
        r.keep();
        let e = n.reserve("a", "3", "sandbox").err().unwrap();
        assert!(matches!(e, Error::AlreadyExists(_)));
        n.release("a", "3");
        assert!(n.reserve("a", "3", "sandbox").is_err());
        n.release("a", "2");
        assert!(n.reserve("a", "3", "sandbox").is_ok());
    }
}
