// The integration tests link this crate and the cpu backend (the reference) as rlibs; both
// export the plugin entry symbol `gptoss_backend_entry` for their cdylib builds. The tests call
// neither through that symbol, so let the test binaries link with both definitions present.
fn main() {
    println!("cargo:rustc-link-arg-tests=-Wl,--allow-multiple-definition");
    println!("cargo:rerun-if-changed=build.rs");
}
