#!/usr/bin/env python3
# Compile a kernel family with NVRTC on a machine without a GPU (NVRTC needs none), as
# kernels.rs does (common.cuh + the family's .cu). An sm_XY target yields a cubin, so the
# PTX goes through ptxas and inline asm is checked against that target; compute_XY yields PTX.
#   pip download --no-deps -d /tmp/nvrtc nvidia-cuda-nvrtc-cu12   # then unzip the wheel
#   python3 scripts/nvrtc_compile_check.py .../nvidia/cuda_nvrtc/lib/libnvrtc.so.12 \
#       crates/backends/cuda/src/kernels mma.cu "--gpu-architecture=sm_70 -DMMA_F16 -DMMA_SM70"
# Each further argument is one option set; add --ptxas-options=-v for registers and spills.
# SAVE=dir writes each result there.
import ctypes, sys, os
lib = ctypes.CDLL(sys.argv[1])
K = sys.argv[2]
src = open(os.path.join(K, "common.cuh")).read() + "\n" + open(os.path.join(K, sys.argv[3])).read()
def check(r, what):
    if r != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise SystemExit(f"{what}: {lib.nvrtcGetErrorString(r).decode()}")
maj, mnr = ctypes.c_int(), ctypes.c_int()
lib.nvrtcVersion(ctypes.byref(maj), ctypes.byref(mnr))
def compile(opts):
    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"mma.cu", 0, None, None), "create")
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    r = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    out = None
    if r == 0:
        if any("sm_" in o for o in opts):
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)); b = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetCUBIN(prog, b); out = b.raw
        else:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(n)); b = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetPTX(prog, b); out = b.raw
    return r, log.value.decode(errors="replace"), out
print(f"NVRTC {maj.value}.{mnr.value}")
failed = False
for spec in sys.argv[4:]:
    opts = spec.split()
    r, log, out = compile(opts + ["-lineinfo"])
    print(f"== {spec}: {'OK' if r == 0 else 'FAILED'} ({len(out) if out else 0} bytes)")
    failed = failed or r != 0
    if log.strip(): print(log.strip()[:3000])
    if out and os.environ.get("SAVE"):
        open(os.environ["SAVE"] + "/" + spec.replace(" ", "_").replace("=", "").replace("-", "") , "wb").write(out)
sys.exit(1 if failed else 0)
