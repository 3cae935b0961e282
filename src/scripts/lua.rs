//! The texts of fredlock's Lua scripts (`src/scripts/*.lua`), and what is made of the
//! batch: its `EVAL` script with its digest, and its function library.

use std::sync::LazyLock;

use fred::bytes_utils::Str;
use fred::types::scripts::Script;

/// The batch, see `scripts/ops.lua`: it defines the function `batch`.
const OPS_LUA: &str = include_str!("ops.lua");
/// The batch as an `EVAL` script: `scripts/ops.lua`, then the call of `batch`.
pub(crate) const OPS_EVAL: &str = concat!(include_str!("ops.lua"), "\nreturn batch(KEYS, ARGV)\n");
/// Lifting the restart quarantine, see `scripts/lift.lua`.
pub(crate) const LIFT_LUA: &str = include_str!("lift.lua");
/// The permission check of `build()`, see `scripts/check.lua`.
pub(crate) const CHECK_LUA: &str = include_str!("check.lua");

/// The batch script with its SHA1 digest, for `EVALSHA`.
pub(crate) static OPS: LazyLock<Script> = LazyLock::new(|| Script::from_lua(OPS_EVAL));

/// The batch as a function library, for `FUNCTION LOAD` and `FCALL`.
pub(crate) struct Library {
    /// The library's name, which is also its one function's: `fredlock_` and the first
    /// 16 hex digits of the script's SHA1, so that clients of different versions of
    /// fredlock on one node each call their own.
    pub(crate) name: Str,
    /// `FUNCTION LOAD`'s argument: `scripts/ops.lua` with a header naming the library
    /// and the registration of `batch` under that name.
    pub(crate) code: String,
}

pub(crate) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let digest = OPS.sha1();
    let name = format!("fredlock_{}", &digest[..digest.len().min(16)]);
    let code = format!("#!lua name={name}\n{OPS_LUA}\nredis.register_function('{name}', batch)\n");
    Library {
        name: Str::from(name),
        code,
    }
});
