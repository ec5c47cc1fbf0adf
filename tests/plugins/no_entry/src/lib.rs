//! A shared library named like a plugin that does not export `gptoss_backend_entry`.

#[no_mangle]
pub extern "C" fn gptoss_something_else() -> u32 {
    42
}
