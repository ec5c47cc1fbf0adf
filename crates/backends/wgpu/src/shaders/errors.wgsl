// The error word: (code, a, b, c); the first reporter wins. Needs a global `err`.
fn report(code: u32, a: u32, b: u32, c: u32) {
    if (atomicCompareExchangeWeak(&err[0], 0u, code).exchanged) {
        atomicStore(&err[1], a);
        atomicStore(&err[2], b);
        atomicStore(&err[3], c);
    }
}
