//! What the edge layers leave in a request's extensions for the services:
//! who is calling (set by the auth layer) and a slot where the service
//! notes the instance the call addressed (read by the metrics layer, since
//! only the service decodes the message that names it).

use std::sync::{Arc, OnceLock};

use crate::auth::Identity;

/// Where the metrics layer learns which instance a call addressed (the
/// instance name is inside the message, which only services decode).
#[derive(Debug, Clone, Default)]
pub struct CallInstance(pub Arc<OnceLock<String>>);

/// Who is calling, and where to note the instance they address.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The authenticated identity (`None` when auth is off).
    pub identity: Option<Identity>,
    slot: Option<CallInstance>,
}

impl Caller {
    /// Records the instance the call addressed, for per-instance metrics.
    pub fn note_instance(&self, name: &str) {
        if let Some(slot) = &self.slot {
            let _ = slot.0.set(name.to_string());
        }
    }
}

/// The caller of a request, as the edge layers left it in its extensions.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    Caller {
        identity: request.extensions().get::<Identity>().cloned(),
        slot: request.extensions().get::<CallInstance>().cloned(),
    }
}
