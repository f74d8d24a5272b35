//! MLX backend (mlx-rs). Not implemented in this build yet: constructing it
//! reports that clearly instead of panicking.

use crate::error::{Error, Result};

pub struct MlxBackend {
    _private: (),
}

impl MlxBackend {
    pub fn new() -> Result<Self> {
        Err(Error::BackendNotCompiled { backend: "mlx" })
    }
}
