//! The calling client's permissions, for the commands that decide for themselves what a caller may
//! see or run (ACL key patterns on VT.QUEUES, `enable-debug-command` on VT._ALIGNCHECK).

use crate::server::{Ctx, OwnedStr, OK};
use std::ffi::{c_char, c_int, c_void};
use valkey_module::raw;

/// The user running the current command, for key permission checks. Freed on drop.
pub struct Caller {
    /// `None`: the command has no user (replication stream, AOF): nothing is filtered.
    user: Option<*mut raw::RedisModuleUser>,
}

impl Caller {
    pub fn current(ctx: Ctx) -> Caller {
        unsafe {
            let name = raw::RedisModule_GetCurrentUserName.map(|f| f(ctx)).unwrap_or(std::ptr::null_mut());
            if name.is_null() {
                return Caller { user: None };
            }
            let user = raw::RedisModule_GetModuleUserFromUserName.map(|f| f(name)).unwrap_or(std::ptr::null_mut());
            raw::RedisModule_FreeString.unwrap()(ctx, name);
            // A named user that cannot be resolved (deleted meanwhile) may read nothing.
            Caller { user: Some(user) }
        }
    }

    /// May the caller read `key` (ACL `~pattern` / `%R~pattern`)?
    pub fn may_read(&self, ctx: Ctx, key: &[u8]) -> bool {
        let user = match self.user {
            None => return true,
            Some(u) if u.is_null() => return false,
            Some(u) => u,
        };
        let k = OwnedStr::new(ctx, key);
        unsafe {
            match raw::RedisModule_ACLCheckKeyPermissions {
                Some(f) => f(user, k.0, raw::REDISMODULE_CMD_KEY_ACCESS as c_int) == OK,
                None => false,
            }
        }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if let Some(u) = self.user.filter(|u| !u.is_null()) {
            unsafe { raw::RedisModule_FreeModuleUser.unwrap()(u) };
        }
    }
}

/// Does `enable-debug-command` let the caller run debugging commands (`yes`, or `local` and the
/// client is on a unix socket or a loopback address)? Valkey protects `DEBUG` this way; the
/// module's own debug commands follow the same switch.
pub fn debug_commands_allowed(ctx: Ctx) -> bool {
    let setting = match config_get(ctx, c"enable-debug-command") {
        Some(v) => v,
        None => return false,
    };
    match setting.as_slice() {
        b"yes" => true,
        b"local" => is_local_client(ctx),
        _ => false,
    }
}

/// `CONFIG GET <name>`'s value, through the server (no client reply involved).
fn config_get(ctx: Ctx, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    unsafe {
        let call = raw::RedisModule_Call?;
        let reply = call(ctx, c"CONFIG".as_ptr(), c"cc".as_ptr(), c"GET".as_ptr(), name.as_ptr());
        if reply.is_null() {
            return None;
        }
        let mut out = None;
        // RESP2: [name, value]; RESP3 would be a map, but RM_Call replies in RESP2 by default
        let v = raw::RedisModule_CallReplyArrayElement.unwrap()(reply, 1);
        if !v.is_null() {
            let mut len = 0usize;
            let p: *const c_char = raw::RedisModule_CallReplyStringPtr.unwrap()(v, &mut len);
            if !p.is_null() {
                out = Some(std::slice::from_raw_parts(p.cast::<u8>(), len).to_ascii_lowercase());
            }
        }
        raw::RedisModule_FreeCallReply.unwrap()(reply);
        out
    }
}

fn is_local_client(ctx: Ctx) -> bool {
    unsafe {
        let id = raw::RedisModule_GetClientId.unwrap()(ctx);
        let mut ci: raw::RedisModuleClientInfo = std::mem::zeroed();
        ci.version = 1;
        if raw::RedisModule_GetClientInfoById.unwrap()(&mut ci as *mut _ as *mut c_void, id) != OK {
            return false;
        }
        if ci.flags & raw::REDISMODULE_CLIENTINFO_FLAG_UNIXSOCKET as u64 != 0 {
            return true;
        }
        let addr: Vec<u8> = ci.addr.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        addr.starts_with(b"127.") || addr == b"::1"
    }
}
